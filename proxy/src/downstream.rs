//! The client side of a request: berth's own HTTP/1.1 server on one client connection. The
//! connection's task reads and parses each request head, decodes its body (if any) into the
//! request's body queue (request_body.rs) as the backend's side takes it, hands the request to
//! [`forward`], writes the response head and body itself, and after a `101 Switching
//! Protocols` relays the tunnel, so a request and its answer cost no hand-over between tasks
//! or dispatchers.
//!
//! Why by hand: hyper's server runs its dispatcher and its encoder between the socket and
//! the service, and keeps its own buffers per connection. Under tests/bench/proxy.py's load
//! this path (with the header maps reused, httparse's header array left uninitialized and
//! upstream.rs leaving the hop-by-hop headers out) took the proxy's RSS from 6.0 to 3.2-4.7
//! MiB (nginx's worker: 6.3) and its CPU per request from 1.20x nginx's to 1.02x; under
//! callgrind, 24.3k user-space instructions per request against 31.7k with hyper's server
//! (nginx: 19.0k). The parsing is httparse's (hyper's own parser); the framing of bodies is
//! h1.rs's, the same for both directions. Requests with a body went through hyper's server
//! and client until berth owned them too: two codecs framed the same message two ways, and
//! a connection hyper held could not be parked by a restart (park.rs).

use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http_body_util::{Either, Empty};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::forward::{forward, resume_awaiting, resumed_body, Client, ProxyBody, Switched, UpBody};
use super::h1::Tokens;
use super::h1::{self, Framing as Framing1, Piece};
use super::park;
use super::pieces;
use super::request_body::{Progress, RequestBody};
use super::state::{Shared, LINGER};
use super::stopping::StopWait;
use super::upstream::KEEP_CAPACITY;

/// Request headers past this many get a 431 (hyper's default).
const MAX_HEADERS: usize = 100;
/// Each read asks for at least this much room.
const READ_SIZE: usize = 4096;
/// Read buffers a worker keeps for its connections' next requests, and the largest kept.
const SPARE_BUFFERS: usize = 64;
const SPARE_CAPACITY: usize = 8 * 1024;

thread_local! {
    /// The read buffers this worker's connections let go between requests. A connection
    /// waiting for its next request holds none (an ALB keeps a thousand idle), and the next
    /// request's read takes one from here rather than from the allocator: a malloc and a free
    /// per request, and, with musl's allocator, an mmap and a munmap every few dozen.
    static SPARE: std::cell::RefCell<Vec<BytesMut>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Lets go of an emptied read buffer: to this worker's spares, unless it grew large or
/// there are enough.
fn let_go(buf: &mut BytesMut) {
    let mut old = std::mem::take(buf);
    old.clear();
    // What was read past is taken back in place. A buffer that cannot be (none was made, or
    // a body's pieces still share it) is not kept.
    if old.try_reclaim(READ_SIZE) && old.capacity() <= SPARE_CAPACITY {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_BUFFERS {
                spare.push(old);
            }
        });
    }
}

/// Makes room for a read in `buf`: in place when it can, else a spare buffer when it holds
/// nothing, else a larger one.
fn make_room(buf: &mut BytesMut) {
    if buf.try_reclaim(READ_SIZE) {
        return;
    }
    if buf.is_empty() {
        if let Some(spare) = SPARE.with_borrow_mut(Vec::pop) {
            *buf = spare;
            return;
        }
    }
    buf.reserve(READ_SIZE);
}

/// X-Forwarded-For, -Proto and -Port, and Host (HTTP/1.0 may come without).
const ADDED_HEADERS: usize = 4;
/// Response bytes gathered before they are written, when more are ready at once.
const WRITE_BATCH: usize = 64 * 1024;

/// How a connection's own path ended.
#[derive(Debug)]
pub(super) enum End {
    /// It is closed (or to be dropped).
    Closed,
    /// A `101 Switching Protocols` was sent: the connection is a tunnel to the backend's from
    /// here, what is left of the read buffer the client's first bytes in it.
    Tunnel(Box<Switched>),
    /// The proxy is restarting and the connection is at a clean point: it is to be parked
    /// (park.rs), with its backend connection when a body is on its way.
    Park(park::Kind, Option<TcpStream>),
}

/// Where a connection starts on this server.
#[derive(Debug)]
pub(super) enum Start {
    /// Just accepted.
    New,
    /// Parked between requests by the proxy before this one (`fresh`: before its first).
    Kept { fresh: bool },
    /// Parked by the proxy before this one while a response body was on its way: the rest of
    /// it first, from `backend`.
    Stream(TcpStream, park::Stream),
    /// Parked by the proxy before this one while its request waited for its answer: that
    /// answer first, from `backend`.
    Awaiting(TcpStream, park::Awaiting),
}

