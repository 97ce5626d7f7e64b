//! One client connection's life: served by berth's own HTTP/1.1 server (downstream.rs) while
//! its requests have no body, by hyper's from the first one that has one (or upgrades), and
//! closed at its header and idle timeouts, and politely when the proxy stops.
//!
//! hyper's own `header_read_timeout` also runs while a kept-alive connection waits for its
//! next request, so it would close idle connections at 30 s: before the ALB's 60 s idle
//! timeout, which is the classic 502 (the ALB sends on a connection the target just closed).
//! So the timeouts are kept here instead, from two counters the request path updates: a new
//! connection must complete a request head within the header timeout; a kept-alive one may
//! idle for the idle timeout (longer than the ALB's).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http_body_util::Either;
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::activity::Activity;
use super::downstream::{self, End};
use super::forward::{forward, resume_tunnel, Client};
use super::metrics::now_ms;
use super::park;
use super::prefixed::Prefixed;
use super::request_body::RequestBody;
use super::state::{Shared, Timeouts, LINGER};

/// What the watcher does with a connection when it looks.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Look again in this many milliseconds.
    Wait(u64),
    /// Finish what is in flight and close (hyper's graceful shutdown).
    Close,
    /// Close now: it never sent a request head in time.
    Drop,
}

/// The watcher's decision, from the connection's counters at `now` (pure, for the tests).
fn verdict(
    busy: u32,
    requests: u64,
    last_ms: u64,
    now: u64,
    t: &Timeouts,
    stopping: bool,
) -> Verdict {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let limit = match (stopping, requests) {
        (true, _) => ms(LINGER),
        (false, 0) => ms(t.header),
        (false, _) => ms(t.idle),
    };
    if busy > 0 {
        // Its response carries `Connection: close` once stopping; else idle starts after it.
        return Verdict::Wait(limit);
    }
    let idle = now.saturating_sub(last_ms);
    if idle < limit {
        Verdict::Wait(limit - idle)
    } else if requests == 0 && !stopping {
        Verdict::Drop
    } else {
        Verdict::Close
    }
}

/// A connection counted open (what a stop waits for) until this is dropped: also when its
/// task ends in a panic, which the task contains (the workers' runtimes unwind a task's
/// panic into its join handle; no other connection notices).
struct Open<'a>(&'a AtomicU64);

