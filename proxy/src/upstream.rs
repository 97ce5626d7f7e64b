//! The backend side of a proxied request: berth's own HTTP/1.1 client on one kept-alive
//! connection. The request's future writes the request (and its body, as the client's side
//! reads it) and reads the response head on the socket, and the response body reads the
//! socket when the client's side polls it, so a request and its answer never leave the
//! client connection's task. A `101 Switching Protocols` hands the connection to the tunnel.
//!
//! Why by hand: hyper's client runs each connection as a task of its own, hands the request
//! to it and the response head and each body chunk back through channels, and keeps two
//! fixed 8 KiB buffers per connection; no client crate drives a connection from the caller's
//! task. With this one the proxy's RSS under the benchmark's load (`tests/bench/proxy.sh`, 64
//! connections) went from 7.3 to 7.8 MiB down to 5.6 to 6.0 MiB, below nginx's worker (6.3 to
//! 6.4); its CPU per request moved from 1.30x nginx's to 1.25x, within the machine's noise.
//! The parsing is httparse's (hyper's own parser); the framing of bodies is h1.rs's.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1::{self, Chunk, Framing, Piece, Tokens, HOP_BY_HOP};
use super::park;
use super::pieces;
use super::pool;
use super::request_body::{Progress, RequestBody};

/// A response head bigger than this is refused (hyper's client allowed the same).
const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Response headers past this many are refused (hyper's default).
const MAX_HEADERS: usize = 100;
/// Each read asks for at least this much room.
const READ_SIZE: usize = 4096;
/// Request body bytes gathered behind its head for the first write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a request that expects a 100 waits for the backend's before its body goes.
const CONTINUE_WAIT: Duration = Duration::from_secs(1);
/// A buffer grown past this by a large message is let go once the message is through, so an
/// idle connection holds no more than a few KiB.
pub(super) const KEEP_CAPACITY: usize = 16 * 1024;

/// Why a request got no response head.
#[derive(Debug)]
pub(super) enum SendError {
    /// The request did not reach the backend (its connection was closed under it): it may be
    /// sent again, on another connection. Its head comes back, and its body when it has one.
    Unsent(Box<Parts>, Option<RequestBody>, String),
    /// It may have reached the backend.
    Sent(String),
    /// The backend answered, with something that is not a well-framed HTTP/1.1 response: it
    /// is alive (not to be marked down, nor waited for), and its answer is a 502.
    Bad(String),
    /// The proxy is restarting (park.rs) and no byte of the answer has come: the connection,
    /// for the next proxy to read the answer from.
    Parked(Box<Conn>),
}

/// One kept-alive connection to a backend.
#[derive(Debug)]
pub(super) struct Conn {
    stream: TcpStream,
    pub(super) backend: SocketAddr,
    /// Received and not yet consumed.
    buf: BytesMut,
    /// The request head being written (kept for its capacity).
    out: Vec<u8>,
    /// The last request's header map, emptied: the next response's headers go in it. With
    /// the client side's own spare, no header map is allocated per request; musl's
    /// allocator otherwise maps and unmaps their memory every few dozen requests. Boxed (once
    /// per connection), as the connection travels inside every response body.
    spare: Box<HeaderMap>,
    pub(super) last_used: Instant,
}

thread_local! {
    /// This worker's idle connections (pool.rs).
    static IDLE: RefCell<pool::Idle<Conn>> = RefCell::default();
}

/// The worker's idle connections: a request takes one, and its response body gives it back
/// when read to its end.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Idle;

impl Idle {
    /// The freshest idle connection to `backend` that is still good.
    pub(super) fn take(self, backend: SocketAddr) -> Option<Conn> {
        IDLE.try_with(|i| i.borrow_mut().take(backend))
            .ok()
            .flatten()
    }

    fn put(self, conn: Conn) {
        // At the thread's end the pool is gone: the connection just closes.
        let _ = IDLE.try_with(|i| i.borrow_mut().put(conn));
    }

    /// Closes the connections idle too long; how many are left.
    pub(super) fn reap(self) -> usize {
        IDLE.try_with(|i| i.borrow_mut().reap()).unwrap_or(0)
    }
}

impl pool::Pooled for Conn {
    fn backend(&self) -> SocketAddr {
        self.backend
    }

    fn idle_since(&self) -> Instant {
        self.last_used
    }

    fn usable(&mut self) -> bool {
        !self.closed()
    }
}

/// A TCP connection to `backend` (no Nagle delay), within `limit`; hyper's client links
/// (forward.rs) dial with it too.
pub(super) async fn dial(backend: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    let stream = match tokio::time::timeout(limit, TcpStream::connect(backend)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err(format!("no connection within {} ms", limit.as_millis())),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection to `backend` for [`Conn::send`], within `limit`.
pub(super) async fn connect(backend: SocketAddr, limit: Duration) -> Result<Conn, String> {
    let stream = dial(backend, limit).await?;
    Ok(Conn::new(stream, backend))
}

/// A response head, how its body ends, and whether its connection can carry another request.
/// The head holds no hop-by-hop header but a Connection that names others (`hop_free`
/// false), which forward.rs removes with the headers it names.
struct Head {
    parts: hyper::http::response::Parts,
    framing: Framing,
    keep: bool,
    hop_free: bool,
    /// A 101 to an upgrade request: the connection is the tunnel's from here.
    switched: bool,
}

impl Conn {
    fn new(stream: TcpStream, backend: SocketAddr) -> Conn {
        Conn {
            stream,
            backend,
            buf: BytesMut::new(),
            out: Vec::new(),
            spare: Box::default(),
            last_used: Instant::now(),
        }
    }

    /// Whether this idle connection is no use: the backend closed it (a kept-alive connection
    /// it timed out), or sent something while it was idle (which would be read as the next
    /// answer). A read without waiting tells; with the socket's readiness already cleared by
    /// the last read it makes no system call.
    pub(super) fn closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !matches!(self.poll_read_more(&mut cx), Poll::Pending)
    }

    /// Sends the bodiless request `parts` and reads the response head; the body reads the
    /// rest and gives the connection back to `idle` at its end when it can carry another
    /// request. `reused`: the connection served a request before (so a close before any
    /// answer means it had timed out, not that the backend failed).
    // Not `async fn`s: an async wrapper would hold its arguments beside the inner future
    // (about 350 bytes more in every request's future, copied into its box each time).
    pub(super) fn send<'a>(
        self,
        parts: Parts,
        idle: Idle,
        reused: bool,
        lot: Option<&'a park::Lot>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + 'a {
        self.exchange(parts, idle, reused, lot, false)
    }

    /// Sends an upgrade request (WebSocket), on a connection of its own: a `101 Switching
    /// Protocols` answer's body holds the connection for the tunnel ([`UpstreamBody::switched`]).
    pub(super) fn send_upgrade(
        self,
        parts: Parts,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> {
        self.exchange(parts, Idle, false, None, true)
    }

    async fn exchange(
        mut self,
        parts: Parts,
        idle: Idle,
        reused: bool,
        lot: Option<&park::Lot>,
        upgrade: bool,
    ) -> Result<Response<UpstreamBody>, SendError> {
        self.write_head(&parts, false);
        if let Err(e) = self.stream.write_all(&self.out).await {
            // A head cut short is no request: it can be sent again.
            return Err(SendError::Unsent(
                Box::new(parts),
                None,
                format!("sending the request: {e}"),
            ));
        }
        let head = match self.read_head(&parts.method, upgrade, lot).await {
            Ok(h) => h,
            Err(Closed::Parked) => return Err(SendError::Parked(Box::new(self))),
            Err(Closed::Before(e)) if reused && idempotent(&parts.method) => {
                // A kept-alive connection the backend closed as the request went out: an
                // idempotent request (without a body, as all here are) is sent again.
                return Err(SendError::Unsent(Box::new(parts), None, e));
            }
            Err(Closed::Before(e) | Closed::After(e)) => return Err(SendError::Sent(e)),
            Err(Closed::Malformed(e)) => return Err(SendError::Bad(e)),
        };
        *self.spare = parts.headers;
        self.spare.clear();
        Ok(self.answered(head, idle))
    }

    /// Sends `parts` with the client's `body` (by its Content-Length, else chunked), watching
    /// for the answer meanwhile: a backend may answer (a 413, a 401) before it has read all of
    /// the body. Such an answer stops the sending, and the connection carries no other request
    /// (the client's connection closes after it too, downstream.rs). What of the body is
    /// ready leaves with the head, in one write.
    pub(super) async fn send_body(
        mut self,
        parts: Parts,
        mut body: RequestBody,
        idle: Idle,
        lot: Option<&park::Lot>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let chunked = !parts.headers.contains_key(header::CONTENT_LENGTH);
        let progress = body.progress();
        self.write_head(&parts, chunked);
        let mut head_sent = false;
        if parts.headers.contains_key(header::EXPECT) && !body.ready() {
            // The backend may refuse before the body moves (RFC 9110 section 10.1.1), and the
            // client then never sends it (downstream.rs owes it a 100 only once the body is
            // asked for here).
            if let Err(e) = self.stream.write_all(&self.out).await {
                return Err(SendError::Unsent(
                    Box::new(parts),
                    Some(body),
                    format!("sending the request: {e}"),
                ));
            }
            head_sent = true;
            self.out.clear();
            if let Some(mut head) = self.await_continue(&parts.method).await? {
                drop(body);
                head.keep = false;
                *self.spare = parts.headers;
                self.spare.clear();
                return Ok(self.answered(head, idle));
            }
            // Its wait for the backend's word is not a stall in taking the body.
            progress.moved();
        }
        let mut first = Vec::new();
        let mut ended = false;
        while self.out.len() < WRITE_BATCH {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        put_body(&mut self.out, chunked, &data);
                        first.push(data);
                    }
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Ready(Some(Err(e))) => return Err(SendError::Sent(e.to_string())),
                Poll::Pending => break,
            }
        }
        if ended && chunked {
            self.out.extend_from_slice(h1::LAST_CHUNK);
        }
        let method = &parts.method;
        let mut early = None;
        let mut broken = false;
        match self.send_out(method, &progress).await? {
            Out::Written => {}
            Out::Answered(head) => early = Some(head),
            Out::Broken(e, false) if !head_sent => {
                // Nothing of it was read: it can be sent again, its body with it.
                body.put_back(first);
                return Err(SendError::Unsent(
                    Box::new(parts),
                    Some(body),
                    format!("sending the request: {e}"),
                ));
            }
            // It stopped reading: it may have answered.
            Out::Broken(..) => broken = true,
        }
        drop(first);
        while !ended && !broken && early.is_none() {
            let next = poll_fn(|cx| {
                if let Poll::Ready(read) = self.poll_read_more(cx) {
                    return Poll::Ready(Err(read));
                }
                Pin::new(&mut body).poll_frame(cx).map(Ok)
            })
            .await;
            self.out.clear();
            match next {
                // The backend answers before the body's end (or closes): its head is read
                // below, or it failed.
                Err(Ok(n)) if n > 0 => early = self.early_head(method).map_err(SendError::Bad)?,
                Err(_) => broken = true,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        put_body(&mut self.out, chunked, &data);
                    }
                }
                Ok(None) => {
                    ended = true;
                    if chunked {
                        self.out.extend_from_slice(h1::LAST_CHUNK);
                    }
                }
                Ok(Some(Err(e))) => return Err(SendError::Sent(e.to_string())),
            }
            if !self.out.is_empty() {
                match self.send_out(method, &progress).await? {
                    Out::Written => {}
                    Out::Answered(head) => early = Some(head),
                    Out::Broken(..) => broken = true,
                }
            }
        }
        drop(body);
        // Once all of the body went, a restart may park the wait for the answer (park.rs).
        let lot = lot.filter(|_| ended);
        let early_none = early.is_none();
        let mut head = match early {
            Some(head) => head,
            None => match self.read_head(method, false, lot).await {
                Ok(h) => h,
                Err(Closed::Malformed(e)) => return Err(SendError::Bad(e)),
                Err(Closed::Before(e) | Closed::After(e)) => return Err(SendError::Sent(e)),
                Err(Closed::Parked) => return Err(SendError::Parked(Box::new(self))),
            },
        };
        // Not all of the body went: the backend would read the rest as the next request.
        head.keep &= ended && early_none;
        *self.spare = parts.headers;
        self.spare.clear();
        Ok(self.answered(head, idle))
    }

    /// Waits for the backend's word on an `Expect: 100-continue`: `None` to send the body
    /// (its 100, or [`CONTINUE_WAIT`] of silence from a backend that ignores the
    /// expectation, as curl waits), or its final answer, the body unsent.
    async fn await_continue(&mut self, method: &Method) -> Result<Option<Head>, SendError> {
        let wait = tokio::time::sleep(CONTINUE_WAIT);
        tokio::pin!(wait);
        loop {
            let read = tokio::select! {
                read = poll_fn(|cx| self.poll_read_more(cx)) => read,
                () = &mut wait => return Ok(None),
            };
            match read {
                Ok(0) => {
                    return Err(SendError::Sent(
                        "the backend closed the connection before answering".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(SendError::Sent(format!("reading the response: {e}"))),
            }
            // The 100 (or another interim answer) is consumed: the body goes.
            let before = self.buf.len();
            match self.early_head(method) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) if self.buf.len() < before => return Ok(None),
                Ok(None) => {}
                Err(e) => return Err(SendError::Bad(e)),
            }
        }
    }

    /// Writes `self.out` while watching the backend: a backend that answers (a 413) and stops
    /// reading would otherwise hold the write for good. An interim answer (a 100) is read
    /// and the writing goes on. Each write that goes out tells the body's `progress` (the
    /// backend's send timeout counts from the last).
    async fn send_out(&mut self, method: &Method, progress: &Progress) -> Result<Out, SendError> {
        let mut at = 0;
        loop {
            let step = poll_fn(|cx| loop {
                if let Poll::Ready(read) = self.poll_read_more(cx) {
                    return Poll::Ready(Step::Read(read));
                }
                if at == self.out.len() {
                    return Poll::Ready(Step::Written);
                }
                match Pin::new(&mut self.stream).poll_write(cx, &self.out[at..]) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Step::Failed("wrote nothing".into())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        progress.moved();
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Step::Failed(e.to_string())),
                    Poll::Pending => return Poll::Pending,
                }
            })
            .await;
            match step {
                Step::Written => return Ok(Out::Written),
                Step::Failed(e) => return Ok(Out::Broken(e, at > 0)),
                Step::Read(Ok(n)) if n > 0 => {
                    if let Some(head) = self.early_head(method).map_err(SendError::Bad)? {
                        return Ok(Out::Answered(head));
                    }
                }
                Step::Read(Ok(_)) => return Ok(Out::Broken("the backend closed".into(), at > 0)),
                Step::Read(Err(e)) => return Ok(Out::Broken(e.to_string(), at > 0)),
            }
        }
    }

    /// A final response head among what the backend sent while the body went out (interim
    /// ones skipped); `None` while there is none yet.
    fn early_head(&mut self, method: &Method) -> Result<Option<Head>, String> {
        loop {
            match self.parse_head(method, false)? {
                Some(Some(head)) => return Ok(Some(head)),
                Some(None) => continue,
                None if self.buf.len() >= MAX_HEAD => {
                    return Err(format!("the response head is over {MAX_HEAD} bytes"))
                }
                None => return Ok(None),
            }
        }
    }

    /// The answer to a request the proxy before this one sent and parked on this connection
    /// before any of it came (park.rs).
    pub(super) async fn resume_answer(
        mut self,
        method: &Method,
        idle: Idle,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match self.read_head(method, false, None).await {
            Ok(head) => Ok(self.answered(head, idle)),
            Err(Closed::Malformed(e)) => Err(SendError::Bad(e)),
            Err(Closed::Before(e) | Closed::After(e)) => Err(SendError::Sent(e)),
            Err(Closed::Parked) => Err(SendError::Sent("parked".into())),
        }
    }

    /// A connection a restart parked (park.rs), taken back.
    pub(super) fn resumed(stream: TcpStream, backend: SocketAddr) -> Conn {
        let _ = stream.set_nodelay(true);
        Conn::new(stream, backend)
    }

    /// The socket and its backend (a restart parks them).
    pub(super) fn into_parts(self) -> (TcpStream, SocketAddr) {
        (self.stream, self.backend)
    }

    /// A response with its head read: its body reads the rest.
    fn answered(self, head: Head, idle: Idle) -> Response<UpstreamBody> {
        let switched = head.switched;
        let body = UpstreamBody {
            conn: Some(self),
            framing: head.framing,
            keep: head.keep,
            hop_free: head.hop_free,
            idle,
        };
        let mut resp = Response::from_parts(head.parts, body);
        // A switched connection is the tunnel's, not the pool's.
        if resp.body().finished() && !switched {
            resp.body_mut().done();
        }
        resp
    }

    /// The request head into `self.out`; `chunked`: its body is sent chunked.
    fn write_head(&mut self, parts: &Parts, chunked: bool) {
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in &parts.headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        } else if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
        {
            // A bodiless POST, PUT or PATCH says so, as hyper's client did.
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Reads the response head (skipping 1xx interim responses), and how its body ends;
    /// `upgrade`: the request asked to switch protocols, so a 101 is its answer. With `lot`, a
    /// restart that parks connections stops the wait while nothing has come.
    async fn read_head(
        &mut self,
        method: &Method,
        upgrade: bool,
        lot: Option<&park::Lot>,
    ) -> Result<Head, Closed> {
        let mut received = false;
        loop {
            let parsed = if self.buf.is_empty() {
                None
            } else {
                self.parse_head(method, upgrade)
                    .map_err(Closed::Malformed)?
            };
            if let Some(parsed) = parsed {
                match parsed {
                    Some(head) => return Ok(head),
                    None => continue, // an interim response: the final one follows
                }
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(Closed::Malformed(format!(
                    "the response head is over {MAX_HEAD} bytes"
                )));
            }
            let parkable =
                |c: &Conn| !received && c.buf.is_empty() && lot.is_some_and(|l| l.requested());
            let read = poll_fn(|cx| {
                if parkable(self) {
                    return Poll::Ready(None);
                }
                self.poll_read_more(cx).map(Some)
            })
            .await;
            let Some(read) = read else {
                return Err(Closed::Parked);
            };
            match read {
                Ok(0) if received || !self.buf.is_empty() => {
                    return Err(Closed::After(
                        "the backend closed the connection before the response head's end".into(),
                    ))
                }
                Ok(0) => {
                    return Err(Closed::Before(
                        "the backend closed the connection before answering".into(),
                    ))
                }
                Ok(_) => received = true,
                Err(e) if !received && self.buf.is_empty() => {
                    return Err(Closed::Before(format!("reading the response: {e}")))
                }
                Err(e) => return Err(Closed::After(format!("reading the response: {e}"))),
            }
        }
    }

    /// Parses a response head from the buffer: `None` when it is incomplete, `Some(None)` for
    /// an interim (1xx) response, consumed. A 101 answers only an `upgrade` request.
    fn parse_head(
        &mut self,
        method: &Method,
        upgrade: bool,
    ) -> Result<Option<Option<Head>>, String> {
        // Uninitialized, as in downstream.rs's parse.
        let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &self.buf,
            &mut headers,
        ) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("a bad response head: {e}")),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|e| format!("status {code}: {e}"))?;
        let switched = status == StatusCode::SWITCHING_PROTOCOLS;
        if switched && !upgrade {
            return Err("a 101 to a request that asked for no upgrade".into());
        }
        if status.is_informational() && !switched {
            self.buf.advance(len);
            return Ok(Some(None));
        }
        let http11 = resp.version == Some(1);
        // Copied out (the values are slices of the copy), so the read buffer stays whole and
        // is reused without a new allocation.
        let head = pieces::copy(&self.buf[..len]);
        let base = self.buf.as_ptr() as usize;
        let mut map = std::mem::take(&mut *self.spare);
        map.reserve(resp.headers.len());
        let mut connection = Tokens::default();
        let mut hop_free = true;
        let mut chunked_or_coded = false;
        for h in resp.headers.iter() {
            // The hop-by-hop headers are this hop's: read here (Transfer-Encoding below, by
            // framing) and not passed on. A Connection that names other headers stays, for
            // forward.rs to remove those.
            let n = h.name.as_bytes();
            if n.eq_ignore_ascii_case(b"connection") {
                if connection.read(h.value) {
                    continue;
                }
                hop_free = false;
            } else if HOP_BY_HOP[1..5]
                .iter()
                // A 101's Upgrade names the protocol switched to: forward.rs passes it on.
                .chain(if switched { &[][..] } else { &HOP_BY_HOP[6..] })
                .any(|o| n.eq_ignore_ascii_case(o.as_bytes()))
            {
                continue;
            } else if n.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked_or_coded = true;
            }
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|e| format!("response header {:?}: {e}", h.name))?;
            let at = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(head.slice(at..at + h.value.len()))
                .map_err(|e| format!("response header {}: {e}", h.name))?;
            map.append(name, value);
        }
        self.buf.advance(len);
        // A Transfer-Encoding on HTTP/1.0 is faulty framing: the connection ends after it
        // (RFC 9112 section 6.1).
        let faulty = !http11 && chunked_or_coded;
        let framing = if switched {
            Framing::Length(0)
        } else {
            h1::response_framing(method, status, &mut map)?
        };
        if chunked_or_coded {
            // Read by `framing`; the body leaves this hop framed anew.
            map.remove(header::TRANSFER_ENCODING);
        }
        let keep =
            framing != Framing::Close && !faulty && !switched && connection.keeps_alive(http11);
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = if http11 {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        parts.headers = map;
        Ok(Some(Some(Head {
            parts,
            framing,
            keep,
            hop_free,
            switched,
        })))
    }

    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE {
            self.buf.reserve(READ_SIZE);
        }
        // tokio's own read: a short read clears the readiness, so the next wait costs no
        // system call that only finds the socket empty.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }
}