/// How a response went.
enum Sent {
    /// Whole; the connection can take another request (or not).
    Done(bool),
    /// Parked at a clean point of its body (the proxy is restarting).
    Park(park::Kind, TcpStream),
    /// Switched protocols: a tunnel from here.
    Switched(Box<Switched>),
}

/// Why no request head came.
enum NoHead {
    /// The connection ends.
    Closed,
    /// The proxy is restarting and nothing of a next request was read: park it.
    Park,
}

/// A parsed request head: the request for [`forward`], how its answer is framed, and how its
/// body ends (none: no body).
struct Parsed {
    req: Request<UpBody>,
    asked: Asked,
    body: Option<BodyAsked>,
}

/// What a request head says of its body.
#[derive(Debug, Clone, Copy)]
struct BodyAsked {
    framing: Framing1,
    /// `Expect: 100-continue` (HTTP/1.1): the client waits for a 100 before it sends the body.
    expect: bool,
}

/// A request body on its way: decoded from the connection's read buffer into the queue the
/// backend's side reads (request_body.rs).
struct Inbound {
    progress: Arc<Progress>,
    framing: Framing1,
    /// A 100 Continue is owed once the backend's side asks for the body.
    expect: bool,
    /// Decoded to its end: what follows in the buffer is the next request.
    done: bool,
    /// Malformed (the client's fault): nothing more is read of it.
    failed: bool,
}

impl Inbound {
    /// Decodes what the buffer holds of the body into the queue, while it has room.
    fn pump(&mut self, buf: &mut BytesMut, max_trailers: usize) {
        if self.done || self.failed || self.progress.dropped() {
            return;
        }
        while self.progress.has_room() {
            match h1::decode(&mut self.framing, buf, max_trailers) {
                Ok(Piece::Data(data)) => {
                    // The client sent the body without waiting: no 100 is owed.
                    self.expect = false;
                    self.progress.push(data);
                }
                Ok(Piece::End) => {
                    self.done = true;
                    self.progress.complete();
                    return;
                }
                Ok(Piece::More) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "a malformed request body");
                    self.failed = true;
                    self.progress.malformed();
                    return;
                }
            }
        }
    }

    /// Whether more of the body is to be read from the client.
    fn reading(&self) -> bool {
        !self.done && !self.failed && !self.progress.dropped()
    }
}

/// What the request says of its answer's framing.
#[derive(Debug, Clone, Copy)]
struct Asked {
    /// The answer has no body whatever its headers say (RFC 9112 section 6.3).
    head: bool,
    /// The client speaks HTTP/1.0: no chunked answer, and it keeps the connection only when
    /// it asked to.
    http10: bool,
    /// The connection ends after this answer.
    close: bool,
}

/// What a connection keeps between its requests for the capacity.
#[derive(Default)]
struct Scratch {
    /// The answer being written.
    out: Vec<u8>,
    /// The last answer's header map, emptied, for the next request's headers (see
    /// upstream::Conn's `spare`).
    headers: HeaderMap,
}

/// What a request head turned out to be.
// Made and matched once per request, on the stack: boxing the common variant would cost an
// allocation per request to save bytes nobody keeps.
#[allow(clippy::large_enum_variant)]
enum Head {
    Plain(Parsed),
    /// Not a request this server answers: the status, then the connection closes.
    Refused(StatusCode),
}

