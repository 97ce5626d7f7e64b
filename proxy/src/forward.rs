//! One request, client to backend: the choice of backend and the retry on another, the hold,
//! hop-by-hop and forwarded headers, upgraded (WebSocket) connections, and the response body
//! that keeps the request in flight until it is fully sent.
//! This is the hot path (the proxy is benchmarked against nginx): no work here that a request
//! does not need.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};

use super::h1;
use super::metrics::Faults;
use super::park;
use super::request_body::{Fault, Overdue, RequestBody};
use super::routes::{Backend, InFlight, Routes, Shared, BUCKETS};
use super::upstream::{self, idempotent, SendError, UpstreamBody};

/// What one request needs to know of the proxy's settings.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// A backend that does not accept a connection within this is skipped (and marked down).
    pub(super) connect: Duration,
    /// A request no backend accepted waits this long for a new route (zero: not at all).
    pub(super) hold: Duration,
    /// A backend that has not sent its response head within this gets a 504; `None`: no
    /// limit (long polls).
    pub(super) response: Option<Duration>,
    /// A backend that takes none of a request's body for this, while the body waits on it,
    /// gets a 504 (it stopped reading, and may never answer).
    pub(super) send: Duration,
    /// Peers whose X-Forwarded-* headers are kept; `None`: every peer's (the load balancer is
    /// the only one that reaches the port).
    pub(super) trusted: Option<Vec<ipnet::IpNet>>,
    /// Count responses by status class (`--no-metrics` turns it off).
    pub(super) metrics: bool,
    /// The header, and the cookie, by which a request names the release in preview.
    pub(super) preview_header: HeaderName,
    pub(super) preview_cookie: String,
    /// The cookie that holds a session's canary bucket while a weighted canary runs.
    pub(super) canary_cookie: String,
    /// The proxy's timeouts and refusals, by kind.
    pub(super) faults: Arc<Faults>,
    /// Where a restart parks connections (park.rs), and whether it is doing so now.
    pub(super) lot: Arc<park::Lot>,
    pub(super) parking: tokio::sync::watch::Receiver<bool>,
}

impl Limits {
    /// Counts a response with `status` for `shared`'s backend, when counting.
    fn count(&self, shared: &Shared, status: u16) {
        if self.metrics {
            shared.counters.response(status);
        }
    }

    /// The release `headers` ask to preview: the preview header's value, else the preview
    /// cookie's.
    fn preview_of<'h>(&self, headers: &'h hyper::HeaderMap) -> Option<&'h [u8]> {
        if let Some(v) = headers.get(&self.preview_header) {
            return Some(v.as_bytes());
        }
        cookie(headers, &self.preview_cookie)
    }

    /// The session's canary bucket, from its cookie; a value that is not one is none.
    fn bucket_of(&self, headers: &hyper::HeaderMap) -> Option<u8> {
        let v = cookie(headers, &self.canary_cookie)?;
        let b: u8 = std::str::from_utf8(v).ok()?.parse().ok()?;
        (b < BUCKETS).then_some(b)
    }

    /// The response's cookie that keeps a new session in `bucket`: for the browser's
    /// session, on every path, not for scripts.
    fn bucket_cookie(&self, bucket: u8) -> Option<HeaderValue> {
        let cookie = format!(
            "{}={bucket}; Path=/; HttpOnly; SameSite=Lax",
            self.canary_cookie
        );
        HeaderValue::from_str(&cookie).ok()
    }

    fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&peer)))
    }
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie<'h>(headers: &'h hyper::HeaderMap, name: &str) -> Option<&'h [u8]> {
    let name = name.as_bytes();
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let (k, v) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
            (k == name).then(|| &v[1..])
        })
}

/// A request body as sent upstream: the client's, or none (a bodiless request is rebuilt with
/// an empty one, so that it can be sent again to another backend).
pub(super) type UpBody = Either<RequestBody, Empty<Bytes>>;

/// A response body that keeps its request in flight until it is
/// fully sent, or dropped.
pub(super) struct ProxyBody {
    kind: Kind,
    inflight: Option<InFlight>,
}

enum Kind {
    Upstream(UpstreamBody),
    /// No answer yet: the request waits for it on this connection, parked by a restart
    /// (park.rs), with the canary bucket its answer's cookie names.
    Parked(Box<upstream::Conn>, Option<u8>),
    /// A `101 Switching Protocols`: the backend's connection, for the tunnel.
    Switched(Box<Switched>),
    /// The proxy's own answer, or a small upstream body read whole before answering.
    Whole(Full<Bytes>),
}

/// A response body's error (downstream.rs closes the connection on it).
type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyBody {
    /// A backend's response body, its request in flight until it is sent.
    fn upstream(body: UpstreamBody, inflight: InFlight) -> ProxyBody {
        ProxyBody {
            kind: Kind::Upstream(body),
            inflight: Some(inflight),
        }
    }

    /// A backend's small response body, read whole, its request in flight until it is sent.
    fn whole(body: Bytes, inflight: InFlight) -> ProxyBody {
        ProxyBody {
            kind: Kind::Whole(Full::new(body)),
            inflight: Some(inflight),
        }
    }

    fn done(&mut self) {
        if let Some(mut f) = self.inflight.take() {
            f.finish();
        }
    }

    /// The answer to a request a restart parks while it waits for it: no response yet.
    fn parked(conn: Box<upstream::Conn>, bucket: Option<u8>) -> Response<ProxyBody> {
        Response::new(ProxyBody {
            kind: Kind::Parked(conn, bucket),
            inflight: None,
        })
    }

    /// The tunnel of a `101 Switching Protocols`; `Err(self)` for any other body.
    pub(super) fn take_switched(self) -> Result<Box<Switched>, ProxyBody> {
        match self.kind {
            Kind::Switched(tunnel) => Ok(tunnel),
            kind => Err(ProxyBody { kind, ..self }),
        }
    }

    /// The backend connection of a request parked while it waits for its answer, and the
    /// canary bucket; `Err(self)` for any other body.
    pub(super) fn take_parked(
        self,
    ) -> Result<(tokio::net::TcpStream, SocketAddr, Option<u8>), ProxyBody> {
        match self.kind {
            Kind::Parked(conn, bucket) => {
                let (stream, backend) = conn.into_parts();
                Ok((stream, backend, bucket))
            }
            kind => Err(ProxyBody { kind, ..self }),
        }
    }

    /// A backend's body with nothing of it buffered here, taken apart for a restart to park
    /// (park.rs): its connection, backend, where it is, and whether the connection is kept.
    /// No longer in flight here: the next proxy counts it.
    pub(super) fn park(
        mut self,
    ) -> Result<(tokio::net::TcpStream, SocketAddr, park::BodyAt, bool), ProxyBody> {
        let kind = std::mem::replace(&mut self.kind, Kind::Whole(Full::new(Bytes::new())));
        match kind {
            Kind::Upstream(body) => match body.park() {
                Ok(parked) => Ok(parked),
                Err(body) => {
                    self.kind = Kind::Upstream(body);
                    Err(self)
                }
            },
            other => {
                self.kind = other;
                Err(self)
            }
        }
    }
}

