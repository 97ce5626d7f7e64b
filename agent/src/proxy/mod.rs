//! `berth proxy`: the small HTTP/1.1 reverse proxy that owns the traffic port (the target
//! group's port) during zero-downtime upgrades. It is its own process (its own systemd unit),
//! so that a crash, SIGKILL or self-upgrade of the agent never drops the listener or cuts a
//! connection; the agent changes its routing table over a local control socket.
//!
//! The route is read per request, so a request arriving on an existing keep-alive connection
//! after a switch goes to the new backend. In-flight requests are counted per backend (until
//! their response body is fully sent), which is what a drain waits on. Each client connection
//! keeps its own upstream connection alive while the route stays the same.
//!
//! Control protocol (one JSON object per line, one answer per line), on a 0600 Unix socket:
//! `{"op":"route","backend":"127.0.0.1:32768"}` switches; `{"op":"status"}` shows the route,
//! in-flight and served counts; `{"op":"drain","backend":"...","timeout_ms":30000}` waits until
//! nothing is in flight to that backend.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener, UnixStream};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("proxy control socket {path}: {source} (is `berth proxy` running?)")]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("control socket {path}: bad answer: {message}")]
    Answer { path: PathBuf, message: String },
    #[error("state file {path}: {message}")]
    State { path: PathBuf, message: String },
}

/// Per-backend counters.
#[derive(Debug, Default)]
struct Counters {
    inflight: AtomicU64,
    served: AtomicU64,
}

#[derive(Debug, Clone)]
struct Backend {
    addr: SocketAddr,
    /// `addr` as a Host value, for requests that come without one.
    authority: hyper::http::uri::Authority,
    counters: Arc<Counters>,
}

/// The routing table: the backend requests go to now, and the one before it.
#[derive(Debug, Default)]
pub struct Routes {
    active: RwLock<Option<Backend>>,
    previous: RwLock<Option<SocketAddr>>,
    counters: Mutex<BTreeMap<SocketAddr, Arc<Counters>>>,
    state_file: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedRoute {
    active: Option<SocketAddr>,
    previous: Option<SocketAddr>,
}

impl Routes {
    fn counters_for(&self, addr: SocketAddr) -> Arc<Counters> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr).or_default().clone()
    }

    fn current(&self) -> Option<Backend> {
        self.active
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Switches atomically; returns the backend that was active.
    pub fn route(&self, addr: SocketAddr) -> Option<SocketAddr> {
        let authority = match addr.to_string().parse() {
            Ok(a) => a,
            Err(_) => return None,
        };
        let backend = Backend {
            addr,
            authority,
            counters: self.counters_for(addr),
        };
        let old = self
            .active
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(backend)
            .map(|b| b.addr);
        if old.is_some() && old != Some(addr) {
            *self.previous.write().unwrap_or_else(|e| e.into_inner()) = old;
        }
        self.save();
        tracing::info!(backend = %addr, previous = ?old, "route switched");
        old
    }

    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let saved = SavedRoute {
            active: self.current().map(|b| b.addr),
            previous: *self.previous.read().unwrap_or_else(|e| e.into_inner()),
        };
        let tmp = path.with_extension("tmp");
        let ok = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = ok {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the route");
        }
    }

    fn inflight(&self, addr: SocketAddr) -> u64 {
        self.counters_for(addr).inflight.load(Ordering::Acquire)
    }

    fn total_inflight(&self) -> u64 {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|c| c.inflight.load(Ordering::Acquire))
            .sum()
    }

    fn status(&self) -> serde_json::Value {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let inflight: BTreeMap<String, u64> = map
            .iter()
            .map(|(a, c)| (a.to_string(), c.inflight.load(Ordering::Acquire)))
            .collect();
        let served: BTreeMap<String, u64> = map
            .iter()
            .map(|(a, c)| (a.to_string(), c.served.load(Ordering::Acquire)))
            .collect();
        serde_json::json!({
            "ok": true,
            "active": self.current().map(|b| b.addr.to_string()),
            "previous": self.previous.read().unwrap_or_else(|e| e.into_inner()).map(|a| a.to_string()),
            "inflight": inflight,
            "served": served,
        })
    }
}

/// One request in flight to a backend, until finished or dropped.
struct InFlight(Option<Arc<Counters>>);

impl InFlight {
    fn start(counters: &Arc<Counters>) -> InFlight {
        counters.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(Some(counters.clone()))
    }