impl<'a> Open<'a> {
    fn count(open: &'a AtomicU64) -> Open<'a> {
        open.fetch_add(1, Ordering::AcqRel);
        Open(open)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one accepted connection until it closes.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    serve_from(stream, peer, shared, stop, downstream::Start::New).await;
}

/// Takes back a connection the proxy before this one parked (park.rs) and serves it on.
pub(super) async fn resume(r: park::Resumed, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let std_stream = |s: std::net::TcpStream| {
        s.set_nonblocking(true)?;
        TcpStream::from_std(s)
    };
    let sockets = std_stream(r.client).and_then(|c| match r.backend {
        Some(b) => Ok((c, Some(std_stream(b)?))),
        None => Ok((c, None)),
    });
    let (client, backend) = match sockets {
        Ok(pair) => pair,
        Err(e) => {
            tracing::warn!(error = %e, "a parked connection cannot be taken back: closed");
            return;
        }
    };
    let Ok(peer) = client.peer_addr() else {
        return; // the client went away meanwhile
    };
    match (r.kind, backend) {
        (park::Kind::Idle { fresh }, _) => {
            serve_from(
                client,
                peer,
                shared,
                stop,
                downstream::Start::Kept { fresh },
            )
            .await;
        }
        (park::Kind::Stream(at), Some(backend)) => {
            let start = downstream::Start::Stream(backend, at);
            serve_from(client, peer, shared, stop, start).await;
        }
        (park::Kind::Awaiting(at), Some(backend)) => {
            let start = downstream::Start::Awaiting(backend, at);
            serve_from(client, peer, shared, stop, start).await;
        }
        (park::Kind::Tunnel { backend: addr }, Some(backend)) => {
            resume_tunnel(client, backend, addr, &shared.routes, &shared.limits).await;
        }
        (_, None) => {}
    }
}

async fn serve_from(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    start: downstream::Start,
) {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = stream.set_nodelay(true);
    let _open = Open::count(&shared.open);
    let activity = Activity::new();
    let client = Arc::new(Client::new(peer, port, &shared.limits));
    let mut buf = BytesMut::new();
    let end = downstream::serve(&mut stream, &mut buf, &shared, &client, &activity, start).await;
    match end {
        End::Closed => {}
        End::HandOver => {
            let io = Prefixed::new(
                buf,
                stream,
                shared.timeouts.send,
                shared.limits.faults.clone(),
            );
            serve_with_hyper(io, peer, &shared, client, activity, stop).await;
        }
        End::Park(kind, backend) => {
            if let Err(e) = shared.limits.lot.park(kind, stream, backend) {
                tracing::warn!(%peer, error = %e, "a connection could not be parked: closed");
            }
        }
    }
}

/// Serves the rest of the connection with hyper's server, watched for the timeouts.
async fn serve_with_hyper(
    io: Prefixed,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    client: Arc<Client>,
    activity: Arc<Activity>,
    mut stop: watch::Receiver<bool>,
) {
    let svc = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let busy = activity.begin();
            let (shared, client) = (shared.clone(), client.clone());
            async move {
                let body_timeout = shared.timeouts.body;
                let req = req.map(|b| Either::Left(RequestBody::new(b, body_timeout)));
                let mut resp =
                    forward(&shared.routes, &shared.limits, &client, busy, req, None).await;
                if shared.stopping.load(Ordering::Relaxed) {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .max_buf_size(shared.timeouts.max_header_bytes)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    // The watcher looks at least this often: a connection may turn idle (or busy) between
    // looks, and its timeout counts from then.
    let period =
        (shared.timeouts.header.min(shared.timeouts.idle) / 4).max(Duration::from_millis(100));
    let mut wait = shared.timeouts.header.min(period);
    let mut closing = false;
    loop {
        tokio::select! {
            // The connection first: it is what wakes this task on every request.
            biased;
            _ = conn.as_mut() => break,
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s), if !closing && !*stop.borrow() => {
                // Look again now, with the linger.
                wait = Duration::ZERO;
                continue;
            }
        }
        let v = verdict(
            activity.busy.load(Ordering::Relaxed),
            activity.requests.load(Ordering::Relaxed),
            activity.last_ms.load(Ordering::Relaxed),
            now_ms(),
            &shared.timeouts,
            shared.stopping.load(Ordering::Relaxed),
        );
        match v {
            Verdict::Wait(ms) => wait = Duration::from_millis(ms).min(period),
            Verdict::Drop => {
                tracing::debug!(%peer, "no request head in time: closed");
                break;
            }
            // A second look after a graceful shutdown that did not end it: close for good.
            Verdict::Close if closing => break,
            Verdict::Close => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                wait = LINGER;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Timeouts {
        Timeouts {
            header: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            max_header_bytes: 65_536,
            body: Duration::from_secs(60),
            send: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_new_connection_has_the_header_timeout_then_is_dropped() {
        assert_eq!(
            verdict(0, 0, 1_000, 11_000, &t(), false),
            Verdict::Wait(20_000)
        );
        assert_eq!(verdict(0, 0, 1_000, 31_000, &t(), false), Verdict::Drop);
    }

    #[test]
    fn a_kept_alive_connection_idles_past_the_albs_sixty_seconds() {
        assert_eq!(verdict(0, 3, 0, 65_000, &t(), false), Verdict::Wait(10_000));
        assert_eq!(verdict(0, 3, 0, 75_000, &t(), false), Verdict::Close);
        // Busy: never closed for idleness, looked at again later.
        assert_eq!(
            verdict(1, 3, 0, 500_000, &t(), false),
            Verdict::Wait(75_000)
        );
    }

    #[test]
    fn a_panic_ends_only_its_own_connections_task_and_it_is_no_longer_counted_open() {
        // A worker's runtime, as server.rs builds it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let open = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let (o, p) = (open.clone(), open.clone());
            let survivor = tokio::spawn(async move {
                let _open = Open::count(&o);
                tokio::time::sleep(Duration::from_millis(50)).await;
                "served"
            });
            let panicked = tokio::spawn(async move {
                let _open = Open::count(&p);
                tokio::task::yield_now().await;
                panic!("a bug met on one connection");
            });
            let crashed = panicked.await.expect_err("the task panicked");
            assert!(crashed.is_panic());
            assert_eq!(survivor.await.expect("the other connection"), "served");
        });
        assert_eq!(open.load(Ordering::Acquire), 0, "both counted closed");
    }

    #[test]
    fn stopping_gives_idle_connections_a_short_linger() {
        assert_eq!(verdict(0, 3, 1_000, 1_200, &t(), true), Verdict::Wait(800));
        assert_eq!(verdict(0, 3, 1_000, 2_000, &t(), true), Verdict::Close);
        assert_eq!(verdict(0, 0, 1_000, 2_000, &t(), true), Verdict::Close);
        assert_eq!(verdict(1, 3, 0, 9_000, &t(), true), Verdict::Wait(1_000));
    }
}
