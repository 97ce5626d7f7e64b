//! The proxy's traffic as the agent's endpoints and `berth status` show it: the proxy's own
//! status, asked with a short timeout (a stuck proxy must not hold a health check or a status
//! request), summed per release.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
