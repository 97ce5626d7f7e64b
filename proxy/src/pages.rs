//! Hands the binary's start-up pages back to the kernel once a process has started.
//!
//! One static binary does everything (parse compose files, talk TLS to the AWS APIs, boot a
//! stack, proxy traffic), and the kernel maps its code in 64 KiB runs around each page touched,
//! so after a boot most of the 9.6 MB of code is resident although holding runs a small part of
//! it (measured: 8.2 MiB of code resident, 2.4 MiB of heap and stacks). Those pages are clean
//! and file-backed: the kernel would drop them under memory pressure anyway, and refaults them
//! from the file when they run again. `MADV_PAGEOUT` (Linux 5.4) asks for that now, and
//! `MADV_RANDOM` keeps the kernel's readahead from bringing 128 KiB back around each page that
//! runs again, so the resident set is what the process goes on to use (the proxy under load:
//! 9.8 MiB before, 7.8 with the page-out alone, 7.4 with both). Work that runs much code at
//! once (an upgrade) turns readahead back on first ([`expect_code`]) and hands its code back
//! after. Pages another process also maps (the agent and the proxy run the same file) stay
//! where they are: the kernel pages out only pages this process maps alone.
//!
//! No crate offers this safely (`rustix` and `nix` wrap `madvise` as `unsafe fn`, as they must
//! for advice that can discard data), so here is the workspace's one `unsafe` block outside a
//! test, limited to three advices that lose nothing, on mappings the kernel lists as this
//! executable's and not writable.

use std::os::unix::fs::MetadataExt;

/// Pages out this executable's read-only mappings, and has the kernel read them back page by
/// page (`MADV_RANDOM`: no readahead), so that what comes back is what runs; returns the bytes
/// advised. Advice only: nothing is lost whether it works or not; the first failure (EINVAL on
/// a kernel before 5.4) ends it and is returned.
pub fn release_code() -> std::io::Result<u64> {
    let mut advised = 0;
    for (start, end) in own_mappings()? {
        advise(start, end - start, libc::MADV_PAGEOUT)?;
        advise(start, end - start, libc::MADV_RANDOM)?;
        advised += (end - start) as u64;
    }
    Ok(advised)
}

/// Before work that runs much code at once (an upgrade): readahead again (`MADV_NORMAL`), so
/// that its code comes back in a few reads rather than a read per page.
pub fn expect_code() -> std::io::Result<()> {
    for (start, end) in own_mappings()? {
        advise(start, end - start, libc::MADV_NORMAL)?;
    }
    Ok(())
}

fn own_mappings() -> std::io::Result<Vec<(usize, usize)>> {
    let exe = std::fs::metadata("/proc/self/exe")?;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(own_read_only(&maps, exe.dev(), exe.ino()))
}

/// The address ranges of `/proc/self/maps` lines that map the file (`dev`, `ino`) without
/// write permission: code, read-only data, relocations. Writable mappings are never listed:
/// their pages may be private copies that hold state.
fn own_read_only(maps: &str, dev: u64, ino: u64) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset major:minor inode path
            let mut fields = line.split_ascii_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let _offset = fields.next()?;
            let (major, minor) = fields.next()?.split_once(':')?;
            let inode: u64 = fields.next()?.parse().ok()?;
            let (major, minor) = (
                u64::from_str_radix(major, 16).ok()?,
                u64::from_str_radix(minor, 16).ok()?,
            );
            let same_file = inode == ino && device(major, minor) == dev;
            (same_file && perms.starts_with('r') && perms.as_bytes().get(1) == Some(&b'-'))
                .then_some(())?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .filter(|(start, end)| end > start)
        .collect()
}

/// `st_dev` from the major and minor numbers `/proc/PID/maps` prints (glibc's `makedev`).
fn device(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0x0000_0fff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0x0000_00ff)
}

#[allow(unsafe_code)]
fn advise(start: usize, len: usize, advice: libc::c_int) -> std::io::Result<()> {
    debug_assert!(matches!(
        advice,
        libc::MADV_PAGEOUT | libc::MADV_RANDOM | libc::MADV_NORMAL
    ));
    // SAFETY: the range is a whole mapping the kernel listed for this process, of its own
    // executable, without write permission, so no Rust object lives in it. These three advices
    // change only which pages are resident and how they are read: MADV_PAGEOUT reclaims, and
    // the contents come back from the unchanged file on the next access (a running executable
    // cannot be written: ETXTBSY; a replaced one keeps its old inode).
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c00e0000 r--p 00000000 fd:01 1234 /usr/bin/berth
55d0c00e0000-55d0c0a00000 r-xp 000e0000 fd:01 1234 /usr/bin/berth
55d0c0a00000-55d0c0d00000 r--p 00a00000 fd:01 1234 /usr/bin/berth
55d0c0d00000-55d0c0dc0000 rw-p 00d00000 fd:01 1234 /usr/bin/berth
55d0c0dc0000-55d0c0e00000 rw-p 00000000 00:00 0
7f0000000000-7f0000001000 r-xp 00000000 fd:01 999 /usr/lib/other.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn only_the_executables_read_only_mappings_are_paged_out() {
        let ranges = own_read_only(MAPS, device(0xfd, 0x01), 1234);
        assert_eq!(
            ranges,
            vec![
                (0x55d0c0000000, 0x55d0c00e0000),
                (0x55d0c00e0000, 0x55d0c0a00000),
                (0x55d0c0a00000, 0x55d0c0d00000),
            ]
        );
        // Another device with the same inode number is another file.
        assert!(own_read_only(MAPS, device(0xfd, 0x02), 1234).is_empty());
    }

    #[test]
    fn a_replaced_binary_is_still_found_by_its_inode() {
        let maps = "00400000-00500000 r-xp 00000000 08:03 77 /usr/bin/berth (deleted)\n";
        assert_eq!(
            own_read_only(maps, device(8, 3), 77),
            vec![(0x400000, 0x500000)]
        );
    }

    fn resident_file_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("RssFile:")).unwrap();
        line.split_ascii_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn this_process_pages_out_its_own_code_and_keeps_running() {
        let before = resident_file_kib();
        let advised = release_code().expect("madvise(MADV_PAGEOUT) on this test binary");
        assert!(advised > 0, "found no read-only mapping of /proc/self/exe");
        let after = resident_file_kib();
        // The test harness's own threads run meanwhile and fault some of it back in.
        assert!(
            after < before,
            "resident file pages {before} KiB before, {after} KiB after"
        );
        assert_eq!(random_read_mappings(), own_mappings().unwrap().len());
        // Readahead back on for an upgrade.
        expect_code().unwrap();
        assert_eq!(random_read_mappings(), 0);
    }

    /// How many of this executable's read-only mappings the kernel marks random-read (`rr` in
    /// smaps' VmFlags).
    fn random_read_mappings() -> usize {
        let ours: Vec<String> = own_mappings()
            .unwrap()
            .iter()
            .map(|(start, end)| format!("{start:x}-{end:x} "))
            .collect();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut current = false;
        let mut count = 0;
        for line in smaps.lines() {
            // A mapping's header starts with its range; its fields ("Rss:", ...) follow it.
            if line.split(' ').next().is_some_and(|a| a.contains('-')) {
                current = ours.iter().any(|r| line.starts_with(r.as_str()));
            } else if current && line.starts_with("VmFlags:") {
                count += usize::from(line.split_ascii_whitespace().any(|f| f == "rr"));
            }
        }
        count
    }
}
