//! The static binary's memcpy (agent/native/memcpy.c, put in place of musl's by agent/build.rs),
//! checked against a byte-by-byte copy: every size to 1,100 bytes (each of its branches and
//! their edges) from and to every alignment within 16 bytes, bytes around the copy untouched.
//! The test builds link the same C file under its own name, `berth_memcpy`.

#[allow(unsafe_code)]
mod native {
    extern "C" {
        fn berth_memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8;
    }

    /// `src` into `dst[..src.len()]`, through the C function.
    pub(super) fn copy(dst: &mut [u8], src: &[u8]) -> *mut u8 {
        assert!(dst.len() >= src.len());
        // Safe: both slices are valid for `src.len()` bytes, and a `&mut` cannot overlap `src`.
        unsafe { berth_memcpy(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
    }
}

#[test]
fn every_size_and_alignment_copies_exactly_its_bytes() {
    const MAX: usize = 1100;
    const ROOM: usize = MAX + 64;
    let source: Vec<u8> = (0..ROOM).map(|i| (i * 131 + 7) as u8).collect();
    let mut failures = Vec::new();
    for n in 0..=MAX {
        for from in 0..16 {
            for to in 0..16 {
                let mut dst = vec![0xA5u8; ROOM];
                let src = &source[from..from + n];
                let returned = native::copy(&mut dst[to..], src);
                let ok = returned == dst[to..].as_mut_ptr()
                    && dst[to..to + n] == *src
                    && dst[..to].iter().all(|&b| b == 0xA5)
                    && dst[to + n..].iter().all(|&b| b == 0xA5);
                if !ok && failures.len() < 5 {
                    failures.push(format!("{n} bytes from offset {from} to offset {to}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "wrong copies: {failures:?}");
}
