//! `berth proxy` as a process: real TCP backends (small HTTP/1.1 servers in this test process)
//! behind the real binary, its route changed over its real control socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::signal;
use common::traffic::{
    control, failures, read_message, stat, total, wait_inflight, Activated, Conn, Load, Proxy,
};
use serde_json::json;

/// A keep-alive HTTP/1.1 backend answering its own name; `/slow` takes `slow` to answer.
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
}

impl Backend {
    fn start(name: &'static str, slow: Duration) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let count = count.clone();
                std::thread::spawn(move || serve(stream, name, slow, &count));
            }
        });
        Backend { addr, served }
    }
}

fn serve(stream: TcpStream, name: &str, slow: Duration, count: &AtomicUsize) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut forwarded_for = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("x-forwarded-for:") {
                forwarded_for = v.trim().to_string();
            }
        }
        if request_line.contains("/slow") {
            std::thread::sleep(slow);
        }
        count.fetch_add(1, Ordering::SeqCst);
        let body = format!("{name} xff={forwarded_for}\n");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn requests_on_a_kept_alive_connection_follow_a_switch() {
    let (a, b) = (
        Backend::start("blue", Duration::ZERO),
        Backend::start("green", Duration::ZERO),
    );
    let proxy = Proxy::start(Some(a.addr), &[]);
    let mut conn = Conn::open(proxy.addr);
    let (code, body) = conn.get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
    assert_eq!(
        body.trim(),
        "blue xff=127.0.0.1",
        "X-Forwarded-For carries the client"
    );

    let answer = proxy.control(serde_json::json!({"op": "route", "backend": b.addr.to_string()}));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["active"], json!([b.addr.to_string()]), "{answer}");
    assert_eq!(answer["previous"], json!([a.addr.to_string()]), "{answer}");
    let (code, body) = conn.get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "green"),
        "same connection"
    );

    let status = proxy.control(serde_json::json!({"op": "status"}));
    assert_eq!(status["active"], json!([b.addr.to_string()]), "{status}");
    assert_eq!(status["previous"], json!([a.addr.to_string()]), "{status}");
    assert_eq!(stat(&status, a.addr, "served"), 1, "{status}");
    assert_eq!(stat(&status, b.addr, "served"), 1, "{status}");
    assert_eq!(
        (
            a.served.load(Ordering::SeqCst),
            b.served.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}

#[test]
fn drain_waits_for_in_flight_requests_to_the_old_backend() {
    let slow = Duration::from_millis(1500);
    let (a, b) = (
        Backend::start("blue", slow),
        Backend::start("green", Duration::ZERO),
    );
    let proxy = Proxy::start(Some(a.addr), &[]);
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || Conn::open(addr).get("/slow"));
    wait_inflight(&proxy.control, 1);
    proxy.control(serde_json::json!({"op": "route", "backend": b.addr.to_string()}));
    let (code, body) = Conn::open(proxy.addr).get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "green")
    );

    let started = Instant::now();
    let drained = proxy.control(
        serde_json::json!({"op": "drain", "backend": a.addr.to_string(), "timeout_ms": 10000}),
    );
    assert_eq!(drained["ok"], true, "{drained}");
    assert_eq!(drained["inflight"], 0);
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "drain returned before the request finished"
    );
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue"),
        "the in-flight request completed"
    );
}

#[test]
fn drain_times_out_and_says_what_is_left() {
    let a = Backend::start("blue", Duration::from_secs(3));
    let proxy = Proxy::start(Some(a.addr), &[]);
    let addr = proxy.addr;
    let _in_flight = std::thread::spawn(move || Conn::open(addr).get("/slow"));
    wait_inflight(&proxy.control, 1);
    let drained = proxy.control(
        serde_json::json!({"op": "drain", "backend": a.addr.to_string(), "timeout_ms": 200}),
    );
    assert_eq!(drained["ok"], false, "{drained}");
    assert_eq!(drained["inflight"], 1);
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let a = Backend::start("blue", Duration::from_millis(1200));
    let mut proxy = Proxy::start(Some(a.addr), &[]);
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || Conn::open(addr).get("/slow"));
    wait_inflight(&proxy.control, 1);
    let pid = proxy.child.id().to_string();
    signal(&pid, "TERM");
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
    let status = assert_eventually!(10, "the proxy exits", || {
        proxy
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status:?}");
    assert!(
        !proxy.control.exists(),
        "the control socket is removed on exit"
    );
}

#[test]
fn sigterm_closes_kept_alive_and_upgraded_connections_politely() {
    let a = Backend::start("blue", Duration::from_millis(1500));
    let ws_addr = ws_backend("green");
    let mut proxy = Proxy::start(Some(ws_addr), &[]);
    let addr = proxy.addr;
    let mut ws = ws_open(addr);
    assert_eq!(ws_echo(&mut ws, "hi"), "green hi");
    proxy.control(json!({"op": "route", "backend": a.addr.to_string()}));
    let mut kept = Conn::open(addr);
    let in_flight = std::thread::spawn(move || Conn::open(addr).get("/slow"));
    proxy.wait_status(10, "the slow request in flight", |s| {
        stat(s, a.addr, "inflight") == 1
    });
    assert_eq!(kept.get("/").0, 200);
    assert!(!kept.closed);

    let pid = proxy.child.id().to_string();
    signal(&pid, "TERM");
    // The signal is handled when the proxy stops accepting.
    assert_eventually!(10, "the proxy stops accepting", || {
        match TcpStream::connect(addr) {
            Ok(_) => Err("still accepting".to_string()),
            Err(_) => Ok(()),
        }
    });
    // The next request on a kept-alive connection is answered, with `Connection: close`.
    let (code, _) = kept.get("/");
    assert_eq!(code, 200);
    assert!(
        kept.closed,
        "the answer after SIGTERM says Connection: close"
    );
    let closed = ws_closed_within(&mut ws, Duration::from_secs(10));
    assert!(
        closed.is_ok(),
        "the upgraded connection is closed: {closed:?}"
    );
    let (code, body) = in_flight.join().unwrap();
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
    let status = assert_eventually!(15, "the proxy exits", || {
        proxy
            .child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(status.success(), "{status:?}\n{}", proxy.log());
}

#[test]
fn no_backend_is_503_and_a_dead_backend_is_502_after_the_hold() {
    let proxy = Proxy::start(None, &["--hold-secs", "1"]);
    assert_eq!(Conn::open(proxy.addr).get("/").0, 503);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    proxy.control(serde_json::json!({"op": "route", "backend": dead.to_string()}));
    let asked = Instant::now();
    assert_eq!(Conn::open(proxy.addr).get("/").0, 502);
    let held = asked.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "held {held:?}, not the 1 s of --hold-secs"
    );
    let bad = proxy.control(serde_json::json!({"op": "route", "backend": "not-an-address"}));
    assert_eq!(bad["ok"], false, "{bad}");
}

#[test]
fn a_request_finding_no_live_backend_waits_for_the_next_route() {
    let proxy = Proxy::start(None, &[]);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    proxy.control(json!({"op": "route", "backend": dead.to_string()}));
    let live = Backend::start("restarted", Duration::ZERO);
    let addr = proxy.addr;
    let asked = Instant::now();
    let client = std::thread::spawn(move || Conn::open(addr).get("/"));
    // The request is held once its backend has refused it; then the agent routes the
    // restarted replica.
    proxy.wait_status(5, "the dead backend to refuse", |s| {
        stat(s, dead, "connect_errors") >= 1
    });
    assert!(!client.is_finished(), "answered before the new route");
    proxy.control(json!({"op": "route", "backends": [live.addr.to_string()], "release": "v1"}));
    let (code, body) = client.join().unwrap();
    assert_eq!(code, 200);
    assert!(body.starts_with("restarted"), "{body}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(live.served.load(Ordering::SeqCst), 1);
}

#[test]
fn the_control_socket_is_root_only_and_a_restart_resumes_the_saved_route() {
    let a = Backend::start("blue", Duration::ZERO);
    let b = Backend::start("green", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("route.json");
    let state_arg = state.to_str().unwrap().to_string();
    let mut proxy = Proxy::start(Some(a.addr), &["--state", &state_arg]);
    let mode = std::fs::metadata(&proxy.control)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    proxy.control(serde_json::json!({"op": "route", "backend": b.addr.to_string()}));
    // A crash: the route must survive it.
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    let restarted = Proxy::start(None, &["--state", &state_arg]);
    let (code, body) = Conn::open(restarted.addr).get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "green")
    );
    let status = restarted.control(serde_json::json!({"op": "status"}));
    assert_eq!(status["previous"], json!([a.addr.to_string()]), "{status}");
    drop(dir);
}

// ---------------------------------------------------------------------------------------------
// Forwarded headers.

/// A backend on a port of its own that runs `serve` on each connection (its reader and
/// writer), a thread each.
fn backend_serving(serve: fn(BufReader<TcpStream>, TcpStream)) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let reader = BufReader::new(stream.try_clone().unwrap());
            std::thread::spawn(move || serve(reader, stream));
        }
    });
    addr
}

