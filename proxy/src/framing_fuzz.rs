//! The HTTP/1.1 framing the proxy owns (h1.rs), checked against references on random and
//! mutated input (proptest, stable toolchain): backend answers read by berth's client
//! (upstream.rs) against hyper's client and against a model of RFC 9112 section 6.3; request
//! heads read by berth's server (downstream.rs) against a model; request bodies against the
//! generator and against hyper's server. The properties: no panic; a message the model calls
//! well framed is read with the model's status and body, to the byte where the next one
//! starts; one it calls malformed is refused; and berth is never more lenient than hyper
//! (whatever berth accepts, hyper reads alike). Cases per property: `PROXY_FUZZ_CASES` (256 in the suite; the README
//! names a longer run).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::header::HeaderMap;
use hyper::Request;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::downstream;
use super::h1;
use super::upstream::{self, Idle, SendError};

/// `PROXY_FUZZ_CASES` cases per property (256 by default); a failure is printed with its
/// smallest input, not saved to a file in the tree.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROXY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// How a generated answer frames its body.
#[derive(Debug, Clone)]
enum Framing {
    Length,
    /// Chunked, its chunks (sizes) and each chunk-size line's extension.
    Chunked(Vec<(usize, String)>),
    /// Neither: the body runs to the connection's end.
    Close,
}

/// A generated backend answer, and what the model says of it.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    framing: Framing,
    /// Extra header lines (name, value), some of them framing headers that break it.
    extra: Vec<(String, String)>,
}

/// The model's reading (RFC 9112 section 6.3, as strict as the proxy is): the status and
/// body, or `None` for a malformed message.
fn model(a: &Answer) -> Option<(u16, Vec<u8>)> {
    // 204 and 304 have no body, whatever their headers say (rule 1).
    if a.status == 204 || a.status == 304 {
        return Some((a.status, Vec::new()));
    }
    let headers = a.headers();
    let named = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect()
    };
    let codings = named("transfer-encoding");
    match codings.as_slice() {
        [] => {}
        // One line, `chunked` only (the proxy's rule: nginx's too).
        [one] if one.eq_ignore_ascii_case("chunked") => {
            return matches!(a.framing, Framing::Chunked(_)).then(|| (a.status, a.body.clone()));
        }
        _ => return None,
    }
    let mut length: Option<usize> = None;
    for v in named("content-length") {
        for part in v.split(',').map(str::trim) {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: usize = part.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
    }
    match length {
        // Cut short by the connection's end.
        Some(n) if n > a.body.len() => None,
        Some(n) => Some((a.status, a.body[..n].to_vec())),
        None => Some((a.status, a.body.clone())),
    }
}

