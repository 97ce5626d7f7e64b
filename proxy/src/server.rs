//! `berth proxy`'s process: the traffic listener (systemd's, when socket-activated; else its
//! own, one SO_REUSEPORT socket per worker thread), the control socket's handler, and the
//! SIGTERM stop.

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::connection;
use super::forward::Limits;
use super::handover;
use super::metrics;
use super::park;
use super::protocol::{Answer, Drained, PreviewSet, Refused, Request, Routed, DEFAULT_DRAIN_MS};
use super::routes::{Routes, BUCKETS};
use super::state::{self, Timeouts};
use super::ProxyError;
use crate::ipc;

/// How `berth proxy` runs: its command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where clients connect, unless systemd passes the listening socket.
    pub listen: SocketAddr,
    pub control: PathBuf,
    /// The backends to start with (else the saved route, else none: 503).
    pub backends: Vec<SocketAddr>,
    pub state: Option<PathBuf>,
    /// On SIGTERM, how long in-flight requests may take to finish.
    pub drain: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// How long a request that reaches no backend waits for another route.
    pub hold: Duration,
    /// `None`: no limit on the backend's response head (long polls); counted from the end
    /// of the request body.
    pub response_timeout: Option<Duration>,
    /// One wait for the client's next request body bytes (then 408).
    pub body_timeout: Duration,
    /// One wait for a peer to take bytes: the client the answer's (then the connection
    /// closes), the backend a request body's (then 504).
    pub send_timeout: Duration,
    pub max_header_bytes: usize,
    /// Peers whose X-Forwarded-* headers are believed; `None`: all.
    pub trusted: Option<Vec<ipnet::IpNet>>,
    /// Time requests and count them by status (`--no-metrics` turns it off).
    pub metrics: bool,
    /// The header, and the cookie, by which a request names the release in preview.
    pub preview_header: hyper::header::HeaderName,
    pub preview_cookie: String,
    /// The cookie that keeps a session on its side of a weighted canary.
    pub canary_cookie: String,
    /// Worker threads (each a runtime with its own listener); `None`: one per CPU.
    pub workers: Option<usize>,
    /// On SIGTERM, park open connections in systemd's file descriptor store for the next
    /// proxy (park.rs; the unit's `FileDescriptorStoreMax=`). Needs `state` (the note goes
    /// beside it).
    pub fd_store: bool,
}