/// A keep-alive backend whose body is the request head it received (request line and headers).
fn echo_head_backend() -> SocketAddr {
    backend_serving(|mut reader, mut out| loop {
        let Some(head) = read_head(&mut reader) else {
            return;
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
            head.len()
        );
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    })
}

/// A request head (request line and headers), up to its empty line; `None` at the end.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

/// Every value of header `name` in a request head, in order.
fn values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

#[test]
fn forwarded_headers_from_the_client_are_kept_and_the_peer_is_appended() {
    let backend = echo_head_backend();
    let proxy = Proxy::start(Some(backend), &[]);
    let port = proxy.addr.port().to_string();
    let mut conn = Conn::open(proxy.addr);

    let (code, head) = conn
        .try_request(
            "/",
            &[
                ("X-Forwarded-Proto", "https"),
                ("X-Forwarded-For", "1.2.3.4"),
            ],
        )
        .unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["https"], "{head}");
    assert_eq!(
        values(&head, "x-forwarded-for").join(", "),
        "1.2.3.4, 127.0.0.1",
        "{head}"
    );
    assert_eq!(values(&head, "x-forwarded-port"), [port.as_str()], "{head}");
    assert_eq!(values(&head, "host"), ["app.example"], "{head}");

    // Absent: the proxy says what the client reached.
    let (code, head) = conn.try_request("/", &[]).unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(values(&head, "x-forwarded-port"), [port.as_str()], "{head}");
    assert_eq!(values(&head, "host"), ["app.example"], "{head}");

    // Present (the load balancer's port): kept.
    let (_, head) = conn
        .try_request("/", &[("X-Forwarded-Port", "443")])
        .unwrap();
    assert_eq!(values(&head, "x-forwarded-port"), ["443"], "{head}");
}

#[test]
fn forwarded_headers_from_an_untrusted_peer_are_replaced() {
    let backend = echo_head_backend();
    let sent = [
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Port", "443"),
    ];
    // Loopback is not in the trusted range.
    let proxy = Proxy::start(Some(backend), &["--trust-forwarded", "10.0.0.0/8"]);
    let (code, head) = Conn::open(proxy.addr).try_request("/", &sent).unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(
        values(&head, "x-forwarded-port"),
        [proxy.addr.port().to_string()],
        "{head}"
    );

    // Loopback trusted: kept.
    let trusting = Proxy::start(
        Some(backend),
        &[
            "--trust-forwarded",
            "10.0.0.0/8",
            "--trust-forwarded",
            "127.0.0.0/8",
        ],
    );
    let (_, head) = Conn::open(trusting.addr).try_request("/", &sent).unwrap();
    assert_eq!(values(&head, "x-forwarded-proto"), ["https"], "{head}");
    assert_eq!(
        values(&head, "x-forwarded-for").join(", "),
        "1.2.3.4, 127.0.0.1",
        "{head}"
    );
    assert_eq!(values(&head, "x-forwarded-port"), ["443"], "{head}");
}

#[test]
fn the_backend_gets_the_origin_form_and_no_hop_by_hop_headers() {
    let backend = echo_head_backend();
    let proxy = Proxy::start(Some(backend), &[]);
    let mut conn = Conn::open(proxy.addr);
    let hops = [
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("X-End", "kept"),
    ];

    // The absolute form (what a client configured for a proxy sends) becomes the origin form.
    let (code, head) = conn.try_request("http://app.example/p?q=1", &hops).unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(head.lines().next(), Some("GET /p?q=1 HTTP/1.1"), "{head}");
    for hop in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-connection",
        "te",
    ] {
        assert_eq!(values(&head, hop), Vec::<String>::new(), "{hop}: {head}");
    }
    assert_eq!(values(&head, "x-end"), ["kept"], "{head}");
    assert_eq!(values(&head, "host"), ["app.example"], "{head}");

    // The origin form passes as it came, and so does a request with nothing to strip.
    let (code, head) = conn.try_request("/a/b?c=d&e", &[]).unwrap();
    assert_eq!(code, 200, "{head}");
    assert_eq!(
        head.lines().next(),
        Some("GET /a/b?c=d&e HTTP/1.1"),
        "{head}"
    );
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
}

// ---------------------------------------------------------------------------------------------
// Bodies.

/// A keep-alive backend that answers each request with its body, and says in `x-framing` how
/// the body came (`length` or `chunked`). `GET /big/N` answers N bytes, chunked.
fn echo_body_backend() -> SocketAddr {
    backend_serving(|mut reader, mut out| {
        while let Some((head, body)) = read_message(&mut reader) {
            if let Some(n) = head[0]
                .strip_prefix("get /big/")
                .and_then(|r| r.split(' ').next())
            {
                let n: usize = n.parse().unwrap();
                let data = pattern(n);
                let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                put_chunked(&mut resp, &data, 100_000);
                if out.write_all(&resp).is_err() {
                    return;
                }
                continue;
            }
            let framing = if head.iter().any(|l| l.starts_with("content-length:")) {
                "length"
            } else {
                "chunked"
            };
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Framing: {framing}\r\n\r\n",
                body.len()
            );
            if out.write_all(resp.as_bytes()).is_err() || out.write_all(&body).is_err() {
                return;
            }
        }
    })
}

