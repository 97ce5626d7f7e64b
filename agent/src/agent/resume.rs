//! The agent's own restarts leave the app alone. `systemctl restart berth`, a package upgrade
//! or a crash ends the agent, not what it deployed: the containers, the proxy and its route keep
//! serving. Once holding, the agent records what serves (the release and the containers its
//! last deploy left running) in `<run_dir>/serving.json`. A new agent that finds the record,
//! and every container in it still running, resumes: its health path answers 200 from its
//! first moment, its boot adopts what runs (recreating nothing) and skips the launch hook the
//! previous agent completed. The record lives under `/run`, so a reboot forgets it; leaving
//! or failing removes it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::docker::Engine;
use crate::engine::events::Condition;
use crate::serve::{AgentState, Phase};

/// What the previous agent left serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    pub release: Option<String>,
    /// Ids of the containers the last deploy left running.
    pub containers: Vec<String>,
}

fn path(run_dir: &Path) -> PathBuf {
    run_dir.join("serving.json")
}

/// Records what serves now. A failure only costs the next restart its resume.
pub fn record(run_dir: &Path, serving: &Serving) {
    let written = serde_json::to_vec(serving)
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            crate::release::files::write_private(&path(run_dir), &bytes)
                .map_err(|e| crate::report::chain(&e))
        });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record what serves; the next agent will boot afresh");
    }
}

/// Records what serves when the agent serves (ready), and forgets any record otherwise: after
/// the boot, after each deploy while holding, and when the agent exits on a signal.
pub fn note(state: &AgentState, run_dir: &Path) {
    let status = state.snapshot();
    if status.phase == Phase::Ready {
        let serving = Serving {
            release: status.release,
            containers: status.expected.into_keys().collect(),
        };
        record(run_dir, &serving);
    } else {
        forget(run_dir);
    }
}

/// Forgets the record: nothing this agent left is serving any more.
pub fn forget(run_dir: &Path) {
    match std::fs::remove_file(path(run_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, "cannot remove {}", path(run_dir).display()),
    }
}

/// The previous agent's record, when there is a readable one.
pub fn read(run_dir: &Path) -> Option<Serving> {
    let file = path(run_dir);
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(error = %e, file = %file.display(), "cannot read what the previous agent served; booting afresh");
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, file = %file.display(), "unreadable record of what the previous agent served; booting afresh");
            None
        }
    }
}

/// Whether every recorded container still runs (its healthcheck, where it has one, not failing).
pub async fn still_serving(engine: &Engine, serving: &Serving) -> bool {
    if serving.containers.is_empty() {
        return false;
    }
    for id in &serving.containers {
        match engine.look(id).await {
            // Starting: Docker has not run the healthcheck since berth's own probe passed.
            Ok(Some(look))
                if matches!(look.condition, Condition::Running | Condition::Starting) => {}
            Ok(Some(look)) => {
                tracing::info!(container = %look.name, condition = ?look.condition, "not running as the previous agent left it");
                return false;
            }
            Ok(None) => {
                tracing::info!(container = %id, "gone since the previous agent");
                return false;
            }
            Err(e) => {
                tracing::info!(error = %crate::report::chain(&e), "cannot look at what the previous agent left");
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_record_reads_back_private_and_forgetting_it_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let serving = Serving {
            release: Some("7".into()),
            containers: vec!["abc".into(), "def".into()],
        };
        record(dir.path(), &serving);
        assert_eq!(read(dir.path()), Some(serving));
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        forget(dir.path());
        forget(dir.path());
        assert_eq!(read(dir.path()), None);
    }

    #[test]
    fn an_unreadable_record_means_a_fresh_boot() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), "{not json").unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
