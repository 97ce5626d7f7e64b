//! The client side of a request without a body (most are): berth's own HTTP/1.1 server on
//! one client connection. The connection's task reads and parses each request head, hands
//! the request to [`forward`], and writes the response head and body itself, so a request
//! and its answer cost no hand-over between tasks or dispatchers.
//!
//! Why by hand: hyper's server runs its dispatcher and its encoder between the socket and
//! the service, and keeps its own buffers per connection. Under tests/bench/proxy.py's load
//! this path (with the header maps reused, httparse's header array left uninitialized and
//! upstream.rs leaving the hop-by-hop headers out) took the proxy's RSS from 6.0 to 3.2-4.7
//! MiB (nginx's worker: 6.3) and its CPU per request from 1.20x nginx's to 1.02x; under
//! callgrind, 24.3k user-space instructions per request against 31.7k with hyper's server
//! (nginx: 19.0k). The parsing is httparse's (hyper's own parser). A request this path does not take (a body, an upgrade, `Expect`, CONNECT) hands
//! the connection, with what was read of it, to hyper's server for the rest of its life
//! (connection.rs): those are rare, and hyper already does them well.

use std::future::{poll_fn, Future};
use std::io::Write as _;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{Either, Empty};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::activity::Activity;
use super::forward::{forward, resume_awaiting, resumed_body, Client, ProxyBody, UpBody};
use super::park;
use super::state::{Shared, LINGER};
use super::stopping::StopWait;
use super::upstream::{Tokens, KEEP_CAPACITY};

/// Request headers past this many get a 431 (hyper's default).
const MAX_HEADERS: usize = 100;
/// Each read asks for at least this much room.
const READ_SIZE: usize = 4096;
/// X-Forwarded-For, -Proto and -Port, and Host (HTTP/1.0 may come without).
const ADDED_HEADERS: usize = 4;
/// Response bytes gathered before they are written, when more are ready at once.
const WRITE_BATCH: usize = 64 * 1024;

/// How a connection's own path ended.
#[derive(Debug)]
pub(super) enum End {
    /// It is closed (or to be dropped).
    Closed,
    /// The buffered request is one for hyper's server: it serves the connection from here.
    HandOver,
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
}

/// Why no request head came.
enum NoHead {
    /// The connection ends.
    Closed,
    /// The proxy is restarting and nothing of a next request was read: park it.
    Park,
}

/// A parsed request head: the request for [`forward`], and how its answer is framed.
struct Parsed {
    req: Request<UpBody>,
    asked: Asked,
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
    /// A request for hyper's server (see the module's doc).
    Other,
    /// Not a request this server answers: the status, then the connection closes.
    Refused(StatusCode),
}