    fn finish(&mut self) {
        if let Some(c) = self.0.take() {
            c.inflight.fetch_sub(1, Ordering::AcqRel);
            c.served.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A response body that keeps its request in flight until it is fully sent (or dropped).
enum ProxyBody {
    Upstream { body: Incoming, inflight: InFlight },
    Local(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = match this {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            ProxyBody::Local(full) => {
                return Pin::new(full)
                    .poll_frame(cx)
                    .map_err(|never: Infallible| match never {})
            }
        };
        if let (
            Poll::Ready(None) | Poll::Ready(Some(Err(_))),
            ProxyBody::Upstream { inflight, .. },
        ) = (&polled, this)
        {
            inflight.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

fn local(code: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Local(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = code;
    resp
}

/// Hop-by-hop headers (RFC 9110 section 7.6.1): they describe one connection, not the message.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in named {
        headers.remove(h);
    }
    for h in HOP_BY_HOP {
        headers.remove(h);
    }
}

/// Reuse an idle upstream connection only this soon: a backend may close idle keep-alive
/// connections (5 s is a common timeout), and a request must not race that close.
const IDLE_REUSE: Duration = Duration::from_secs(2);

/// One client connection's upstream connection, 1:1 (as nginx's upstream keep-alive does), so no
/// request waits on a shared pool. Reopened when the route changes, or after it idled.
#[derive(Default)]
struct Upstream {
    link: tokio::sync::Mutex<Option<Link>>,
}

struct Link {
    backend: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
    last_used: Instant,
}

async fn connect(backend: SocketAddr) -> Result<Link, String> {
    let stream = tokio::net::TcpStream::connect(backend)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Link {
        backend,
        sender,
        last_used: Instant::now(),
    })
}

impl Upstream {
    async fn send(
        &self,
        backend: SocketAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, String> {
        let mut slot = self.link.lock().await;
        let mut req = req;
        // A kept-alive connection the backend has just closed (busybox httpd closes after every
        // response) hands the request back unsent: it is retried once on a new connection, so
        // that race never becomes a 502.
        for attempt in 0..2 {
            let reusable = slot.as_ref().is_some_and(|l| {
                l.backend == backend && !l.sender.is_closed() && l.last_used.elapsed() < IDLE_REUSE
            });
            if !reusable || attempt > 0 {
                *slot = Some(connect(backend).await?);
            }
            let Some(link) = slot.as_mut() else {
                return Err("no upstream connection".into());
            };
            if link.sender.ready().await.is_err() {
                *slot = None;
                continue;
            }
            let result = link.sender.try_send_request(req).await;
            link.last_used = Instant::now();
            match result {
                Ok(resp) => return Ok(resp),
                Err(mut e) => {
                    *slot = None;
                    match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(e.into_error().to_string()),
                    }
                }
            }
        }
        Err("the backend closed the connection twice".into())
    }
}

async fn forward(
    routes: &Routes,
    upstream: &Upstream,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(backend) = routes.current() else {
        return local(StatusCode::SERVICE_UNAVAILABLE, "no backend\n");
    };
    // Origin-form (`/path?query`), as a server expects from a client; some (busybox httpd)
    // refuse the absolute form.
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    // The client's Host passes through (the app sees the name it was called by); an HTTP/1.0
    // request without one gets the backend's.
    if !req.headers().contains_key(hyper::header::HOST) {
        if let Ok(v) = HeaderValue::from_str(backend.authority.as_str()) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    let forwarded = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

    let inflight = InFlight::start(&backend.counters);
    match upstream.send(backend.addr, req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::Upstream { body, inflight })
        }
        Err(e) => {
            drop(inflight);
            tracing::warn!(backend = %backend.addr, error = %e, "upstream request failed");
            local(StatusCode::BAD_GATEWAY, "bad gateway\n")
        }
    }
}

/// Serves until SIGTERM/SIGINT, then stops accepting and lets in-flight requests finish
/// (up to `drain`).
pub async fn run(
    listen: SocketAddr,
    control: &Path,
    backend: Option<SocketAddr>,
    state: Option<PathBuf>,
    drain: Duration,
) -> Result<(), ProxyError> {
    let mut routes = Routes {
        state_file: state.clone(),
        ..Routes::default()
    };
    if let Some(path) = &state {
        match std::fs::read(path) {
            Ok(bytes) => {
                let saved: SavedRoute =
                    serde_json::from_slice(&bytes).map_err(|e| ProxyError::State {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                routes.state_file = None; // restoring, not changing
                if let Some(p) = saved.previous {
                    routes.route(p);
                }
                if let Some(a) = saved.active {
                    routes.route(a);
                }
                routes.state_file = state.clone();
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ProxyError::State {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
        }
    }
    if let Some(b) = backend {
        routes.route(b);
    }
    let routes = Arc::new(routes);
    // One single-threaded runtime per core, each accepting on its own SO_REUSEPORT listener
    // (nginx's worker model): a request and its upstream connection never change threads.
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // A plain bind first: SO_REUSEPORT alone would let a second (or stale) proxy share the port.
    let probe = std::net::TcpListener::bind(listen);
    drop(probe.map_err(|source| ProxyError::Listen {
        addr: listen,
        source,
    })?);
    let listeners = (0..workers)
        .map(|_| reuseport_listener(listen))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ProxyError::Listen {
            addr: listen,
            source,
        })?;
    let control_listener = bind_control(control)?;
    tokio::spawn(serve_control(control_listener, routes.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let threads: Vec<std::thread::JoinHandle<()>> = listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let routes = routes.clone();
            let stop = stop_rx.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || worker(listener, routes, stop))
                .map_err(|source| ProxyError::Listen {
                    addr: listen,
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    tracing::info!(%listen, control = %control.display(), workers, "proxy listening");
    // Under systemd (Type=notify): ready once the port and the control socket accept.
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ProxyError::Listen {
            addr: listen,
            source,
        })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop accepting; what is in flight may finish.
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + drain;
    while routes.total_inflight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(left = routes.total_inflight(), "proxy stopped");
    let _ = std::fs::remove_file(control);
    drop(threads); // their runtimes end with the process
    Ok(())
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    // Handed to the worker's own runtime, which registers it there.
    listener.into_std()
}

/// One worker: a current-thread runtime serving the connections its listener accepts.
fn worker(
    listener: std::net::TcpListener,
    routes: Arc<Routes>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "proxy worker cannot start");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "proxy worker cannot listen");
                return;
            }
        };
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                _ = stop.wait_for(|s| *s) => break,
            };
            let _ = stream.set_nodelay(true);
            let routes = routes.clone();
            tokio::spawn(async move {
                let upstream = Arc::new(Upstream::default());
                let svc = hyper::service::service_fn(move |req| {
                    let routes = routes.clone();
                    let upstream = upstream.clone();
                    async move { Ok::<_, Infallible>(forward(&routes, &upstream, peer, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
        drop(listener);
        // Keep serving the connections already open until the process ends.
        std::future::pending::<()>().await;
    });
}

fn bind_control(path: &Path) -> Result<UnixListener, ProxyError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ProxyError::Control {
        path: path.to_path_buf(),
        source,
    };
    // A socket left by a killed proxy would make bind fail.
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    // Root only: whoever can change the route can take the traffic.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ControlRequest {
    Route {
        backend: SocketAddr,
    },
    Status,
    Drain {
        backend: SocketAddr,
        timeout_ms: Option<u64>,
    },
}

async fn serve_control(listener: UnixListener, routes: Arc<Routes>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<ControlRequest>(&line) {
                    Ok(ControlRequest::Route { backend }) => {
                        let old = routes.route(backend);
                        serde_json::json!({"ok": true, "active": backend.to_string(), "previous": old.map(|a| a.to_string())})
                    }
                    Ok(ControlRequest::Status) => routes.status(),
                    Ok(ControlRequest::Drain {
                        backend,
                        timeout_ms,
                    }) => {
                        let deadline =
                            Instant::now() + Duration::from_millis(timeout_ms.unwrap_or(30_000));
                        while routes.inflight(backend) > 0 && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        let left = routes.inflight(backend);
                        serde_json::json!({"ok": left == 0, "backend": backend.to_string(), "inflight": left})
                    }
                    Err(e) => serde_json::json!({"ok": false, "error": e.to_string()}),
                };
                let mut out = answer.to_string();
                out.push('\n');
                if write.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// An answer without `"ok": true` is an error naming the socket.
pub fn expect_ok(path: &Path, answer: &serde_json::Value) -> Result<(), ProxyError> {
    if answer.get("ok").and_then(|v| v.as_bool()) == Some(true) {
        return Ok(());
    }
    Err(ProxyError::Answer {
        path: path.to_path_buf(),
        message: answer.to_string(),
    })
}

/// Sends one control request and returns the answer (the agent's side, and `berth proxy-ctl`).
pub async fn control(
    path: &Path,
    request: &serde_json::Value,
) -> Result<serde_json::Value, ProxyError> {
    let err = |source| ProxyError::Control {
        path: path.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(path).await.map_err(err)?;
    let (read, mut write) = stream.into_split();
    let mut line = request.to_string();
    line.push('\n');
    write.write_all(line.as_bytes()).await.map_err(err)?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .map_err(err)?;
    serde_json::from_str(&answer).map_err(|e| ProxyError::Answer {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-end-to-end", HeaderValue::from_static("kept"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "kept");
    }

    #[test]
    fn routing_keeps_the_previous_backend() {
        let r = Routes::default();
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        assert_eq!(r.route(a), None);
        assert_eq!(r.route(b), Some(a));
        assert_eq!(r.current().unwrap().addr, b);
        assert_eq!(*r.previous.read().unwrap(), Some(a));
        // Re-routing to the same backend keeps `previous` (rollback still possible).
        assert_eq!(r.route(b), Some(b));
        assert_eq!(*r.previous.read().unwrap(), Some(a));
    }
}
