//! The proxy's traffic as the agent's endpoints and `berth status` show it: the proxy's own
//! status, asked with a short timeout (a stuck proxy must not hold a health check or a status
//! request), summed per release.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proxy::metrics::{summarize, ReleaseSummary};
use crate::proxy::protocol::Status;
use crate::proxy::{self, ProxyError};

/// How long the proxy may take to answer `status`.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error("proxy control socket {path}: no answer within {secs}s")]
    Timeout { path: PathBuf, secs: u64 },
}

/// The proxy's status, or why there is none within `timeout`.
pub async fn ask(socket: &Path, timeout: Duration) -> Result<Status, TrafficError> {
    match tokio::time::timeout(timeout, proxy::client::status(socket)).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(TrafficError::Timeout {
            path: socket.to_path_buf(),
            secs: timeout.as_secs(),
        }),
    }
}

/// Per release: requests, 5xx, latency quantiles, in flight, backends, which one is active.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Traffic {
    Releases(Vec<ReleaseSummary>),
    Unreachable { error: String },
}

impl Traffic {
    /// What the proxy at `socket` says, summed per release.
    pub async fn of(socket: &Path) -> Traffic {
        match ask(socket, ASK_TIMEOUT).await {
            Ok(status) => Traffic::Releases(summarize(&status)),
            Err(e) => Traffic::Unreachable {
                error: crate::report::chain(&e),
            },
        }
    }
}

/// The proxy's counts over the last minutes, a sample a second, so that an upgrade can judge
/// the new release against the previous one's recent traffic (the same load, the same noisy
/// neighbours) rather than its whole life.
#[derive(Debug, Clone, Default)]
pub struct Recent(Arc<Mutex<VecDeque<(Instant, Status)>>>);

impl Recent {
    /// Adds a sample taken now, forgetting those older than `keep`.
    pub fn remember(&self, status: Status, keep: Duration) {
        let mut samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > keep)
        {
            samples.pop_front();
        }
        samples.push_back((now, status));
    }

    /// The newest sample at least `ago` old, or the oldest one when none is that old, with
    /// its age.
    pub fn back(&self, ago: Duration) -> Option<(Duration, Status)> {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let pick = samples
            .iter()
            .rev()
            .find(|(at, _)| at.elapsed() >= ago)
            .or_else(|| samples.front())?;
        Some((pick.0.elapsed(), pick.1.clone()))
    }

    /// The oldest sample kept, with its age.
    pub fn oldest(&self) -> Option<(Duration, Status)> {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner());
        samples.front().map(|(at, s)| (at.elapsed(), s.clone()))
    }
}

/// Samples the proxy at `socket` into `recent` every second, for ever (a look it does not
/// answer is skipped).
pub async fn sample(socket: PathBuf, recent: Recent, keep: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Ok(status) = ask(&socket, ASK_TIMEOUT).await {
            recent.remember(status, keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_samples_go_back_as_far_as_asked_or_as_they_reach() {
        let recent = Recent::default();
        assert!(recent.back(Duration::ZERO).is_none());
        recent.remember(Status::default(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(30));
        recent.remember(Status::default(), Duration::from_secs(60));
        let (age, _) = recent.back(Duration::from_millis(20)).unwrap_or_default();
        assert!(age >= Duration::from_millis(30), "{age:?}");
        let (age, _) = recent.back(Duration::ZERO).unwrap_or_default();
        assert!(age < Duration::from_millis(30), "{age:?}");
        // Older than asked for is not there: the oldest one.
        let (age, _) = recent.back(Duration::from_secs(10)).unwrap_or_default();
        assert!(age >= Duration::from_millis(30), "{age:?}");
        // Samples older than `keep` go.
        recent.remember(Status::default(), Duration::from_millis(10));
        assert!(recent.oldest().unwrap_or_default().0 < Duration::from_millis(10));
    }
}