impl Answer {
    /// Its header lines: the extra ones, then its framing's.
    fn headers(&self) -> Vec<(String, String)> {
        let mut all = self.extra.clone();
        match &self.framing {
            Framing::Length => all.push(("Content-Length".into(), self.body.len().to_string())),
            Framing::Chunked(_) => all.push(("Transfer-Encoding".into(), "chunked".into())),
            Framing::Close => {}
        }
        all
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} Whatever\r\n", self.status).into_bytes();
        for (k, v) in self.headers() {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        let bodiless = self.status == 204 || self.status == 304;
        match &self.framing {
            Framing::Length | Framing::Close => {
                if !bodiless {
                    out.extend_from_slice(&self.body);
                }
            }
            Framing::Chunked(chunks) => {
                if !bodiless {
                    put_chunks(&mut out, &self.body, chunks);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out
    }
}

/// `body` written as `chunks` (sizes and extensions), then the last chunk's line; the
/// trailers and the empty line are the caller's.
fn put_chunks(out: &mut Vec<u8>, body: &[u8], chunks: &[(usize, String)]) {
    let mut at = 0;
    for (n, ext) in chunks {
        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        out.extend_from_slice(&body[at..at + n]);
        out.extend_from_slice(b"\r\n");
        at += n;
    }
    out.extend_from_slice(b"0\r\n");
}

/// A body of `len` bytes cut into the generated chunk sizes (the last takes the rest), each
/// with its generated extension.
fn cut(len: usize, chunking: Vec<(String, usize)>) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut left = len;
    for (ext, n) in chunking {
        if left == 0 {
            break;
        }
        let n = n.min(left);
        let ext = if ext.is_empty() || ext.starts_with(';') {
            ext
        } else {
            format!(";{ext}")
        };
        chunks.push((n, ext));
        left -= n;
    }
    if left > 0 {
        chunks.push((left, String::new()));
    }
    chunks
}

fn answers() -> impl Strategy<Value = Answer> {
    let status = prop_oneof![
        Just(200u16),
        Just(201),
        Just(204),
        Just(304),
        Just(404),
        Just(500)
    ];
    let body = proptest::collection::vec(any::<u8>(), 0..300);
    let extra = proptest::collection::vec(
        prop_oneof![
            (Just("X-Any".to_string()), "[a-z0-9 ]{0,8}"),
            (
                Just("Content-Length".to_string()),
                prop_oneof![
                    Just("0".to_string()),
                    "[0-9]{1,3}",
                    "\\+?[0-9]{1,2}",
                    " ?[0-9]{1,2}, ?[0-9]{1,2}"
                ]
            ),
            (
                Just("Transfer-Encoding".to_string()),
                prop_oneof![
                    Just("chunked".to_string()),
                    Just("gzip, chunked".to_string()),
                    Just("identity".to_string()),
                    Just("Chunked".to_string())
                ]
            ),
        ],
        0..3,
    );
    (
        status,
        body,
        extra,
        0..3usize,
        proptest::collection::vec(("[;a-z=]{0,6}", 1..64usize), 0..6),
    )
        .prop_map(|(status, body, extra, kind, chunking)| {
            let framing = match kind {
                0 => Framing::Length,
                1 => Framing::Chunked(cut(body.len(), chunking)),
                _ => Framing::Close,
            };
            Answer {
                status,
                body,
                framing,
                extra,
            }
        })
}

thread_local! {
    /// One listening port per test thread for all its cases: a port per case would leave
    /// thousands in TIME_WAIT and run out of ephemeral ports on a long run.
    static PORT: std::net::TcpListener = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
}

/// A backend on loopback that writes `bytes` to its one connection and closes it.
async fn backend(bytes: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::from_std(PORT.with(|l| l.try_clone()).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut s, _)) = listener.accept().await {
            // The request first, so that the answer is not one to nothing.
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
    });
    addr
}

/// berth's client's reading of `bytes`: the status and body, or why not.
async fn berth_reads(bytes: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let addr = backend(bytes).await;
    let conn = upstream::connect(addr, Duration::from_secs(2)).await?;
    let mut req = Request::new(());
    *req.uri_mut() = "/".parse().unwrap();
    req.headers_mut()
        .insert("host", hyper::header::HeaderValue::from_static("app"));
    let (parts, ()) = req.into_parts();
    let resp = match conn.send(parts, Idle, false, None).await {
        Ok(r) => r,
        Err(SendError::Bad(e) | SendError::Sent(e) | SendError::Unsent(_, _, e)) => return Err(e),
        Err(SendError::Parked(_)) => return Err("parked without a restart".into()),
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await;
    // A connection kept for another request goes back to the worker's pool: closed here, or
    // thousands of cases would run out of descriptors.
    while Idle.take(addr).is_some() {}
    let body = body.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body.to_vec()))
}