/// Serves the connection's requests until it closes, switches protocols, or is parked.
pub(super) async fn serve(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    client: &Client,
    start: Start,
) -> End {
    let mut scratch = Scratch::default();
    let mut requests = 0u64;
    // One timer and one stop wait for the connection's life, reset rather than made and
    // dropped per request: an armed timer that is dropped takes the timer wheel's lock. The
    // timer is the request head's deadline between requests, and is lent to the forward for
    // the response head's while one is answered.
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let stopped = shared.stopping.load(Ordering::Acquire);
    let stop = StopWait::new(&shared.stopping);
    let mut waits = Waits { stop, stopped };
    match start {
        Start::New => {}
        Start::Kept { fresh } => requests = u64::from(!fresh),
        // Boxed, as they are rare: an idle connection's task keeps no room for them.
        Start::Stream(backend, at) => {
            requests = 1;
            let resumed = Box::pin(resume_stream(
                stream,
                buf,
                shared,
                &mut scratch,
                &mut waits,
                backend,
                at,
            ));
            if let Some(end) = resumed.await {
                return end;
            }
        }
        Start::Awaiting(backend, at) => {
            requests = 1;
            buf.extend_from_slice(&at.ahead);
            let asked = Asked {
                head: at.head,
                http10: at.http10,
                close: at.close,
            };
            let fwd = Box::pin(resume_awaiting(
                &shared.routes,
                &shared.limits,
                backend,
                &at,
            ));
            let end = Box::pin(answer(
                stream,
                buf,
                shared,
                &mut scratch,
                &mut waits,
                fwd,
                asked,
                None,
            ));
            if let Some(end) = end.await {
                return end;
            }
        }
    }
    loop {
        let parsed = match next_head(
            stream,
            buf,
            &mut scratch.headers,
            shared,
            sleep.as_mut(),
            &mut waits,
            requests,
        )
        .await
        {
            Ok(Head::Plain(p)) => p,
            Ok(Head::Refused(code)) => {
                shared.limits.faults.refused();
                let _ = refuse(stream, &mut scratch.out, code).await;
                return End::Closed;
            }
            Err(NoHead::Closed) => return End::Closed,
            Err(NoHead::Park) => {
                let kind = park::Kind::Idle {
                    fresh: requests == 0,
                };
                return End::Park(kind, None);
            }
        };
        requests += 1;
        let Parsed {
            mut req,
            asked,
            body,
        } = parsed;
        // Boxed: most requests have none.
        let inbound = body.map(|b| {
            let progress = Arc::new(Progress::default());
            *req.body_mut() =
                Either::Left(RequestBody::new(progress.clone(), shared.timeouts.body));
            Box::new(Inbound {
                progress,
                framing: b.framing,
                expect: b.expect,
                done: false,
                failed: false,
            })
        });
        let timer = Some(sleep.as_mut());
        // Boxed before it is handed on: the connection's task then keeps no room for a
        // request's state while it waits for the next one (an idle kept-alive connection costs
        // less).
        let fwd = Box::pin(forward(&shared.routes, &shared.limits, client, req, timer));
        let end = answer(
            stream,
            buf,
            shared,
            &mut scratch,
            &mut waits,
            fwd,
            asked,
            inbound,
        );
        if let Some(end) = end.await {
            return end;
        }
        // A large answer grew the write buffer: it goes back to a small one. The read buffer
        // is let go between requests (read_more takes one again when the next one comes).
        if scratch.out.capacity() > KEEP_CAPACITY {
            scratch.out = Vec::new();
        }
        if buf.is_empty() {
            let_go(buf);
        }
    }
}

/// Waits for `fwd`'s answer and writes it: `None` when the connection takes another request.
/// Meanwhile the request's body (`inbound`) is read from the client as the backend's side
/// takes it. A restart that parks connections (park.rs) parks this one while the request
/// waits for its answer's head, or once a clean point of its body is reached.
#[allow(clippy::too_many_arguments)]
async fn answer<F: Future<Output = Response<ProxyBody>>>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    scratch: &mut Scratch,
    waits: &mut Waits<'_>,
    mut fwd: Pin<Box<F>>,
    asked: Asked,
    mut inbound: Option<Box<Inbound>>,
) -> Option<End> {
    let cap = shared.timeouts.max_header_bytes;
    // The client is watched while its request is answered: one that goes away (not a
    // half-close: hyper's server ends those too) cancels the request.
    let resp = loop {
        if let Some(i) = inbound.as_mut() {
            i.pump(buf, cap);
        }
        let owed = inbound.as_ref().is_some_and(|i| i.expect && i.reading());
        // The queue is full: what the buffer holds of the body waits for room, whether or not
        // the client is read meanwhile.
        let full = inbound
            .as_ref()
            .is_some_and(|i| i.reading() && !i.progress.has_room());
        tokio::select! {
            biased;
            resp = &mut fwd => break resp,
            // The backend's side asks for the body an `Expect: 100-continue` held back.
            () = poll_fn(|cx| match inbound.as_ref() {
                Some(i) => i.progress.poll_wanted(cx),
                None => Poll::Pending,
            }), if owed => {
                if let Some(i) = inbound.as_mut() {
                    i.expect = false;
                }
                if send_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n", shared).await.is_err() {
                    return Some(End::Closed);
                }
            }
            () = poll_fn(|cx| match inbound.as_ref() {
                Some(i) => i.progress.poll_room(cx),
                None => Poll::Pending,
            }), if full => {}
            read = poll_fn(|cx| {
                // The body is read only as fast as the backend's side takes it.
                if let Some(i) = inbound.as_ref().filter(|i| i.reading()) {
                    std::task::ready!(i.progress.poll_room(cx));
                }
                poll_read_more(stream, buf, cx)
            }), if buf.len() < cap => {
                if !matches!(read, Ok(n) if n > 0) {
                    if let Some(i) = inbound.as_ref().filter(|i| i.reading()) {
                        i.progress.malformed();
                    }
                    return Some(End::Closed);
                }
            }
            // A restart: the request, polled again, parks while nothing of its answer came.
            () = poll_fn(|cx| waits.stop.poll_stopped(cx)), if !waits.stopped => waits.stopped = true,
        }
    };
    // A body not read to its end: what is left of it must not be taken for the next request.
    let unread = inbound.as_ref().is_some_and(|i| !i.done);
    drop(inbound);
    let (parts, body) = resp.into_parts();
    let body = match body.take_parked() {
        Ok((backend, addr, bucket)) => {
            let at = park::Awaiting {
                backend: addr,
                head: asked.head,
                http10: asked.http10,
                close: asked.close,
                bucket,
                ahead: buf.to_vec(),
            };
            return Some(End::Park(park::Kind::Awaiting(at), Some(backend)));
        }
        Err(body) => body,
    };
    let resp = Response::from_parts(parts, body);
    // A restart parks the connection after this answer rather than close it.
    let close =
        asked.close || unread || (shared.stopping.load(Ordering::Relaxed) && !parking(shared));
    let sent = respond(stream, buf, shared, scratch, resp, asked, close, waits).await;
    after(stream, sent).await
}

