//! The traffic side of the rig: `berth proxy` as a process, a keep-alive HTTP/1.1 client, and a
//! load client that records every request (when it started and ended, what answered).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::free_port;

/// The proxy process, killed when dropped. Its stderr goes to `log` (a pipe nobody read would
/// stall a proxy that logs much).
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub control: PathBuf,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    pub fn start(backend: Option<SocketAddr>, extra: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, backend, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, backend: Option<SocketAddr>, extra: &[&str]) -> Proxy {
        let control = dir.path().join("proxy.sock");
        let log = dir.path().join("proxy.log");
        // A free port may be taken by another test between free_port() and the proxy's bind:
        // then the proxy exits saying so, and another port is tried.
        for _ in 0..5 {
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
            cmd.arg("proxy")
                .arg("--listen")
                .arg(addr.to_string())
                .arg("--control")
                .arg(&control);
            if let Some(b) = backend {
                cmd.arg("--backend").arg(b.to_string());
            }
            cmd.args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            let mut child = cmd.spawn().unwrap();
            // The control socket is bound after the traffic port: once it answers, the port is
            // this proxy's (and not another test's listener).
            let exited = super::eventually(
                "the proxy's control socket answers",
                Duration::from_secs(10),
                || {
                    if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                        return Ok(Some(status));
                    }
                    UnixStream::connect(&control)
                        .map(|_| None)
                        .map_err(|e| e.to_string())
                },
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            match exited {
                Some(_) if text.contains("cannot listen") => continue,
                Some(status) => panic!("the proxy exited: {status}\n{text}"),
                None => {}
            }
            let proxy = Proxy {
                child,
                addr,
                control,
                log,
                _dir: dir,
            };
            super::eventually("the proxy listens", Duration::from_secs(10), || {
                TcpStream::connect(proxy.addr)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            });
            return proxy;
        }
        panic!("the proxy found no free port in 5 tries");
    }

    /// Polls `status` until `holds` says yes, up to `secs`; returns that status.
    #[track_caller]
    pub fn wait_status(
        &self,
        secs: u64,
        what: &str,
        holds: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        super::eventually(what, Duration::from_secs(secs), || {
            let s = self.control(serde_json::json!({"op": "status"}));
            if holds(&s) {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        })
    }

    #[allow(clippy::needless_pass_by_value)] // call sites read better with json! inline
    pub fn control(&self, request: serde_json::Value) -> serde_json::Value {
        control(&self.control, &request)
    }

    /// What the proxy wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A proxy started as systemd starts a socket-activated service: `listener` (which the caller
/// keeps, as `berth-proxy.socket` keeps it across restarts) is its fd 3, with `LISTEN_FDS=1` and
/// `LISTEN_PID` its own pid. Killed when dropped.
pub struct Activated {
    pub child: Child,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Activated {
    /// `berth proxy --control CONTROL ARGS...` on `listener`, its stderr appended to `log`;
    /// returns once the control socket answers.
    pub fn start(listener: &TcpListener, control: &Path, log: &Path, args: &[&str]) -> Activated {
        Activated::start_with(listener, None, control, log, args)
    }

    /// As `start`, and with `control_listener` (bound at `control`) as its fd 4, as systemd
    /// passes the control socket too.
    pub fn start_with(
        listener: &TcpListener,
        control_listener: Option<&std::os::unix::net::UnixListener>,
        control: &Path,
        log: &Path,
        args: &[&str],
    ) -> Activated {
        let fd: OwnedFd = listener.try_clone().unwrap().into();
        let (script, stdout) = match control_listener {
            // The control socket arrives as stdout and moves to fd 4.
            Some(l) => {
                let cfd: OwnedFd = l.try_clone().unwrap().into();
                (
                    r#"exec 3<&0 4>&1 </dev/null >/dev/null; LISTEN_FDS=2 LISTEN_PID=$$ exec "$0" proxy "$@""#,
                    Stdio::from(cfd),
                )
            }
            None => (
                r#"exec 3<&0 </dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" proxy "$@""#,
                Stdio::null(),
            ),
        };
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // The listener arrives as stdin; the shell moves it to fd 3 and execs berth in its own
        // process, so that `$$` is berth's pid.
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_berth"))
            .arg("--control")
            .arg(control)
            .args(args)
            .stdin(Stdio::from(fd))
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut proxy = Activated {
            child,
            control: control.to_path_buf(),
            log: log.to_path_buf(),
        };
        super::eventually(
            "the activated proxy's control socket answers",
            Duration::from_secs(10),
            || {
                if let Some(status) = proxy.child.try_wait().map_err(|e| e.to_string())? {
                    panic!(
                        "the activated proxy exited: {status}\n{}",
                        std::fs::read_to_string(&proxy.log).unwrap_or_default()
                    );
                }
                UnixStream::connect(&proxy.control)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        proxy
    }

    #[allow(clippy::needless_pass_by_value)]
    pub fn control(&self, request: serde_json::Value) -> serde_json::Value {
        control(&self.control, &request)
    }
}

pub fn control(path: &Path, request: &serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap()
}

/// One keep-alive client connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The last response said `Connection: close`: the server closes this connection.
    pub closed: bool,
    /// The last response's headers: (lowercased name, value).
    pub headers: Vec<(String, String)>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        Self::try_open(addr).unwrap()
    }

    pub fn try_open(addr: SocketAddr) -> Result<Conn, String> {
        let s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone().map_err(|e| e.to_string())?),
            writer: s,
            closed: false,
            headers: Vec::new(),
        })
    }

    /// The last response's header `name` (lowercase), the first of them.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The socket itself (to peek at, or to set timeouts on).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// GET `path` on this connection; returns (status, body).
    pub fn get(&mut self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap()
    }

    /// GET `path`; an error says what went wrong (for load clients that count failures).
    pub fn try_get(&mut self, path: &str) -> Result<(u16, String), String> {
        self.try_request(path, &[])
    }

    /// GET `path` with `Host: app.example` and `headers` after it.
    pub fn try_request(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<(u16, String), String> {
        let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer
            .write_all(req.as_bytes())
            .map_err(|e| err("send", e))?;
        let mut status = String::new();
        if self
            .reader
            .read_line(&mut status)
            .map_err(|e| err("status line", e))?
            == 0
        {
            return Err("connection closed before a response".into());
        }
        let code: u16 = status
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line {status:?}"))?;
        let mut len = 0;
        let mut chunked = false;
        self.headers.clear();
        loop {
            let mut h = String::new();
            if self
                .reader
                .read_line(&mut h)
                .map_err(|e| err("header", e))?
                == 0
            {
                return Err("connection closed in the headers".into());
            }
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                self.headers
                    .push((k.to_ascii_lowercase(), v.trim().to_string()));
            }
            let h = h.to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
            }
            if h.starts_with("connection:") && h.contains("close") {
                self.closed = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader
                    .read_line(&mut size)
                    .map_err(|e| err("chunk size", e))?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| format!("bad chunk size {size:?}"))?;
                let mut chunk = vec![0; n + 2];
                self.reader
                    .read_exact(&mut chunk)
                    .map_err(|e| err("chunk", e))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len, 0);
            self.reader
                .read_exact(&mut body)
                .map_err(|e| err("body", e))?;
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `field` (`inflight`, `served`, ...) of every backend in a proxy's status, added up.
pub fn total(status: &serde_json::Value, field: &str) -> u64 {
    status["backends"]
        .as_object()
        .map(|m| m.values().filter_map(|b| b[field].as_u64()).sum())
        .unwrap_or(0)
}