/// Serves until SIGTERM/SIGINT, then stops accepting, answers the next request on each
/// kept-alive connection with `Connection: close`, closes upgraded connections, and lets
/// in-flight requests finish (up to `drain`).
pub async fn run(settings: Settings) -> Result<(), ProxyError> {
    let workers = worker_count(settings.workers);
    // Each backend's counters get a lane per worker (made as backends are routed, below).
    metrics::set_lanes(workers);
    let routes = Routes::restore(settings.state.clone(), settings.metrics);
    if !settings.backends.is_empty() {
        routes.route(&settings.backends, None);
    }
    let routes = Arc::new(routes);
    let listen = settings.listen;
    let listen_err = |source| ProxyError::Listen {
        addr: listen,
        source,
    };
    let mut inherited = listenfd::ListenFd::from_env();
    // The traffic socket systemd passed, kept for a successor (a reload hands it over).
    let mut traffic_fd: Option<OwnedFd> = None;
    let (listeners, activated) = match inherited_listener(&mut inherited).map_err(listen_err)? {
        Some(l) => {
            traffic_fd = Some(l.try_clone().map_err(listen_err)?.into());
            (share(l, workers).map_err(listen_err)?, true)
        }
        None => (bind_traffic(listen, workers).map_err(listen_err)?, false),
    };
    // systemd may pass the control socket too (made by root, 0600): then the proxy, running
    // as an unprivileged user, needs no write access where it lives.
    let (control_listener, own_control) = match inherited_control(&mut inherited) {
        Ok(Some(l)) => (l, false),
        Ok(None) => (
            ipc::bind(&settings.control)
                .await
                .map_err(ProxyError::ControlSocket)?,
            true,
        ),
        Err(source) => {
            return Err(ProxyError::ControlSocket(ipc::IpcError::Bind {
                path: settings.control.clone(),
                source,
            }))
        }
    };
    // Connections the proxy before this one parked: systemd passed them after the sockets.
    // Parking needs systemd's store: without its notify socket the descriptors would go
    // nowhere, and the connections are better finished here.
    let store = settings.fd_store && std::env::var_os("NOTIFY_SOCKET").is_some();
    if settings.fd_store && !store {
        tracing::warn!(
            "--fd-store without systemd's notify socket: connections are not parked on SIGTERM"
        );
    }
    let note_dir = settings
        .state
        .as_deref()
        .filter(|_| store)
        .and_then(|p| p.parent())
        .map(|d| {
            if d.as_os_str().is_empty() {
                Path::new(".")
            } else {
                d
            }
        });
    let passed = park::passed(std::env::var("LISTEN_FDNAMES").ok().as_deref());
    let resumed = park::take_back(note_dir, &passed, |index, v6| {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        inherited
            .take_custom::<std::net::TcpStream>(
                index,
                family,
                libc::SOCK_STREAM,
                "a parked connection",
            )
            .ok()
            .flatten()
    });
    // What was passed and not taken back (no note for it, or parking is off now) is closed:
    // else its client would wait on a connection nobody serves. (AF_INET takes IPv6 too.)
    for p in &passed {
        let _ = inherited.take_custom::<std::net::TcpStream>(
            p.index,
            libc::AF_INET,
            libc::SOCK_STREAM,
            "a parked connection",
        );
    }
    if !passed.is_empty() {
        tracing::info!(
            "restart: took back {} connections the proxy before parked ({})",
            resumed.len(),
            park::counted(&resumed)
        );
    }
    let lot = Arc::new(park::Lot::new(note_dir.map(Path::to_path_buf)));
    let (park_tx, park_rx) = watch::channel(false);
    let control_fd = control_listener.as_fd().try_clone_to_owned().ok();
    let handler = Arc::new(Control {
        routes: routes.clone(),
    });
    let mut control_task = tokio::spawn(ipc::serve(control_listener, handler.clone()));
    let shared = Arc::new(state::Shared {
        routes: routes.clone(),
        limits: Limits {
            connect: settings.connect_timeout,
            hold: settings.hold,
            response: settings.response_timeout,
            send: settings.send_timeout,
            trusted: settings.trusted.clone(),
            metrics: settings.metrics,
            preview_header: settings.preview_header.clone(),
            preview_cookie: settings.preview_cookie.clone(),
            canary_cookie: settings.canary_cookie.clone(),
            faults: routes.faults.clone(),
            lot: lot.clone(),
            parking: park_rx,
        },
        timeouts: Timeouts {
            header: settings.header_timeout,
            idle: settings.idle_timeout,
            max_header_bytes: settings.max_header_bytes,
            body: settings.body_timeout,
            send: settings.send_timeout,
        },
        stopping: Default::default(),
        open: Default::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = spawn_workers(listeners, &shared, &stop_rx, resumed).map_err(listen_err)?;
    let address = if activated {
        "systemd's socket".to_string()
    } else {
        listen.to_string()
    };
    tracing::info!(listen = %address, control = %settings.control.display(), workers, "proxy listening");
    // The code that got here is handed back: serving faults in only what it runs.
    match crate::pages::release_code() {
        Ok(bytes) => tracing::debug!(bytes, "start-up code paged out"),
        Err(e) => tracing::debug!(error = %e, "start-up code not paged out"),
    }
    notify_ready();

    let sockets = match (traffic_fd, control_fd) {
        (Some(traffic), Some(control)) => Some(handover::Sockets { traffic, control }),
        _ => None,
    };
    let mut handed_over = false;
    loop {
        if wait_for_signal().await.map_err(listen_err)? == Signal::Stop {
            break;
        }
        let Some(sockets) = &sockets else {
            tracing::warn!("reload ignored: a successor needs the listening socket from systemd (berth-proxy.socket)");
            continue;
        };
        // The successor serves the control socket from the route saved in --state: this one
        // stops answering there first, so no route is changed in between.
        control_task.abort();
        match handover::hand_over(sockets).await {
            Ok(pid) => {
                tracing::info!(
                    successor = pid,
                    "reload: the successor accepts; finishing what is open here"
                );
                handed_over = true;
                break;
            }
            Err(e) => {
                tracing::error!(error = %handover::described(&e), "reload failed; this proxy goes on serving");
                match control_again(&sockets.control) {
                    Ok(l) => control_task = tokio::spawn(ipc::serve(l, handler.clone())),
                    Err(e) => {
                        tracing::error!(error = %e, "the control socket cannot be served again")
                    }
                }
            }
        }
    }
    // Stop accepting (a socket systemd holds keeps queueing for the next process), and let
    // kept-alive connections go after their next answer. On a stop with `--fd-store`, they,
    // upgraded connections and response bodies on their way are parked for the next proxy
    // instead (park.rs); without it upgraded connections close at once. After a handover
    // they, and SSE streams, may finish within the drain, unless a SIGTERM comes meanwhile
    // (a restart right after a reload): then they are parked too.
    let parking = lot.enabled() && !handed_over;
    if parking {
        lot.request();
        let _ = park_tx.send(true);
    }
    shared.stopping.store(true, Ordering::Release);
    let _ = stop_tx.send(true);
    if !handed_over && !parking {
        routes.cut_all();
    }
    let drained = wait_drained(&shared, settings.drain);
    tokio::pin!(drained);
    if handed_over && lot.enabled() {
        tokio::select! {
            () = &mut drained => {}
            Ok(Signal::Stop) = wait_for_signal() => {
                tracing::info!("stopped while finishing after a reload: parking what is open");
                lot.request();
                let _ = park_tx.send(true);
                drained.await;
            }
        }
    } else {
        drained.await;
    }
    if lot.enabled() {
        let counts = lot.counts();
        match lot.store() {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("restart: {n} connections parked for the next proxy ({counts})")
            }
            Err(e) => {
                tracing::error!(error = %e, "the open connections could not be parked: they close")
            }
        }
    }
    tracing::info!(
        left = routes.total_inflight(),
        connections = shared.open.load(Ordering::Acquire),
        "proxy stopped"
    );
    // systemd's socket stays for the next proxy, and so does one a successor serves.
    if own_control && !handed_over {
        let _ = std::fs::remove_file(&settings.control);
    }
    drop(threads); // their runtimes end with the process
    Ok(())
}

/// The listening socket systemd passes (`berth-proxy.socket`): it outlives this process, so a
/// restart loses no connection waiting to be accepted.
fn inherited_listener(
    fds: &mut listenfd::ListenFd,
) -> std::io::Result<Option<std::net::TcpListener>> {
    let Some(listener) = fds.take_tcp_listener(0)? else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    Ok(Some(listener))
}

/// The control socket, when systemd passes it after the traffic port.
fn inherited_control(
    fds: &mut listenfd::ListenFd,
) -> std::io::Result<Option<tokio::net::UnixListener>> {
    if fds.len() < 2 {
        return Ok(None);
    }
    let Some(listener) = fds.take_unix_listener(1)? else {
        return Ok(None);
    };
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener).map(Some)
}