/// The rest of a body the proxy before this one parked (park.rs): `None` when the connection
/// then takes another request.
#[allow(clippy::too_many_arguments)]
async fn resume_stream(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    scratch: &mut Scratch,
    waits: &mut Waits<'_>,
    backend: TcpStream,
    at: park::Stream,
) -> Option<End> {
    let body = resumed_body(&shared.routes, backend, at.backend, at.body, at.keep);
    let framing = match at.sent_as {
        park::SentAs::Length => Framing::Length,
        park::SentAs::Chunked => Framing::Chunked,
        park::SentAs::Close => Framing::Close,
    };
    let sent = send_body(stream, buf, shared, scratch, body, framing, at.close, waits).await;
    after(stream, sent).await
}

/// What follows an answer: `None` when the connection takes another request.
async fn after(stream: &mut TcpStream, sent: Result<Sent, ()>) -> Option<End> {
    match sent {
        Ok(Sent::Done(true)) => None,
        Ok(Sent::Park(kind, backend)) => Some(End::Park(kind, Some(backend))),
        Ok(Sent::Switched(tunnel)) => Some(End::Tunnel(tunnel)),
        Ok(Sent::Done(false)) | Err(()) => {
            let _ = stream.shutdown().await;
            Some(End::Closed)
        }
    }
}

/// Whether the proxy is restarting with its connections parked (park.rs).
fn parking(shared: &Shared) -> bool {
    shared.limits.lot.requested()
}

/// What a connection waits on besides the client and its timer: the proxy's stop.
struct Waits<'a> {
    /// The proxy's stop; not polled again once it came (`stopped`).
    stop: StopWait<'a>,
    stopped: bool,
}

/// Waits for the next complete request head within the connection's timeout: the header
/// timeout on a new connection, the idle one between requests, the linger once the proxy
/// stops. `Err` when the connection ends first.
async fn next_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    spare: &mut HeaderMap,
    shared: &Shared,
    mut sleep: Pin<&mut Sleep>,
    waits: &mut Waits<'_>,
    requests: u64,
) -> Result<Head, NoHead> {
    let t = &shared.timeouts;
    let now = Instant::now();
    let mut deadline = now + if requests == 0 { t.header } else { t.idle };
    if waits.stopped {
        deadline = deadline.min(now + LINGER);
    }
    sleep.as_mut().reset(deadline);
    loop {
        if !buf.is_empty() {
            match parse(buf, t.max_header_bytes, spare) {
                Some(head) => return Ok(head),
                None if buf.len() >= t.max_header_bytes => {
                    return Ok(Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
                }
                None => {}
            }
        } else if waits.stopped && parking(shared) {
            // Nothing of a next request read: the next proxy reads it.
            return Err(NoHead::Park);
        }
        tokio::select! {
            biased;
            read = read_more(stream, buf) => match read {
                Ok(n) if n > 0 => {}
                _ => return Err(NoHead::Closed),
            },
            () = sleep.as_mut() => {
                if requests == 0 && !waits.stopped {
                    tracing::debug!("no request head in time: closed");
                }
                return Err(NoHead::Closed);
            }
            () = poll_fn(|cx| waits.stop.poll_stopped(cx)), if !waits.stopped => {
                waits.stopped = true;
                deadline = deadline.min(Instant::now() + LINGER);
                sleep.as_mut().reset(deadline);
            }
        }
    }
}

/// Reads what the client sent next into `buf`; 0 at its end. Room is made only once the client
/// has sent something: a quiet kept-alive connection (the ALB keeps a thousand) holds no read
/// buffer.
async fn read_more(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < READ_SIZE {
        stream.readable().await?;
        make_room(buf);
    }
    // tokio's own read: a short read clears the readiness, so the next wait costs no system
    // call that only finds the socket empty.
    poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)).await
}

