//! `berth proxy`: the small HTTP/1.1 reverse proxy that owns the traffic port (the target
//! group's port) during zero-downtime upgrades. It is its own process (its own systemd unit),
//! so that a crash, SIGKILL or self-upgrade of the agent never drops the listener or cuts a
//! connection; the agent changes its routing table over a local control socket.
//!
//! The route is read per request, so a request arriving on an existing keep-alive connection
//! after a switch goes to the new backend. In-flight requests are counted per backend (until
//! their response body is fully sent), which is what a drain waits on. Each client connection
//! keeps its own upstream connection alive while the route stays the same.
//!
//! Control protocol (one JSON object per line, one answer per line), on a 0600 Unix socket:
//! `{"op":"route","backend":"127.0.0.1:32768"}` switches; `{"op":"status"}` shows the route,
//! in-flight and served counts; `{"op":"drain","backend":"...","timeout_ms":30000}` waits until
//! nothing is in flight to that backend. The requests and answers are typed in [`protocol`].
//!
//! Files, one concept each: `protocol` (the control messages), `routes` (the routing table and
//! its counters), `forward` (one request to the backend), `server` (`run`: listeners, workers,
//! signals, the control socket), `client` (what the agent calls).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ipc::IpcError;

pub mod client;
mod connection;
mod forward;
pub mod metrics;
pub mod protocol;
mod routes;
mod server;

pub use server::{run, Settings};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("proxy control socket {path} (is `berth proxy` running?)")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Nothing listens on the control socket (no socket file, or one a killed proxy left).
    #[error("proxy control socket {path} (is `berth proxy` running?)")]
    NotRunning {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An answer that is not one, or one that refuses (`"ok": false`); `answer` is its JSON.
    #[error("control socket {path}: bad answer: {answer}")]
    Answer {
        path: PathBuf,
        answer: String,
        source: Option<serde_json::Error>,
    },
    /// The proxy cannot serve its control socket (another proxy answers there, or bind fails).
    #[error("proxy control socket")]
    ControlSocket(#[source] IpcError),
}
