//! `berth proxy` as a process: real TCP backends (small HTTP/1.1 servers in this test process)
//! behind the real binary, its route changed over its real control socket.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::traffic::{wait_inflight, Conn, Proxy};

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
    assert_eq!(answer["previous"], a.addr.to_string());
    let (code, body) = conn.get("/");
    assert_eq!(
        (code, body.split_whitespace().next().unwrap()),
        (200, "green"),
        "same connection"
    );

    let status = proxy.control(serde_json::json!({"op": "status"}));
    assert_eq!(status["active"], b.addr.to_string());
    assert_eq!(status["previous"], a.addr.to_string());
    assert_eq!(status["served"][a.addr.to_string()], 1);
    assert_eq!(status["served"][b.addr.to_string()], 1);
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
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
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
fn no_backend_is_503_and_a_dead_backend_is_502() {
    let proxy = Proxy::start(None, &[]);
    assert_eq!(Conn::open(proxy.addr).get("/").0, 503);
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    proxy.control(serde_json::json!({"op": "route", "backend": dead.to_string()}));
    assert_eq!(Conn::open(proxy.addr).get("/").0, 502);
    let bad = proxy.control(serde_json::json!({"op": "route", "backend": "not-an-address"}));
    assert_eq!(bad["ok"], false, "{bad}");
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
    assert_eq!(status["previous"], a.addr.to_string(), "{status}");
    drop(dir);
}