/// [`read_more`] as a poll, with room made at once (a request is in flight).
fn poll_read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    make_room(buf);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// The request head at the start of `buf`, consumed; `None` while it is incomplete.
fn parse(buf: &mut BytesMut, max: usize, spare: &mut HeaderMap) -> Option<Head> {
    // Left uninitialized: httparse writes only the headers it finds, and filling the hundred
    // first cost more than the parse itself.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        }
        Err(_) => return Some(Head::Refused(StatusCode::BAD_REQUEST)),
    };
    if len > max {
        return Some(Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE));
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    let http10 = minor == 0;
    let mut connection = Tokens::default();
    let mut framed = false;
    let mut expect = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            framed = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            // The one expectation there is (RFC 9110 section 10.1.1); HTTP/1.0 ignores it.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Some(Head::Refused(StatusCode::EXPECTATION_FAILED));
            }
            expect = !http10;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.read(h.value);
        }
    }
    let close = !connection.keeps_alive(!http10);
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    // The values are slices of one copy of the head, so the read buffer stays whole and is
    // reused without a new allocation.
    let copy = pieces::copy(&buf[..len]);
    let base = buf.as_ptr() as usize;
    let slice = |s: &[u8]| {
        let at = s.as_ptr() as usize - base;
        copy.slice(at..at + s.len())
    };
    let Ok(uri) = Uri::from_maybe_shared(slice(target.as_bytes())) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    // Room for the X-Forwarded-* the forward adds: a map that grows rehashes every entry.
    let mut map = std::mem::take(spare);
    map.reserve(req.headers.len() + ADDED_HEADERS);
    for h in req.headers.iter() {
        // An HTTP/1.0 client's expectation is ignored (RFC 9110 section 10.1.1); an HTTP/1.1
        // one's goes on, so that the backend may refuse before the body moves (upstream.rs).
        if http10 && h.name.eq_ignore_ascii_case("expect") {
            continue;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_maybe_shared(slice(h.value)),
        ) else {
            return Some(Head::Refused(StatusCode::BAD_REQUEST));
        };
        map.append(name, value);
    }
    let body = if framed {
        match h1::request_framing(&map, http10) {
            Ok(Framing1::Length(0)) => None,
            Ok(framing) => Some(BodyAsked { framing, expect }),
            Err((code, why)) => {
                tracing::debug!(status = code.as_u16(), %why, "a request's framing refused");
                return Some(Head::Refused(code));
            }
        }
    } else {
        None
    };
    buf.advance(len);
    let head = method == Method::HEAD;
    let mut request = Request::new(Either::Right(Empty::new()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = map;
    Some(Head::Plain(Parsed {
        req: request,
        asked: Asked {
            head,
            http10,
            close,
        },
        body,
    }))
}

/// What [`parse`] made of a head, for the framing tests (framing_fuzz.rs): the request and
/// how its body ends (none: no body) and whether it expects a 100.
#[cfg(test)]
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Verdict {
    Plain(Request<UpBody>, Option<(Framing1, bool)>),
    Refused(StatusCode),
    Incomplete,
}

#[cfg(test)]
pub(super) fn parse_for_tests(buf: &mut BytesMut, max: usize, spare: &mut HeaderMap) -> Verdict {
    match parse(buf, max, spare) {
        Some(Head::Plain(p)) => Verdict::Plain(p.req, p.body.map(|b| (b.framing, b.expect))),
        Some(Head::Refused(c)) => Verdict::Refused(c),
        None => Verdict::Incomplete,
    }
}

/// How the answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// None at all (HEAD, 204, 304).
    None,
    /// As it comes, its length declared.
    Length,
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

impl Framing {
    /// `length`: the body's, when known before it is read.
    fn of(req: Asked, status: StatusCode, headers: &HeaderMap, length: Option<u64>) -> Framing {
        if req.head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            Framing::None
        } else if length.is_some() || headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Length
        } else if req.http10 {
            Framing::Close
        } else {
            Framing::Chunked
        }
    }
}

