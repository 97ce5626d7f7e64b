//! `berth proxy` against hostile, slow and broken peers: a client that stalls its body or stops
//! reading, a backend that answers with a malformed message or restarts on its address, and
//! the framing a strict HTTP/1.1 hop refuses or repairs (RFC 9112). Raw bytes on real sockets,
//! the real binary in between.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::traffic::{read_message, stat, Proxy};
use serde_json::json;

fn header<'h>(head: &'h [String], name: &str) -> Option<&'h str> {
    head.iter().skip(1).find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

fn status_of(head: &[String]) -> u16 {
    head[0].split(' ').nth(1).unwrap().parse().unwrap()
}

/// What a test backend saw: each request's head lines and body.
type Seen = Arc<Mutex<Vec<(Vec<String>, Vec<u8>)>>>;

/// A keep-alive backend that answers each request with `answer(head, body)` (raw bytes), and
/// keeps what it saw.
fn backend(answer: fn(&[String], &[u8]) -> Vec<u8>) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = kept.clone();
            std::thread::spawn(move || serve(stream, answer, &seen));
        }
    });
    (addr, seen)
}

fn serve(stream: TcpStream, answer: fn(&[String], &[u8]) -> Vec<u8>, seen: &Seen) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some((head, body)) = read_message(&mut reader) {
        let bytes = answer(&head, &body);
        seen.lock().unwrap().push((head, body));
        if out.write_all(&bytes).is_err() {
            return;
        }
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A client connection to the proxy: what it wrote, and its reader (reads give up after 10 s).
fn client(proxy: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// Sends `raw` on a new connection and reads one answer.
fn exchange(proxy: SocketAddr, raw: &str) -> (Vec<String>, Vec<u8>) {
    let (mut r, mut w) = client(proxy);
    w.write_all(raw.as_bytes()).unwrap();
    read_message(&mut r).unwrap_or_else(|| panic!("no answer to {raw:?}"))
}

/// Whether the proxy closes the connection (within 10 s) after what was read.
fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

fn faults(proxy: &Proxy) -> serde_json::Value {
    proxy.control(json!({"op": "status"}))["faults"].clone()
}

// ---------------------------------------------------------------------------------------------
// Verdicts: whose fault it was.

/// `/bad` gets two Content-Lengths that disagree; everything else a 200.
fn sometimes_malformed(head: &[String], _body: &[u8]) -> Vec<u8> {
    if head[0].contains("/bad") {
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec()
    } else if head[0].contains("/gzip") {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec()
    } else {
        ok("fine")
    }
}

#[test]
fn a_malformed_answer_is_a_502_at_once_and_its_backend_stays_in_rotation() {
    let (a, _) = backend(sometimes_malformed);
    let proxy = Proxy::start(Some(a), &["--hold-secs", "5"]);
    // Without a body (berth's own client) and with one (hyper's), on fresh connections.
    for raw in [
        "GET /bad HTTP/1.1\r\nHost: app\r\n\r\n",
        "POST /bad HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi",
        "GET /gzip HTTP/1.1\r\nHost: app\r\n\r\n",
        "POST /gzip HTTP/1.1\r\nHost: app\r\nContent-Length: 2\r\n\r\nhi",
    ] {
        let asked = Instant::now();
        let (head, _) = exchange(proxy.addr, raw);
        assert_eq!(status_of(&head), 502, "{raw:?}: {head:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{raw:?}: held {:?}, as if the backend were gone",
            asked.elapsed()
        );
    }
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(stat(&status, a, "bad_responses"), 4, "{status}");
    assert_eq!(stat(&status, a, "connect_errors"), 0, "{status}");
    assert_eq!(status["backends"][a.to_string()]["down"], false, "{status}");
    assert_eq!(
        exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n").1,
        b"fine"
    );
}

#[test]
fn a_malformed_request_body_is_the_clients_400_and_blames_no_backend() {
    let (a, _) = backend(|_, _| ok("fine"));
    let proxy = Proxy::start(Some(a), &[]);
    let (head, _) = exchange(
        proxy.addr,
        "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n",
    );
    assert_eq!(status_of(&head), 400, "{head:?}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head:?}");
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(stat(&status, a, "connect_errors"), 0, "{status}");
    assert_eq!(status["backends"][a.to_string()]["down"], false, "{status}");
    assert_eq!(
        exchange(proxy.addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n").1,
        b"fine"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts, per phase.

#[test]
fn a_stalled_request_body_is_408_at_the_body_timeout_and_counted() {
    let (a, seen) = backend(|_, _| ok("fine"));
    let proxy = Proxy::start(Some(a), &["--body-timeout-secs", "1"]);
    let (mut r, mut w) = client(proxy.addr);
    let asked = Instant::now();
    w.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 10\r\n\r\nabc")
        .unwrap();
    let (head, _) = read_message(&mut r).expect("an answer");
    let took = asked.elapsed();
    assert_eq!(status_of(&head), 408, "{head:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}, not at the 1 s body timeout"
    );
    assert!(closed(&mut r), "the connection closes after the 408");
    assert_eq!(faults(&proxy)["request_body_timeouts"], 1);
    assert!(
        seen.lock().unwrap().is_empty(),
        "the backend got no request"
    );
    // A body that keeps coming, however slowly, is not cut.
    let (mut r, mut w) = client(proxy.addr);
    w.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    w.write_all(b"c").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    w.write_all(b"d").unwrap();
    let (head, body) = read_message(&mut r).expect("an answer");
    assert_eq!((status_of(&head), &body[..]), (200, &b"fine"[..]));
}

#[test]
fn the_response_timeout_counts_from_the_end_of_the_request_body() {
    let (a, _) = backend(|_, body| ok(&format!("got {}", body.len())));
    let proxy = Proxy::start(Some(a), &["--response-timeout-secs", "1"]);
    let (mut r, mut w) = client(proxy.addr);
    w.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 4\r\n\r\nab")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    w.write_all(b"cd").unwrap();
    let (head, body) = read_message(&mut r).expect("an answer");
    assert_eq!(
        (status_of(&head), String::from_utf8_lossy(&body).as_ref()),
        (200, "got 4"),
        "a body slower than the response timeout is not the backend's delay"
    );
    assert_eq!(
        faults(&proxy)["response_head_timeouts"]
            .as_u64()
            .unwrap_or(0),
        0
    );
}

/// Answers every request with 64 MiB, more than the sockets between can hold.
fn huge(_: &[String], _: &[u8]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n".to_vec();
    out.resize(out.len() + (64 << 20), b'x');
    out
}

#[test]
fn a_client_that_stops_reading_is_closed_at_the_send_timeout() {
    let (a, _) = backend(huge);
    let proxy = Proxy::start(Some(a), &["--send-timeout-secs", "1"]);
    // Berth's own server (no body) and hyper's (a body).
    for (n, raw) in [
        "GET / HTTP/1.1\r\nHost: app\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx",
    ]
    .into_iter()
    .enumerate()
    {
        let (_r, mut w) = client(proxy.addr);
        w.write_all(raw.as_bytes()).unwrap();
        // Never read: the proxy's writes stall once the socket buffers are full.
        let status = proxy.wait_status(20, "the send timeout", |s| {
            s["faults"]["client_write_timeouts"].as_u64() == Some(n as u64 + 1)
                && s["backends"][a.to_string()]["inflight"] == 0
        });
        assert_eq!(stat(&status, a, "connect_errors"), 0, "{status}");
    }
}

/// A backend that reads a request's head and then `pace`s its body: `None` reads none of it and
/// never answers; `Some(d)` reads 1 MiB every `d` and answers with how much it got.
fn body_reader(pace: Option<Duration>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let mut length = 0usize;
                while std::io::BufRead::read_line(&mut r, &mut line).unwrap_or(0) > 2 {
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let Some(pace) = pace else {
                    // Holds the connection open, reading none of the body.
                    std::thread::sleep(Duration::from_secs(30));
                    return;
                };
                let mut got = 0;
                let mut chunk = vec![0; 1 << 20];
                while got < length {
                    let want = chunk.len().min(length - got);
                    let Ok(()) = r.read_exact(&mut chunk[..want]) else {
                        return;
                    };
                    got += want;
                    std::thread::sleep(pace);
                }
                let _ = (&stream).write_all(&ok(&format!("got {got}")));
            });
        }
    });
    addr
}

/// Sends a POST with `len` bytes of body on a new connection, from a thread of its own (the
/// writes block while nobody reads), and reads the answer.
fn post_large(proxy: SocketAddr, len: usize) -> (Vec<String>, Vec<u8>, BufReader<TcpStream>) {
    let (mut r, mut w) = client(proxy);
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    std::thread::spawn(move || {
        let head = format!("POST / HTTP/1.1\r\nHost: app\r\nContent-Length: {len}\r\n\r\n");
        let _ = w.write_all(head.as_bytes());
        let _ = w.write_all(&vec![b'x'; len]);
    });
    let (head, body) = read_message(&mut r).expect("an answer");
    (head, body, r)
}

#[test]
fn a_backend_that_stops_reading_a_body_is_504_at_the_send_timeout_even_without_a_response_timeout()
{
    let args = ["--response-timeout-secs", "0", "--send-timeout-secs", "1"];
    let stuck = body_reader(None);
    let proxy = Proxy::start(Some(stuck), &args);
    let asked = Instant::now();
    let (head, _, mut r) = post_large(proxy.addr, 32 << 20);
    let took = asked.elapsed();
    assert_eq!(status_of(&head), 504, "{head:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "answered after {took:?}, not at the 1 s send timeout"
    );
    assert!(
        closed(&mut r),
        "the connection closes: its body was not read"
    );
    assert_eq!(faults(&proxy)["backend_write_timeouts"], 1);
    // The other side: a backend that reads slowly, with pauses shorter than the send timeout
    // (but longer in all), is not cut.
    let slow = body_reader(Some(Duration::from_millis(300)));
    let proxy = Proxy::start(Some(slow), &args);
    let asked = Instant::now();
    let (head, body, _) = post_large(proxy.addr, 16 << 20);
    assert_eq!(
        (status_of(&head), String::from_utf8_lossy(&body).as_ref()),
        (200, format!("got {}", 16 << 20).as_str()),
        "after {:?}",
        asked.elapsed()
    );
    assert!(
        asked.elapsed() > Duration::from_secs(2),
        "the backend read for {:?}, not longer than the send timeout: the test shows nothing",
        asked.elapsed()
    );
    assert_eq!(
        faults(&proxy)["backend_write_timeouts"]
            .as_u64()
            .unwrap_or(0),
        0
    );
}

// ---------------------------------------------------------------------------------------------
// The hold.

#[test]
fn a_held_request_is_served_once_its_backend_is_back_on_the_same_address() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let proxy = Proxy::start(Some(port), &["--hold-secs", "10"]);
    let asked = Instant::now();
    let addr = proxy.addr;
    let answer = std::thread::spawn(move || exchange(addr, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"));
    proxy.wait_status(5, "the dead backend to refuse", |s| {
        stat(s, port, "connect_errors") >= 1
    });
    std::thread::sleep(Duration::from_millis(500));
    // The replica is back where it was: no new route comes.
    let listener = TcpListener::bind(port).unwrap();
    let back = Instant::now();
    std::thread::spawn(move || {
        let seen: Seen = Arc::default();
        for stream in listener.incoming().flatten() {
            serve(stream, |_, _| ok("back"), &seen);
        }
    });
    let (head, body) = answer.join().unwrap();
    assert_eq!((status_of(&head), &body[..]), (200, &b"back"[..]));
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "served {:?} after the backend was back ({:?} in all)",
        back.elapsed(),
        asked.elapsed()
    );
}

#[test]
fn a_local_answer_to_a_request_whose_body_was_not_read_closes_the_connection() {
    let proxy = Proxy::start(None, &[]);
    let (mut r, mut w) = client(proxy.addr);
    w.write_all(b"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let (head, _) = read_message(&mut r).unwrap();
    assert_eq!(status_of(&head), 503);
    assert_eq!(header(&head, "connection"), Some("close"), "{head:?}");
    assert!(closed(&mut r));
    // Without a body, the connection is kept.
    let (mut r, mut w) = client(proxy.addr);
    w.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\nGET / HTTP/1.1\r\nHost: app\r\n\r\n")
        .unwrap();
    for _ in 0..2 {
        let (head, _) = read_message(&mut r).unwrap();
        assert_eq!(status_of(&head), 503);
        assert_eq!(header(&head, "connection"), None, "{head:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Framing (RFC 9112): what a strict hop refuses, and what it repairs.

#[test]
fn requests_a_strict_hop_refuses_never_reach_the_app() {
    let (a, seen) = backend(|_, _| ok("fine"));
    let proxy = Proxy::start(Some(a), &[]);
    for (raw, code) in [
        (
            "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (
            "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("CONNECT app:443 HTTP/1.1\r\nHost: app:443\r\n\r\n", 405),
    ] {
        let (mut r, mut w) = client(proxy.addr);
        w.write_all(raw.as_bytes()).unwrap();
        let (head, _) = read_message(&mut r).unwrap_or_else(|| panic!("no answer: {raw:?}"));
        assert_eq!(status_of(&head), code, "{raw:?}: {head:?}");
        assert_eq!(header(&head, "connection"), Some("close"), "{raw:?}");
        assert!(closed(&mut r), "{raw:?}: the connection stays open");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    assert_eq!(faults(&proxy)["refused"], 6);
    // HTTP/1.0 may come without a Host.
    let (head, _) = exchange(proxy.addr, "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&head), 200);
}

#[test]
fn what_the_app_receives_is_one_reading_of_the_request() {
    let (a, seen) = backend(|_, body| ok(&format!("got {}", body.len())));
    let proxy = Proxy::start(Some(a), &[]);
    let last = |seen: &Seen| seen.lock().unwrap().last().cloned().unwrap();

    // A GET with a chunked body keeps its body.
    let (_, body) = exchange(
        proxy.addr,
        "GET /q HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(body, b"got 5");
    assert_eq!(last(&seen).1, b"hello");

    // Every X-Forwarded-For line counts, in order, the peer appended.
    exchange(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\n\r\n",
    );
    let (head, _) = last(&seen);
    assert_eq!(
        header(&head, "x-forwarded-for"),
        Some("1.1.1.1, 2.2.2.2, 127.0.0.1"),
        "{head:?}"
    );

    // Connection cannot make Host or the forwarded headers hop-by-hop.
    exchange(
        proxy.addr,
        "GET / HTTP/1.1\r\nHost: app\r\nX-Forwarded-Proto: https\r\nConnection: host, x-forwarded-proto, x-other\r\nX-Other: 1\r\n\r\n",
    );
    let (head, _) = last(&seen);
    assert_eq!(header(&head, "host"), Some("app"), "{head:?}");
    assert_eq!(
        header(&head, "x-forwarded-proto"),
        Some("https"),
        "{head:?}"
    );
    assert_eq!(header(&head, "x-other"), None, "{head:?}");

    // An upgrade to anything but WebSocket (h2c) is answered as HTTP/1.1, not tunnelled.
    let (head, body) = exchange(
        proxy.addr,
        "GET /h2 HTTP/1.1\r\nHost: app\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    );
    assert_eq!((status_of(&head), &body[..]), (200, &b"got 0"[..]));
    let (head, _) = last(&seen);
    assert!(
        header(&head, "upgrade").is_none() && header(&head, "http2-settings").is_none(),
        "{head:?}"
    );
}

/// Answers by path: `/204` a 204 with a Content-Length, `/both` Content-Length and chunked,
/// `/lf` a chunk-size line ended by a bare LF.
fn odd_answers(head: &[String], _: &[u8]) -> Vec<u8> {
    let path = head[0].split(' ').nth(1).unwrap_or("");
    match path {
        "/204" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n".to_vec(),
        "/both" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n0\r\n\r\n"
                .to_vec()
        }
        "/lf" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n".to_vec(),
        _ => ok("fine"),
    }
}

#[test]
fn answers_are_framed_one_way_whichever_path_took_the_request() {
    let (a, _) = backend(odd_answers);
    let proxy = Proxy::start(Some(a), &[]);
    for with_body in [false, true] {
        let raw = |path: &str| {
            if with_body {
                format!("POST {path} HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx")
            } else {
                format!("GET {path} HTTP/1.1\r\nHost: app\r\n\r\n")
            }
        };
        let (head, body) = exchange(proxy.addr, &raw("/204"));
        assert_eq!(status_of(&head), 204, "{head:?}");
        assert_eq!(header(&head, "content-length"), None, "{head:?}");
        assert!(body.is_empty());

        let (head, body) = exchange(proxy.addr, &raw("/both"));
        assert_eq!(body, b"abcdef", "body {with_body}: {head:?}");
        assert_eq!(header(&head, "content-length"), None, "{head:?}");

        // A bare LF in a chunk line: the answer is cut, not read another way.
        let (mut r, mut w) = client(proxy.addr);
        w.write_all(raw("/lf").as_bytes()).unwrap();
        assert!(
            read_message(&mut r).is_none_or(|(head, _)| status_of(&head) == 502),
            "body {with_body}: a bare LF was read as a chunk line's end"
        );
    }
}