/// A client connection to `proxy` (reads give up after 10 s): a reader and a writer.
fn connected(proxy: SocketAddr) -> (BufReader<TcpStream>, TcpStream) {
    let stream = TcpStream::connect(proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// `n` bytes that are not all alike.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// `data` as a chunked body in chunks of `size`, to its last chunk and the empty line.
fn put_chunked(out: &mut Vec<u8>, data: &[u8], size: usize) {
    for part in data.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

#[test]
fn request_and_response_bodies_pass_whole_both_ways() {
    let backend = echo_body_backend();
    let proxy = Proxy::start(Some(backend), &[]);
    let (mut reader, mut w) = connected(proxy.addr);

    // A 1 MiB body with a Content-Length, on one kept-alive connection twice.
    let big = pattern(1 << 20);
    for _ in 0..2 {
        let head = format!(
            "POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: {}\r\n\r\n",
            big.len()
        );
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(&big).unwrap();
        let (head, body) = read_message(&mut reader).expect("an answer");
        assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
        assert!(head.contains(&"x-framing: length".to_string()), "{head:?}");
        assert!(
            body == big,
            "the body came back changed ({} bytes)",
            body.len()
        );
    }

    // A chunked body: the backend gets it whole (chunked again), and answers it.
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in ["hello, ", "chunked ", "world"] {
        req.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    w.write_all(&req).unwrap();
    let (head, body) = read_message(&mut reader).expect("an answer");
    assert!(head.contains(&"x-framing: chunked".to_string()), "{head:?}");
    assert_eq!(body, b"hello, chunked world");

    // A bodiless POST, then a 3 MB chunked answer.
    w.write_all(b"POST /up HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .unwrap();
    let (head, body) = read_message(&mut reader).expect("an answer");
    assert!(head.contains(&"content-length: 0".to_string()), "{head:?}");
    assert!(body.is_empty());
    w.write_all(b"GET /big/3000000 HTTP/1.1\r\nHost: app.example\r\n\r\n")
        .unwrap();
    let (head, body) = read_message(&mut reader).expect("an answer");
    assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
    assert!(
        body == pattern(3_000_000),
        "the answer came changed ({} bytes)",
        body.len()
    );

    // HEAD: the head only, and the connection still serves.
    w.write_all(b"HEAD /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    w.write_all(b"POST /up HTTP/1.1\r\nHost: app.example\r\nContent-Length: 2\r\n\r\nok")
        .unwrap();
    let (_, body) = read_message(&mut reader).expect("an answer after the HEAD");
    assert_eq!(body, b"ok");
}

#[test]
fn a_large_body_flows_whole_with_the_smallest_read_buffer() {
    // An 8 KiB limit on what is read ahead, and a body in small chunks (each its own piece in
    // the body's queue, so the queue fills while the read buffer still holds more): the body
    // must move as the backend takes it, not stall to a 408.
    let proxy = Proxy::start(Some(echo_body_backend()), &["--max-header-bytes", "8192"]);
    let (mut reader, mut w) = connected(proxy.addr);
    let big = pattern(4 << 20);
    let mut req = b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    put_chunked(&mut req, &big, 300);
    for _ in 0..2 {
        w.write_all(&req).unwrap();
        let (head, body) = read_message(&mut reader).expect("an answer");
        assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
        assert!(
            body == big,
            "the body came back changed ({} bytes)",
            body.len()
        );
    }
}

#[test]
fn pipelined_requests_with_and_without_bodies_are_answered_in_order() {
    // The POST's body is read to its end and no further: the GET behind it is the next
    // request. All four answers come back whole and in order.
    let backend = echo_body_backend();
    let proxy = Proxy::start(Some(backend), &[]);
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(
        b"GET /big/10 HTTP/1.1\r\nHost: a\r\n\r\nGET /big/300000 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /big/7 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .unwrap();
    for want in [pattern(10), pattern(300_000), b"hello".to_vec(), pattern(7)] {
        let (head, body) = read_message(&mut reader).expect("an answer");
        assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
        assert_eq!(body.len(), want.len(), "{head:?}");
        assert!(body == want, "{head:?}");
    }
}

/// A backend that answers a request as soon as its head is in, without reading its body:
/// a 413, then it keeps the connection open a while.
fn refusing_backend() -> SocketAddr {
    backend_serving(|mut reader, mut out| {
        if read_head(&mut reader).is_none() {
            return;
        }
        let _ =
            out.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n");
        std::thread::sleep(Duration::from_secs(5));
    })
}

/// Whether the proxy closed `r`'s connection (within its read timeout).
fn closed_by_proxy(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).is_ok() && rest.is_empty()
}

#[test]
fn a_100_continue_goes_out_when_the_body_is_wanted_and_an_early_answer_ends_the_body() {
    // The backend reads the body (and sends no 100 of its own): the proxy's 100 comes once
    // it sends the body (after waiting a moment for the backend's word), then the answer, and
    // the connection carries the next request.
    let proxy = Proxy::start(Some(echo_body_backend()), &[]);
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(
        b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_message(&mut reader).expect("a 100");
    assert_eq!(head[0], "http/1.1 100 continue", "{head:?}");
    assert!(body.is_empty());
    w.write_all(b"hello").unwrap();
    let (head, body) = read_message(&mut reader).expect("the answer");
    assert_eq!(head[0], "http/1.1 200 ok", "{head:?}");
    assert_eq!(body, b"hello");
    w.write_all(b"GET /big/3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let (_, body) = read_message(&mut reader).expect("the next answer");
    assert_eq!(body, pattern(3));

    // The backend sees the expectation, so that it can refuse before the body moves.
    let proxy = Proxy::start(Some(echo_head_backend()), &[]);
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(
        b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    let (_, body) = read_message(&mut reader).expect("the answer");
    let seen = String::from_utf8_lossy(&body).to_string();
    assert_eq!(values(&seen, "expect"), ["100-continue"], "{seen}");

    // A backend that refuses at once: no 100 goes out, its answer does, and the connection
    // closes (what the client may still send of the body is no request).
    let refusing = refusing_backend();
    let proxy = Proxy::start(Some(refusing), &[]);
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(
        b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_message(&mut reader).expect("the early answer");
    assert_eq!(head[0], "http/1.1 413 payload too large", "{head:?}");
    assert!(head.contains(&"connection: close".to_string()), "{head:?}");
    assert_eq!(body, b"too big\n");
    assert!(closed_by_proxy(&mut reader));

    // Without Expect, a client already sending a large body gets the early answer too, its
    // connection closed after it; the backend stays in rotation.
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n")
        .unwrap();
    let _ = w.write_all(&pattern(200_000));
    let (head, _) = read_message(&mut reader).expect("the early answer");
    assert_eq!(head[0], "http/1.1 413 payload too large", "{head:?}");
    assert!(head.contains(&"connection: close".to_string()), "{head:?}");
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(status["faults"].get("bad_response"), None, "{status}");
    let started = Instant::now();
    let (mut reader, mut w) = connected(proxy.addr);
    w.write_all(b"PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        .unwrap();
    let (head, _) = read_message(&mut reader).expect("an answer");
    assert_eq!(head[0], "http/1.1 413 payload too large", "{head:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "held: marked down?"
    );
}

#[test]
fn http_10_clients_get_keep_alive_when_asked_and_a_close_delimited_body_otherwise() {
    let backend = echo_body_backend();
    let proxy = Proxy::start(Some(backend), &[]);
    // Asked to keep it, with a length known: kept, and said so.
    let (mut reader, mut s) = connected(proxy.addr);
    for _ in 0..2 {
        s.write_all(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (head, body) = read_message(&mut reader).expect("an answer");
        assert!(
            head.contains(&"connection: keep-alive".to_string()),
            "{head:?}"
        );
        assert!(body.is_empty());
    }
    // A streamed (chunked) answer to an HTTP/1.0 client: no chunked coding, which it does not
    // know; the body ends where the connection does.
    let (_, mut s) = connected(proxy.addr);
    s.write_all(b"GET /big/5000 HTTP/1.0\r\n\r\n").unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let at = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&all[..at]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(
        all[at..] == pattern(5000)[..],
        "{} body bytes",
        all.len() - at
    );
}

// ---------------------------------------------------------------------------------------------
// WebSocket.

type Ws = tungstenite::WebSocket<TcpStream>;

/// A WebSocket server answering each text message with `"{name} {message}"`.
fn ws_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(stream) else {
                    return;
                };
                loop {
                    match ws.read() {
                        Ok(tungstenite::Message::Text(t)) => {
                            let answer = format!("{name} {}", t.as_str());
                            if ws.send(tungstenite::Message::text(answer)).is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

/// A WebSocket client connected through the proxy.
fn ws_open(proxy: SocketAddr) -> Ws {
    let s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, response) = tungstenite::client::client(format!("ws://{proxy}/socket"), s)
        .unwrap_or_else(|e| panic!("WebSocket handshake through the proxy: {e}"));
    assert_eq!(response.status().as_u16(), 101);
    ws
}

/// Sends `text`, returns the answer.
fn ws_echo(ws: &mut Ws, text: &str) -> String {
    ws.send(tungstenite::Message::text(text)).unwrap();
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return t.as_str().to_string(),
            Ok(_) => {}
            Err(e) => panic!("reading the answer to {text:?}: {e}"),
        }
    }
}

/// Waits up to `limit` for the other side to close `ws`; how long that took, or what it
/// said instead.
fn ws_closed_within(ws: &mut Ws, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    ws.get_ref().set_read_timeout(Some(limit)).unwrap();
    match ws.read() {
        Ok(tungstenite::Message::Close(_)) => Ok(started.elapsed()),
        Ok(m) => Err(format!("still open: got {m:?}")),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!("still open after {limit:?}"))
        }
        Err(_) => Ok(started.elapsed()),
    }
}

#[test]
fn websockets_echo_through_the_proxy() {
    let a = ws_backend("blue");
    let proxy = Proxy::start(Some(a), &[]);
    let mut ws = ws_open(proxy.addr);
    for i in 0..20 {
        assert_eq!(ws_echo(&mut ws, &format!("m{i}")), format!("blue m{i}"));
    }
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(stat(&status, a, "upgraded_open"), 1, "{status}");
    assert_eq!(stat(&status, a, "upgraded"), 1, "{status}");
    assert_eq!(
        stat(&status, a, "inflight"),
        1,
        "an upgraded connection is in flight: {status}"
    );
    ws.close(None).unwrap();
    assert!(ws_closed_within(&mut ws, Duration::from_secs(5)).is_ok());
    drop(ws);
    proxy.wait_status(10, "the upgraded connection ends", |s| {
        stat(s, a, "upgraded_open") == 0 && stat(s, a, "inflight") == 0
    });
}

#[test]
fn websockets_follow_a_switch_and_a_drain_closes_the_old_ones_at_its_timeout() {
    let (a, b) = (ws_backend("blue"), ws_backend("green"));
    let proxy = Proxy::start(Some(a), &[]);
    let mut ws1 = ws_open(proxy.addr);
    assert_eq!(ws_echo(&mut ws1, "one"), "blue one");

    let routed = proxy.control(json!({"op": "route", "backend": b.to_string()}));
    assert_eq!(routed["ok"], true, "{routed}");
    assert_eq!(
        ws_echo(&mut ws1, "two"),
        "blue two",
        "an open WebSocket stays with its backend"
    );
    let mut ws2 = ws_open(proxy.addr);
    assert_eq!(
        ws_echo(&mut ws2, "three"),
        "green three",
        "a new upgrade reaches the new backend"
    );
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(stat(&status, a, "upgraded_open"), 1, "{status}");
    assert_eq!(stat(&status, b, "upgraded_open"), 1, "{status}");

    let started = Instant::now();
    let drained =
        proxy.control(json!({"op": "drain", "backend": a.to_string(), "timeout_ms": 1000}));
    let waited = started.elapsed();
    assert_eq!(drained["backend"], a.to_string(), "{drained}");
    assert!(
        waited >= Duration::from_millis(950),
        "the drain waits for the upgraded connection: {drained} after {waited:?}"
    );
    let closed = ws_closed_within(&mut ws1, Duration::from_secs(5));
    assert!(
        closed.is_ok(),
        "the proxy closes the old backend's WebSocket at the drain's timeout: {closed:?}"
    );
    assert_eq!(
        ws_echo(&mut ws2, "four"),
        "green four",
        "the active backend's WebSocket is left alone"
    );
    proxy.wait_status(10, "the status to show it", |s| {
        stat(s, a, "upgraded_open") == 0
            && stat(s, a, "inflight") == 0
            && stat(s, b, "upgraded_open") == 1
    });
}

#[test]
fn a_drain_returns_when_the_old_backends_websocket_closes() {
    let (a, b) = (ws_backend("blue"), ws_backend("green"));
    let proxy = Proxy::start(Some(a), &[]);
    let mut ws = ws_open(proxy.addr);
    assert_eq!(ws_echo(&mut ws, "one"), "blue one");
    proxy.control(json!({"op": "route", "backend": b.to_string()}));
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let _ = ws.close(None);
        let _ = ws_closed_within(&mut ws, Duration::from_secs(5));
    });
    let started = Instant::now();
    let drained =
        proxy.control(json!({"op": "drain", "backend": a.to_string(), "timeout_ms": 20000}));
    let waited = started.elapsed();
    closer.join().unwrap();
    assert_eq!(drained["ok"], true, "{drained}");
    assert_eq!(drained["inflight"], 0, "{drained}");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(10),
        "the drain waited for the WebSocket to close, and no longer: {waited:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Streaming.

#[test]
fn server_sent_events_leave_the_proxy_as_the_backend_sends_them() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    // When the backend sent each event, and when it finished.
    let sent: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let log = sent.clone();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                    Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunk = |data: &str| format!("{:x}\r\n{data}\r\n", data.len());
        // Each time is taken just before the write: the client cannot see the data before it.
        let _ = out.write_all(head.as_bytes());
        log.lock().unwrap().push(Instant::now());
        let _ = out.write_all(chunk("data: one\n\n").as_bytes());
        std::thread::sleep(Duration::from_secs(1));
        log.lock().unwrap().push(Instant::now());
        let _ = out.write_all(chunk("data: two\n\n").as_bytes());
        std::thread::sleep(Duration::from_secs(1));
        log.lock().unwrap().push(Instant::now());
        let _ = out.write_all(b"0\r\n\r\n");
    });
    let proxy = Proxy::start(Some(backend), &[]);
    let mut s = TcpStream::connect(proxy.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: app.example\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let (mut first, mut second) = (None, None);
    let mut buf = [0u8; 4096];
    while second.is_none() {
        let n = s.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before the second event: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        if first.is_none() && text.contains("data: one\n\n") {
            first = Some(Instant::now());
        }
        if text.contains("data: two\n\n") {
            second = Some(Instant::now());
        }
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let sent = sent.lock().unwrap().clone();
    let first_delay = first.unwrap().duration_since(sent[0]);
    assert!(
        first_delay < Duration::from_millis(50),
        "the first event left the proxy {first_delay:?} after the backend sent it"
    );
    let second = second.unwrap();
    assert!(
        sent.len() < 3 || second < sent[2],
        "the second event arrived only when the backend finished"
    );
    let second_delay = second.duration_since(sent[1]);
    assert!(
        second_delay < Duration::from_millis(50),
        "the second event left the proxy {second_delay:?} after the backend sent it"
    );
}

// ---------------------------------------------------------------------------------------------
// Timeouts and limits.

#[test]
fn a_client_that_never_finishes_its_head_is_closed_at_the_header_timeout() {
    let a = Backend::start("blue", Duration::ZERO);
    let proxy = Proxy::start(Some(a.addr), &["--header-timeout-secs", "2"]);
    let slow = |partial: &'static [u8]| {
        let started = Instant::now();
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.write_all(partial).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let read = s.read_to_end(&mut got);
            (
                started.elapsed(),
                read,
                String::from_utf8_lossy(&got).to_string(),
            )
        })
    };
    let partial = slow(b"GET / HTTP/1.1\r\nHost: x\r\n");
    let silent = slow(b"");

    // Meanwhile another client is served.
    let (code, body) = Conn::open(proxy.addr).get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );

    for (what, t) in [("a partial head", partial), ("nothing", silent)] {
        let (elapsed, read, got) = t.join().unwrap();
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the client that sent {what} was not closed: {e} after {elapsed:?}"),
        }
        assert!(
            elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
            "the client that sent {what} was closed after {elapsed:?} (it got {got:?})"
        );
    }
}

#[test]
fn a_kept_alive_connection_idle_65_s_is_still_served() {
    let a = Backend::start("blue", Duration::ZERO);
    let proxy = Proxy::start(Some(a.addr), &[]);
    let mut conn = Conn::open(proxy.addr);
    assert_eq!(conn.get("/").0, 200);
    // Idle longer than the load balancer's 60 s idle timeout: this wait is what is tested.
    std::thread::sleep(Duration::from_secs(65));
    conn.stream().set_nonblocking(true).unwrap();
    let peeked = conn.stream().peek(&mut [0u8; 64]);
    conn.stream().set_nonblocking(false).unwrap();
    match peeked {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the idle connection is not open and quiet: {other:?}"),
    }
    let (code, body) = conn.try_get("/").unwrap();
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
}

#[test]
fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
    let a = Backend::start("blue", Duration::ZERO);
    let proxy = Proxy::start(Some(a.addr), &["--idle-timeout-secs", "2"]);
    let mut conn = Conn::open(proxy.addr);
    let started = Instant::now();
    assert_eq!(conn.get("/").0, 200);
    let mut s = conn.stream().try_clone().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut rest = Vec::new();
    let read = s.read_to_end(&mut rest);
    let elapsed = started.elapsed();
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "not closed: {read:?} after {elapsed:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(6),
        "closed after {elapsed:?}"
    );
}

#[test]
fn a_head_over_the_limit_is_431_and_a_smaller_one_is_served() {
    let a = Backend::start("blue", Duration::ZERO);
    let proxy = Proxy::start(Some(a.addr), &["--max-header-bytes", "8192"]);
    let big = "x".repeat(16 * 1024);
    let (code, _) = Conn::open(proxy.addr)
        .try_request("/", &[("X-Big", &big)])
        .unwrap();
    assert_eq!(code, 431);
    let small = "x".repeat(1024);
    let (code, body) = Conn::open(proxy.addr)
        .try_request("/", &[("X-Small", &small)])
        .unwrap();
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
}

// ---------------------------------------------------------------------------------------------
// Replicas.

/// `busybox httpd` serving `name` at `/`, in its own process group (so that SIGKILL to the
/// group kills it and its per-connection children, as a container's death would).
struct Httpd {
    child: std::process::Child,
    addr: SocketAddr,
    killed: bool,
    _dir: tempfile::TempDir,
}

impl Httpd {
    fn start(name: &str) -> Httpd {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), format!("{name}\n")).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let child = Command::new("/usr/bin/busybox")
            .args(["httpd", "-f", "-p", &addr.to_string(), "-h"])
            .arg(dir.path())
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let httpd = Httpd {
            child,
            addr,
            killed: false,
            _dir: dir,
        };
        assert_eventually!(10, "busybox httpd answers", || {
            common::http_get(addr.port(), "/").map(|_| ())
        });
        httpd
    }

    fn kill(&mut self) {
        if std::mem::replace(&mut self.killed, true) {
            return;
        }
        let group = format!("-{}", self.child.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL {group}");
        let _ = self.child.wait();
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn sigkill_of_one_of_three_replicas_under_load_fails_no_request() {
    let mut replicas: Vec<Httpd> = ["r1", "r2", "r3"].into_iter().map(Httpd::start).collect();
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let names: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
    let proxy = Proxy::start(None, &[]);
    let routed = proxy.control(json!({"op": "route", "backends": names, "release": "v2"}));
    assert_eq!(routed["ok"], true, "{routed}");
    let mut active = common::strings(&routed["active"]);
    active.sort();
    let mut want = names;
    want.sort();
    assert_eq!(active, want, "{routed}");

    let load = Load::start(proxy.addr, "/", 4);
    proxy.wait_status(20, "all three replicas serve", |s| {
        addrs.iter().all(|a| stat(s, *a, "served") > 0)
    });
    let status = proxy.control(json!({"op": "status"}));
    for a in &addrs {
        assert_eq!(
            status["backends"][a.to_string()]["release"],
            "v2",
            "{status}"
        );
    }

    let killed = addrs[0];
    replicas[0].kill();
    // Once a connect to it has failed, it is out of rotation: nothing more reaches it.
    let at_kill = proxy.wait_status(10, "the killed replica to leave rotation", |s| {
        stat(s, killed, "connect_errors") > 0
    });
    // The load goes on for 2 more seconds.
    std::thread::sleep(Duration::from_millis(1700));
    let end = proxy.control(json!({"op": "status"}));
    let samples = load.finish();
    let failed = failures(&samples);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)],
        proxy.log()
    );
    let answered = |s: &serde_json::Value| -> u64 {
        s["backends"][killed.to_string()]["responses"]
            .as_array()
            .map(|r| r.iter().filter_map(serde_json::Value::as_u64).sum())
            .unwrap_or(0)
    };
    assert_eq!(
        answered(&end),
        answered(&at_kill),
        "the killed replica answered after its death: {at_kill}\n{end}"
    );
    assert!(
        end["backends"][killed.to_string()]["down"] == true
            || stat(&end, killed, "served") == stat(&at_kill, killed, "served"),
        "the killed replica is neither down nor left alone: {at_kill}\n{end}"
    );
    for a in &addrs[1..] {
        assert!(
            stat(&end, *a, "served") > stat(&at_kill, *a, "served"),
            "{a} served after the kill: {end}"
        );
    }
}

