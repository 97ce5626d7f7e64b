//! `berth proxy`: the small HTTP/1.1 reverse proxy that owns the traffic port (the target
//! group's port) during zero-downtime upgrades. It is its own process (its own systemd unit,
//! its listening socket held by `berth-proxy.socket`), so that a crash, SIGKILL or self-upgrade
//! of the agent never drops the listener or cuts a connection, and a restart of the proxy
//! itself refuses no connection; the agent changes its routing table over a local control
//! socket.
//!
//! The route is read per request, so a request arriving on an existing keep-alive connection
//! after a switch goes to the new backends. A route names one backend per replica; requests go
//! to the least busy. In-flight requests (and WebSocket tunnels) are counted per backend, which
//! is what a drain waits on, and what the metrics read.
//!
//! Control protocol (one JSON object per line, one answer per line), on a 0600 Unix socket:
//! `{"op":"route","backends":["127.0.0.1:32768"],"release":"v2"}` switches; `{"op":"status"}`
//! shows the route and the per-backend counters; `{"op":"drain","backend":"...",
//! "timeout_ms":30000}` waits until nothing is in flight to that backend. The requests and
//! answers are typed in [`protocol`].
//!
//! Its own crate (the agent uses it as `berth::proxy`), so that the compiler keeps it standing
//! alone: it knows nothing of the agent. `ipc` (JSON lines over a 0600 socket) lives here
//! because the proxy's control socket is built on it; the agent's uses it too.
//!
//! Files, one concept each: `protocol` (the control messages), `routes` (the routing table,
//! its backends and the pick per request), `forward` (one request to a backend, retries,
//! tunnels), `upstream` (the HTTP/1.1 client on the backend side for requests without a
//! body, driven from the request's own task), `pool` (idle backend connections, per worker
//! and backend), `downstream` (the client side of requests without
//! a body: berth's own HTTP/1.1 server, in the connection's task), `connection` (a client
//! connection's timeouts and polite close, and hyper's server for the rest), `metrics`
//! (counters and their readings), `request_body` (a client's body on its way, timed, its
//! faults kept), `pages` (start-up code handed back to the kernel), `server`
//! (`run`: listeners, workers, signals, the control socket), `handover` (a reload: the
//! successor on the same sockets), `client` (what the agent calls).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ipc::IpcError;

pub mod client;
mod connection;
mod downstream;
mod forward;
#[cfg(test)]
mod framing_fuzz;
mod handover;
pub mod ipc;
pub mod metrics;
pub mod pages;
mod pool;
pub mod protocol;
mod request_body;
mod routes;
mod server;
mod upstream;

pub use server::{run, Settings};

// A panic is contained to the connection (the task) it happened on: the other connections,
// their requests in flight and the listener go on. That needs unwinding.
#[cfg(panic = "abort")]
compile_error!("berth's proxy contains panics per connection: build it with panic = \"unwind\"");

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