/// hyper's client's reading of `bytes`.
async fn hyper_reads(bytes: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    let addr = backend(bytes).await;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "app")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body.to_vec()))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `bytes` with `flips` bytes replaced (position, value), for mutated inputs.
fn mutated(mut bytes: Vec<u8>, flips: &[(usize, u8)]) -> Vec<u8> {
    for (at, b) in flips {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = *b;
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config())]

    /// Generated answers: berth reads them as the model does.
    #[test]
    fn berths_client_reads_answers_as_the_framing_model_does(a in answers()) {
        let rt = runtime();
        let berth = rt.block_on(berth_reads(a.bytes()));
        match model(&a) {
            Some(expected) => prop_assert_eq!(berth, Ok(expected), "{:?}", String::from_utf8_lossy(&a.bytes())),
            None => prop_assert!(berth.is_err(), "accepted a malformed answer: {:?}", String::from_utf8_lossy(&a.bytes())),
        }
    }

    /// Mutated answers: whatever berth accepts, hyper reads alike (berth is never the more
    /// lenient one), and nothing panics.
    #[test]
    fn berths_client_is_never_more_lenient_than_hypers(
        a in answers(),
        flips in proptest::collection::vec((any::<usize>(), prop_oneof![
            Just(b'\n'), Just(b'\r'), Just(b' '), Just(b':'), Just(b';'), Just(b'0'), Just(b'a'),
            Just(b'\t'), Just(0u8), Just(0x7f)
        ]), 1..4),
    ) {
        let bytes = mutated(a.bytes(), &flips);
        let rt = runtime();
        let berth = rt.block_on(berth_reads(bytes.clone()));
        if let Ok(read) = berth {
            let hyper = rt.block_on(hyper_reads(bytes.clone()));
            // The one difference the RFC sanctions: a Transfer-Encoding on an HTTP/1.0 answer is
            // faulty framing, which RFC 9112 section 6.1 has read and then the connection
            // closed (berth does; hyper refuses the answer).
            let http10_coded = bytes.starts_with(b"HTTP/1.0")
                && hyper.as_ref().is_err_and(|e| e.contains("transfer-encoding"));
            if !http10_coded {
                prop_assert_eq!(hyper, Ok(read), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}

/// A generated request head, and the model's verdict on it.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    target: String,
    minor: u8,
    headers: Vec<(String, String)>,
}

/// How the model frames a request's body: its length, or chunked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyModel {
    Length(u64),
    Chunked,
}

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    fn named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// What berth's server must make of it (RFC 9112 section 6.3, as strict as nginx): its
    /// body's framing (none: no body) and whether a 100 is owed, or the status refusing it.
    fn model(&self) -> Result<Option<(BodyModel, bool)>, u16> {
        let expect = self.named("expect");
        if expect
            .iter()
            .any(|v| !v.eq_ignore_ascii_case("100-continue"))
        {
            return Err(417);
        }
        let expect = !expect.is_empty() && self.minor == 1;
        let te = self.named("transfer-encoding");
        let cl = self.named("content-length");
        match te.len() {
            0 => {}
            1 if self.minor == 1 && cl.is_empty() && te[0].eq_ignore_ascii_case("chunked") => {
                return Ok(Some((BodyModel::Chunked, expect)))
            }
            1 if !te[0].eq_ignore_ascii_case("chunked") => return Err(501),
            _ => return Err(400),
        }
        let mut length = None;
        for v in cl {
            let n: u64 = v.parse().map_err(|_| 400u16)?;
            if length.is_some_and(|l| l != n) {
                return Err(400);
            }
            length = Some(n);
        }
        Ok(length
            .filter(|n| *n > 0)
            .map(|n| (BodyModel::Length(n), expect)))
    }
}