/// The rest of a body a restart parked (park.rs), in flight to `addr` until it is sent.
pub(super) fn resumed_body(
    routes: &Routes,
    backend: tokio::net::TcpStream,
    addr: SocketAddr,
    at: park::BodyAt,
    keep: bool,
) -> ProxyBody {
    let inflight = InFlight::start(&routes.resumed(addr), None);
    ProxyBody::upstream(UpstreamBody::resume(backend, addr, at, keep), inflight)
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Kind::Parked(..) | Kind::Switched(_) => Poll::Ready(None),
            Kind::Whole(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never: Infallible| match never {}),
        };
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Parked(..) | Kind::Switched(_) => true,
            Kind::Whole(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Parked(..) | Kind::Switched(_) => SizeHint::with_exact(0),
            Kind::Whole(full) => full.size_hint(),
        }
    }
}

/// A response the proxy makes itself (503 without a route, 502 when the backend fails).
fn local(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody {
        kind: Kind::Whole(Full::new(Bytes::from_static(text.as_bytes()))),
        inflight: None,
    });
    *resp.status_mut() = code;
    resp
}

/// [`local`], and the connection closes after it: the request's body (if it has one) was not
/// read, and what is left of it must not be taken for the next request.
fn local_closing(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = local(code, text);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A request this hop refuses (RFC 9112), with its status and why, before anything is sent
/// (its framing was checked as it was read, downstream.rs). The connection closes after the
/// answer.
fn refusal(req: &Request<UpBody>) -> Option<(StatusCode, &'static str)> {
    if req.method() == Method::CONNECT {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not proxied\n"));
    }
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && req.version() != Version::HTTP_10) {
        return Some((StatusCode::BAD_REQUEST, "one Host header is required\n"));
    }
    None
}

/// The hop-by-hop headers (h1.rs keeps the one list) as header names, in its order.
const HOP_BY_HOP: [HeaderName; 7] = [
    HeaderName::from_static(h1::HOP_BY_HOP[0]),
    HeaderName::from_static(h1::HOP_BY_HOP[1]),
    HeaderName::from_static(h1::HOP_BY_HOP[2]),
    HeaderName::from_static(h1::HOP_BY_HOP[3]),
    HeaderName::from_static(h1::HOP_BY_HOP[4]),
    HeaderName::from_static(h1::HOP_BY_HOP[5]),
    HeaderName::from_static(h1::HOP_BY_HOP[6]),
];

/// Headers a Connection header cannot make hop-by-hop: the message's target and framing, and
/// the forwarded headers this hop has already decided on.
const NOT_HOP_BY_HOP: [&str; 6] = [
    "host",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-port",
    "forwarded",
];

/// Which of the headers the proxy rewrites a message has, found in one pass over its names.
/// A lookup per header name instead hashes the name each time: about twenty per request,
/// measurable against nginx on this, the hot path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Present {
    /// A bit per [`HOP_BY_HOP`] entry.
    hop: u8,
    /// X-Forwarded-For, -Proto, -Port, Forwarded.
    forwarded: [bool; 4],
}

impl Present {
    fn of(headers: &hyper::HeaderMap) -> Present {
        let mut p = Present::default();
        for name in headers.keys() {
            match name.as_str() {
                "x-forwarded-for" => p.forwarded[0] = true,
                "x-forwarded-proto" => p.forwarded[1] = true,
                "x-forwarded-port" => p.forwarded[2] = true,
                "forwarded" => p.forwarded[3] = true,
                _ => {
                    if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                        p.hop |= 1 << i;
                    }
                }
            }
        }
        p
    }

    fn connection(&self) -> bool {
        self.hop & 1 != 0
    }
}

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    strip_present(headers, Present::of(headers));
}

