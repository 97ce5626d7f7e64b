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
    /// Whether it can carry a request now (`false`: the backend closed it, or sent
    /// something while it was idle). A connection is given back only once its answer is read.
    fn usable(&mut self) -> bool;
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
    /// closed ones met on the way are dropped.
    pub(super) fn take(&mut self, backend: SocketAddr) -> Option<T> {
        let list = self.list(backend)?;
        while let Some(mut conn) = list.pop() {
            if conn.idle_since().elapsed() < IDLE_REUSE && conn.usable() {
                return Some(conn);
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

    /// Closes the connections idle for [`IDLE_REUSE`]; how many are left.
    pub(super) fn reap(&mut self) -> usize {
        self.by_backend.retain_mut(|(_, list)| {
            list.retain(|c| c.idle_since().elapsed() < IDLE_REUSE);
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
        usable: bool,
        id: u32,
    }

    impl Pooled for Fake {
        fn backend(&self) -> SocketAddr {
            self.backend
        }
        fn idle_since(&self) -> Instant {
            self.since
        }
        fn usable(&mut self) -> bool {
            self.usable
        }
    }

    fn fake(backend: SocketAddr, age_ms: u64, usable: bool, id: u32) -> Fake {
        Fake {
            backend,
            since: Instant::now() - Duration::from_millis(age_ms),
            usable,
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
        idle.put(fake(a, 5_000, true, 1)); // stale
        idle.put(fake(a, 3_000, true, 2)); // stale
        idle.put(fake(a, 100, true, 3));
        idle.put(fake(a, 10, false, 4)); // closed: dropped
        idle.put(fake(b, 10, true, 5));
        assert_eq!(idle.take(a).unwrap().id, 3);
        // Left: the two stale ones, which the reaper closes, and b's.
        assert_eq!(idle.reap(), 1, "b's is left");
        assert!(idle.take(a).is_none(), "nothing of a's is left");
        assert_eq!(idle.take(b).unwrap().id, 5);
        for i in 0..MAX_IDLE as u32 + 8 {
            idle.put(fake(b, 0, true, 100 + i));
        }
        let list = idle.list(b).unwrap();
        assert_eq!(list.len(), MAX_IDLE);
        assert_eq!(list[0].id, 108, "the oldest went");
    }
}
