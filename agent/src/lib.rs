//! berth: an on-instance bootstrap and deploy agent. This crate holds the pipeline; `main.rs`
//! holds only the command line. Modules, from the top down; each uses only those below it
//! (the `layering` test below checks it):
//!
//! - [`commands`]: each subcommand put together from the stages.
//! - [`agent`]: boot -> hold -> leave, the deployer behind the control socket.
//! - [`exit`]: every exit code, and which error gets which.
//! - [`upgrade`]: the strategies (proxy colors, drain), crash recovery, the one-at-a-time lock.
//! - [`fleet`]: `berth rollout`, the release across the group (SSM Run Command), from CI.
//! - [`instance`]: IMDSv2 identity, the lifecycle hook, the load balancer's view.
//! - [`serve`]: the agent's state and its health endpoint.
//! - [`release`]: fetching the release (S3, SSM, local) into 0600 files; [`proxy`]:
//!   `berth proxy`, its own process, standing alone.
//! - [`engine`]: Docker (the only bollard user), registries, plan, converge, progress;
//!   [`policy`]: what a project may ask of the host (berth.toml's `[policy]`).
//! - [`compose`]: compose files into a resolved, validated project; [`alarms`]: CloudWatch
//!   alarms as release gates.
//! - At the bottom: [`aws`] (SDK clients), [`ipc`] (JSON lines over a 0600 socket), [`config`]
//!   (plain settings), [`report`] (errors with their causes), [`signature`] (is a package
//!   signed by a trusted key); and the test of the static binary's memcpy (`memcpy.rs`).

pub mod agent;
pub mod alarms;
pub mod aws;
pub mod commands;
pub mod compose;
pub mod config;
pub mod engine;
pub mod exit;
pub mod fleet;
pub mod instance;
pub use berth_proxy as proxy;
pub use berth_proxy::ipc;
pub mod logging;
#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod memcpy;
pub mod policy;
pub mod release;
pub mod report;
pub mod serve;
pub mod signature;
pub mod upgrade;

/// The layering above, checked: every `crate::` path in a module's files names a module below
/// it, so that no import cycle can creep in.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layering {
    use std::path::Path;

    /// Each module's rank: a module may use only modules of a lower rank.
    const RANKS: [(&str, u8); 20] = [
        ("commands", 10),
        ("agent", 9),
        ("exit", 8),
        ("upgrade", 7),
        ("fleet", 6),
        ("instance", 6),
        ("serve", 5),
        ("release", 4),
        ("proxy", 4),
        ("engine", 3),
        ("policy", 3),
        ("compose", 2),
        ("alarms", 2),
        ("aws", 1),
        ("ipc", 1),
        ("config", 0),
        ("report", 0),
        ("logging", 0),
        ("signature", 0),
        ("memcpy", 0),
    ];

    fn rank(module: &str) -> Option<u8> {
        RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
    }

    /// The modules a file names through `crate::x` or `crate::{x, y}`.
    fn used(text: &str) -> Vec<String> {
        let mut out = vec![];
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => out.extend(top_level_names(group)),
                None => out.push(first_name(rest)),
            }
        }
        out.retain(|n| !n.is_empty());
        out
    }

    fn first_name(path: &str) -> String {
        path.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The first name of each path in a `{...}` group, nested groups skipped over.
    fn top_level_names(group: &str) -> Vec<String> {
        let mut names = vec![first_name(group.trim_start())];
        let mut depth = 0;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => names.push(first_name(group[i + 1..].trim_start())),
                _ => {}
            }
        }
        names
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn modules_only_use_modules_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = vec![];
        files(&src, &mut all);
        let mut wrong = vec![];
        for file in &all {
            let rel = file.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = top.trim_end_matches(".rs");
            if module == "lib" || module == "main" {
                continue;
            }
            let own = rank(module).unwrap_or_else(|| panic!("module {module} has no rank"));
            let text = std::fs::read_to_string(file).unwrap();
            // The engine is the only bollard user: the stages above see Docker through it (its
            // `docker` module re-exports the few container descriptions they read).
            if module != "engine" && text.contains("bollard::") {
                wrong.push(format!("{} uses bollard", rel.display()));
            }
            for used in used(&text) {
                match rank(&used) {
                    Some(r) if used == module || r < own => {}
                    _ => wrong.push(format!("{} uses crate::{used}", rel.display())),
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layering:\n{}",
            wrong.join("\n")
        );
        assert_eq!(
            used("use crate::{a::{B, C}, c};\nx(crate::d::e)"),
            ["a", "c", "d"]
        );
    }
}