/// Removes the hop-by-hop headers `present` found, and those the Connection header names.
fn strip_present(headers: &mut hyper::HeaderMap, present: Present) {
    if present.hop == 0 {
        return;
    }
    if present.connection() {
        // Mostly `keep-alive`: only names not removed below anyway are made and looked up.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|n| {
                !n.is_empty()
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| n.eq_ignore_ascii_case(h.as_str()))
                    && !NOT_HOP_BY_HOP.iter().any(|h| n.eq_ignore_ascii_case(h))
            })
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for h in named {
            headers.remove(h);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present.hop & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// The protocol a request asks to switch to (`Connection: upgrade` with `Upgrade: x`).
fn upgrade_of(headers: &hyper::HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// X-Forwarded-For gets the peer appended; X-Forwarded-Proto and -Port are kept when a
/// trusted peer (the load balancer: its HTTPS listener sends `https`) set them, and set to
/// this hop's otherwise. From an untrusted peer, none of them is believed. `present` says
/// which of them (and Forwarded) `headers` has ([`Present`]).
fn set_forwarded(headers: &mut hyper::HeaderMap, client: &Client, mut present: [bool; 4]) {
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFPORT: HeaderName = HeaderName::from_static("x-forwarded-port");
    if !client.trusted {
        for (h, there) in [&XFF, &XFP, &XFPORT, &header::FORWARDED]
            .into_iter()
            .zip(&mut present)
        {
            if std::mem::take(there) {
                headers.remove(h);
            }
        }
    }
    let [xff, xfp, xfport, _] = present;
    // Every X-Forwarded-For line counts, in order (one list, RFC 9110 section 5.3): the last
    // hops are the ones the app may trust, and the first line is the client's own.
    let appended = xff
        .then(|| {
            let mut all = String::new();
            for v in headers.get_all(&XFF) {
                all.push_str(v.to_str().ok()?);
                all.push_str(", ");
            }
            all.push_str(&client.peer.ip().to_string());
            HeaderValue::from_str(&all).ok()
        })
        .flatten();
    headers.insert(&XFF, appended.unwrap_or_else(|| client.peer_value.clone()));
    if !xfp {
        headers.insert(&XFP, HeaderValue::from_static("http"));
    }
    if !xfport {
        headers.insert(&XFPORT, client.port_value.clone());
    }
}

/// The backend side of a request: berth's own client (upstream.rs), its connections taken
/// from the worker's idle ones (pool.rs) and given back.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Upstream;

/// Closes this worker's idle backend connections that idled too long (each second, from the
/// worker's own task); how many are left.
pub(super) fn reap_idle() -> usize {
    upstream::Idle.reap()
}

/// Why a request got no response from a backend.
struct Failed {
    error: String,
    /// The connection could not be opened, or broke at once: the backend is not there.
    connect: bool,
    /// Too slow: no response head within the response timeout, or the body not taken
    /// within the send timeout.
    overdue: Option<Overdue>,
    /// The backend answered with a malformed message: it is there (502 at once, no retry).
    bad: bool,
    /// The client's request body failed (400, 408): no backend is to blame.
    client: Fault,
    /// The request when it never left the proxy (it may go to another backend).
    unsent: Option<Request<UpBody>>,
    /// Not failed: a restart parks it, waiting for its answer on this connection (park.rs).
    parked: Option<Box<upstream::Conn>>,
}

impl Failed {
    /// No connection: the request never left, and may go to (or wait for) another backend.
    fn unreachable(error: String, req: Request<UpBody>) -> Failed {
        Failed {
            connect: true,
            unsent: Some(req),
            ..Failed::sent(error)
        }
    }

    fn sent(error: impl std::fmt::Display) -> Failed {
        Failed {
            error: error.to_string(),
            connect: false,
            overdue: None,
            bad: false,
            client: Fault::None,
            unsent: None,
            parked: None,
        }
    }

    fn bad(error: impl std::fmt::Display) -> Failed {
        Failed {
            bad: true,
            ..Failed::sent(error)
        }
    }

    fn timed_out(overdue: Overdue) -> Failed {
        let why = match overdue {
            Overdue::Answer => "no response head in time",
            Overdue::Body => "the backend took none of the request body for the send timeout",
        };
        Failed {
            overdue: Some(overdue),
            ..Failed::sent(why)
        }
    }

    /// Whether the request may go to another backend after this.
    fn retryable(&self) -> bool {
        self.overdue.is_none() && !self.bad && self.client == Fault::None
    }
}

/// `fut` within `limit`, when there is one.
async fn within<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(d) => tokio::time::timeout(d, fut).await.ok(),
        None => Some(fut.await),
    }
}

impl Upstream {
    /// A request without a body, through berth's own client (upstream.rs).
    async fn send_bodiless(
        self,
        backend: SocketAddr,
        req: Request<UpBody>,
        limits: &Limits,
        mut timer: Timer<'_>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        let mut req = req;
        let mut why = String::new();
        // A kept-alive connection the backend has just closed hands the request back unsent:
        // it is retried once on a new connection, so that race never becomes a 502.
        for attempt in 0..2 {
            // The second try, after a reused connection turned out closed, opens a new one.
            let reused = if attempt == 0 {
                upstream::Idle.take(backend)
            } else {
                None
            };
            let fresh = reused.is_none();
            let conn = match reused {
                Some(c) => c,
                // Boxed: most requests reuse a connection.
                None => match Box::pin(upstream::connect(backend, limits.connect)).await {
                    Ok(c) => c,
                    Err(error) => return Err(Failed::unreachable(error, req)),
                },
            };
            // A new connection that breaks before any answer is a backend going away (a killed
            // container's published port still accepts for a moment): a bodiless idempotent
            // request is kept to go elsewhere. Only on new connections, which cost a connect
            // anyway.
            let again = if fresh { replayable(&req) } else { None };
            let (parts, empty) = req.into_parts();
            let lot = Some(&*limits.lot);
            // Within the response timeout: on the connection's timer when lent one (the send
            // made in place in each arm, so that the request's future holds it once).
            let answer = match (limits.response, timer.as_mut()) {
                (Some(limit), Some(timer)) => {
                    timer.as_mut().reset(tokio::time::Instant::now() + limit);
                    tokio::select! {
                        biased;
                        sent = conn.send(parts, upstream::Idle, !fresh, lot) => Some(sent),
                        () = timer.as_mut() => None,
                    }
                }
                // Its own timer, boxed: its kilobyte does not weigh on every request's future.
                (limit, _) => {
                    let sent = conn.send(parts, upstream::Idle, !fresh, lot);
                    Box::pin(within(limit, sent)).await
                }
            };
            match answer {
                Some(Ok(resp)) => return Ok(resp),
                Some(Err(SendError::Parked(conn))) => {
                    return Err(Failed {
                        parked: Some(conn),
                        ..Failed::sent("parked for the next proxy")
                    })
                }
                Some(Err(SendError::Unsent(parts, _, error))) => {
                    (req, why) = (Request::from_parts(*parts, empty), error);
                }
                Some(Err(SendError::Sent(error))) => {
                    return Err(Failed {
                        connect: fresh,
                        unsent: again.as_ref().map(rebuild),
                        ..Failed::sent(error)
                    })
                }
                Some(Err(SendError::Bad(error))) => return Err(Failed::bad(error)),
                None => return Err(Failed::timed_out(Overdue::Answer)),
            }
        }
        // Closed at once on a new connection too: the backend is going away (a container being
        // killed). The request never left: it may wait for, or go to, another backend.
        Err(Failed::unreachable(
            format!("the backend closed the connection twice ({why})"),
            req,
        ))
    }

