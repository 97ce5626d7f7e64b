//! The control protocol's messages, typed, shared by the server (`server.rs`) and the client
//! (`client.rs`). The wire format is plain JSON lines that tests and scripts also write by hand,
//! so field names and shapes here are the protocol: change them and those break.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How long a drain waits when the request does not say.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;

/// One request line: `{"op":"route"|"status"|"drain", ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Send new requests to `backend`.
    Route { backend: SocketAddr },
    /// The route and the per-backend counters.
    Status,
    /// Wait until nothing is in flight to `backend`, up to `timeout_ms` (default 30 s).
    Drain {
        backend: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

/// The answer to `route`: `{"ok":true,"active":addr,"previous":addr|null}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub ok: bool,
    pub active: SocketAddr,
    /// The backend that was active before this request (`active` itself on a repeat).
    pub previous: Option<SocketAddr>,
}

/// The answer to `status`: the route, and per backend the requests in flight and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub ok: bool,
    pub active: Option<SocketAddr>,
    pub previous: Option<SocketAddr>,
    pub inflight: BTreeMap<SocketAddr, u64>,
    pub served: BTreeMap<SocketAddr, u64>,
}

/// The answer to `drain`: `ok` when nothing is left in flight to `backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    pub ok: bool,
    pub backend: SocketAddr,
    pub inflight: u64,
}

/// The answer to a line that is not a request: `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub ok: bool,
    pub error: String,
}

/// Any answer, as the server writes it: untagged, so each is its own object on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Routed(Routed),
    Status(Status),
    Drained(Drained),
    Refused(Refused),
}

/// An answer as a client reads it, knowing which request it sent: `T`, or a refusal. (The
/// answers' shapes overlap, so `Answer` itself cannot be read back without the request.)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Reply<T> {
    Done(T),
    Refused(Refused),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn requests_read_as_tests_and_scripts_write_them() {
        let route: Request =
            serde_json::from_value(json!({"op": "route", "backend": "127.0.0.1:32769"})).unwrap();
        assert_eq!(
            route,
            Request::Route {
                backend: addr("127.0.0.1:32769")
            }
        );
        let status: Request = serde_json::from_value(json!({"op": "status"})).unwrap();
        assert_eq!(status, Request::Status);
        let drain: Request =
            serde_json::from_value(json!({"op": "drain", "backend": "127.0.0.1:1"})).unwrap();
        assert_eq!(
            drain,
            Request::Drain {
                backend: addr("127.0.0.1:1"),
                timeout_ms: None
            }
        );
        assert!(serde_json::from_value::<Request>(json!({"op": "route", "backend": "x"})).is_err());
        assert_eq!(
            serde_json::to_value(Request::Drain {
                backend: addr("127.0.0.1:1"),
                timeout_ms: Some(200)
            })
            .unwrap(),
            json!({"op": "drain", "backend": "127.0.0.1:1", "timeout_ms": 200})
        );
    }

    #[test]
    fn answers_have_the_wire_shapes() {
        let a = addr("127.0.0.1:32769");
        let routed = Answer::Routed(Routed {
            ok: true,
            active: a,
            previous: None,
        });
        assert_eq!(
            serde_json::to_value(&routed).unwrap(),
            json!({"ok": true, "active": "127.0.0.1:32769", "previous": null})
        );
        let status = Status {
            ok: true,
            active: Some(a),
            previous: None,
            inflight: BTreeMap::from([(a, 2)]),
            served: BTreeMap::from([(a, 7)]),
        };
        let wire = json!({"ok": true, "active": "127.0.0.1:32769", "previous": null,
            "inflight": {"127.0.0.1:32769": 2}, "served": {"127.0.0.1:32769": 7}});
        assert_eq!(
            serde_json::to_value(Answer::Status(status.clone())).unwrap(),
            wire
        );
        assert_eq!(
            serde_json::from_value::<Reply<Status>>(wire).unwrap(),
            Reply::Done(status)
        );
        assert_eq!(
            serde_json::to_value(Answer::Drained(Drained {
                ok: false,
                backend: a,
                inflight: 1
            }))
            .unwrap(),
            json!({"ok": false, "backend": "127.0.0.1:32769", "inflight": 1})
        );
        let refused = json!({"ok": false, "error": "bad"});
        assert_eq!(
            serde_json::from_value::<Reply<Routed>>(refused.clone()).unwrap(),
            Reply::Refused(Refused {
                ok: false,
                error: "bad".into()
            })
        );
        assert_eq!(
            serde_json::to_value(Answer::Refused(Refused {
                ok: false,
                error: "bad".into()
            }))
            .unwrap(),
            refused
        );
    }
}
