//! The routing table: the backend requests go to now and the one before it, per-backend
//! in-flight and served counters (what a drain waits on), and the file the route is saved to
//! so that a restarted proxy resumes it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use super::protocol::Status;
use super::ProxyError;

/// Per-backend counters.
#[derive(Debug, Default)]
pub(super) struct Counters {
    inflight: AtomicU64,
    served: AtomicU64,
}

#[derive(Debug, Clone)]
pub(super) struct Backend {
    pub(super) addr: SocketAddr,
    /// `addr` as a Host value, for requests that come without one.
    pub(super) authority: hyper::http::uri::Authority,
    pub(super) counters: Arc<Counters>,
}

/// The routing table: the backend requests go to now, and the one before it.
#[derive(Debug, Default)]
pub struct Routes {
    active: RwLock<Option<Backend>>,
    previous: RwLock<Option<SocketAddr>>,
    counters: Mutex<BTreeMap<SocketAddr, Arc<Counters>>>,
    state_file: Option<PathBuf>,
}

/// The saved route file's content.
#[derive(Debug, Serialize, Deserialize)]
struct SavedRoute {
    active: Option<SocketAddr>,
    previous: Option<SocketAddr>,
}

impl Routes {
    /// The table saved in `state_file` (empty when there is none yet), saving there from now on.
    pub(super) fn restore(state_file: Option<PathBuf>) -> Result<Routes, ProxyError> {
        let mut routes = Routes::default();
        if let Some(path) = &state_file {
            let state_err = |source| ProxyError::State {
                path: path.clone(),
                source,
            };
            match std::fs::read(path) {
                Ok(bytes) => {
                    let saved: SavedRoute = serde_json::from_slice(&bytes)
                        .map_err(|e| state_err(std::io::Error::from(e)))?;
                    // Without a state file yet: restoring is not a change to save.
                    if let Some(p) = saved.previous {
                        routes.route(p);
                    }
                    if let Some(a) = saved.active {
                        routes.route(a);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(state_err(e)),
            }
        }
        routes.state_file = state_file;
        Ok(routes)
    }

    fn counters_for(&self, addr: SocketAddr) -> Arc<Counters> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr).or_default().clone()
    }

    /// The backend requests go to now.
    pub(super) fn current(&self) -> Option<Backend> {
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

    fn previous(&self) -> Option<SocketAddr> {
        *self.previous.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a route.
    fn save(&self) {
        let Some(path) = &self.state_file else { return };
        let saved = SavedRoute {
            active: self.current().map(|b| b.addr),
            previous: self.previous(),
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

    pub(super) fn inflight(&self, addr: SocketAddr) -> u64 {
        self.counters_for(addr).inflight.load(Ordering::Acquire)
    }

    pub(super) fn total_inflight(&self) -> u64 {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|c| c.inflight.load(Ordering::Acquire))
            .sum()
    }

    /// The answer to `status`.
    pub(super) fn status(&self) -> Status {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let count = |counter: fn(&Counters) -> &AtomicU64| {
            map.iter()
                .map(|(a, c)| (*a, counter(c).load(Ordering::Acquire)))
                .collect()
        };
        Status {
            ok: true,
            active: self.current().map(|b| b.addr),
            previous: self.previous(),
            inflight: count(|c| &c.inflight),
            served: count(|c| &c.served),
        }
    }
}

/// One request in flight to a backend, until finished or dropped.
pub(super) struct InFlight(Option<Arc<Counters>>);

impl InFlight {
    pub(super) fn start(counters: &Arc<Counters>) -> InFlight {
        counters.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(Some(counters.clone()))
    }

    pub(super) fn finish(&mut self) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn routing_keeps_the_previous_backend() {
        let r = Routes::default();
        let a = addr("127.0.0.1:1001");
        let b = addr("127.0.0.1:1002");
        assert_eq!(r.route(a), None);
        assert_eq!(r.route(b), Some(a));
        assert_eq!(r.current().unwrap().addr, b);
        assert_eq!(*r.previous.read().unwrap(), Some(a));
        // Re-routing to the same backend keeps `previous` (rollback still possible).
        assert_eq!(r.route(b), Some(b));
        assert_eq!(*r.previous.read().unwrap(), Some(a));
    }

    #[test]
    fn in_flight_counts_until_finished_and_status_shows_it() {
        let r = Routes::default();
        let a = addr("127.0.0.1:1001");
        r.route(a);
        let mut first = InFlight::start(&r.current().unwrap().counters);
        let second = InFlight::start(&r.current().unwrap().counters);
        assert_eq!((r.inflight(a), r.total_inflight()), (2, 2));
        first.finish();
        first.finish(); // once only
        drop(second);
        let status = r.status();
        assert_eq!(status.inflight[&a], 0);
        assert_eq!(status.served[&a], 2);
        assert_eq!(status.active, Some(a));
    }

    #[test]
    fn the_saved_route_is_restored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("route.json");
        let (a, b) = (addr("127.0.0.1:1001"), addr("127.0.0.1:1002"));
        let saved = Routes::restore(Some(file.clone())).unwrap();
        assert!(saved.current().is_none(), "no file yet: empty");
        saved.route(a);
        saved.route(b);
        let restored = Routes::restore(Some(file.clone())).unwrap();
        assert_eq!(restored.current().unwrap().addr, b);
        assert_eq!(restored.previous(), Some(a));
        std::fs::write(&file, "{").unwrap();
        assert!(matches!(
            Routes::restore(Some(file)),
            Err(ProxyError::State { .. })
        ));
    }
}
