//! Idle connections to the backends, kept per worker thread and per backend: a request takes
//! the most recently used one that is still good, and gives it back when its answer is read.
//! Per worker (each worker is one current-thread runtime, so a connection never leaves its
//! thread) rather than per client connection: a thousand idle ALB connections then hold no
//! backend connection each, a canary's two sides share one pool, and no lock is shared
//! between cores. Connections idle for [`IDLE_REUSE`] are closed (the worker reaps them each
//! second): before a backend's keep-alive timeout (5 s is common) closes them under a request,
//! and before they sit in CLOSE_WAIT holding descriptors.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// An idle connection is reused only this soon after its last answer, and closed after.
pub(super) const IDLE_REUSE: Duration = Duration::from_secs(2);

/// At most this many idle connections per backend per worker; more are closed, the oldest
/// first. Above the concurrency a worker sees (a cap at 32 under 64 concurrent clients closed
/// and reopened a backend connection for one request in four: 1.4x nginx's CPU per request);
/// the reaper bounds them in time anyway.
pub(super) const MAX_IDLE: usize = 1024;

/// What the pool asks of a connection.
pub(super) trait Pooled {
    fn backend(&self) -> SocketAddr;
    /// When it last finished an answer.
    fn idle_since(&self) -> Instant;
    /// Whether it can carry a request now: `Some(false)` it is done for (closed by the
    /// backend), `None` it is still busy with an answer.
    fn usable(&mut self) -> Option<bool>;
}

/// One worker's idle connections of one kind, by backend, the most recently used last.
#[derive(Debug)]
pub(super) struct Idle<T> {
    /// A worker talks to a handful of backends: a list searched in order costs less than
    /// hashing the address twice per request.
    by_backend: Vec<(SocketAddr, Vec<T>)>,
}

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle {
            by_backend: Vec::new(),
        }
    }
}

impl<T: Pooled> Idle<T> {
    /// The most recently used connection to `backend` that can carry a request now; stale and
    /// closed ones met on the way are dropped, busy ones kept.
    pub(super) fn take(&mut self, backend: SocketAddr) -> Option<T> {
        let list = self.list(backend)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            match list[i].usable() {
                // Still reading its last answer: left alone (dropping it could cut that).
                None => {}
                Some(true) if list[i].idle_since().elapsed() < IDLE_REUSE => {
                    return Some(list.remove(i));
                }
                Some(_) => {
                    list.remove(i);
                }
            }
        }
        None
    }

    fn list(&mut self, backend: SocketAddr) -> Option<&mut Vec<T>> {
        self.by_backend
            .iter_mut()
            .find(|(b, _)| *b == backend)
            .map(|(_, l)| l)
    }

    /// Keeps `conn` for the next request to its backend.
    pub(super) fn put(&mut self, conn: T) {
        let backend = conn.backend();
        let i = match self.by_backend.iter().position(|(b, _)| *b == backend) {
            Some(i) => i,
            None => {
                self.by_backend.push((backend, Vec::new()));
                self.by_backend.len() - 1
            }
        };
        let list = &mut self.by_backend[i].1;
        list.push(conn);
        if list.len() > MAX_IDLE {
            list.remove(0);
        }
    }

    /// The most recent connection to `backend`, whatever its state (for tests that look at
    /// one the backend closed).
    #[cfg(test)]
    pub(super) fn take_any(&mut self, backend: SocketAddr) -> Option<T> {
        self.list(backend)?.pop()
    }

    /// Closes the connections idle for [`IDLE_REUSE`] (not those still busy); how many are
    /// left.
    pub(super) fn reap(&mut self) -> usize {
        self.by_backend.retain_mut(|(_, list)| {
            list.retain_mut(|c| c.usable().is_none() || c.idle_since().elapsed() < IDLE_REUSE);
            !list.is_empty()
        });
        self.by_backend.iter().map(|(_, l)| l.len()).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fake {
        backend: SocketAddr,
        since: Instant,
        state: Option<bool>,
        id: u32,
    }

    impl Pooled for Fake {
        fn backend(&self) -> SocketAddr {
            self.backend
        }
        fn idle_since(&self) -> Instant {
            self.since
        }
        fn usable(&mut self) -> Option<bool> {
            self.state
        }
    }

    fn fake(backend: SocketAddr, age_ms: u64, state: Option<bool>, id: u32) -> Fake {
        Fake {
            backend,
            since: Instant::now() - Duration::from_millis(age_ms),
            state,
            id,
        }
    }

    #[test]
    fn the_freshest_usable_connection_is_taken_and_stale_or_closed_ones_are_dropped() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let mut idle = Idle::default();
        idle.put(fake(a, 5_000, Some(true), 1)); // stale
        idle.put(fake(a, 100, Some(true), 2));
        idle.put(fake(a, 50, None, 3)); // busy: kept
        idle.put(fake(a, 10, Some(false), 4)); // closed: dropped
        idle.put(fake(b, 10, Some(true), 5));
        assert_eq!(idle.take(a).unwrap().id, 2);
        // Left: the stale one and the busy one; the stale one is reaped.
        assert_eq!(idle.reap(), 2, "the busy one and b's");
        assert!(idle.take(a).is_none(), "only a busy one is left");
        assert_eq!(idle.take(b).unwrap().id, 5);
        for i in 0..MAX_IDLE as u32 + 8 {
            idle.put(fake(b, 0, Some(true), 100 + i));
        }
        let list = idle.list(b).unwrap();
        assert_eq!(list.len(), MAX_IDLE);
        assert_eq!(list[0].id, 108, "the oldest went");
    }
}
