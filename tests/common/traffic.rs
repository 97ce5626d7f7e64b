//! The traffic side of the rig: `berth proxy` as a process, a keep-alive HTTP/1.1 client, and a
//! load client that records every request (when it started and ended, what answered).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::free_port;

/// The proxy process, killed when dropped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub control: PathBuf,
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
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let control = dir.path().join("proxy.sock");
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
            .stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let proxy = Proxy {
            child,
            addr,
            control,
            _dir: dir,
        };
        super::eventually("the proxy listens", Duration::from_secs(10), || {
            TcpStream::connect(proxy.addr)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        super::eventually("the control socket exists", Duration::from_secs(10), || {
            UnixStream::connect(&proxy.control)
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        proxy
    }

    #[allow(clippy::needless_pass_by_value)] // call sites read better with json! inline
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
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    /// GET `path` on this connection; returns (status, body).
    pub fn get(&mut self, path: &str) -> (u16, String) {
        self.try_get(path).unwrap()
    }

    /// GET `path`; an error says what went wrong (for load clients that count failures).
    pub fn try_get(&mut self, path: &str) -> Result<(u16, String), String> {
        let err = |what: &str, e: std::io::Error| format!("{what}: {e}");
        let req = format!("GET {path} HTTP/1.1\r\nHost: app.example\r\n\r\n");
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
            let h = h.to_ascii_lowercase();
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
            if h.starts_with("transfer-encoding:") && h.contains("chunked") {
                chunked = true;
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

/// Waits until exactly `n` requests are in flight through the proxy (all backends).
pub fn wait_inflight(control_socket: &Path, n: u64) {
    super::eventually(
        &format!("{n} requests in flight"),
        Duration::from_secs(10),
        || {
            let s = control(control_socket, &serde_json::json!({"op": "status"}));
            let inflight: u64 = s["inflight"]
                .as_object()
                .map(|m| m.values().filter_map(serde_json::Value::as_u64).sum())
                .unwrap_or(0);
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
/// connection is reopened (the failure is recorded).
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
                            None => match TcpStream::connect(addr) {
                                Ok(_) => {
                                    conn = Some(Conn::open(addr));
                                    continue;
                                }
                                Err(e) => Err(format!("connect: {e}")),
                            },
                        };
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