/// How writing a request's bytes went ([`Conn::send_out`]).
enum Out {
    Written,
    /// The backend answered first.
    Answered(Head),
    /// The connection broke (the backend may still have answered: read what it sent);
    /// whether any of the bytes went.
    Broken(String, bool),
}

/// One step of [`Conn::send_out`].
enum Step {
    Written,
    Read(std::io::Result<usize>),
    Failed(String),
}

/// One piece of a request body into `out`, framed.
fn put_body(out: &mut Vec<u8>, chunked: bool, data: &[u8]) {
    if chunked {
        h1::encode_chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

/// Why no response head came: the connection ended before any of it (`Before`) or partway
/// (`After`), or what came is not one (`Malformed`).
enum Closed {
    Before(String),
    After(String),
    Malformed(String),
    /// Not closed: the proxy is restarting and nothing of the answer came yet.
    Parked,
}

/// Requests that may be sent again once sent (RFC 9110 section 9.2.2): only those are
/// retried after their connection failed.
pub(super) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A backend's response body, read from its connection as hyper's server asks for it.
#[derive(Debug)]
pub(super) struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    /// The connection can carry another request once this body has been read.
    keep: bool,
    /// Its head has no hop-by-hop header left to remove (see [`Head`]).
    hop_free: bool,
    idle: Idle,
}

/// A response body that broke: the backend closed or sent something that is not HTTP.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct BodyError(String);

impl UpstreamBody {
    pub(super) fn hop_free(&self) -> bool {
        self.hop_free
    }

    /// The connection of a `101 Switching Protocols`, and what the backend sent after it:
    /// the tunnel's from here.
    pub(super) fn switched(mut self) -> Option<(TcpStream, BytesMut)> {
        let conn = self.conn.take()?;
        Some((conn.stream, conn.buf))
    }

    fn finished(&self) -> bool {
        self.framing.finished()
    }

    /// The body's end: its connection goes back to the idle ones if it can be used again.
    fn done(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            if self.keep && conn.buf.is_empty() {
                conn.last_used = Instant::now();
                // A large answer grew the buffers: an idle connection keeps small ones.
                if conn.buf.capacity() > KEEP_CAPACITY {
                    conn.buf = BytesMut::new();
                }
                if conn.out.capacity() > KEEP_CAPACITY {
                    conn.out = Vec::new();
                }
                self.idle.put(conn);
            }
        }
    }

    /// The next piece of the body from what the connection has buffered.
    fn next_buffered(&mut self) -> Result<Piece, String> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Piece::End);
        };
        h1::decode(&mut self.framing, &mut conn.buf, MAX_HEAD)
    }
}