fn heads() -> impl Strategy<Value = Head> {
    let method = prop_oneof![
        Just("GET".to_string()),
        Just("HEAD".to_string()),
        Just("POST".to_string()),
        Just("DELETE".to_string()),
        Just("CONNECT".to_string())
    ];
    let header = prop_oneof![
        (Just("Host".to_string()), "[a-z.]{1,10}"),
        (Just("Content-Length".to_string()), "[0-9]{1,3}"),
        (
            Just("Transfer-Encoding".to_string()),
            prop_oneof![
                Just("chunked".to_string()),
                Just("Chunked".to_string()),
                Just("gzip, chunked".to_string())
            ]
        ),
        (
            Just("Connection".to_string()),
            prop_oneof![
                Just("keep-alive".to_string()),
                Just("close".to_string()),
                Just("Upgrade".to_string())
            ]
        ),
        (Just("Upgrade".to_string()), Just("websocket".to_string())),
        (
            Just("Expect".to_string()),
            prop_oneof![Just("100-continue".to_string()), Just("x".to_string())]
        ),
        ("X-[A-Za-z]{1,8}", "[ -~]{0,12}"),
    ];
    (
        method,
        "/[a-z0-9]{0,8}(/[a-z0-9]{1,8})?(\\?[a-z0-9=&]{0,10})?",
        0..2u8,
        proptest::collection::vec(header, 0..6),
    )
        .prop_map(|(method, target, minor, headers)| Head {
            method,
            target,
            minor,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k, v.trim().to_string()))
                .collect(),
        })
}

/// A generated request with a body, framed by its Content-Length or chunked.
#[derive(Debug, Clone)]
struct Upload {
    body: Vec<u8>,
    /// Chunked, in these sizes with these extensions; `None`: by Content-Length.
    chunks: Option<Vec<(usize, String)>>,
    /// Trailer lines after the last chunk.
    trailers: Vec<String>,
}