    /// A request with a body: sent as the client's side reads it (request_body.rs), the
    /// response timeout counted from its end.
    async fn send_with_body(
        self,
        backend: SocketAddr,
        parts: Parts,
        body: RequestBody,
        limits: &Limits,
    ) -> Result<Response<UpstreamBody>, Failed> {
        let (mut parts, mut body) = (parts, body);
        let mut why = String::new();
        // A kept-alive connection the backend has just closed (busybox httpd closes after every
        // response) hands the request back unsent: it is retried once on a new connection, so
        // that race never becomes a 502.
        for attempt in 0..2 {
            let reused = if attempt == 0 {
                upstream::Idle.take(backend)
            } else {
                None
            };
            let fresh = reused.is_none();
            let conn = match reused {
                Some(c) => c,
                None => match upstream::connect(backend, limits.connect).await {
                    Ok(c) => c,
                    Err(error) => {
                        let req = Request::from_parts(parts, Either::Left(body));
                        return Err(Failed::unreachable(error, req));
                    }
                },
            };
            let progress = body.progress();
            // The backend's send timeout counts from here: not the connect, nor a hold.
            progress.moved();
            let send = conn.send_body(parts, body, upstream::Idle, Some(&*limits.lot));
            let result = tokio::select! {
                r = send => Ok(r),
                overdue = progress.backend_overdue(limits.send, limits.response) => Err(overdue),
            };
            let error = match result {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(SendError::Unsent(p, Some(b), error))) => {
                    (parts, body, why) = (*p, b, error);
                    continue;
                }
                Ok(Err(SendError::Bad(error))) => return Err(Failed::bad(error)),
                Ok(Err(SendError::Sent(error) | SendError::Unsent(_, None, error))) => error,
                Ok(Err(SendError::Parked(conn))) => {
                    return Err(Failed {
                        parked: Some(conn),
                        ..Failed::sent("parked for the next proxy")
                    })
                }
                Err(overdue) => return Err(Failed::timed_out(overdue)),
            };
            let client = progress.fault();
            if client != Fault::None {
                return Err(Failed {
                    client,
                    ..Failed::sent(error)
                });
            }
            // A new connection that breaks before any answer: the backend is going (a killed
            // container's port still accepts for a moment).
            return Err(Failed {
                connect: fresh,
                ..Failed::sent(error)
            });
        }
        // Closed at once on a new connection too: the backend is going away (a container being
        // killed). The request never left: it may wait for, or go to, another backend.
        let req = Request::from_parts(parts, Either::Left(body));
        Err(Failed::unreachable(
            format!("the backend closed the connection twice ({why})"),
            req,
        ))
    }
}

/// What forward needs of the client connection, worked out once per connection.
pub(super) struct Client {
    peer: SocketAddr,
    /// Whether its X-Forwarded-* headers are believed.
    trusted: bool,
    /// The peer's address, and the port it connected to, as header values.
    peer_value: HeaderValue,
    port_value: HeaderValue,
}

impl Client {
    pub(super) fn new(peer: SocketAddr, port: u16, limits: &Limits) -> Client {
        Client {
            peer,
            trusted: limits.trusts(peer.ip()),
            peer_value: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            port_value: HeaderValue::from(port),
        }
    }
}

/// While a request is held (no backend took it), how often the routed backends are tried
/// again: a replica restarting on its own address is back in well under a second, and waiting
/// for the next route alone would keep the request for the whole hold.
const RETRY: Duration = Duration::from_millis(200);

/// A client connection's timer, lent to its request for the response head's deadline (no
/// timer of its own per request: a tokio `Sleep` is a kilobyte of the request's future, and
/// registered and removed in the timer wheel each time); `None`: the request makes its own.
pub(super) type Timer<'a> = Option<Pin<&'a mut tokio::time::Sleep>>;

