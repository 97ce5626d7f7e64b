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
    /// Send new requests to `backends` (balanced: least in flight), or to the one `backend`;
    /// `release` labels them in the metrics.
    Route {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        backend: Option<SocketAddr>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backends: Vec<SocketAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<String>,
    },
    /// Until the next `route`: requests whose preview header or cookie carries `token` go to
    /// `backends` (the new release, labelled `release`, before the switch); everyone else
    /// stays on the route. The release id alone reaches nothing: without a token no request
    /// reaches the preview by name, and after `until` (Unix seconds) the token reaches nothing
    /// either. With `percent` (a weighted canary), that share of sessions goes there too, each
    /// session sticky by the canary cookie. No backends ends the preview.
    Preview {
        #[serde(default)]
        backends: Vec<SocketAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        release: Option<String>,
        #[serde(default, skip_serializing_if = "is_zero")]
        percent: u8,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<u64>,
    },
    /// The route and the per-backend counters.
    Status,
    /// Wait until nothing is in flight to `backend` (requests and upgraded connections), up to
    /// `timeout_ms` (default 30 s); upgraded connections still open then are closed.
    Drain {
        backend: SocketAddr,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
}

impl Request {
    /// A route to `backends`, labelled `release`.
    pub fn route(backends: &[SocketAddr], release: Option<&str>) -> Request {
        Request::Route {
            backend: None,
            backends: backends.to_vec(),
            release: release.map(str::to_string),
        }
    }
}

/// The answer to `route`: `{"ok":true,"active":[addr,...],"previous":[addr,...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routed {
    pub ok: bool,
    pub active: Vec<SocketAddr>,
    /// The backends that were active before this request (`active` itself on a repeat).
    pub previous: Vec<SocketAddr>,
}

/// The answer to `status`: the route, and per backend what it served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub ok: bool,
    pub active: Vec<SocketAddr>,
    pub previous: Vec<SocketAddr>,
    /// Every backend routed to since the proxy started (or its route was restored).
    pub backends: BTreeMap<SocketAddr, BackendStats>,
    /// The preview's backends and the release a request names to reach them, while one is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Previewed>,
    /// The process that answered (a reload hands over to a new one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The proxy's timeouts and refusals, by kind, since it started.
    #[serde(default, skip_serializing_if = "FaultCounts::is_empty")]
    pub faults: FaultCounts,
}

/// What the proxy cut short or refused, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Request bodies whose client sent nothing for the body timeout (408).
    #[serde(default)]
    pub request_body_timeouts: u64,
    /// Backends that sent no response head within the response timeout (504).
    #[serde(default)]
    pub response_head_timeouts: u64,
    /// Clients that took no response bytes for the send timeout (closed).
    #[serde(default)]
    pub client_write_timeouts: u64,
    /// Backends that took none of a request body for the send timeout (504).
    #[serde(default)]
    pub backend_write_timeouts: u64,
    /// Requests refused before any backend saw them (400, 405, 501).
    #[serde(default)]
    pub refused: u64,
}

impl FaultCounts {
    pub fn is_empty(&self) -> bool {
        *self == FaultCounts::default()
    }
}

/// A preview as the proxy holds it (and answers `preview` with).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previewed {
    pub release: String,
    pub backends: Vec<SocketAddr>,
    /// The share of sessions sent there besides the requests that name it (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub percent: u8,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// The answer to `preview`: the preview now on, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewSet {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Previewed>,
}

/// One backend's counters, as the proxy counted them since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    /// The release the route that named this backend was labelled with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Requests whose response is not fully sent yet, plus open upgraded connections.
    pub inflight: u64,
    /// Requests answered (and upgraded connections closed).
    pub served: u64,
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx (the proxy's own 502s included).
    pub responses: [u64; 5],
    /// Upgraded (WebSocket) connections open now, and in all.
    pub upgraded_open: u64,
    pub upgraded: u64,
    /// Connections to this backend that failed (refused, timed out).
    pub connect_errors: u64,
    /// Time to the response's end, counted per bucket of [`LATENCY_BOUNDS_MS`] (and one more
    /// for slower), with the sum in microseconds. Empty when the proxy runs with `--no-metrics`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub latency: Vec<u64>,
    #[serde(default)]
    pub latency_sum_us: u64,
    /// Out of rotation after a failed connect (until it answers again).
    #[serde(default)]
    pub down: bool,
    /// Answers that were not well-framed HTTP/1.1 (each a 502; the backend stays in rotation).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub bad_responses: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The latency histogram's upper bounds, in milliseconds (Prometheus' `le`).
pub const LATENCY_BOUNDS_MS: [u64; 13] =
    [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

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
    PreviewSet(PreviewSet),
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
                backend: Some(addr("127.0.0.1:32769")),
                backends: vec![],
                release: None,
            }
        );
        let many: Request = serde_json::from_value(
            json!({"op": "route", "backends": ["127.0.0.1:1", "127.0.0.1:2"], "release": "v2"}),
        )
        .unwrap();
        assert_eq!(
            many,
            Request::route(&[addr("127.0.0.1:1"), addr("127.0.0.1:2")], Some("v2"))
        );
        assert_eq!(
            serde_json::to_value(&many).unwrap(),
            json!({"op": "route", "backends": ["127.0.0.1:1", "127.0.0.1:2"], "release": "v2"})
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
        let preview: Request = serde_json::from_value(
            json!({"op": "preview", "backends": ["127.0.0.1:2"], "release": "v2", "token": "t", "until": 9}),
        )
        .unwrap();
        assert_eq!(
            preview,
            Request::Preview {
                backends: vec![addr("127.0.0.1:2")],
                release: Some("v2".into()),
                percent: 0,
                token: Some("t".into()),
                until: Some(9),
            }
        );
        let canary: Request = serde_json::from_value(
            json!({"op": "preview", "backends": ["127.0.0.1:2"], "release": "v2", "percent": 10}),
        )
        .unwrap();
        assert!(matches!(canary, Request::Preview { percent: 10, .. }));
        let end: Request = serde_json::from_value(json!({"op": "preview"})).unwrap();
        assert_eq!(
            end,
            Request::Preview {
                backends: vec![],
                release: None,
                percent: 0,
                token: None,
                until: None,
            }
        );
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
            active: vec![a],
            previous: vec![],
        });
        assert_eq!(
            serde_json::to_value(&routed).unwrap(),
            json!({"ok": true, "active": ["127.0.0.1:32769"], "previous": []})
        );
        let stats = BackendStats {
            release: Some("v1".into()),
            inflight: 2,
            served: 7,
            responses: [0, 7, 0, 0, 0],
            ..BackendStats::default()
        };
        let status = Status {
            ok: true,
            active: vec![a],
            previous: vec![],
            backends: BTreeMap::from([(a, stats)]),
            preview: None,
            pid: None,
            faults: FaultCounts::default(),
        };
        let wire = json!({"ok": true, "active": ["127.0.0.1:32769"], "previous": [],
            "backends": {"127.0.0.1:32769": {"release": "v1", "inflight": 2, "served": 7,
            "responses": [0, 7, 0, 0, 0], "upgraded_open": 0, "upgraded": 0,
            "connect_errors": 0, "latency_sum_us": 0, "down": false}}});
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