/// `field` of one backend in a proxy's status (0 when the backend is not listed).
pub fn stat(status: &serde_json::Value, backend: SocketAddr, field: &str) -> u64 {
    status["backends"][backend.to_string()][field]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until exactly `n` requests are in flight through the proxy (all backends).
pub fn wait_inflight(control_socket: &Path, n: u64) {
    super::eventually(
        &format!("{n} requests in flight"),
        Duration::from_secs(10),
        || {
            let s = control(control_socket, &serde_json::json!({"op": "status"}));
            let inflight = total(&s, "inflight");
            if inflight == n {
                Ok(())
            } else {
                Err(s.to_string())
            }
        },
    );
}

/// One request the load client made.
#[derive(Debug, Clone)]
pub struct Sample {
    pub started: Instant,
    pub ended: Instant,
    /// The body (trimmed) of a 2xx, or what went wrong.
    pub result: Result<String, String>,
}

/// Keeps `clients` keep-alive connections busy with GET `path` until stopped; a failed
/// connection is reopened (the failure is recorded), and so is one the server closes after
/// answering `Connection: close` (not a failure).
pub struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(addr: SocketAddr, path: &'static str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                let samples = samples.clone();
                std::thread::spawn(move || {
                    let mut conn: Option<Conn> = None;
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let result = match conn.as_mut() {
                            Some(c) => c.try_get(path),
                            None => match Conn::try_open(addr) {
                                Ok(c) => {
                                    conn = Some(c);
                                    continue;
                                }
                                Err(e) => Err(e),
                            },
                        };
                        if conn.as_ref().is_some_and(|c| c.closed) {
                            conn = None;
                        }
                        let result = match result {
                            Ok((code, body)) if (200..300).contains(&code) => {
                                Ok(body.trim().to_string())
                            }
                            Ok((code, body)) => Err(format!("{code} {}", body.trim())),
                            Err(e) => {
                                conn = None;
                                Err(e)
                            }
                        };
                        let ended = Instant::now();
                        samples.lock().unwrap().push(Sample {
                            started,
                            ended,
                            result,
                        });
                        // Light load: the daemon and berth share the machine with it.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            threads,
        }
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Lets the load run until it has made at least `n` more requests.
    pub fn run_for(&self, n: usize) {
        let target = self.count() + n;
        super::eventually("load to make requests", Duration::from_secs(30), || {
            if self.count() >= target {
                Ok(())
            } else {
                Err(format!("{} of {target}", self.count()))
            }
        });
    }

    /// Stops the clients and returns every request they made.
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// The failed requests, as `reason` lines (empty when none failed).
pub fn failures(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .filter_map(|s| s.result.as_ref().err().cloned())
        .collect()
}

/// One HTTP/1.1 message read from `r`: its head's lines (lowercased, the first is the start
/// line) and its body (by Content-Length or chunked; none otherwise). `None` when the stream
/// ends first, also partway through the body.
pub fn read_message(r: &mut impl BufRead) -> Option<(Vec<String>, Vec<u8>)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_ascii_lowercase());
    }
    let value = |name: &str| {
        head.iter()
            .skip(1)
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    let mut body = Vec::new();
    if let Some(n) = value("content-length:") {
        body.resize(n.parse().ok()?, 0);
        r.read_exact(&mut body).ok()?;
    } else if value("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).ok()? == 0 {
                return None;
            }
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some((head, body))
}
