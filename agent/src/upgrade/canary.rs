//! A weighted canary on one instance (`berth upgrade --canary`): before the switch, the proxy
//! sends a share of new sessions to the new release (each session kept on its side by the
//! proxy's canary cookie), stepped up through `upgrade.canary.steps`, each step held for
//! `step_secs`. Through every step both releases serve at once, so the analysis compares them
//! over the same seconds and the same kind of traffic: a fairer baseline than the old
//! release's past. The first failure (a replica unhealthy, or the numbers of [`judge`]) sends
//! every session back to the serving release and removes the new one; passing the last step,
//! the upgrade switches and goes on as any other (watch, bake, drain).

use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use super::analysis::{AlarmLooks, Before, Counts, Looks, Verdict, WatchFailure};
use super::colors::Side;
use super::{UpgradeError, Upgrader};
use crate::proxy;
use crate::serve::traffic;

impl Upgrader<'_> {
    /// Runs the canary of `new` beside `old` through `steps` (percent of sessions).
    pub(super) async fn canary(
        &self,
        new: &Side,
        old: &Side,
        release: &str,
        steps: &[u8],
    ) -> Result<(), UpgradeError> {
        let mut percent = 0;
        let result = async {
            // The counts from here on are the canary's: both sides' before it are not.
            let start = proxy::client::status(self.proxy_socket()).await?;
            let start = (
                Counts::of(&start, &old.backends),
                Counts::of(&start, &new.backends),
            );
            for &step in steps {
                percent = step;
                let set =
                    proxy::client::preview(self.proxy_socket(), &new.backends, Some(release), step, None)
                        .await?;
                // An older proxy ignores the share: it would send no session, and the steps
                // would judge nothing.
                if set.preview.map(|p| p.percent) != Some(step) {
                    return Err(Stop::Error(UpgradeError::Routed {
                        project: self.config.project.clone(),
                        message: format!(
                            "the proxy did not take the canary's {step} % (a berth-proxy older than this berth?)"
                        ),
                    }));
                }
                tracing::info!(
                    release,
                    percent = step,
                    "canary: this share of new sessions goes to the new release"
                );
                self.hold_step(new, old, release, step, &start).await?;
            }
            Ok(())
        }
        .await;
        let reason = match result {
            Ok(()) => return Ok(()),
            Err(Stop::Failed(reason)) => reason,
            Err(Stop::Error(e)) => {
                self.end_canary(new).await?;
                return Err(e);
            }
        };
        self.end_canary(new).await?;
        let previous = old.release.clone().unwrap_or_else(|| old.color.to_string());
        tracing::error!(release, percent, reason = %crate::report::chain(&reason), previous = %previous, "canary failed: its sessions are back on the serving release");
        self.after_rollback(&previous, release, &old.backends).await;
        Err(UpgradeError::CanaryFailed {
            release: release.to_string(),
            percent,
            previous,
            reason,
        })
    }

    /// One step: `step_secs` of looks at the new side's health and both sides' numbers.
    async fn hold_step(
        &self,
        new: &Side,
        old: &Side,
        release: &str,
        percent: u8,
        start: &(Counts, Counts),
    ) -> Result<(), Stop> {
        let limits = &self.config.upgrade.analysis;
        let until = Instant::now() + Duration::from_secs(self.config.upgrade.canary.step_secs);
        // Each step warms up again: its new sessions are new connections.
        let mut looks = Looks::new(limits, start.1.clone());
        let mut alarms = AlarmLooks::new(self.config.upgrade.alarms.check_secs);
        loop {
            try_join_all(new.replicas.iter().map(|r| self.check(&r.id, r.backend)))
                .await
                .map_err(|e| Stop::Failed(WatchFailure::Health(e)))?;
            self.alarm_look(&mut alarms).await.map_err(Stop::Failed)?;
            if limits.enabled {
                // One look the proxy does not answer is not the release's fault.
                if let Ok(status) = traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT).await {
                    let before = Before {
                        baseline: Counts::of(&status, &old.backends).since(&start.0),
                        candidate: Counts::default(),
                        previous: old.release.clone(),
                    };
                    let now = Counts::of(&status, &new.backends);
                    let (candidate, verdict) = looks.look(&before.baseline, &now, false);
                    self.record(release, &before, &candidate, &verdict, false, Some(percent));
                    if let Verdict::Fail(failed) = verdict {
                        return Err(Stop::Failed(WatchFailure::Numbers(failed)));
                    }
                }
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every session back on the serving release, then the new one goes. A proxy that cannot
    /// be told keeps the canary's share, so its side stays up for them: the next look
    /// ([`super::recover`]) ends the canary and removes it.
    async fn end_canary(&self, new: &Side) -> Result<(), UpgradeError> {
        let mut tries = 0;
        while let Err(e) = proxy::client::preview(self.proxy_socket(), &[], None, 0, None).await {
            tries += 1;
            if tries == 3 {
                return Err(e.into());
            }
            tracing::warn!(error = %crate::report::chain(&e), "ending the canary");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if let Err(e) = self.drain(&new.backends).await {
            tracing::warn!(error = %crate::report::chain(&e), "draining the canary");
        }
        self.remove_side(new).await;
        Ok(())
    }
}

/// Why a canary stopped early.
enum Stop {
    /// The release failed: rolled back, with the reason.
    Failed(WatchFailure),
    /// Something else failed (the proxy, Docker).
    Error(UpgradeError),
}

impl<E: Into<UpgradeError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Error(e.into())
    }
}