/// A proxy routing to `bad` and `live` (in that order): ten GETs on one connection, each
/// answered by `live`; the proxy's status after.
fn ten_gets_answered_by(live: &Backend, bad: SocketAddr) -> serde_json::Value {
    let proxy = Proxy::start(None, &[]);
    let routed = proxy.control(json!({"op": "route",
        "backends": [bad.to_string(), live.addr.to_string()], "release": "v1"}));
    assert_eq!(routed["ok"], true, "{routed}");
    let mut conn = Conn::open(proxy.addr);
    for _ in 0..10 {
        let (code, body) = conn.get("/");
        assert_eq!(
            (code, body.split_whitespace().next().unwrap()),
            (200, "blue")
        );
    }
    proxy.control(json!({"op": "status"}))
}

#[test]
fn a_refusing_replica_is_skipped_and_counts_no_request_as_served() {
    let live = Backend::start("blue", Duration::ZERO);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let status = ten_gets_answered_by(&live, dead);
    assert!(stat(&status, dead, "connect_errors") >= 1, "{status}");
    assert_eq!(stat(&status, live.addr, "served"), 10, "{status}");
    assert_eq!(live.served.load(Ordering::SeqCst), 10);
    assert_eq!(
        stat(&status, dead, "served"),
        0,
        "a backend that refused every connection served nothing: {status}"
    );
}