/// One descriptor of the same socket per worker.
fn share(
    listener: std::net::TcpListener,
    workers: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut all = Vec::with_capacity(workers);
    for _ in 1..workers {
        all.push(listener.try_clone()?);
    }
    all.push(listener);
    Ok(all)
}

/// `--workers`, else one per CPU this process may run on.
fn worker_count(asked: Option<usize>) -> usize {
    asked.filter(|n| *n > 0).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// One listener per core, each to be served by its own single-threaded runtime (nginx's worker
/// model): a request and its upstream connection never change threads.
fn bind_traffic(listen: SocketAddr, workers: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // A plain bind first: SO_REUSEPORT alone would let a second (or stale) proxy share the port.
    drop(std::net::TcpListener::bind(listen)?);
    (0..workers).map(|_| reuseport_listener(listen)).collect()
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

fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    shared: &Arc<state::Shared>,
    stop: &watch::Receiver<bool>,
    resumed: Vec<park::Resumed>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    // The connections taken back from a restart, dealt out to the workers in turn.
    let n = listeners.len().max(1);
    let mut shares: Vec<Vec<park::Resumed>> = (0..n).map(|_| vec![]).collect();
    for (i, r) in resumed.into_iter().enumerate() {
        shares[i % n].push(r);
    }
    listeners
        .into_iter()
        .zip(shares)
        .enumerate()
        .map(|(i, (listener, resumed))| {
            let shared = shared.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    metrics::set_lane(i);
                    worker(listener, shared, stop, resumed)
                })
        })
        .collect()
}

