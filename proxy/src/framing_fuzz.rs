//! The HTTP/1.1 framing the proxy owns, checked against references on random and mutated
//! input (proptest, stable toolchain): backend answers read by berth's client (upstream.rs)
//! against hyper's client and against a model of RFC 9112 section 6.3; request heads read by
//! berth's server (downstream.rs) against a model. The properties: no panic; a message the
//! model calls well framed is read with the model's status and body; one it calls malformed
//! is refused; and berth's client is never more lenient than hyper's (whatever it accepts,
//! hyper reads alike). Cases per property: `PROXY_FUZZ_CASES` (256 in the suite; the README
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
                    let mut at = 0;
                    for (n, ext) in chunks {
                        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
                        out.extend_from_slice(&self.body[at..at + n]);
                        out.extend_from_slice(b"\r\n");
                        at += n;
                    }
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
        }
        out
    }
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
                1 => {
                    // Cut the body into the generated sizes (the last takes the rest).
                    let mut chunks = Vec::new();
                    let mut left = body.len();
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
                    Framing::Chunked(chunks)
                }
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
        Err(SendError::Bad(e) | SendError::Sent(e) | SendError::Unsent(_, e)) => return Err(e),
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

impl Head {
    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.{}\r\n", self.method, self.target, self.minor);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// What berth's server does with it: `Some(true)` serves it itself, `Some(false)` hands it
    /// to hyper's (a body, an upgrade, Expect, CONNECT).
    fn model(&self) -> bool {
        let has = |name: &str| {
            self.headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        let body = self
            .headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-length") && v.bytes().any(|b| b != b'0'));
        let upgrade = self.headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("connection")
                && v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        !(body
            || has("transfer-encoding")
            || has("upgrade")
            || has("expect")
            || upgrade
            || self.method == "CONNECT")
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
            Just("chunked".to_string())
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
        (Just("Expect".to_string()), Just("100-continue".to_string())),
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

proptest! {
    #![proptest_config(config())]

    /// Well-formed heads: served or handed over as the model says, with their method, target,
    /// version and every header line kept in order; the buffer is consumed exactly to the
    /// head's end when served, and left whole when handed over.
    #[test]
    fn berths_server_classifies_request_heads_as_the_model_does(h in heads()) {
        let bytes = h.bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        buf.extend_from_slice(b"NEXT");
        let mut spare = HeaderMap::new();
        match downstream::parse_for_tests(&mut buf, 65_536, &mut spare) {
            downstream::Verdict::Plain(req) => {
                prop_assert!(h.model(), "served what it must hand over: {:?}", String::from_utf8_lossy(&bytes));
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
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect();
                // A HeaderMap groups lines by name, keeping each name's order.
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                let mut got = lines;
                got.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(got, expected);
            }
            downstream::Verdict::HandOver => {
                prop_assert!(!h.model(), "handed over a plain request: {:?}", String::from_utf8_lossy(&bytes));
                prop_assert_eq!(buf.len(), bytes.len() + 4, "the head stays for hyper's server");
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
            prop_assert!(*code == 400 || *code == 431, "{}", code);
        }
        if let downstream::Verdict::Plain(req) = verdict {
            // What was served parses as a request for httparse too.
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut r = httparse::Request::new(&mut headers);
            let consumed = before - buf.len();
            prop_assert!(matches!(r.parse(&bytes[..consumed]), Ok(httparse::Status::Complete(n)) if n == consumed));
            prop_assert_eq!(r.method, Some(req.method().as_str()));
        }
    }
}