#[test]
fn a_replica_dying_between_head_and_body_costs_a_retry_not_the_answer() {
    let live = Backend::start("blue", Duration::ZERO);
    // Answers each request's head and half its body, then closes: a replica killed mid-answer.
    let dying = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for mut stream in l.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf");
            }
        });
        addr
    };
    let status = ten_gets_answered_by(&live, dying);
    assert_eq!(stat(&status, live.addr, "served"), 10, "{status}");
    assert_eq!(stat(&status, dying, "served"), 0, "{status}");
}

#[test]
fn replicas_take_requests_least_in_flight_and_in_turn_when_tied() {
    let slow = Duration::from_millis(2000);
    let (a, b) = (Backend::start("blue", slow), Backend::start("green", slow));
    let proxy = Proxy::start(None, &[]);
    let routed = proxy.control(json!({"op": "route",
        "backends": [a.addr.to_string(), b.addr.to_string()], "release": "v1"}));
    assert_eq!(routed["ok"], true, "{routed}");

    // Ties (nothing in flight): in turn.
    let mut conn = Conn::open(proxy.addr);
    let mut names = Vec::new();
    for _ in 0..10 {
        let (code, body) = conn.get("/");
        assert_eq!(code, 200);
        names.push(body.split_whitespace().next().unwrap().to_string());
    }
    let blue = names.iter().filter(|n| *n == "blue").count();
    assert!((4..=6).contains(&blue), "10 requests in turn: {names:?}");

    // One slow request in flight on one backend: the others go to the other one.
    let addr = proxy.addr;
    let in_flight = std::thread::spawn(move || Conn::open(addr).get("/slow"));
    let busy = assert_eventually!(10, "the slow request in flight", || {
        let s = proxy.control(json!({"op": "status"}));
        [a.addr, b.addr]
            .into_iter()
            .find(|x| stat(&s, *x, "inflight") == 1)
            .ok_or_else(|| s.to_string())
    });
    let other = if busy == a.addr { "green" } else { "blue" };
    for _ in 0..5 {
        let (code, body) = conn.get("/");
        assert_eq!(
            (code, body.split_whitespace().next().unwrap()),
            (200, other),
            "the backend with nothing in flight"
        );
    }
    assert_eq!(in_flight.join().unwrap().0, 200);
}