/// Under systemd (Type=notify): ready once the port and the control socket accept. It names
/// itself the main process: a successor started by a reload takes that over (the unit's
/// `NotifyAccess=all` lets it).
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let me = sd_notify::NotifyState::MainPid(std::process::id());
        if let Err(e) = sd_notify::notify(&[me, sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
    handover::tell_predecessor();
}

/// What a signal asks of the proxy.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    /// SIGTERM, SIGINT.
    Stop,
    /// SIGHUP (`systemctl reload`): hand over to a successor.
    Reload,
}

async fn wait_for_signal() -> std::io::Result<Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::select! {
        _ = term.recv() => Signal::Stop,
        _ = tokio::signal::ctrl_c() => Signal::Stop,
        _ = hup.recv() => Signal::Reload,
    })
}

/// The control socket served again, from the descriptor kept for a successor (after a
/// handover that failed).
fn control_again(fd: &OwnedFd) -> std::io::Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(fd.try_clone()?);
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// Waits until no client connection is open and nothing is in flight, up to `drain`.
async fn wait_drained(shared: &state::Shared, drain: Duration) {
    let deadline = Instant::now() + drain;
    while (shared.open.load(Ordering::Acquire) > 0 || shared.routes.total_inflight() > 0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One worker: a current-thread runtime serving the connections its listener accepts.
fn worker(
    listener: std::net::TcpListener,
    shared: Arc<state::Shared>,
    stop: watch::Receiver<bool>,
    resumed: Vec<park::Resumed>,
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
        // This worker's idle backend connections are closed before a backend's keep-alive
        // would close them under a request (pool.rs).
        tokio::spawn(async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                super::forward::reap_idle();
            }
        });
        for r in resumed {
            tokio::spawn(connection::resume(r, shared.clone()));
        }
        // The stop wakes this worker's waiting connections (stopping.rs).
        let mut stopped = stop.clone();
        tokio::spawn(async move {
            let _ = stopped.wait_for(|s| *s).await;
            super::stopping::wake_all();
        });
        accept_until_stopped(listener, shared, stop).await;
        // Keep serving the connections already open until the process ends.
        std::future::pending::<()>().await;
    });
}

/// Accepts and serves connections until `stop`; the listener closes when this returns.
async fn accept_until_stopped(
    listener: TcpListener,
    shared: Arc<state::Shared>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        tokio::spawn(connection::serve(stream, peer, shared.clone()));
    }
}

/// Answers the control socket's requests.
#[derive(Debug)]
struct Control {
    routes: Arc<Routes>,
}

impl ipc::Handler for Control {
    type Request = Request;
    type Answer = Answer;

