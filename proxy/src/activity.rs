//! What the request path tells a connection's watcher: requests being answered, begun, and
//! when it last turned idle (the header and idle timeouts count from there). Below the forward,
//! which holds a [`Busy`] until its response is sent.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::metrics::now_ms;

/// What the request path tells the watcher about a connection.
#[derive(Debug)]
pub(super) struct Activity {
    /// Requests being answered now (0 or 1 on HTTP/1.1).
    pub(super) busy: AtomicU32,
    /// Requests begun on this connection.
    pub(super) requests: AtomicU64,
    /// When it last became idle ([`now_ms`]), or was accepted.
    pub(super) last_ms: AtomicU64,
}

/// A request being answered on a connection; dropped when its response is fully sent.
pub(super) struct Busy(Arc<Activity>);

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            busy: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_ms: AtomicU64::new(now_ms()),
        })
    }

    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(now_ms(), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}
