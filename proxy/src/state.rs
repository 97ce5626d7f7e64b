//! What every client connection of the process shares: the routing table, the forward's
//! limits, the connection timeouts, and the stop. Its own file, below the servers that read
//! it (connection.rs, downstream.rs), so that neither needs the other.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use super::forward::Limits;
use super::routes::Routes;

/// A connection's timeouts and limits.
#[derive(Debug, Clone)]
pub(super) struct Timeouts {
    /// A new connection has this long to send a complete request head.
    pub(super) header: Duration,
    /// A kept-alive connection may wait this long for its next request.
    pub(super) idle: Duration,
    /// Request heads bigger than this get a 431 (at least 8 KiB).
    pub(super) max_header_bytes: usize,
    /// One wait for the client's next request body bytes may last this long (then 408).
    pub(super) body: Duration,
    /// One wait for the client to take response bytes may last this long (then the
    /// connection is closed): a client that stopped reading holds no response for good.
    pub(super) send: Duration,
}

/// After a stop began, an idle kept-alive connection gets this long to send its next request
/// (answered with `Connection: close`) before it is closed.
pub(super) const LINGER: Duration = Duration::from_secs(1);

/// What every connection of the process shares.
pub(super) struct Shared {
    pub(super) routes: Arc<Routes>,
    pub(super) limits: Limits,
    pub(super) timeouts: Timeouts,
    /// Set once SIGTERM arrived (or a reload handed over): responses say `Connection: close`
    /// unless the connection is to be parked, and each connection's wait for the stop
    /// (stopping.rs) reads it.
    pub(super) stopping: AtomicBool,
    /// Client connections open now (the stop waits for them).
    pub(super) open: AtomicU64,
}