    async fn handle(&self, request: Request) -> Answer {
        match request {
            Request::Route {
                backend,
                backends,
                release,
            } => {
                let all: Vec<SocketAddr> = backend.into_iter().chain(backends).collect();
                match self.routes.route(&all, release.as_deref()) {
                    Some(previous) => Answer::Routed(Routed {
                        ok: true,
                        active: self.routes.active(),
                        previous,
                    }),
                    None => Answer::Refused(Refused {
                        ok: false,
                        error: "route: no backend given (\"backend\" or \"backends\")".into(),
                    }),
                }
            }
            Request::Preview {
                release, percent, ..
            } if percent > BUCKETS => Answer::Refused(Refused {
                ok: false,
                error: format!(
                    "preview of {}: percent {percent} is over 100",
                    release.as_deref().unwrap_or("nothing")
                ),
            }),
            Request::Preview {
                backends,
                release,
                percent,
                token,
                until,
            } => {
                let token = token.map(|t| (t, until));
                Answer::PreviewSet(PreviewSet {
                    ok: true,
                    preview: self
                        .routes
                        .preview(&backends, release.as_deref(), percent, token),
                })
            }
            Request::Status => Answer::Status(self.routes.status()),
            Request::Drain {
                backend,
                timeout_ms,
            } => {
                let timeout = Duration::from_millis(timeout_ms.unwrap_or(DEFAULT_DRAIN_MS));
                Answer::Drained(self.drain(backend, timeout).await)
            }
        }
    }

    fn bad_request(&self, error: String) -> Answer {
        Answer::Refused(Refused { ok: false, error })
    }
}

impl Control {
    /// Waits until nothing is in flight to `backend`, up to `timeout`; then closes the
    /// upgraded connections still open to it (unless it is routed to again).
    async fn drain(&self, backend: SocketAddr, timeout: Duration) -> Drained {
        let deadline = Instant::now() + timeout;
        while self.routes.inflight(backend) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut left = self.routes.inflight(backend);
        if left == 0 {
            self.routes.prune();
        }
        if left > 0 {
            self.routes.cut(backend);
            // The cut connections leave at once; what stays is requests still running.
            let settle = Instant::now() + Duration::from_millis(200);
            while self.routes.inflight(backend) > 0 && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            left = self.routes.inflight(backend);
            if left == 0 {
                self.routes.prune();
            }
        }
        Drained {
            ok: left == 0,
            backend,
            inflight: left,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ipc::Handler;

    #[tokio::test]
    async fn the_handler_routes_reports_and_drains() {
        let control = Control {
            routes: Arc::new(Routes::default()),
        };
        let a: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1002".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:1003".parse().unwrap();
        control.handle(Request::route(&[a], Some("v1"))).await;
        let routed = control
            .handle(Request::Route {
                backend: Some(b),
                backends: vec![c],
                release: Some("v2".into()),
            })
            .await;
        assert_eq!(
            routed,
            Answer::Routed(Routed {
                ok: true,
                active: vec![b, c],
                previous: vec![a]
            })
        );
        let Answer::Status(status) = control.handle(Request::Status).await else {
            panic!("not a status");
        };
        assert_eq!((status.active, status.previous), (vec![b, c], vec![a]));
        assert_eq!(status.backends[&c].release.as_deref(), Some("v2"));
        let refused = control.handle(Request::route(&[], None)).await;
        assert!(
            matches!(&refused, Answer::Refused(r) if r.error.contains("no backend")),
            "{refused:?}"
        );
        let over = control
            .handle(Request::Preview {
                backends: vec![a],
                release: Some("v2".into()),
                percent: 101,
                token: None,
                until: None,
            })
            .await;
        assert!(
            matches!(&over, Answer::Refused(r) if r.error == "preview of v2: percent 101 is over 100"),
            "{over:?}"
        );
        // Nothing in flight: the drain answers at once, whatever its time limit.
        let asked = Instant::now();
        let drained = control
            .handle(Request::Drain {
                backend: a,
                timeout_ms: Some(30_000),
            })
            .await;
        assert!(
            asked.elapsed() < Duration::from_millis(100),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(
            drained,
            Answer::Drained(Drained {
                ok: true,
                backend: a,
                inflight: 0
            })
        );
    }
}