/// Writes `out` whole to the client, each wait for it to take more bytes bounded by the send
/// timeout (counted when it passes). Most writes are taken at once: the timer is made only
/// for a client that is slow to read.
async fn send_all(stream: &mut TcpStream, mut out: &[u8], shared: &Shared) -> Result<(), ()> {
    while !out.is_empty() {
        match stream.try_write(out) {
            Ok(0) => return Err(()),
            Ok(n) => out = &out[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(shared.timeouts.send, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(()),
                    Err(_) => {
                        shared
                            .limits
                            .faults
                            .client_write
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("the client took no response bytes in time: closed");
                        return Err(());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
    Ok(())
}

/// Writes `resp` to the client; `Done(true)` when the connection can take another request.
#[allow(clippy::too_many_arguments)]
async fn respond(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    scratch: &mut Scratch,
    resp: Response<ProxyBody>,
    req: Asked,
    close: bool,
    waits: &mut Waits<'_>,
) -> Result<Sent, ()> {
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return switch(stream, shared, scratch, parts, body).await;
    }
    // The proxy's own answers may ask to close (a request refused, or one whose body was
    // left unread); a backend's Connection header is gone by now (forward.rs).
    let close = close || parts.headers.remove(header::CONNECTION).is_some();
    let status = parts.status;
    let length = body.size_hint().exact();
    let framing = Framing::of(req, status, &parts.headers, length);
    let close = close || framing == Framing::Close;
    let out = &mut scratch.out;
    write_head(
        out,
        status,
        &parts.headers,
        length,
        framing,
        close,
        req.http10,
    );
    scratch.headers = parts.headers;
    scratch.headers.clear();
    send_body(stream, buf, shared, scratch, body, framing, close, waits).await
}

/// Writes a `101 Switching Protocols` (its Connection and Upgrade set by forward.rs): the
/// connection is a tunnel from here.
async fn switch(
    stream: &mut TcpStream,
    shared: &Shared,
    scratch: &mut Scratch,
    parts: hyper::http::response::Parts,
    body: ProxyBody,
) -> Result<Sent, ()> {
    let Ok(tunnel) = body.take_switched() else {
        // Only forward.rs's tunnel answers 101, with the connection in its body.
        tracing::error!("a 101 without its backend connection: closed");
        return Err(());
    };
    let out = &mut scratch.out;
    status_line(out, parts.status);
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    send_all(stream, out, shared).await?;
    out.clear();
    Ok(Sent::Switched(tunnel))
}

/// Writes `body` to the client, framed, after what `scratch.out` holds (its head). Once the
/// proxy is restarting with its connections parked, it stops at the first clean point (all
/// of it that was read is sent, and nothing of the client's next request was read): the
/// next proxy sends the rest.
#[allow(clippy::too_many_arguments)]
async fn send_body(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    scratch: &mut Scratch,
    mut body: ProxyBody,
    framing: Framing,
    close: bool,
    waits: &mut Waits<'_>,
) -> Result<Sent, ()> {
    let cap = shared.timeouts.max_header_bytes;
    let out = &mut scratch.out;
    loop {
        if waits.stopped
            && out.is_empty()
            && buf.is_empty()
            && framing != Framing::None
            && parking(shared)
        {
            body = match body.park() {
                Ok((backend, addr, at, keep)) => {
                    let sent_as = match framing {
                        Framing::Length => park::SentAs::Length,
                        Framing::Close => park::SentAs::Close,
                        _ => park::SentAs::Chunked,
                    };
                    let kind = park::Kind::Stream(park::Stream {
                        backend: addr,
                        body: at,
                        sent_as,
                        keep,
                        close,
                    });
                    return Ok(Sent::Park(kind, backend));
                }
                Err(body) => body,
            };
        }
        if out.len() >= WRITE_BATCH {
            send_all(stream, out, shared).await?;
            out.clear();
        }
        // What is ready joins what is gathered; only a wait for more writes it out first,
        // so a small answer leaves in one write with its head, and a stream's chunks leave as
        // they come.
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        let next = tokio::select! {
            biased;
            next = next => next,
            // The client went away while the backend had nothing to send (a quiet stream).
            read = read_more(stream, buf), if out.is_empty() && buf.len() < cap => match read {
                Ok(n) if n > 0 => continue,
                _ => return Err(()),
            },
            // A restart: park at the top of the loop, if the body can be parked now.
            () = poll_fn(|cx| waits.stop.poll_stopped(cx)), if !waits.stopped => {
                waits.stopped = true;
                continue;
            }
        };
        match next {
            None => {
                send_all(stream, out, shared).await?;
                out.clear();
            }
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    put_data(out, framing, &data);
                }
            }
            Some(Some(Err(e))) => {
                tracing::warn!(error = %e, "the response body broke: the connection is closed");
                if !out.is_empty() {
                    let _ = send_all(stream, out, shared).await;
                    out.clear();
                }
                return Err(());
            }
            Some(None) => break,
        }
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(h1::LAST_CHUNK);
    }
    if !out.is_empty() {
        send_all(stream, out, shared).await?;
        out.clear();
    }
    Ok(Sent::Done(!close))
}

/// `out` emptied, then the status line.
fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The response head into `out`, with the framing and connection headers this hop sets.
fn write_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    framing: Framing,
    close: bool,
    http10: bool,
) {
    status_line(out, status);
    let mut dated = false;
    for (name, value) in headers {
        dated |= name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length if !headers.contains_key(header::CONTENT_LENGTH) => {
            let n = length.unwrap_or(0);
            // Writing to a Vec cannot fail.
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&date());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// One piece of the body into `out`, framed.
fn put_data(out: &mut Vec<u8>, framing: Framing, data: &[u8]) {
    match framing {
        Framing::None => {}
        Framing::Length | Framing::Close => out.extend_from_slice(data),
        Framing::Chunked => h1::encode_chunk(out, data),
    }
}

/// A refusal (400, 431) before the connection closes, as hyper's server answers them.
async fn refuse(stream: &mut TcpStream, out: &mut Vec<u8>, code: StatusCode) -> Result<(), ()> {
    status_line(out, code);
    out.extend_from_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    out.extend_from_slice(&date());
    out.extend_from_slice(b"\r\n\r\n");
    stream.write_all(out).await.map_err(drop)?;
    stream.shutdown().await.map_err(drop)
}

/// Today's HTTP date (`Date` is sent on every answer, RFC 9110 section 6.6.1), made once a
/// second per thread.
fn date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut text = [0u8; 29];
        let made = httpdate::fmt_http_date(now);
        let n = made.len().min(29);
        text[..n].copy_from_slice(&made.as_bytes()[..n]);
        c.set((secs, text));
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 65_536;

    /// Parses `text` as the whole buffer; what is left of it after.
    fn parse_text(text: &str) -> (Option<Head>, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse(&mut buf, MAX, &mut HeaderMap::new());
        (head, buf)
    }

    fn plain(text: &str) -> Parsed {
        match parse_text(text).0 {
            Some(Head::Plain(p)) => p,
            Some(Head::Refused(c)) => panic!("refused with {c}: {text:?}"),
            None => panic!("incomplete: {text:?}"),
        }
    }

    fn refused(text: &str) -> StatusCode {
        match parse_text(text).0 {
            Some(Head::Refused(c)) => c,
            _ => panic!("not refused: {text:?}"),
        }
    }

    #[test]
    fn a_bodiless_request_is_parsed_and_consumed_leaving_the_next() {
        let (head, rest) =
            parse_text("GET /a?b=1 HTTP/1.1\r\nHost: app\r\nX-Id: 7\r\n\r\nGET /next HTTP/1.1\r\n");
        let Some(Head::Plain(p)) = head else {
            panic!("not parsed")
        };
        assert_eq!(p.req.method(), Method::GET);
        assert_eq!(p.req.uri(), "/a?b=1");
        assert_eq!(p.req.version(), Version::HTTP_11);
        assert_eq!(p.req.headers()["host"], "app");
        assert_eq!(p.req.headers()["x-id"], "7");
        assert!(!p.asked.head && !p.asked.http10 && !p.asked.close);
        assert_eq!(&rest[..], b"GET /next HTTP/1.1\r\n");
    }

    #[test]
    fn an_incomplete_head_waits_and_keeps_the_buffer() {
        let (head, rest) = parse_text("GET / HTTP/1.1\r\nHost: a");
        assert!(head.is_none());
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\nHost: a");
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        assert!(plain("GET / HTTP/1.0\r\n\r\n").asked.close);
        let p = plain("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(p.asked.http10 && !p.asked.close);
        assert!(
            plain("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n")
                .asked
                .close
        );
        assert!(
            !plain("GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n")
                .asked
                .close
        );
        // `close` wins, wherever it stands.
        assert!(
            plain("GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n")
                .asked
                .close
        );
        assert!(plain("HEAD / HTTP/1.1\r\n\r\n").asked.head);
    }

    #[test]
    fn a_requests_body_is_framed_by_its_head_and_left_in_the_buffer() {
        let body = |text: &str| plain(text).body.map(|b| (b.framing, b.expect));
        let post = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(body(post), Some((Framing1::Length(3), false)));
        assert_eq!(
            &parse_text(post).1[..],
            b"abc",
            "the body stays to be decoded"
        );
        let chunked = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            body(chunked),
            Some((Framing1::Chunked(h1::Chunk::Size), false))
        );
        // A declared body of zero bytes is no body; an upgrade or CONNECT is forward.rs's.
        assert_eq!(body("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), None);
        assert_eq!(
            body("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
            None
        );
        assert_eq!(
            plain("CONNECT a:443 HTTP/1.1\r\n\r\n").req.method(),
            Method::CONNECT
        );
        // 100-continue: owed by this hop once the body is wanted, and passed on (the backend
        // may refuse first); HTTP/1.0 ignores it.
        let expect = "PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(body(expect), Some((Framing1::Length(2), true)));
        assert!(plain(expect).req.headers().contains_key(header::EXPECT));
        let old = "PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(body(old), Some((Framing1::Length(2), false)));
        assert!(!plain(old).req.headers().contains_key(header::EXPECT));
    }

    #[test]
    fn framing_a_strict_hop_cannot_read_one_way_is_refused() {
        for (text, code) in [
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400),
            ("PUT / HTTP/1.1\r\nExpect: the-moon\r\n\r\n", 417),
        ] {
            assert_eq!(refused(text), code, "{text:?}");
        }
    }

    #[test]
    fn malformed_or_oversized_heads_are_refused() {
        assert_eq!(refused("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), 400);
        assert_eq!(refused("G@T / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nX: a\u{7f}b\r\n\r\n"), 400);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: 0123456789\r\n\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, 20, &mut HeaderMap::new()),
            Some(Head::Refused(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE))
        ));
    }

    #[test]
    fn a_read_buffer_let_go_between_requests_is_the_next_ones_unless_shared_or_large() {
        // A thread of its own: the spares are per thread.
        std::thread::spawn(|| {
            let mut buf = BytesMut::new();
            make_room(&mut buf);
            buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let at = buf.as_ptr();
            buf.advance(buf.len());
            let_go(&mut buf);
            assert_eq!(buf.capacity(), 0, "an idle connection holds no buffer");
            let mut next = BytesMut::new();
            make_room(&mut next);
            assert_eq!(next.as_ptr(), at, "the spare, from its start");
            assert!(next.capacity() >= READ_SIZE);
            // Shared with a body's piece: not kept (the piece still reads it).
            next.extend_from_slice(b"abc");
            let piece = next.split_to(3).freeze();
            let_go(&mut next);
            // Grown past a small one: let go for good.
            let mut large = BytesMut::with_capacity(SPARE_CAPACITY * 2);
            let_go(&mut large);
            let mut other = BytesMut::new();
            make_room(&mut other);
            assert_eq!(other.capacity(), READ_SIZE, "a new buffer: none was kept");
            assert_eq!(&piece[..], b"abc");
        })
        .join()
        .expect("the test's own thread");
    }

    #[test]
    fn the_spare_header_map_is_reused() {
        let mut spare = HeaderMap::with_capacity(32);
        let room = spare.capacity();
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        let Some(Head::Plain(p)) = parse(&mut buf, MAX, &mut spare) else {
            panic!("not parsed")
        };
        assert_eq!(p.req.headers().capacity(), room);
        assert_eq!(p.req.headers().len(), 1);
    }

    fn asked(head: bool, http10: bool) -> Asked {
        Asked {
            head,
            http10,
            close: http10,
        }
    }

    #[test]
    fn framing_follows_the_request_the_status_and_the_length() {
        let none = HeaderMap::new();
        let mut length = HeaderMap::new();
        length.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let ok = StatusCode::OK;
        assert_eq!(
            Framing::of(asked(true, false), ok, &length, None),
            Framing::None
        );
        assert_eq!(
            Framing::of(asked(false, false), StatusCode::NOT_MODIFIED, &none, None),
            Framing::None
        );
        assert_eq!(
            Framing::of(asked(false, false), StatusCode::NO_CONTENT, &none, Some(0)),
            Framing::None
        );
        assert_eq!(
            Framing::of(asked(false, false), ok, &length, None),
            Framing::Length
        );
        assert_eq!(
            Framing::of(asked(false, true), ok, &none, Some(5)),
            Framing::Length
        );
        assert_eq!(
            Framing::of(asked(false, false), ok, &none, None),
            Framing::Chunked
        );
        assert_eq!(
            Framing::of(asked(false, true), ok, &none, None),
            Framing::Close
        );
    }

    fn head_text(
        headers: &HeaderMap,
        length: Option<u64>,
        framing: Framing,
        close: bool,
        http10: bool,
    ) -> String {
        let mut out = Vec::new();
        write_head(
            &mut out,
            StatusCode::OK,
            headers,
            length,
            framing,
            close,
            http10,
        );
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn the_head_sets_this_hops_framing_date_and_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let text = head_text(&h, Some(12), Framing::Length, false, false);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n"),
            "{text}"
        );
        assert!(text.contains("content-length: 12\r\n"), "{text}");
        assert!(text.contains("\r\ndate: "), "{text}");
        assert!(!text.contains("connection"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");

        let chunked = head_text(&h, None, Framing::Chunked, true, false);
        assert!(
            chunked.contains("transfer-encoding: chunked\r\n"),
            "{chunked}"
        );
        assert!(chunked.contains("connection: close\r\n"), "{chunked}");
        assert!(!chunked.contains("content-length"), "{chunked}");

        // An HTTP/1.0 client that asked to keep the connection is told it is kept.
        let kept = head_text(&h, Some(0), Framing::Length, false, true);
        assert!(kept.contains("connection: keep-alive\r\n"), "{kept}");

        // The backend's own Date and Content-Length pass once, not twice.
        h.insert(
            header::DATE,
            HeaderValue::from_static("Thu, 03 Dec 2026 10:00:00 GMT"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let own = head_text(&h, Some(12), Framing::Length, false, false);
        assert_eq!(own.matches("date:").count(), 1, "{own}");
        assert!(
            own.contains("date: Thu, 03 Dec 2026 10:00:00 GMT\r\n"),
            "{own}"
        );
        assert_eq!(own.matches("content-length:").count(), 1, "{own}");
    }

    #[test]
    fn body_data_is_framed_for_the_wire() {
        let mut out = Vec::new();
        put_data(&mut out, Framing::Chunked, b"hello, world");
        put_data(&mut out, Framing::Chunked, b"");
        assert_eq!(out, b"c\r\nhello, world\r\n");
        out.clear();
        put_data(&mut out, Framing::Length, b"abc");
        put_data(&mut out, Framing::Close, b"de");
        assert_eq!(out, b"abcde");
        out.clear();
        put_data(&mut out, Framing::None, b"abc");
        assert!(out.is_empty());
    }

    #[test]
    fn the_date_is_an_http_date() {
        let d = date();
        let text = std::str::from_utf8(&d).expect("ascii");
        assert!(httpdate::parse_http_date(text).is_ok(), "{text}");
    }
}