/// Sends `req` from `client` to a backend of the route and returns its response.
pub(super) async fn forward(
    routes: &Routes,
    limits: &Limits,
    client: &Client,
    mut req: Request<UpBody>,
    mut timer: Timer<'_>,
) -> Response<ProxyBody> {
    let started = routes.timed.then(Instant::now);
    // A bodiless idempotent request can go to another replica if its backend fails.
    let bodiless = match req.body() {
        Either::Left(body) => body.is_end_stream(),
        Either::Right(_) => true,
    };
    if let Some((code, why)) = refusal(&req) {
        limits.faults.refused();
        return local_closing(code, why);
    }
    // A local answer to a request whose body was not read closes the connection after it.
    let answer = if bodiless { local } else { local_closing };
    let (pool, bucket) = if routes.previewing() {
        let headers = req.headers();
        routes.for_request(limits.preview_of(headers), limits.bucket_of(headers))
    } else {
        (routes.current(), None)
    };
    let Some(pool) = pool else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "no backend\n");
    };
    // Origin-form (`/path?query`), as a server expects from a client; some (busybox httpd)
    // refuse the absolute form.
    let uri = req.uri();
    if uri.scheme().is_some() || uri.authority().is_some() || uri.path_and_query().is_none() {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    let present = Present::of(req.headers());
    // Only WebSocket is tunnelled; any other Upgrade (h2c) is dropped with the hop-by-hop
    // headers, and the request is answered as HTTP/1.1.
    let upgrade = present
        .connection()
        .then(|| upgrade_of(req.headers()))
        .flatten()
        .filter(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let headers = req.headers_mut();
    strip_present(headers, present);
    set_forwarded(headers, client, present.forwarded);
    if let Some(protocol) = upgrade {
        let Some(backend) = pool.pick(None) else {
            return local(StatusCode::SERVICE_UNAVAILABLE, "no backend\n");
        };
        // Boxed: as above.
        return Box::pin(tunnel(backend, limits, req, protocol)).await;
    }

    // The client's Host passes through (the app sees the name it was called by); an HTTP/1.0
    // request without one gets the backend's.
    let no_host = !req.headers().contains_key(header::HOST);
    // A body's chunked framing was this hop's (removed above): berth's client frames it
    // anew, chunked when it has no Content-Length.
    if bodiless {
        *req.body_mut() = Either::Right(Empty::new());
    }
    *req.version_mut() = Version::HTTP_11;
    let replay = (pool.len() > 1).then(|| replayable(&req)).flatten();
    let mut pending = Some(req);
    let mut last: Option<(Failed, Arc<Shared>)> = None;
    let mut pool = pool;
    let mut hold_until: Option<Instant> = None;
    loop {
        let mut avoid = None;
        for _ in 0..pool.len().min(3) {
            let Some(mut req) = pending.take() else {
                break;
            };
            let Some(at) = pool.pick_at(avoid) else {
                pending = Some(req);
                break;
            };
            let backend = &pool.backends[at];
            if no_host {
                if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            let inflight = InFlight::of(&pool, at, started);
            let sent = if matches!(req.body(), Either::Left(_)) {
                let (parts, body) = req.into_parts();
                let Either::Left(body) = body else {
                    unreachable!("matched above")
                };
                // Boxed: the rarer path's state does not weigh on every request's future.
                Box::pin(Upstream.send_with_body(backend.addr, parts, body, limits))
                    .await
                    .map(Answer::Streamed)
            } else {
                let timer = timer.as_mut().map(|t| t.as_mut());
                Upstream
                    .send_bodiless(backend.addr, req, limits, timer)
                    .await
                    .map(Answer::Streamed)
            };
            // A small answer to a request that can go elsewhere is read whole first: a replica
            // killed between its head and its body then costs a retry, not the client's answer.
            let sent = match sent {
                Ok(Answer::Streamed(resp)) if replay.is_some() && small(resp.headers()) => {
                    let (parts, body) = resp.into_parts();
                    match body.collect().await {
                        Ok(whole) => Ok(Answer::Whole(parts, whole.to_bytes())),
                        Err(e) => Err(Failed::sent(format!("the response body broke: {e}"))),
                    }
                }
                other => other,
            };
            match sent {
                Ok(answer) => {
                    let (mut parts, body, hop_free) = match answer {
                        Answer::Streamed(resp) => {
                            let (parts, body) = resp.into_parts();
                            let hop_free = body.hop_free();
                            (parts, ProxyBody::upstream(body, inflight), hop_free)
                        }
                        Answer::Whole(parts, bytes) => {
                            (parts, ProxyBody::whole(bytes, inflight), false)
                        }
                    };
                    deliver(&mut parts, hop_free, bucket, limits, &backend.shared);
                    return Response::from_parts(parts, body);
                }
                Err(mut failed) => {
                    inflight.abandon();
                    if let Some(conn) = failed.parked.take() {
                        return ProxyBody::parked(conn, bucket);
                    }
                    if failed.connect {
                        backend.shared.counters.connect_error();
                    }
                    if failed.client == Fault::None {
                        tracing::warn!(backend = %backend.addr, error = %failed.error, "upstream request failed");
                    } else {
                        tracing::info!(peer = %client.peer, error = %failed.error, "the client's request body failed");
                    }
                    // Unsent, it may go anywhere; sent, only a bodiless idempotent one is sent
                    // again.
                    pending = failed
                        .unsent
                        .take()
                        .or_else(|| replay.as_ref().filter(|_| failed.retryable()).map(rebuild));
                    last = Some((failed, backend.shared.clone()));
                    if pending.is_none() {
                        break;
                    }
                    avoid = Some(backend.addr);
                }
            }
        }
        // No backend took it and it can still be sent: the replicas are being restarted, on
        // their addresses or on new ones the agent routes in a moment. Held up to the hold,
        // tried again every RETRY and at once on a new route, it is served instead of a 502.
        let unreachable = last.as_ref().is_some_and(|(f, _)| f.connect);
        if pending.is_none() || !unreachable || limits.hold.is_zero() {
            break;
        }
        let until = *hold_until.get_or_insert_with(|| Instant::now() + limits.hold);
        let now = Instant::now();
        if now >= until {
            break;
        }
        if let Some(next) = routes.rerouted(&pool, RETRY.min(until - now)).await {
            pool = next;
        }
    }
    let Some((failed, shared)) = last else {
        return answer(StatusCode::BAD_GATEWAY, "bad gateway\n");
    };
    match failed.client {
        Fault::Malformed => {
            return local_closing(StatusCode::BAD_REQUEST, "bad request body\n");
        }
        Fault::Stalled => {
            limits.faults.request_body.fetch_add(1, Ordering::Relaxed);
            return local_closing(StatusCode::REQUEST_TIMEOUT, "request body timeout\n");
        }
        Fault::None => {}
    }
    if let Some(overdue) = failed.overdue {
        let kind = match overdue {
            Overdue::Answer => &limits.faults.response_head,
            Overdue::Body => &limits.faults.backend_write,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        limits.count(&shared, 504);
        return answer(StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n");
    }
    if failed.bad {
        shared.counters.bad_response();
    }
    limits.count(&shared, 502);
    answer(StatusCode::BAD_GATEWAY, "bad gateway\n")
}

/// A backend's answer head made ready for the client: the hop-by-hop headers upstream.rs did
/// not leave out (see its `Head`) removed, the canary's cookie added, its status counted.
fn deliver(
    parts: &mut hyper::http::response::Parts,
    hop_free: bool,
    bucket: Option<u8>,
    limits: &Limits,
    shared: &Shared,
) {
    if !hop_free {
        strip_hop_by_hop(&mut parts.headers);
    }
    if let Some(cookie) = bucket.and_then(|b| limits.bucket_cookie(b)) {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    limits.count(shared, parts.status.as_u16());
}

/// The answer to a request a restart parked before any of it came (park.rs), read from its
/// backend connection, within the response timeout (counted again from here).
pub(super) async fn resume_awaiting(
    routes: &Routes,
    limits: &Limits,
    backend: tokio::net::TcpStream,
    at: &park::Awaiting,
) -> Response<ProxyBody> {
    let shared = routes.resumed(at.backend);
    let inflight = InFlight::start(&shared, routes.timed.then(Instant::now));
    let method = if at.head { Method::HEAD } else { Method::GET };
    let conn = upstream::Conn::resumed(backend, at.backend);
    match within(limits.response, conn.resume_answer(&method, upstream::Idle)).await {
        Some(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            let hop_free = body.hop_free();
            deliver(&mut parts, hop_free, at.bucket, limits, &shared);
            Response::from_parts(parts, ProxyBody::upstream(body, inflight))
        }
        Some(Err(SendError::Parked(conn))) => ProxyBody::parked(conn, at.bucket),
        failed => {
            inflight.abandon();
            let (code, text) = match failed {
                None => {
                    limits.faults.response_head.fetch_add(1, Ordering::Relaxed);
                    (StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n")
                }
                Some(Err(SendError::Bad(_))) => {
                    shared.counters.bad_response();
                    (StatusCode::BAD_GATEWAY, "bad gateway\n")
                }
                Some(_) => (StatusCode::BAD_GATEWAY, "bad gateway\n"),
            };
            tracing::warn!(backend = %at.backend, status = code.as_u16(), "the answer to a request taken back after a restart failed");
            limits.count(&shared, code.as_u16());
            local(code, text)
        }
    }
}

/// A backend's answer: streamed to the client as it comes, or already read whole.
enum Answer {
    Streamed(Response<UpstreamBody>),
    Whole(hyper::http::response::Parts, Bytes),
}

/// Response bodies up to this size (by `Content-Length`) are read whole before answering a
/// request that could be sent again (see forward).
const WHOLE_CAP: u64 = 64 * 1024;

/// Whether a response declares a body small enough to read whole (streams and chunked bodies
/// declare none, and flow through as they come).
fn small(headers: &hyper::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= WHOLE_CAP)
}

/// The head of a bodiless idempotent request, to send it again; None for any other.
fn replayable(req: &Request<UpBody>) -> Option<Request<()>> {
    if !matches!(req.body(), Either::Right(_)) || !idempotent(req.method()) {
        return None;
    }
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// A bodiless request again, from its saved head.
fn rebuild(copy: &Request<()>) -> Request<UpBody> {
    let mut r = Request::new(Either::Right(Empty::new()));
    *r.method_mut() = copy.method().clone();
    *r.uri_mut() = copy.uri().clone();
    *r.version_mut() = copy.version();
    *r.headers_mut() = copy.headers().clone();
    r
}

/// An upgrade request (WebSocket): sent on a connection of its own; on `101 Switching
/// Protocols` the answer's body holds that connection ([`Switched`]), and the client's
/// connection, once the 101 is written, relays bytes both ways ([`run_switched`]) until either
/// side closes, a drain gives up on the backend, or the proxy stops. Counted in flight
/// meanwhile.
async fn tunnel(
    backend: &Backend,
    limits: &Limits,
    mut req: Request<UpBody>,
    protocol: HeaderValue,
) -> Response<ProxyBody> {
    let headers = req.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
    if !headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
            headers.insert(header::HOST, v);
        }
    }
    let shared = backend.shared.clone();
    let failed = |error: String| {
        limits.count(&shared, 502);
        tracing::warn!(backend = %backend.addr, %error, "upstream upgrade failed");
        local(StatusCode::BAD_GATEWAY, "bad gateway\n")
    };
    let conn = match upstream::connect(backend.addr, limits.connect).await {
        Ok(conn) => conn,
        Err(error) => {
            shared.counters.connect_error();
            return failed(error);
        }
    };
    let inflight = InFlight::start(&shared, None);
    let (parts, _) = req.into_parts();
    let resp = match within(limits.response, conn.send_upgrade(parts)).await {
        Some(Ok(resp)) => resp,
        Some(Err(e)) => {
            let error = match e {
                SendError::Bad(e) | SendError::Sent(e) | SendError::Unsent(_, _, e) => e,
                SendError::Parked(_) => "parked".into(),
            };
            return failed(error);
        }
        None => return failed("no response head in time".into()),
    };
    limits.count(&shared, resp.status().as_u16());
    let (mut parts, body) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        // Not switching: an ordinary answer.
        if !body.hop_free() {
            strip_hop_by_hop(&mut parts.headers);
        }
        return Response::from_parts(parts, ProxyBody::upstream(body, inflight));
    }
    let accepted = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = accepted {
        parts.headers.insert(header::UPGRADE, p);
    }
    let Some((stream, ahead)) = body.switched() else {
        return failed("a 101 without its connection".into());
    };
    let switched = Switched {
        backend: stream,
        to_client: ahead.freeze(),
        shared,
        inflight,
        addr: backend.addr,
    };
    Response::from_parts(
        parts,
        ProxyBody {
            kind: Kind::Switched(Box::new(switched)),
            inflight: None,
        },
    )
}

/// A backend connection that switched protocols, for the client's connection to join.
pub(super) struct Switched {
    backend: tokio::net::TcpStream,
    /// What the backend sent after its 101.
    to_client: Bytes,
    shared: Arc<Shared>,
    inflight: InFlight,
    addr: SocketAddr,
}

/// Once one side of a tunnel has closed, how long the other may still send before the tunnel
/// closes: a WebSocket has no use for half a connection, and a peer that never closes its
/// side would otherwise hold the tunnel (and its count in flight) for good.
const HALF_CLOSED: Duration = Duration::from_secs(5);

/// What a tunnel needs to be parked by a restart (park.rs).
struct Restart {
    lot: Arc<park::Lot>,
    parking: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Switched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switched")
            .field("backend", &self.addr)
            .finish()
    }
}

/// Relays the tunnel a `101 Switching Protocols` opened, between the client's connection
/// (`to_backend`: what it sent after its request) and the backend's.
pub(super) async fn run_switched(
    client: tokio::net::TcpStream,
    to_backend: Bytes,
    switched: Switched,
    limits: &Limits,
) {
    let Switched {
        backend,
        to_client,
        shared,
        inflight,
        addr,
    } = switched;
    let restart = Restart {
        lot: limits.lot.clone(),
        parking: limits.parking.clone(),
    };
    let pending = Pending {
        to_backend,
        to_client,
    };
    run_tunnel(client, backend, pending, shared, inflight, addr, restart).await;
}

/// Bytes read from one side of a tunnel and not yet written to the other.
struct Pending {
    to_backend: Bytes,
    to_client: Bytes,
}

/// A tunnel a restart parked (park.rs), joined again.
pub(super) async fn resume_tunnel(
    client: tokio::net::TcpStream,
    backend: tokio::net::TcpStream,
    addr: SocketAddr,
    routes: &Routes,
    limits: &Limits,
) {
    let shared = routes.resumed(addr);
    let inflight = InFlight::start(&shared, None);
    let restart = Restart {
        lot: limits.lot.clone(),
        parking: limits.parking.clone(),
    };
    let pending = Pending {
        to_backend: Bytes::new(),
        to_client: Bytes::new(),
    };
    run_tunnel(client, backend, pending, shared, inflight, addr, restart).await;
}

/// Relays a tunnel until it ends, a drain cuts it, or a restart parks it.
async fn run_tunnel(
    client: tokio::net::TcpStream,
    backend: tokio::net::TcpStream,
    pending: Pending,
    shared: Arc<Shared>,
    inflight: InFlight,
    addr: SocketAddr,
    restart: Restart,
) {
    let cut = shared.cut.notified();
    tokio::pin!(cut);
    cut.as_mut().enable();
    shared.counters.upgrade_opened();
    let relayed = relay(
        client,
        backend,
        pending,
        cut,
        restart.parking.clone(),
        HALF_CLOSED,
    )
    .await;
    shared.counters.upgrade_closed();
    drop(inflight);
    match relayed {
        Relayed::Done => {}
        Relayed::Cut => {
            tracing::info!(backend = %addr, "upgraded connection closed: its backend is drained")
        }
        Relayed::Parked(client, backend) => {
            if let Err(e) =
                restart
                    .lot
                    .park(park::Kind::Tunnel { backend: addr }, client, Some(backend))
            {
                tracing::warn!(backend = %addr, error = %e, "an upgraded connection could not be parked: closed");
            }
        }
    }
}

/// How a relay ended.
enum Relayed {
    /// Both sides closed (or one did, and the other within [`HALF_CLOSED`]), or one failed.
    Done,
    /// A drain gave up on its backend.
    Cut,
    /// A restart: nothing read is left unsent; the sockets, to be parked.
    Parked(tokio::net::TcpStream, tokio::net::TcpStream),
}

/// How one direction of a relay ended.
#[derive(Debug, PartialEq, Eq)]
enum Piped {
    /// Its reader closed; its writer was shut down.
    Ended,
    Failed,
    /// A restart, at a point where all it read was written.
    Parked,
}

/// Copies one direction until its reader closes or a restart parks it (never between a read
/// and its write). By hand rather than tokio's `copy`, whose buffer a restart could not see.
async fn pipe(
    from: &mut tokio::net::tcp::ReadHalf<'_>,
    to: &mut tokio::net::tcp::WriteHalf<'_>,
    pending: Bytes,
    mut parking: tokio::sync::watch::Receiver<bool>,
) -> Piped {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !pending.is_empty() && to.write_all(&pending).await.is_err() {
        return Piped::Failed;
    }
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        buf.clear();
        tokio::select! {
            biased;
            () = parked(&mut parking) => return Piped::Parked,
            read = from.read_buf(&mut buf) => match read {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return Piped::Ended;
                }
                Ok(_) => {
                    if to.write_all(&buf).await.is_err() {
                        return Piped::Failed;
                    }
                }
                Err(_) => return Piped::Failed,
            },
        }
    }
}