#[test]
fn a_response_slower_than_the_response_timeout_is_504() {
    let a = Backend::start("blue", Duration::from_secs(5));
    let proxy = Proxy::start(Some(a.addr), &["--response-timeout-secs", "1"]);
    let started = Instant::now();
    let (code, _) = Conn::open(proxy.addr).get("/slow");
    let took = started.elapsed();
    assert_eq!(code, 504);
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    let (code, body) = Conn::open(proxy.addr).get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
}

#[test]
fn a_restart_resumes_a_saved_route_of_replicas() {
    let a = Backend::start("blue", Duration::ZERO);
    let b = Backend::start("green", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("route.json");
    let state_arg = state.to_str().unwrap().to_string();
    let mut proxy = Proxy::start(None, &["--state", &state_arg]);
    let both = json!([a.addr.to_string(), b.addr.to_string()]);
    let routed = proxy.control(json!({"op": "route", "backends": both, "release": "v3"}));
    assert_eq!(routed["ok"], true, "{routed}");
    proxy.child.kill().unwrap();
    proxy.child.wait().unwrap();
    let restarted = Proxy::start(None, &["--state", &state_arg]);
    let status = restarted.control(json!({"op": "status"}));
    let mut active = common::strings(&status["active"]);
    active.sort();
    let mut want = common::strings(&both);
    want.sort();
    assert_eq!(active, want, "{status}");
    let mut conn = Conn::open(restarted.addr);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (code, body) = conn.get("/");
        assert_eq!(code, 200);
        seen.insert(body.split_whitespace().next().unwrap().to_string());
    }
    assert_eq!(seen.len(), 2, "both replicas serve: {seen:?}");
}