/// Serves the connection's requests until it closes, or one of them is for hyper's server
/// (`End::HandOver`, the request still in `buf`).
pub(super) async fn serve(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    client: &Client,
    activity: &std::sync::Arc<Activity>,
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
                activity,
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
            let busy = activity.begin();
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
                busy,
            ));
            let end = Box::pin(answer(
                stream,
                buf,
                shared,
                &mut scratch,
                &mut waits,
                fwd,
                asked,
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
            Ok(Head::Other) => return End::HandOver,
            Ok(Head::Refused(code)) => {
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
        let busy = activity.begin();
        let Parsed { req, asked } = parsed;
        let timer = Some(sleep.as_mut());
        // Boxed before it is handed on: the connection's task then keeps no room for a
        // request's state while it waits for the next one (an idle kept-alive connection costs
        // less).
        let fwd = Box::pin(forward(
            &shared.routes,
            &shared.limits,
            client,
            busy,
            req,
            timer,
        ));
        let end = answer(stream, buf, shared, &mut scratch, &mut waits, fwd, asked);
        if let Some(end) = end.await {
            return end;
        }
        // A large answer grew the write buffer: it goes back to a small one. The read buffer
        // is let go between requests (read_more makes it again when the next one comes).
        if scratch.out.capacity() > KEEP_CAPACITY {
            scratch.out = Vec::new();
        }
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
    }
}

/// Waits for `fwd`'s answer and writes it: `None` when the connection takes another request.
/// A restart that parks connections (park.rs) parks this one while the request waits for its
/// answer's head, or once a clean point of its body is reached.
#[allow(clippy::too_many_arguments)]
async fn answer<F: Future<Output = Response<ProxyBody>>>(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    shared: &Shared,
    scratch: &mut Scratch,
    waits: &mut Waits<'_>,
    mut fwd: Pin<Box<F>>,
    asked: Asked,
) -> Option<End> {
    // The client is watched while its request is answered: one that goes away (not a
    // half-close: hyper's server ends those too) cancels the request.
    let resp = loop {
        tokio::select! {
            biased;
            resp = &mut fwd => break resp,
            read = read_more(stream, buf), if buf.len() < shared.timeouts.max_header_bytes => {
                if !matches!(read, Ok(n) if n > 0) {
                    return Some(End::Closed);
                }
            }
            // A restart: the request, polled again, parks while nothing of its answer came.
            () = poll_fn(|cx| waits.stop.poll_stopped(cx)), if !waits.stopped => waits.stopped = true,
        }
    };
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
    let close = asked.close || (shared.stopping.load(Ordering::Relaxed) && !parking(shared));
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
    activity: &std::sync::Arc<Activity>,
    scratch: &mut Scratch,
    waits: &mut Waits<'_>,
    backend: TcpStream,
    at: park::Stream,
) -> Option<End> {
    let busy = activity.begin();
    let body = resumed_body(&shared.routes, backend, at.backend, at.body, at.keep, busy);
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
        buf.reserve(READ_SIZE);
    }
    // tokio's own read: a short read clears the readiness, so the next wait costs no system
    // call that only finds the socket empty.
    poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)).await
}

/// The request head at the start of `buf`, consumed unless it is one for hyper's server;
/// `None` while it is incomplete.
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
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // A body of zero bytes is none.
            if h.value.is_empty() || h.value.iter().any(|b| *b != b'0') {
                return Some(Head::Other);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Some(Head::Other);
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.read(h.value);
        }
    }
    if connection.upgrade {
        return Some(Head::Other);
    }
    let close = !connection.keeps_alive(!http10);
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Some(Head::Refused(StatusCode::BAD_REQUEST));
    };
    if method == Method::CONNECT {
        return Some(Head::Other);
    }
    // The values are slices of one copy of the head, so the read buffer stays whole and is
    // reused without a new allocation.
    let copy = Bytes::copy_from_slice(&buf[..len]);
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
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_maybe_shared(slice(h.value)),
        ) else {
            return Some(Head::Refused(StatusCode::BAD_REQUEST));
        };
        map.append(name, value);
    }
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
    }))
}

/// What [`parse`] made of a head, for the framing tests (framing_fuzz.rs).
#[cfg(test)]
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(super) enum Verdict {
    Plain(Request<UpBody>),
    HandOver,
    Refused(StatusCode),
    Incomplete,
}

#[cfg(test)]
pub(super) fn parse_for_tests(buf: &mut BytesMut, max: usize, spare: &mut HeaderMap) -> Verdict {
    match parse(buf, max, spare) {
        Some(Head::Plain(p)) => Verdict::Plain(p.req),
        Some(Head::Other) => Verdict::HandOver,
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
        out.extend_from_slice(b"0\r\n\r\n");
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
        Framing::Chunked if data.is_empty() => {}
        Framing::Chunked => {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
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
            Some(Head::Other) => panic!("handed over: {text:?}"),
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

    fn handed_over(text: &str) -> bool {
        matches!(parse_text(text).0, Some(Head::Other))
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
    fn requests_with_a_body_or_an_upgrade_go_to_hypers_server() {
        assert!(handed_over(
            "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
        ));
        assert!(handed_over(
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(handed_over(
            "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(handed_over(
            "PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(handed_over("CONNECT a:443 HTTP/1.1\r\n\r\n"));
        // Handed over with the request still in the buffer, for hyper to read.
        let post = "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(&parse_text(post).1[..], post.as_bytes());
        // A declared body of zero bytes is no body.
        assert_eq!(
            plain("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .req
                .method(),
            Method::POST
        );
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
