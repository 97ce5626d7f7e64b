//! One client connection's life: served by berth's own HTTP/1.1 server (downstream.rs), a
//! tunnel after it switched protocols, or parked for the next proxy by a restart (park.rs);
//! counted open until it ends, whatever ends it.
//!
//! Its timeouts are downstream.rs's own: a new connection has the header timeout to send a
//! full request head, a kept-alive one may idle for the idle timeout (longer than the ALB's
//! 60 s: a target that closes first is the classic 502), and a stop gives idle ones a short
//! linger.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use super::downstream::{self, End};
use super::forward::{resume_tunnel, run_switched, Client};
use super::park;
use super::state::Shared;

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
pub(super) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    serve_from(stream, peer, shared, downstream::Start::New).await;
}

/// Takes back a connection the proxy before this one parked (park.rs) and serves it on.
pub(super) async fn resume(r: park::Resumed, shared: Arc<Shared>) {
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
            serve_from(client, peer, shared, downstream::Start::Kept { fresh }).await;
        }
        (park::Kind::Stream(at), Some(backend)) => {
            let start = downstream::Start::Stream(backend, at);
            serve_from(client, peer, shared, start).await;
        }
        (park::Kind::Awaiting(at), Some(backend)) => {
            let start = downstream::Start::Awaiting(backend, at);
            serve_from(client, peer, shared, start).await;
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
    start: downstream::Start,
) {
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = stream.set_nodelay(true);
    let _open = Open::count(&shared.open);
    let client = Arc::new(Client::new(peer, port, &shared.limits));
    let mut buf = BytesMut::new();
    let end = downstream::serve(&mut stream, &mut buf, &shared, &client, start).await;
    match end {
        End::Closed => {}
        End::Tunnel(switched) => {
            let to_backend = buf.split().freeze();
            drop(buf);
            run_switched(stream, to_backend, *switched, &shared.limits).await;
        }
        End::Park(kind, backend) => {
            if let Err(e) = shared.limits.lot.park(kind, stream, backend) {
                tracing::warn!(%peer, error = %e, "a connection could not be parked: closed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
