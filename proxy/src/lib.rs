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
//! Files, one concept each, the imports pointing one way (the layering test below checks
//! it), from the bottom: `protocol` (the control messages), `pool` (idle backend connections,
//! per worker and backend), `h1` (the HTTP/1.1 framing of bodies both ways, the hop-by-hop
//! list), `pieces` (small copies of wire bytes, cut from a block per worker), `metrics`
//! (counters per worker lane, and their readings), `request_body` (a client's body on its
//! way, queued between the two sides, timed, its faults kept),
//! `routes` (the routing table, a worker's copy of it, the pick per request), `upstream` (berth's HTTP/1.1 client: a
//! request and its body out, the answer in), `forward` (one request: checks, pick, retry,
//! hold, tunnels), `state` (what every connection shares), `downstream` (berth's HTTP/1.1
//! server: a request and its body in, the answer out), `connection` (a connection's life),
//! `server` (`run`: listeners, workers, signals, the control socket), `handover` (a reload:
//! the successor on the same sockets), `pages` (start-up code handed back to the kernel),
//! `client` (what the agent calls), `park` (a restart's connections, kept in systemd's store
//! for the next proxy), `stopping` (the stop as a connection waits for it, without a lock
//! shared by the workers).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ipc::IpcError;

pub mod client;
mod connection;
mod downstream;
mod forward;
#[cfg(test)]
mod framing_fuzz;
mod h1;
mod handover;
pub mod ipc;
pub mod metrics;
pub mod pages;
mod park;
mod pieces;
mod pool;
pub mod protocol;
mod request_body;
mod routes;
mod server;
mod state;
mod stopping;
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

/// The layering of the files above, checked: every `super::x` or `crate::x` a file names is a
/// module of a lower rank, so no import cycle can creep in (a file's own tests, which use its
/// items through `super::*`, aside).
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod layering {
    use std::path::Path;

    /// Each module's rank: a module may use only modules of a lower rank. From the bottom:
    /// messages, the framing and counters; the request body and the routing table; the
    /// client side; one request's forward; the connection state; the server side; a
    /// connection's life; the process.
    const RANKS: [(&str, u8); 22] = [
        ("protocol", 0),
        ("stopping", 0),
        ("park", 0),
        ("pages", 0),
        ("ipc", 0),
        ("pool", 0),
        ("h1", 1),
        ("pieces", 0),
        ("metrics", 1),
        ("client", 1),
        ("handover", 1),
        ("request_body", 2),
        ("routes", 2),
        ("upstream", 3),
        ("forward", 4),
        ("state", 5),
        ("downstream", 6),
        ("connection", 7),
        ("framing_fuzz", 7),
        ("server", 8),
        // Items of lib.rs itself (the error type): usable by all.
        ("ProxyError", 0),
        ("Settings", 0),
    ];

    fn rank(module: &str) -> Option<u8> {
        RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
    }

    fn first_name(path: &str) -> String {
        path.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The modules a file names through `super::x`, `crate::x` or a `{x, y}` group of them,
    /// outside its `mod tests`.
    fn used(text: &str) -> Vec<String> {
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
        let text = text
            .split("#[cfg(test)]\n#[allow(clippy::unwrap_used)]\nmod tests")
            .next()
            .unwrap_or(text);
        let mut out = vec![];
        for prefix in ["super::", "crate::"] {
            for (i, _) in text.match_indices(prefix) {
                let rest = &text[i + prefix.len()..];
                match rest.strip_prefix('{') {
                    Some(group) => {
                        let end = group.find('}').unwrap_or(group.len());
                        out.extend(group[..end].split(',').map(|n| first_name(n.trim())));
                    }
                    None => out.push(first_name(rest)),
                }
            }
        }
        out.retain(|n| !n.is_empty());
        out
    }

    #[test]
    fn files_only_use_files_below_them() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut wrong = vec![];
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            if name == "lib" {
                continue; // it declares the modules
            }
            let own = rank(&name).unwrap_or_else(|| panic!("{name}.rs has no rank"));
            for used in used(&std::fs::read_to_string(&path).unwrap()) {
                match rank(&used) {
                    Some(r) if used == name || r < own => {}
                    _ => wrong.push(format!("{name}.rs uses {used}")),
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "imports against the layering:\n{}",
            wrong.join("\n")
        );
        assert_eq!(
            used("use super::{a::B, c};\nx(crate::d::e)\n#[cfg(test)]\nmod tests { super::f }"),
            ["a", "c", "d"]
        );
    }
}
