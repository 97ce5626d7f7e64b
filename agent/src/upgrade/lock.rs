//! One upgrade at a time per host: a file lock under the run directory, held by boots,
//! upgrades, rollbacks and the previous release's expiry, in the agent and in-process commands.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use super::UpgradeError;

/// Held while an upgrade, rollback or boot converge runs: one at a time per project, across the
/// agent and in-process commands. The kernel drops the lock with its holder, so a killed berth
/// never leaves it stale.
#[derive(Debug)]
pub struct UpgradeLock {
    _file: File,
}

impl UpgradeLock {
    /// As `acquire`, but a lock held for a moment (the previous release's expiry, a status
    /// look) is waited out for up to `patience` before refusing.
    pub async fn acquire_within(
        run_dir: &Path,
        what: &str,
        patience: Duration,
    ) -> Result<UpgradeLock, UpgradeError> {
        let until = Instant::now() + patience;
        loop {
            match UpgradeLock::acquire(run_dir, what) {
                Err(UpgradeError::Busy { .. }) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub fn acquire(run_dir: &Path, what: &str) -> Result<UpgradeLock, UpgradeError> {
        let path = run_dir.join("upgrade.lock");
        let lock_err = |source| UpgradeError::Lock {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(lock_err)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(UpgradeError::Busy {
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let note = format!("{what}, pid {}, since {}", std::process::id(), unix_now());
        let _ = file.set_len(0);
        let _ = file.write_all(note.as_bytes());
        Ok(UpgradeLock { _file: file })
    }
}

fn unix_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {secs}")
}