impl UpstreamBody {
    /// Where this body is, and its connection, when nothing of it is buffered here: what a
    /// restart parks (park.rs). `Err(self)` while a piece of it is read and not yet taken.
    pub(super) fn park(mut self) -> Result<(TcpStream, SocketAddr, park::BodyAt, bool), Self> {
        let at = match self.framing {
            Framing::Length(n) => park::BodyAt::Length(n),
            Framing::Close => park::BodyAt::Close,
            Framing::Chunked(Chunk::Size) => park::BodyAt::ChunkSize,
            Framing::Chunked(Chunk::Data(n)) => park::BodyAt::ChunkData(n),
            Framing::Chunked(Chunk::DataEnd) => park::BodyAt::ChunkEnd,
            Framing::Chunked(Chunk::Trailers) => park::BodyAt::Trailers,
            Framing::Chunked(Chunk::Done) => return Err(self),
        };
        match self.conn.take() {
            Some(conn) if conn.buf.is_empty() => Ok((conn.stream, conn.backend, at, self.keep)),
            conn => {
                self.conn = conn;
                Err(self)
            }
        }
    }

    /// The rest of a body parked by the proxy before this one, read from its connection.
    pub(super) fn resume(
        stream: TcpStream,
        backend: SocketAddr,
        at: park::BodyAt,
        keep: bool,
    ) -> UpstreamBody {
        let framing = match at {
            park::BodyAt::Length(n) => Framing::Length(n),
            park::BodyAt::Close => Framing::Close,
            park::BodyAt::ChunkSize => Framing::Chunked(Chunk::Size),
            park::BodyAt::ChunkData(n) => Framing::Chunked(Chunk::Data(n)),
            park::BodyAt::ChunkEnd => Framing::Chunked(Chunk::DataEnd),
            park::BodyAt::Trailers => Framing::Chunked(Chunk::Trailers),
        };
        UpstreamBody {
            conn: Some(Conn::resumed(stream, backend)),
            framing,
            keep,
            hop_free: true,
            idle: Idle,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        loop {
            match this.next_buffered() {
                Ok(Piece::Data(data)) => {
                    if this.finished() {
                        this.done();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Piece::End) => {
                    this.done();
                    return Poll::Ready(None);
                }
                Ok(Piece::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError(e))));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match conn.poll_read_more(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    if this.framing == Framing::Close {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(BodyError(
                        "the backend closed the connection before the body's end".into(),
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(BodyError(format!(
                        "reading the response body: {e}"
                    )))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// A backend that answers each request it reads with the next of `answers` (written in
    /// the pieces given, a moment apart), and sends each request head it read to the test.
    /// After its answers it closes the connection.
    async fn backend(
        answers: Vec<Vec<&'static [u8]>>,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            for pieces in answers {
                let end = loop {
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut b = [0u8; 1024];
                    let n = s.read(&mut b).await.unwrap();
                    assert!(n > 0, "the proxy closed");
                    got.extend_from_slice(&b[..n]);
                };
                let head: Vec<u8> = got.drain(..end).collect();
                tx.send(String::from_utf8(head).unwrap()).unwrap();
                for p in pieces {
                    s.write_all(p).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        (addr, rx)
    }

    fn get(method: Method) -> Parts {
        let mut req = hyper::Request::new(());
        *req.method_mut() = method;
        *req.uri_mut() = "/p?q=1".parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("app.example"));
        req.into_parts().0
    }

    /// Polls `conn` until it turns unusable; `what` makes it so.
    async fn until_closed(conn: &mut Conn, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !conn.closed() {
            assert!(Instant::now() < deadline, "{what} was never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The idle connection to `addr`, as it is (the pool's own `take` drops a closed one).
    fn taken(addr: SocketAddr) -> Option<Conn> {
        IDLE.with(|i| i.borrow_mut().take_any(addr))
    }

    /// `method`'s answer from `addr`, on a new connection.
    async fn fetch(addr: SocketAddr, method: Method, idle: &Idle) -> Response<UpstreamBody> {
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        conn.send(get(method), *idle, false, None).await.unwrap()
    }

    /// A backend answering one request with `answer`, and that answer read by a new
    /// connection to it.
    async fn answered(answer: &'static [u8], idle: &Idle) -> (SocketAddr, Response<UpstreamBody>) {
        let (addr, _heads) = backend(vec![vec![answer]]).await;
        let resp = fetch(addr, Method::GET, idle).await;
        (addr, resp)
    }

    async fn body_of(resp: Response<UpstreamBody>) -> Result<String, BodyError> {
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(String::from_utf8(bytes.to_vec()).unwrap())
    }

    /// A request body fed as the client's side would: `pieces`, then its end.
    fn fed(pieces: &[&'static [u8]]) -> RequestBody {
        let progress = std::sync::Arc::new(crate::request_body::Progress::default());
        for p in pieces {
            progress.push(Bytes::from_static(p));
        }
        progress.complete();
        RequestBody::new(progress, Duration::from_secs(5))
    }

    /// A backend that reads one request to the end of its chunked body (or `length` bytes of
    /// it), sends what it read to the test, then answers `answer`; `early`: answers after the
    /// head, before reading any of the body.
    async fn body_backend(
        length: Option<usize>,
        answer: &'static [u8],
        early: bool,
    ) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let done = |got: &[u8]| match got.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(_) if early => true,
                Some(at) => match length {
                    Some(n) => got.len() >= at + 4 + n,
                    None => got[at..].ends_with(b"0\r\n\r\n"),
                },
                None => false,
            };
            while !done(&got) {
                let mut b = [0u8; 4096];
                let n = s.read(&mut b).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&b[..n]);
            }
            tx.send(got).unwrap();
            s.write_all(answer).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        (addr, rx)
    }

    fn post(length: Option<usize>) -> Parts {
        let mut parts = get(Method::POST);
        if let Some(n) = length {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        parts
    }

    #[tokio::test]
    async fn a_body_goes_by_its_length_or_chunked_and_the_connection_is_kept() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let (addr, mut seen) = body_backend(None, OK, false).await;
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let resp = conn
            .send_body(post(None), fed(&[b"hello, ", b"world"]), Idle, None)
            .await
            .unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        let got = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(got.contains("transfer-encoding: chunked\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n7\r\nhello, \r\n5\r\nworld\r\n0\r\n\r\n"),
            "{got}"
        );
        assert!(taken(addr).is_some(), "kept for the next request");

        let (addr, mut seen) = body_backend(Some(5), OK, false).await;
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let resp = conn
            .send_body(post(Some(5)), fed(&[b"hel", b"lo"]), Idle, None)
            .await
            .unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        let got = String::from_utf8(seen.recv().await.unwrap()).unwrap();
        assert!(got.ends_with("content-length: 5\r\n\r\nhello"), "{got}");
    }

    #[tokio::test]
    async fn an_answer_before_the_bodys_end_stops_it_and_the_connection_is_not_kept() {
        const NO: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\nno";
        let (addr, _seen) = body_backend(None, NO, true).await;
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        // A body that never ends: the client's side is still reading it.
        let progress = std::sync::Arc::new(crate::request_body::Progress::default());
        progress.push(Bytes::from_static(b"start"));
        let body = RequestBody::new(progress.clone(), Duration::from_secs(5));
        let resp = conn.send_body(post(None), body, Idle, None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            progress.dropped(),
            "the client's side stops reading the body"
        );
        assert_eq!(body_of(resp).await.unwrap(), "no");
        assert!(taken(addr).is_none());

        // A body larger than any socket's buffers, to a backend that answers and reads no
        // more: the answer comes at once, not when a write gives up.
        let (addr, _seen) = body_backend(None, NO, true).await;
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let progress = std::sync::Arc::new(crate::request_body::Progress::default());
        for _ in 0..64 {
            progress.push(Bytes::from(vec![b'x'; 1 << 20]));
        }
        progress.complete();
        let body = RequestBody::new(progress, Duration::from_secs(5));
        let started = Instant::now();
        let resp = conn
            .send_body(post(Some(64 << 20)), body, Idle, None)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_request_whose_body_went_parks_while_it_waits_for_its_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let lot = park::Lot::new(Some(std::env::temp_dir()));
        lot.request();
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        match conn
            .send_body(post(Some(2)), fed(&[b"hi"]), Idle, Some(&lot))
            .await
        {
            Err(SendError::Parked(c)) => assert_eq!(c.backend, addr),
            other => panic!("not parked: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_waiting_for_its_answer_parks_and_the_answer_is_read_after() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut b = [0u8; 1024];
                let n = s.read(&mut b).await.unwrap();
                assert!(n > 0, "the proxy closed");
                got.extend_from_slice(&b[..n]);
            }
            // A long poll: the answer comes later.
            wait.await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        let lot = park::Lot::new(Some(std::env::temp_dir()));
        lot.request();
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        let parked = match conn.send(get(Method::GET), Idle, false, Some(&lot)).await {
            Err(SendError::Parked(c)) => c,
            Ok(_) => panic!("answered, not parked"),
            Err(e) => panic!("failed, not parked: {e:?}"),
        };
        let (stream, backend) = parked.into_parts();
        assert_eq!(backend, addr);
        go.send(()).unwrap();
        // What takes the connection back reads the answer the backend sent meanwhile.
        let resp = Conn::resumed(stream, backend)
            .resume_answer(&Method::GET, Idle)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_of(resp).await.unwrap(), "late");
    }

    #[tokio::test]
    async fn chunked_and_sized_answers_on_one_kept_alive_connection() {
        let (addr, mut heads) = backend(vec![
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWi",
                b"ki\r\n5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n",
                b"\r\n",
            ],
            vec![b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n\r\nhi"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"],
        ])
        .await;
        let idle = Idle;
        let resp = fetch(addr, Method::GET, &idle).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(body_of(resp).await.unwrap(), "Wikipedia");
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: app.example\r\n"), "{head}");

        // Read to its end, the connection went back, and carries the next request.
        let mut conn = taken(addr).expect("the connection is idle again");
        assert!(!conn.closed());
        let resp = conn
            .send(get(Method::POST), idle, true, None)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["x-a"], "b");
        assert_eq!(body_of(resp).await.unwrap(), "hi");
        let head = heads.recv().await.unwrap();
        assert!(head.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("content-length: 0\r\n"), "{head}");

        // `Connection: close`: not kept.
        let conn = taken(addr).unwrap();
        let resp = conn.send(get(Method::GET), idle, true, None).await.unwrap();
        assert_eq!(body_of(resp).await.unwrap(), "bye");
        assert!(taken(addr).is_none());
    }

    #[tokio::test]
    async fn the_answers_hop_by_hop_headers_are_left_out_but_a_connection_naming_others() {
        let idle = Idle;
        let (_, resp) = answered(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
              Transfer-Encoding: chunked\r\nTrailer: x-sum\r\nUpgrade: h2c\r\nTE: trailers\r\n\
              Proxy-Connection: keep-alive\r\nX-End: kept\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            &idle,
        )
        .await;
        let names: Vec<&str> = resp.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-end"]);
        assert!(resp.body().hop_free());
        assert_eq!(body_of(resp).await.unwrap(), "ok");

        // A Connection that names a header stays, for forward.rs to remove both.
        let (_, resp) = answered(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
              Content-Length: 0\r\n\r\n",
            &idle,
        )
        .await;
        assert!(!resp.body().hop_free());
        assert_eq!(resp.headers()["connection"], "keep-alive, x-hop");
    }

    #[tokio::test]
    async fn a_body_until_close_and_a_body_cut_short() {
        let idle = Idle;
        let (addr, resp) = answered(b"HTTP/1.0 200 OK\r\n\r\nall of it", &idle).await;
        assert_eq!(body_of(resp).await.unwrap(), "all of it");
        assert!(
            taken(addr).is_none(),
            "a body until close ends its connection"
        );

        let (_, resp) =
            answered(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", &idle).await;
        let err = body_of(resp).await.unwrap_err().to_string();
        assert!(err.contains("before the body's end"), "{err}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_the_backend_closed_is_seen_and_its_request_comes_back() {
        const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let idle = Idle;
        let (addr, resp) = answered(OK, &idle).await;
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        // The backend closes after its one answer: the idle connection turns closed.
        let mut conn = taken(addr).unwrap();
        until_closed(&mut conn, "the close").await;
        // Sent anyway (the race a check cannot close): an idempotent bodiless request comes
        // back unsent, a POST does not.
        match conn.send(get(Method::GET), idle, true, None).await {
            Err(SendError::Unsent(parts, _, _)) => assert_eq!(parts.method, Method::GET),
            other => panic!("{other:?}"),
        }
        let (addr, resp) = answered(OK, &idle).await;
        body_of(resp).await.unwrap();
        let mut conn = taken(addr).unwrap();
        until_closed(&mut conn, "the close").await;
        assert!(matches!(
            conn.send(get(Method::POST), idle, true, None).await,
            Err(SendError::Sent(_))
        ));
    }

    #[tokio::test]
    async fn bytes_after_an_answer_keep_its_connection_from_carrying_another() {
        // More than its Content-Length, sent a moment after the answer; the backend keeps
        // the connection open (it waits for a second request), so only the bytes tell.
        let (addr, _heads) = backend(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                b"HTTP/1.1 200 OK\r\n",
            ],
            vec![],
        ])
        .await;
        let idle = Idle;
        let resp = fetch(addr, Method::GET, &idle).await;
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        let mut conn = taken(addr).unwrap();
        until_closed(&mut conn, "the stray bytes").await;

        // A body to a HEAD: the answer has none, and the connection is not kept.
        let (addr, _heads) = backend(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        ]])
        .await;
        let resp = fetch(addr, Method::HEAD, &idle).await;
        assert_eq!(resp.headers()["content-length"], "5");
        assert_eq!(body_of(resp).await.unwrap(), "");
        if let Some(mut conn) = taken(addr) {
            until_closed(&mut conn, "the body to the HEAD").await;
        }

        // Chunked on HTTP/1.0 is faulty framing: read, then the connection ends.
        let (addr, _heads) = backend(vec![vec![
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ]])
        .await;
        let resp = fetch(addr, Method::GET, &idle).await;
        assert_eq!(body_of(resp).await.unwrap(), "ok");
        assert!(taken(addr).is_none());
    }

    #[tokio::test]
    async fn a_connect_request_is_not_tunnelled() {
        let (addr, _heads) =
            backend(vec![vec![b"HTTP/1.1 200 Connection established\r\n\r\n"]]).await;
        let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
        match conn.send(get(Method::CONNECT), Idle, false, None).await {
            Err(SendError::Bad(e)) => assert!(e.contains("CONNECT"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_answers_are_errors_naming_what_was_wrong() {
        for (answer, expect) in [
            (&b"NOT HTTP\r\n\r\n"[..], "a bad response head"),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"[..],
                "Content-Length",
            ),
            (&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..], "101"),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
                "before the response head's end",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"[..],
                "Content-Length",
            ),
        ] {
            let (addr, _heads) = backend(vec![vec![answer]]).await;
            let conn = connect(addr, Duration::from_secs(1)).await.unwrap();
            match conn.send(get(Method::GET), Idle, false, None).await {
                // Cut short: the backend may be going away. Anything else it sent is an
                // answer, a bad one.
                Err(SendError::Sent(e)) if expect.contains("before") => {
                    assert!(e.contains(expect), "{e}")
                }
                Err(SendError::Bad(e)) => assert!(e.contains(expect), "{e}"),
                other => panic!("{expect}: {other:?}"),
            }
        }
    }
}