// ---------------------------------------------------------------------------------------------
// Socket activation and restarts.

#[test]
fn a_control_socket_passed_by_systemd_is_served_and_outlives_each_proxy() {
    let backend = Backend::start("blue", Duration::ZERO);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Made by systemd as root, 0600, before any proxy runs.
    let control = dir.path().join("proxy.sock");
    let control_listener = std::os::unix::net::UnixListener::bind(&control).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o600)).unwrap();
    let log = dir.path().join("proxy.log");
    let state = dir.path().join("route.json");
    let args = ["--state", state.to_str().unwrap()];
    for round in 1..=2 {
        let mut proxy =
            Activated::start_with(&listener, Some(&control_listener), &control, &log, &args);
        if round == 1 {
            proxy.control(json!({"op": "route", "backends": [backend.addr.to_string()]}));
        }
        let s = proxy.control(json!({"op": "status"}));
        assert_eq!(
            s["active"],
            json!([backend.addr.to_string()]),
            "round {round}: {s}"
        );
        let pid = proxy.child.id().to_string();
        signal(&pid, "TERM");
        let exit = proxy.child.wait().unwrap();
        assert!(
            exit.success(),
            "{exit:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // Not the proxy's to remove: the next one gets it from systemd again.
        assert!(
            control.exists(),
            "round {round}: the control socket was removed"
        );
    }
}

#[test]
fn restarts_under_load_on_a_socket_activated_listener_fail_no_request() {
    let backend = Backend::start("blue", Duration::ZERO);
    // What systemd's berth-proxy.socket holds across the service's restarts.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("proxy.sock");
    let log = dir.path().join("proxy.log");
    let b = backend.addr.to_string();
    let args = ["--backend", b.as_str(), "--drain-secs", "10"];
    let mut proxy = Activated::start(&listener, &control, &log, &args);

    let load = Load::start(addr, "/", 4);
    load.run_for(200);
    let mut restarts = Vec::new();
    for round in 1..=2 {
        let pid = proxy.child.id().to_string();
        signal(&pid, "TERM");
        let exit = assert_eventually!(20, "the old proxy exits", || {
            proxy
                .child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_string())
        });
        assert!(
            exit.success(),
            "restart {round}: {exit:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // As systemd's restart: the next one at once, on the same socket.
        proxy = Activated::start(&listener, &control, &log, &args);
        restarts.push(Instant::now());
        assert_eventually!(20, "the new proxy serves", || {
            let s = proxy.control(json!({"op": "status"}));
            if total(&s, "served") >= 50 {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }
    load.run_for(100);
    let samples = load.finish();
    let failed = failures(&samples);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)],
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for (i, r) in restarts.iter().enumerate() {
        let after = samples
            .iter()
            .filter(|s| s.started >= *r && s.result.is_ok())
            .count();
        assert!(after > 0, "nothing served after restart {}", i + 1);
    }
}

#[test]
fn systemd_socket_activate_starts_a_proxy_that_serves() {
    let a = Backend::start("blue", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let addr = format!("127.0.0.1:{}", common::free_port());
    // --listen names the activated address: binding it again would fail, so a served request
    // shows that fd 3 is what serves.
    let child = Command::new("/usr/bin/systemd-socket-activate")
        .args(["-l", &addr, env!("CARGO_BIN_EXE_berth"), "proxy"])
        .args(["--listen", &addr, "--backend", &a.addr.to_string()])
        .arg("--control")
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("proxy.log")).unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    // systemd-socket-activate starts the proxy at the first connection.
    let addr: SocketAddr = addr.parse().unwrap();
    let mut conn = assert_eventually!(10, "systemd-socket-activate listens", || {
        Conn::try_open(addr)
    });
    let (code, body) = conn.try_get("/").unwrap_or_else(|e| {
        let exit = child.0.try_wait();
        panic!(
            "{e}; the proxy: {exit:?}\n{}",
            std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
        )
    });
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
    let status = control(&socket, &json!({"op": "status"}));
    assert_eq!(status["active"], json!([a.addr.to_string()]), "{status}");
}

// ---------------------------------------------------------------------------------------------
// State file and control socket limits.

#[test]
fn a_corrupt_state_file_starts_with_no_route_and_the_control_socket_works() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("route.json");
    std::fs::write(&state, "{\"active\": [\u{0}garbage").unwrap();
    let proxy = Proxy::start(None, &["--state", state.to_str().unwrap()]);
    assert_eq!(Conn::open(proxy.addr).get("/").0, 503);
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(status["ok"], true, "{status}");
    assert!(common::strings(&status["active"]).is_empty(), "{status}");

    let a = Backend::start("blue", Duration::ZERO);
    let routed = proxy.control(json!({"op": "route", "backend": a.addr.to_string()}));
    assert_eq!(routed["ok"], true, "{routed}");
    let (code, body) = Conn::open(proxy.addr).get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "blue")
    );
}

#[test]
fn a_control_line_over_64_kib_is_refused_naming_the_limit() {
    let proxy = Proxy::start(None, &[]);
    let line = format!(
        "{}\n",
        json!({"op": "status", "padding": "x".repeat(100 * 1024)})
    );
    let s = std::os::unix::net::UnixStream::connect(&proxy.control).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut writer = s.try_clone().unwrap();
    // The proxy may stop reading at its limit: write from another thread, whatever comes of it.
    let write = std::thread::spawn(move || writer.write_all(line.as_bytes()));
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).unwrap();
    let _ = write.join().unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer)
        .unwrap_or_else(|e| panic!("not a JSON answer ({e}): {answer:?}"));
    assert_eq!(answer["ok"], false, "{answer}");
    let error = answer["error"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(
        error.contains("65536") || error.contains("64 kib") || error.contains("64kib"),
        "the refusal names the limit: {answer}"
    );
    let status = proxy.control(json!({"op": "status"}));
    assert_eq!(
        status["ok"], true,
        "the control socket still works: {status}"
    );
}

/// A keep-alive backend for the reload test: `/events` streams five SSE events 300 ms apart
/// and ends the stream; a WebSocket upgrade echoes text; anything else answers `blue`.
fn mixed_backend() -> SocketAddr {
    backend_serving(|mut reader, mut out| loop {
        // The head as sent (the WebSocket key is case-sensitive); these requests have no body.
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        if head[0].starts_with("GET /events") {
            let _ = out.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            );
            for i in 0..5 {
                let event = format!("data: {i}\n\n");
                let _ = write!(out, "{:x}\r\n{event}\r\n", event.len());
                std::thread::sleep(Duration::from_millis(300));
            }
            if out.write_all(b"0\r\n\r\n").is_err() {
                return;
            }
        } else if let Some(key) = head.iter().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v)
        }) {
            // The handshake by hand (the head is read already), then tungstenite's frames.
            let accept = tungstenite::handshake::derive_accept_key(key.trim().as_bytes());
            let _ = write!(
                out,
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            let mut ws = tungstenite::WebSocket::from_raw_socket(
                out,
                tungstenite::protocol::Role::Server,
                None,
            );
            while let Ok(m) = ws.read() {
                if let tungstenite::Message::Text(t) = m {
                    let answer = format!("blue {}", t.as_str());
                    if ws.send(tungstenite::Message::text(answer)).is_err() {
                        return;
                    }
                }
            }
            return;
        } else if out
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nblue\n")
            .is_err()
        {
            return;
        }
    })
}