/// Once a restart parks connections.
async fn parked(parking: &mut tokio::sync::watch::Receiver<bool>) {
    if parking.wait_for(|p| *p).await.is_err() {
        // The proxy's end: nothing will park.
        std::future::pending::<()>().await;
    }
}

/// Relays both ways between `client` and `backend`, `pending` first; once one side closed,
/// the other within `grace`.
async fn relay(
    mut client: tokio::net::TcpStream,
    mut backend: tokio::net::TcpStream,
    pending: Pending,
    cut: Pin<&mut tokio::sync::futures::Notified<'_>>,
    parking: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> Relayed {
    let parked = {
        let (mut cr, mut cw) = client.split();
        let (mut br, mut bw) = backend.split();
        let up = pipe(&mut cr, &mut bw, pending.to_backend, parking.clone());
        let down = pipe(&mut br, &mut cw, pending.to_client, parking);
        tokio::pin!(up, down);
        let both = async {
            let (first, up_first) = tokio::select! {
                a = &mut up => (a, true),
                b = &mut down => (b, false),
            };
            let second = match first {
                Piped::Failed => return false,
                // The other direction parks too, once what it read is written.
                Piped::Parked if up_first => down.await,
                Piped::Parked => up.await,
                // Half a WebSocket: the other side has a grace to finish (or to be parked).
                Piped::Ended if up_first => tokio::time::timeout(grace, down)
                    .await
                    .unwrap_or(Piped::Failed),
                Piped::Ended => tokio::time::timeout(grace, up)
                    .await
                    .unwrap_or(Piped::Failed),
            };
            (first == Piped::Parked || second == Piped::Parked) && second != Piped::Failed
        };
        tokio::select! {
            parked = both => Some(parked),
            () = cut => None,
        }
    };
    match parked {
        None => Relayed::Cut,
        Some(true) => Relayed::Parked(client, backend),
        Some(false) => Relayed::Done,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn forwarded_headers(headers: &mut hyper::HeaderMap, client: &Client) {
        let present = Present::of(headers);
        set_forwarded(headers, client, present.forwarded);
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    /// A connected pair on loopback: (the proxy's end, the peer's end).
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        (l.accept().await.unwrap().0, peer)
    }

    fn nothing_pending() -> Pending {
        Pending {
            to_backend: Bytes::new(),
            to_client: Bytes::new(),
        }
    }

    /// Relays the two proxy ends until it ends; how, once `park` is set.
    fn spawn_relay(
        client: tokio::net::TcpStream,
        backend: tokio::net::TcpStream,
        pending: Pending,
        park: tokio::sync::watch::Receiver<bool>,
        grace: Duration,
    ) -> tokio::task::JoinHandle<Relayed> {
        tokio::spawn(async move {
            let notify = tokio::sync::Notify::new();
            let cut = notify.notified();
            tokio::pin!(cut);
            relay(client, backend, pending, cut, park, grace).await
        })
    }

    #[tokio::test]
    async fn a_tunnel_copies_both_ways_and_closes_soon_after_one_side_did() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (proxy_client, mut client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let (_park, parking) = tokio::sync::watch::channel(false);
        let pending = Pending {
            to_backend: Bytes::from_static(b"early "),
            to_client: Bytes::new(),
        };
        let tunnel = spawn_relay(
            proxy_client,
            proxy_backend,
            pending,
            parking,
            Duration::from_millis(100),
        );
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 10];
        backend.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"early ping", "what was read ahead goes first");
        backend.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf[..4]).await.unwrap();
        assert_eq!(&buf[..4], b"pong");
        // The client goes; the backend never closes its side: the tunnel ends anyway.
        drop(client);
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), tunnel)
            .await
            .expect("the tunnel ends after the grace")
            .unwrap();
        assert!(matches!(ended, Relayed::Done));
        assert!(started.elapsed() >= Duration::from_millis(90));
        assert_eq!(
            backend.read(&mut buf).await.unwrap(),
            0,
            "the backend saw the close"
        );
    }

    #[tokio::test]
    async fn a_parked_tunnel_loses_no_byte_and_goes_on_when_joined_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (proxy_client, mut client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let (park, parking) = tokio::sync::watch::channel(false);
        let grace = Duration::from_secs(5);
        let tunnel = spawn_relay(
            proxy_client,
            proxy_backend,
            nothing_pending(),
            parking,
            grace,
        );
        let mut buf = [0u8; 4];
        client.write_all(b"ping").await.unwrap();
        backend.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        park.send(true).unwrap();
        let parked = tokio::time::timeout(Duration::from_secs(1), tunnel)
            .await
            .expect("a quiet tunnel parks at once")
            .unwrap();
        let Relayed::Parked(proxy_client, proxy_backend) = parked else {
            panic!("not parked");
        };
        // Sent while nobody relays: it waits in the sockets for the next proxy.
        backend.write_all(b"pong").await.unwrap();
        client.write_all(b"more").await.unwrap();
        let (_park, parking) = tokio::sync::watch::channel(false);
        let _tunnel = spawn_relay(
            proxy_client,
            proxy_backend,
            nothing_pending(),
            parking,
            grace,
        );
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        backend.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"more");
    }

    #[test]
    fn one_pass_finds_the_hop_by_hop_and_forwarded_headers() {
        let mut h = hyper::HeaderMap::new();
        h.insert("host", HeaderValue::from_static("app.example"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        assert_eq!(Present::of(&h), Present::default());
        // Nothing to strip: the headers are left as they are.
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);

        h.insert("Upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        let p = Present::of(&h);
        assert_eq!(p.hop, 1 << 6, "upgrade is the seventh");
        assert!(!p.connection());
        assert_eq!(p.forwarded, [false, true, false, true]);

        // A Connection header naming a hop-by-hop header that is absent, and one that is not.
        h.insert(
            "connection",
            HeaderValue::from_static("Upgrade, TE, X-Gone"),
        );
        h.insert("x-gone", HeaderValue::from_static("1"));
        assert!(Present::of(&h).connection());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["forwarded", "host", "x-end-to-end", "x-forwarded-proto"]
        );
    }

    #[test]
    fn a_preview_is_asked_for_by_header_or_cookie() {
        let limits = Limits {
            connect: Duration::from_secs(1),
            hold: Duration::ZERO,
            response: None,
            send: Duration::from_secs(60),
            trusted: None,
            metrics: true,
            preview_header: HeaderName::from_static("x-berth-preview"),
            preview_cookie: "berth-preview".into(),
            canary_cookie: "berth-canary".into(),
            faults: Arc::default(),
            lot: Arc::new(park::Lot::new(None)),
            parking: tokio::sync::watch::channel(false).1,
        };
        let mut h = hyper::HeaderMap::new();
        assert_eq!(limits.preview_of(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("session=1; berth-preview=v2 ;x=y"),
        );
        assert_eq!(limits.preview_of(&h), Some(&b"v2"[..]));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("not-berth-preview=v2; b"),
        );
        assert_eq!(limits.preview_of(&h), None, "a cookie of another name");
        h.insert("x-berth-preview", HeaderValue::from_static("v3"));
        assert_eq!(limits.preview_of(&h), Some(&b"v3"[..]), "the header first");
        // The canary's bucket: a number below 100 in its own cookie, else none.
        for (cookie, bucket) in [
            ("a=1; berth-canary=37", Some(37)),
            ("berth-canary=0", Some(0)),
            ("berth-canary=100", None),
            ("berth-canary=x", None),
            ("berth-preview=37", None),
        ] {
            h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            assert_eq!(limits.bucket_of(&h), bucket, "{cookie}");
        }
        assert_eq!(
            limits.bucket_cookie(7).unwrap(),
            "berth-canary=7; Path=/; HttpOnly; SameSite=Lax"
        );
    }

    #[test]
    fn forwarded_headers_kept_from_the_trusted_and_replaced_from_others() {
        let peer: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        let limits = Limits {
            connect: Duration::from_secs(1),
            hold: Duration::ZERO,
            response: None,
            send: Duration::from_secs(60),
            trusted: Some(vec!["10.0.0.0/8".parse().unwrap()]),
            metrics: true,
            preview_header: HeaderName::from_static("x-berth-preview"),
            preview_cookie: "berth-preview".into(),
            canary_cookie: "berth-canary".into(),
            faults: Arc::default(),
            lot: Arc::new(park::Lot::new(None)),
            parking: tokio::sync::watch::channel(false).1,
        };
        let trusted = Client::new(peer, 8080, &limits);
        let mut h = hyper::HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        forwarded_headers(&mut h, &trusted);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.7");
        assert_eq!(h["x-forwarded-port"], "8080");
        let mut h = hyper::HeaderMap::new();
        forwarded_headers(&mut h, &trusted);
        assert_eq!(h["x-forwarded-for"], "10.0.0.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        let other = Client::new("127.0.0.1:40000".parse().unwrap(), 8080, &limits);
        let mut h = hyper::HeaderMap::new();
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-port", HeaderValue::from_static("443"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        forwarded_headers(&mut h, &other);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-port"], "8080");
    }

    #[test]
    fn only_bodies_declared_small_are_read_whole() {
        let with = |v: &'static str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static(v));
            h
        };
        assert!(small(&with("2")));
        assert!(small(&with("65536")));
        assert!(!small(&with("65537")));
        assert!(!small(&with("many")));
        // Chunked and streamed (SSE) bodies declare no length.
        assert!(!small(&hyper::HeaderMap::new()));
    }

    #[test]
    fn an_upgrade_needs_both_headers() {
        let mut h = hyper::HeaderMap::new();
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_of(&h), None);
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(upgrade_of(&h).unwrap(), "websocket");
    }
}
