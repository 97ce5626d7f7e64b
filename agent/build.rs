//! Stamps the git commit into the binary, for `berth --version`.
//!
//! `BERTH_GIT_COMMIT` is the short commit of the checkout being built; "unknown" outside a git
//! checkout (a crate tarball, a source package). A packager who builds from an export can set
//! `BERTH_GIT_COMMIT` in the environment and it is used as is.
//!
//! On x86_64 Linux it also builds `native/memcpy.c`, and on musl (the static binary that ships)
//! has the linker use it in place of musl's memcpy: see that file for why.
//!
//! No "-dirty" suffix: telling a dirty tree apart would need this script to rerun on every source
//! change, and a suffix that is sometimes stale is worse than none.

use std::path::Path;
use std::process::Command;

fn main() {
    memcpy();
    println!("cargo:rerun-if-env-changed=BERTH_GIT_COMMIT");
    if let Ok(commit) = std::env::var("BERTH_GIT_COMMIT") {
        if !commit.is_empty() {
            println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");
            return;
        }
    }
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=BERTH_GIT_COMMIT={commit}");

    // Rerun only when HEAD moves: HEAD itself (a checkout), the branch's ref (a commit) and
    // packed-refs (a ref that was packed). Paths come from git, so worktrees work too. Only
    // files that exist are named: cargo reruns every time for a missing one.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            // --git-path answers relative to the current directory, which is the crate's.
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}

/// Builds `berth_memcpy` (native/memcpy.c) on x86_64 Linux, where its test runs; on musl
/// the binary's every call to memcpy goes to it (`--wrap`: musl's own stays in place for
/// musl's internal jumps to it, so nothing is defined twice).
fn memcpy() {
    println!("cargo:rerun-if-changed=native/memcpy.c");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") != "x86_64" || var("CARGO_CFG_TARGET_OS") != "linux" {
        return;
    }
    let mut build = cc::Build::new();
    build
        .file("native/memcpy.c")
        .opt_level(2)
        .flag("-ffreestanding")
        .flag_if_supported("-fno-tree-loop-distribute-patterns");
    if var("CARGO_CFG_TARGET_ENV") == "musl" {
        build.define("BERTH_WRAP_MEMCPY", None);
        println!("cargo:rustc-link-arg-bins=-Wl,--wrap=memcpy");
    }
    build.compile("berth_memcpy");
}

/// One line of git's output, or None when git is missing, fails or this is no checkout.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!line.is_empty()).then_some(line)
}