/// Kills a process this test did not start (a proxy's successor) when dropped.
struct Successor(u32);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.0.to_string())
            .status();
    }
}

#[test]
fn a_reload_hands_over_at_once_while_open_streams_finish_on_the_old_proxy() {
    let backend = mixed_backend();
    // What systemd's berth-proxy.socket holds.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("proxy.sock");
    let log = dir.path().join("proxy.log");
    let state = dir.path().join("route.json");
    let b = backend.to_string();
    let args = [
        "--backend",
        b.as_str(),
        "--state",
        state.to_str().unwrap(),
        "--drain-secs",
        "20",
    ];
    let mut old = Activated::start(&listener, &control, &log, &args);
    let old_pid = old.child.id();

    let load = Load::start(addr, "/", 4);
    load.run_for(100);
    let sse = std::thread::spawn(move || {
        let (mut r, mut w) = connected(addr);
        w.write_all(b"GET /events HTTP/1.1\r\nHost: app\r\n\r\n")
            .unwrap();
        read_message(&mut r)
    });
    let mut ws = ws_open(addr);
    assert_eq!(ws_echo(&mut ws, "before"), "blue before");
    assert_eventually!(5, "the stream is open", || {
        let s = old.control(json!({"op": "status"}));
        (stat(&s, backend, "inflight") >= 2)
            .then_some(())
            .ok_or_else(|| s.to_string())
    });

    signal(old_pid, "HUP");
    let reloaded = Instant::now();
    // Every new connection meanwhile is answered at once, by one proxy or the other.
    let mut slowest = Duration::ZERO;
    while reloaded.elapsed() < Duration::from_secs(2) {
        let asked = Instant::now();
        let (code, body) = Conn::open(addr).get("/");
        assert_eq!((code, body.trim()), (200, "blue"));
        slowest = slowest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a new connection waited {slowest:?}"
    );
    let status = old.control(json!({"op": "status"}));
    let new_pid = status["pid"].as_u64().unwrap() as u32;
    let _successor = Successor(new_pid);
    assert_ne!(new_pid, old_pid, "the successor answers the control socket");
    assert_eq!(status["active"], json!([b]), "it resumed the saved route");

    // The old proxy keeps what it had open: the WebSocket, and the stream to its end.
    assert_eq!(ws_echo(&mut ws, "after"), "blue after");
    let (head, events) = sse
        .join()
        .unwrap()
        .expect("the SSE stream ends cleanly (its last chunk)");
    assert!(head[0].starts_with("http/1.1 200"), "{head:?}");
    let events = String::from_utf8(events).unwrap();
    assert_eq!(events.matches("data: ").count(), 5, "{events}");
    ws.close(None).unwrap();
    let _ = ws_closed_within(&mut ws, Duration::from_secs(5));
    drop(ws);
    let exit = assert_eventually!(10, "the old proxy exits once its streams ended", || {
        old.child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "still running".to_string())
    });
    assert!(
        exit.success(),
        "{exit:?}\n{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        control.exists(),
        "the old proxy left the successor's control socket"
    );

    load.run_for(100);
    let samples = load.finish();
    let failed = failures(&samples);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}\n{}",
        failed.len(),
        samples.len(),
        &failed[..failed.len().min(10)],
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let after = samples
        .iter()
        .filter(|s| s.started >= reloaded + Duration::from_secs(1) && s.result.is_ok())
        .count();
    assert!(after > 0, "nothing served after the reload");
}

// ---------------------------------------------------------------------------------------------
// Backend connections: pooled per worker, reaped, bounded.

/// A keep-alive backend answering its name, counting the connections it accepted and those
/// still open.
struct Counted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

impl Counted {
    fn start(name: &'static str) -> Counted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, o) = (accepted.clone(), open.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                a.fetch_add(1, Ordering::SeqCst);
                o.fetch_add(1, Ordering::SeqCst);
                let o = o.clone();
                std::thread::spawn(move || {
                    serve(stream, name, Duration::ZERO, &AtomicUsize::new(0));
                    o.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Counted {
            addr,
            accepted,
            open,
        }
    }
}

#[test]
fn client_connections_share_backend_connections_which_close_after_idling() {
    let a = Counted::start("blue");
    let proxy = Proxy::start(Some(a.addr), &[]);
    let workers = std::thread::available_parallelism().unwrap().get();
    // Twenty ALB connections, one request each, then idle (kept open).
    let clients: Vec<Conn> = (0..20)
        .map(|_| {
            let mut c = Conn::open(proxy.addr);
            assert_eq!(c.get("/").0, 200);
            c
        })
        .collect();
    let accepted = a.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= workers,
        "{accepted} backend connections for 20 sequential requests ({workers} workers)"
    );
    // Idle, they are closed by the proxy (not left in CLOSE_WAIT), the clients still open.
    let closed_within = Instant::now();
    assert_eventually!(10, "the idle backend connections are closed", || {
        let open = a.open.load(Ordering::SeqCst);
        (open == 0).then_some(()).ok_or(format!("{open} open"))
    });
    assert!(closed_within.elapsed() < Duration::from_secs(5));
    drop(clients);
}

#[test]
fn a_preview_and_the_route_alternating_on_one_connection_reuse_their_backend_connections() {
    let (a, b) = (Counted::start("blue"), Counted::start("green"));
    let proxy = Proxy::start(Some(a.addr), &[]);
    let previewed = proxy.control(json!({"op": "preview", "backends": [b.addr.to_string()],
        "release": "v2", "token": "t0k3n"}));
    assert_eq!(previewed["ok"], true, "{previewed}");
    let mut c = Conn::open(proxy.addr);
    for i in 0..20 {
        let (code, body) = if i % 2 == 0 {
            c.try_request("/", &[]).unwrap()
        } else {
            c.try_request("/", &[("X-Berth-Preview", "t0k3n")]).unwrap()
        };
        let expected = if i % 2 == 0 { "blue" } else { "green" };
        assert_eq!(
            (code, body.split_whitespace().next().unwrap()),
            (200, expected)
        );
    }
    let (ab, bb) = (
        a.accepted.load(Ordering::SeqCst),
        b.accepted.load(Ordering::SeqCst),
    );
    assert!(
        ab == 1 && bb == 1,
        "backend connections for 10 requests to each side: {ab} and {bb}"
    );
}