impl Upload {
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"POST /up HTTP/1.1\r\nHost: app\r\n".to_vec();
        match &self.chunks {
            None => {
                out.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
                );
                out.extend_from_slice(&self.body);
            }
            Some(chunks) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                put_chunks(&mut out, &self.body, chunks);
                for t in &self.trailers {
                    out.extend_from_slice(format!("{t}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }
}

fn uploads() -> impl Strategy<Value = Upload> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        proptest::collection::vec(("[;a-z=]{0,6}", 1..64usize), 0..6),
        proptest::collection::vec("X-[a-z]{1,5}: [a-z0-9]{0,5}", 0..2),
    )
        .prop_map(|(body, chunked, chunking, trailers)| {
            let chunks = chunked.then(|| cut(body.len(), chunking));
            Upload {
                body,
                chunks,
                trailers,
            }
        })
}

/// berth's server's reading of a request: its body (h1.rs), what is left after it, or why
/// it is refused or incomplete.
fn berth_reads_request(bytes: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut buf = BytesMut::from(bytes);
    let mut spare = HeaderMap::new();
    let framing = match downstream::parse_for_tests(&mut buf, 65_536, &mut spare) {
        downstream::Verdict::Plain(_, None) => return Ok((Vec::new(), buf.to_vec())),
        downstream::Verdict::Plain(_, Some((framing, _))) => framing,
        downstream::Verdict::Refused(code) => return Err(format!("refused: {code}")),
        downstream::Verdict::Incomplete => return Err("an incomplete head".into()),
    };
    let mut framing = framing;
    let mut body = Vec::new();
    loop {
        match h1::decode(&mut framing, &mut buf, 65_536)? {
            h1::Piece::Data(d) => body.extend_from_slice(&d),
            h1::Piece::End => return Ok((body, buf.to_vec())),
            h1::Piece::More => return Err("an incomplete body".into()),
        }
    }
}

/// hyper's server's reading of a request's body, from `bytes` sent on a connection.
async fn hyper_reads_request(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = std::sync::Mutex::new(Some(tx));
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let tx = tx.lock().unwrap().take();
        async move {
            let body = req.into_body().collect().await;
            if let Some(tx) = tx {
                let _ = tx.send(
                    body.map(|b| b.to_bytes().to_vec())
                        .map_err(|e| e.to_string()),
                );
            }
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    tokio::spawn(
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), svc),
    );
    client.write_all(&bytes).await.map_err(|e| e.to_string())?;
    // The sending side stays open: hyper's server takes a close as the request's end.
    match tokio::time::timeout(Duration::from_millis(500), rx).await {
        Ok(Ok(read)) => read,
        _ => Err("hyper read no request".into()),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Well-formed heads: served with the body framing the model gives, or refused with its
    /// status; the method, target, version and every header line kept in order (but an
    /// HTTP/1.0 Expect, ignored); the buffer consumed exactly to the head's end.
    #[test]
    fn berths_server_frames_request_heads_as_the_model_does(h in heads()) {
        let bytes = h.bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"NEXT");
        let mut spare = HeaderMap::new();
        let model = h.model();
        match downstream::parse_for_tests(&mut buf, 65_536, &mut spare) {
            downstream::Verdict::Plain(req, body) => {
                let body = body.map(|(f, expect)| match f {
                    h1::Framing::Length(n) => (BodyModel::Length(n), expect),
                    _ => (BodyModel::Chunked, expect),
                });
                prop_assert_eq!(Ok(body), model, "{:?}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(&buf[..], b"NEXT");
                prop_assert_eq!(req.method().as_str(), h.method.as_str());
                prop_assert_eq!(req.uri().to_string(), h.target.as_str());
                let lines: Vec<(String, String)> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).to_string()))
                    .collect();
                let mut expected: Vec<(String, String)> = h
                    .headers
                    .iter()
                    .filter(|(k, _)| h.minor == 1 || !k.eq_ignore_ascii_case("expect"))
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                // A HeaderMap groups lines by name, keeping each name's order.
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                let mut got = lines;
                got.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(got, expected);
            }
            downstream::Verdict::Refused(code) => {
                prop_assert_eq!(Err(code.as_u16()), model, "{:?}", String::from_utf8_lossy(&bytes));
            }
            other => prop_assert!(false, "{:?}: {:?}", other, String::from_utf8_lossy(&bytes)),
        }
    }

    /// Any bytes: a verdict, never a panic, and nothing consumed past what was given.
    #[test]
    fn berths_server_survives_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut spare = HeaderMap::new();
        let before = buf.len();
        let verdict = downstream::parse_for_tests(&mut buf, 65_536, &mut spare);
        prop_assert!(buf.len() <= before);
        if let downstream::Verdict::Refused(code) = &verdict {
            prop_assert!([400, 417, 431, 501].contains(&code.as_u16()), "{}", code);
        }
        if let downstream::Verdict::Plain(req, _) = verdict {
            // What was served parses as a request for httparse too.
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut headers);
            let consumed = before - buf.len();
            prop_assert!(matches!(r.parse(&bytes[..consumed]), Ok(httparse::Status::Complete(n)) if n == consumed));
            prop_assert_eq!(r.method, Some(req.method().as_str()));
        }
    }

    /// Request bodies, by Content-Length or chunked (extensions, trailers): read whole, to
    /// the byte where the next request starts.
    #[test]
    fn berths_server_reads_request_bodies_as_generated(u in uploads()) {
        let mut bytes = u.bytes();
        bytes.extend_from_slice(b"NEXT");
        prop_assert_eq!(berth_reads_request(&bytes), Ok((u.body, b"NEXT".to_vec())));
    }

    /// Mutated requests with bodies: whatever berth's server reads, hyper's server reads
    /// alike (berth is never the more lenient).
    #[test]
    fn berths_server_is_never_more_lenient_than_hypers(
        u in uploads(),
        flips in proptest::collection::vec((any::<usize>(), prop_oneof![
            Just(b'\n'), Just(b'\r'), Just(b';'), Just(b' '), Just(b'0'), Just(b'x'), Just(0u8)
        ]), 1..4),
    ) {
        let bytes = mutated(u.bytes(), &flips);
        if let Ok((body, rest)) = berth_reads_request(&bytes) {
            // hyper reads one request; what berth leaves after it would be the next.
            if rest.is_empty() {
                let hyper = runtime().block_on(hyper_reads_request(bytes.clone()));
                prop_assert_eq!(hyper, Ok(body), "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
    }
}
