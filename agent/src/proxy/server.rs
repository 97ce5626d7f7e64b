//! `berth proxy`'s process: the traffic listeners (one SO_REUSEPORT socket per worker thread),
//! the control socket's handler, and the SIGTERM drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::forward::{forward, Upstream};
use super::protocol::{Answer, Drained, Refused, Request, Routed, DEFAULT_DRAIN_MS};
use super::routes::Routes;
use super::ProxyError;
use crate::ipc;

/// Serves until SIGTERM/SIGINT, then stops accepting and lets in-flight requests finish
/// (up to `drain`).
pub async fn run(
    listen: SocketAddr,
    control: &Path,
    backend: Option<SocketAddr>,
    state: Option<PathBuf>,
    drain: Duration,
) -> Result<(), ProxyError> {
    let routes = Routes::restore(state)?;
    if let Some(b) = backend {
        routes.route(b);
    }
    let routes = Arc::new(routes);
    let listen_err = |source| ProxyError::Listen {
        addr: listen,
        source,
    };
    let listeners = bind_traffic(listen).map_err(listen_err)?;
    let workers = listeners.len();
    let control_listener = ipc::bind(control)
        .await
        .map_err(ProxyError::ControlSocket)?;
    let handler = Arc::new(Control {
        routes: routes.clone(),
    });
    tokio::spawn(ipc::serve(control_listener, handler));
    let (stop_tx, stop_rx) = watch::channel(false);
    let threads = spawn_workers(listeners, &routes, &stop_rx).map_err(listen_err)?;
    tracing::info!(%listen, control = %control.display(), workers, "proxy listening");
    notify_ready();

    wait_for_signal().await.map_err(listen_err)?;
    // Stop accepting; what is in flight may finish.
    let _ = stop_tx.send(true);
    wait_drained(&routes, drain).await;
    tracing::info!(left = routes.total_inflight(), "proxy stopped");
    let _ = std::fs::remove_file(control);
    drop(threads); // their runtimes end with the process
    Ok(())
}

/// One listener per core, each to be served by its own single-threaded runtime (nginx's worker
/// model): a request and its upstream connection never change threads.
fn bind_traffic(listen: SocketAddr) -> std::io::Result<Vec<std::net::TcpListener>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
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
    routes: &Arc<Routes>,
    stop: &watch::Receiver<bool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| {
            let routes = routes.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || worker(listener, routes, stop))
        })
        .collect()
}

/// Under systemd (Type=notify): ready once the port and the control socket accept.
fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

/// Waits until nothing is in flight to any backend, up to `drain`.
async fn wait_drained(routes: &Routes, drain: Duration) {
    let deadline = Instant::now() + drain;
    while routes.total_inflight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One worker: a current-thread runtime serving the connections its listener accepts.
fn worker(listener: std::net::TcpListener, routes: Arc<Routes>, stop: watch::Receiver<bool>) {
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
        accept_until_stopped(listener, routes, stop).await;
        // Keep serving the connections already open until the process ends.
        std::future::pending::<()>().await;
    });
}

/// Accepts and serves connections until `stop`; the listener closes when this returns.
async fn accept_until_stopped(
    listener: TcpListener,
    routes: Arc<Routes>,
    mut stop: watch::Receiver<bool>,
) {
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
            Request::Route { backend } => {
                let previous = self.routes.route(backend);
                Answer::Routed(Routed {
                    ok: true,
                    active: backend,
                    previous,
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

    fn bad_request(&self, error: serde_json::Error) -> Answer {
        Answer::Refused(Refused {
            ok: false,
            error: error.to_string(),
        })
    }
}

impl Control {
    /// Waits until nothing is in flight to `backend`, up to `timeout`.
    async fn drain(&self, backend: SocketAddr, timeout: Duration) -> Drained {
        let deadline = Instant::now() + timeout;
        while self.routes.inflight(backend) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = self.routes.inflight(backend);
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
        control.handle(Request::Route { backend: a }).await;
        let routed = control.handle(Request::Route { backend: b }).await;
        assert_eq!(
            routed,
            Answer::Routed(Routed {
                ok: true,
                active: b,
                previous: Some(a)
            })
        );
        let Answer::Status(status) = control.handle(Request::Status).await else {
            panic!("not a status");
        };
        assert_eq!((status.active, status.previous), (Some(b), Some(a)));
        let drained = control
            .handle(Request::Drain {
                backend: a,
                timeout_ms: Some(0),
            })
            .await;
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
