//! The routing table: the backends requests go to now (one per replica of the serving
//! release) and the ones before them, each backend's counters (what a drain waits on and the
//! metrics read), the choice of backend per request, and the file the route is saved to so that
//! a restarted proxy resumes it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::metrics::{now_ms, Counters, Faults};
use super::protocol::{Previewed, Status};

/// What the proxy keeps per backend address, across routes.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) counters: Counters,
    /// Wakes the upgraded connections to this backend when a drain gives up on them.
    pub(super) cut: tokio::sync::Notify,
}

#[derive(Debug, Clone)]
pub(super) struct Backend {
    pub(super) addr: SocketAddr,
    /// `addr` as a Host value, for requests that come without one.
    pub(super) authority: hyper::http::uri::Authority,
    pub(super) shared: Arc<Shared>,
}

/// The backends of one route: the replicas of one release.
#[derive(Debug)]
pub(super) struct Pool {
    pub(super) backends: Vec<Backend>,
    /// Where the next tie-break starts, so that equal backends take turns.
    next: AtomicUsize,
}

impl Pool {
    /// The backend for the next request: the one with the fewest requests in flight among
    /// those in rotation, taking turns on ties; `avoid` (one that just failed) only when there
    /// is no other. With every backend down, still one of them: better a try than a 503.
    pub(super) fn pick(&self, avoid: Option<SocketAddr>) -> Option<&Backend> {
        self.pick_at(avoid).map(|i| &self.backends[i])
    }

    /// [`Pool::pick`]'s choice, as its index.
    pub(super) fn pick_at(&self, avoid: Option<SocketAddr>) -> Option<usize> {
        if self.backends.len() == 1 {
            return Some(0);
        }
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let mut best: Option<(usize, (bool, u64))> = None;
        for i in 0..n {
            let at = (start + i) % n;
            let b = &self.backends[at];
            let out = Some(b.addr) == avoid || b.shared.counters.is_down(now);
            let rank = (out, b.shared.counters.inflight());
            if best.as_ref().is_none_or(|(_, r)| rank < *r) {
                best = Some((at, rank));
            }
        }
        best.map(|(at, _)| at)
    }

    pub(super) fn len(&self) -> usize {
        self.backends.len()
    }

    /// A copy for one worker (the same backends and counters, its own turn).
    fn copy(&self) -> Pool {
        Pool {
            backends: self.backends.clone(),
            next: AtomicUsize::new(0),
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }
}

/// The new release's backends before the switch, for the requests that name it and, as a
/// weighted canary, for `percent` of the sessions.
#[derive(Debug)]
struct Preview {
    release: String,
    pool: Arc<Pool>,
    percent: u8,
    /// What a request's preview header or cookie must carry, and until when (Unix seconds).
    token: Option<(String, Option<u64>)>,
}

impl Preview {
    /// Whether `wanted` is this preview's token, still valid. Compared in constant time: the
    /// token is a credential, and a comparison that stops at the first wrong byte would
    /// answer a guess byte by byte.
    fn admits(&self, wanted: &[u8]) -> bool {
        let Some((token, until)) = &self.token else {
            return false;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let t = token.as_bytes();
        let same = t.len() == wanted.len()
            && t.iter().zip(wanted).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same && until.is_none_or(|u| now < u)
    }
}

/// The canary buckets there are: a session's bucket below the canary's percent sends it to
/// the canary.
pub(super) const BUCKETS: u8 = 100;

/// The routing table: the backends requests go to now, and the ones before them.
#[derive(Debug, Default)]
pub struct Routes {
    active: RwLock<Option<Arc<Pool>>>,
    /// Not saved: a restarted proxy sends previews to the route until the agent previews again.
    preview: RwLock<Option<Preview>>,
    /// Whether `preview` is set: without one, no request's headers are looked at for it.
    previewing: AtomicBool,
    /// New sessions so far, for their canary buckets.
    sessions: AtomicUsize,
    previous: RwLock<Vec<SocketAddr>>,
    known: Mutex<BTreeMap<SocketAddr, Known>>,
    state_file: Option<PathBuf>,
    /// Told of every new route, for the requests that wait for one.
    changed: tokio::sync::watch::Sender<()>,
    /// Whether requests are timed (`--no-metrics` turns it off).
    pub(super) timed: bool,
    /// Bumped by every route: a worker's copy of an older one is made again.
    generation: AtomicU64,
    id: TableId,
    /// The proxy's timeouts and refusals (reported with the backends' counters).
    pub(super) faults: Arc<Faults>,
}

/// A routing table's own number, so that a thread's copy of one table's route is never taken
/// for another's (tests make many).
#[derive(Debug)]
struct TableId(usize);

impl Default for TableId {
    fn default() -> TableId {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        TableId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A thread's copy of a route: the table's number, its generation, the pool (see `current`).
type Copied = Option<(usize, u64, Option<Arc<Pool>>)>;

thread_local! {
    static ROUTE: RefCell<Copied> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
struct Known {
    shared: Arc<Shared>,
    release: Option<String>,
}

/// The saved route file's content. Older proxies saved one address per side; a restarted
/// newer proxy still reads that.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SavedRoute {
    #[serde(default, deserialize_with = "one_or_many")]
    active: Vec<SocketAddr>,
    #[serde(default, deserialize_with = "one_or_many")]
    previous: Vec<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    release: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Option<SocketAddr>),
        Many(Vec<SocketAddr>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(one) => one.into_iter().collect(),
        OneOrMany::Many(many) => many,
    })
}

impl Routes {
    /// The table saved in `state_file` (empty when there is none yet, or when it cannot be
    /// read: a proxy that refused to start would keep the port down), saving there from now on.
    pub(super) fn restore(state_file: Option<PathBuf>, timed: bool) -> Routes {
        let mut routes = Routes {
            timed,
            ..Routes::default()
        };
        if let Some(path) = &state_file {
            let saved = match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice::<SavedRoute>(&bytes).unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "the saved route is unreadable; starting without a route");
                    SavedRoute::default()
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedRoute::default(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the saved route; starting without a route");
                    SavedRoute::default()
                }
            };
            // Without a state file yet: restoring is not a change to save.
            if !saved.previous.is_empty() {
                routes.route(&saved.previous, None);
            }
            if !saved.active.is_empty() {
                routes.route(&saved.active, saved.release.as_deref());
            }
        }
        routes.state_file = state_file;
        routes
    }

    /// The shared state of `addr`, labelled `release` when given.
    fn shared_for(&self, addr: SocketAddr, release: Option<&str>) -> Arc<Shared> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let entry = known.entry(addr).or_default();
        if let Some(r) = release {
            entry.release = Some(r.to_string());
        }
        entry.shared.clone()
    }

    /// The counters of `addr` for a connection a restart parked (park.rs), whether or not it
    /// is routed now.
    pub(super) fn resumed(&self, addr: SocketAddr) -> Arc<Shared> {
        self.shared_for(addr, None)
    }

    /// The backends requests go to now: this thread's own copy of them, made again only when
    /// the route changed (its generation), so the request path takes no lock and writes no
    /// line another core reads (the copy's reference count and turn are this worker's).
    pub(super) fn current(&self) -> Option<Arc<Pool>> {
        let generation = self.generation.load(Ordering::Acquire);
        ROUTE.with(|cached| {
            let mut cached = cached.borrow_mut();
            if let Some((id, g, pool)) = &*cached {
                if *id == self.id.0 && *g == generation {
                    return pool.clone();
                }
            }
            let pool = self
                .active
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_deref()
                .map(|p| Arc::new(p.copy()));
            *cached = Some((self.id.0, generation, pool.clone()));
            pool
        })
    }

    pub(super) fn previewing(&self) -> bool {
        self.previewing.load(Ordering::Acquire)
    }

    /// The backends for a request that names `wanted` as its preview (header or cookie) or
    /// carries canary `bucket`: the preview's when it is of that release or the bucket is
    /// within the canary's share, else the route's. A request with no bucket while a canary
    /// runs is a new session: it is given one, returned for the response's cookie.
    pub(super) fn for_request(
        &self,
        wanted: Option<&[u8]>,
        bucket: Option<u8>,
    ) -> (Option<Arc<Pool>>, Option<u8>) {
        let preview = self.preview.read().unwrap_or_else(|e| e.into_inner());
        let Some(p) = preview.as_ref() else {
            drop(preview);
            return (self.current(), None);
        };
        if wanted.is_some_and(|w| p.admits(w)) {
            tracing::info!(release = %p.release, "a request reached the preview by its token");
            return (Some(p.pool.clone()), None);
        }
        if p.percent == 0 {
            drop(preview);
            return (self.current(), None);
        }
        let (bucket, given) = match bucket {
            Some(b) => (b, None),
            None => {
                let b = self.new_bucket();
                (b, Some(b))
            }
        };
        if bucket < p.percent {
            return (Some(p.pool.clone()), given);
        }
        drop(preview);
        (self.current(), given)
    }

    /// The next new session's bucket. Stepping by 37 (prime to 100) visits every bucket once
    /// in any 100 sessions, so a 10 % canary gets 10 of every 100 new sessions, evenly spread;
    /// raising the percent moves sessions to the canary and never back.
    fn new_bucket(&self) -> u8 {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        // Below 100, so the cast is exact.
        ((n % usize::from(BUCKETS)) * 37 % usize::from(BUCKETS)) as u8
    }

    /// Requests carrying `token` (until its time) go to `addrs`, labelled `release`, from now
    /// on, until the next route, and so do `percent` of the sessions (a weighted canary; 0:
    /// none); no backends (or no release) end the preview. Returns the preview now on.
    pub fn preview(
        &self,
        addrs: &[SocketAddr],
        release: Option<&str>,
        percent: u8,
        token: Option<(String, Option<u64>)>,
    ) -> Option<Previewed> {
        let next = match (self.pool(addrs, release), release) {
            (Some(pool), Some(release)) => Some(Preview {
                release: release.to_string(),
                pool,
                percent: percent.min(BUCKETS),
                token,
            }),
            _ => None,
        };
        tracing::info!(backends = ?addrs, release = ?release, percent, "preview");
        self.previewing.store(next.is_some(), Ordering::Release);
        *self.preview.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.previewed()
    }

    fn previewed(&self) -> Option<Previewed> {
        let preview = self.preview.read().unwrap_or_else(|e| e.into_inner());
        preview.as_ref().map(|p| Previewed {
            release: p.release.clone(),
            backends: p.pool.addrs(),
            percent: p.percent,
        })
    }

    /// A pool of `addrs` (duplicates once), labelled `release`; None for no address.
    fn pool(&self, addrs: &[SocketAddr], release: Option<&str>) -> Option<Arc<Pool>> {
        let mut backends = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if backends.iter().any(|b: &Backend| b.addr == *addr) {
                continue;
            }
            backends.push(Backend {
                addr: *addr,
                authority: addr.to_string().parse().ok()?,
                shared: self.shared_for(*addr, release),
            });
        }
        if backends.is_empty() {
            return None;
        }
        Some(Arc::new(Pool {
            backends,
            next: AtomicUsize::new(0),
        }))
    }

    /// Switches atomically to `addrs` (an empty list is refused: `None`), ending any preview;
    /// returns the backends that were active.
    pub fn route(&self, addrs: &[SocketAddr], release: Option<&str>) -> Option<Vec<SocketAddr>> {
        let pool = self.pool(addrs, release)?;
        self.previewing.store(false, Ordering::Release);
        self.preview
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let new = pool.addrs();
        let old = self
            .active
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .replace(pool)
            .map(|p| p.addrs())
            .unwrap_or_default();
        self.generation.fetch_add(1, Ordering::AcqRel);
        if !old.is_empty() && old != new {
            *self.previous.write().unwrap_or_else(|e| e.into_inner()) = old.clone();
        }
        self.save(release);
        self.changed.send_replace(());
        tracing::info!(backends = ?new, release = ?release, previous = ?old, "route switched");
        self.prune();
        Some(old)
    }

    /// Forgets the counters of backends that left the route (neither active, previous nor
    /// previewed) once nothing is in flight to them: the series do not grow with every deploy,
    /// and a port Docker gives out again starts from zero.
    pub(super) fn prune(&self) {
        let mut keep = self.active();
        keep.extend(self.previous());
        if let Some(p) = self.previewed() {
            keep.extend(p.backends);
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.retain(|addr, k| keep.contains(addr) || k.shared.counters.inflight() > 0);
    }

    /// Waits up to `limit` for a route other than `seen`: the new backends, or None.
    pub(super) async fn rerouted(&self, seen: &Arc<Pool>, limit: Duration) -> Option<Arc<Pool>> {
        // Subscribed before looking, so that a route made in between is not missed.
        let mut changes = self.changed.subscribe();
        let other = || self.current().filter(|p| !Arc::ptr_eq(p, seen));
        tokio::time::timeout(limit, async {
            loop {
                if let Some(p) = other() {
                    return p;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .ok()
    }

    pub(super) fn active(&self) -> Vec<SocketAddr> {
        self.current().map(|p| p.addrs()).unwrap_or_default()
    }

    fn previous(&self) -> Vec<SocketAddr> {
        self.previous
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a route.
    fn save(&self, release: Option<&str>) {
        let Some(path) = &self.state_file else { return };
        let saved = SavedRoute {
            active: self.active(),
            previous: self.previous(),
            release: release.map(str::to_string),
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
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(&addr).map_or(0, |k| k.shared.counters.inflight())
    }

    pub(super) fn total_inflight(&self) -> u64 {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.values().map(|k| k.shared.counters.inflight()).sum()
    }

    /// Closes the upgraded connections to `addr` (a drain gave up waiting for them), unless
    /// it serves again.
    pub(super) fn cut(&self, addr: SocketAddr) {
        if self.active().contains(&addr) {
            return;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = known.get(&addr) {
            k.shared.cut.notify_waiters();
        }
    }

    /// Closes every upgraded connection (the proxy is stopping).
    pub(super) fn cut_all(&self) {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for k in known.values() {
            k.shared.cut.notify_waiters();
        }
    }

    /// The answer to `status`.
    pub(super) fn status(&self) -> Status {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        Status {
            ok: true,
            active: self.active(),
            previous: self.previous(),
            backends: known
                .iter()
                .map(|(a, k)| {
                    (
                        *a,
                        k.shared.counters.snapshot(k.release.clone(), self.timed),
                    )
                })
                .collect(),
            preview: self.previewed(),
            pid: Some(std::process::id()),
            faults: self.faults.snapshot(),
        }
    }
}

/// One request (or upgraded connection) in flight to a backend, until finished or dropped;
/// then counted as served, with its time when the proxy times requests.
pub(super) struct InFlight {
    at: Option<Held>,
    started: Option<Instant>,
    /// The counters' lane it started in (its worker's), where it ends.
    lane: usize,
}

/// What an in-flight request holds on to its backend's counters by.
enum Held {
    /// Its backend's state (an upgraded connection: rare).
    Shared(Arc<Shared>),
    /// The worker's own copy of the route and the backend's place in it: a request holds no
    /// reference another core also counts.
    Pool(Arc<Pool>, usize),
}

impl Held {
    fn counters(&self) -> &Counters {
        match self {
            Held::Shared(s) => &s.counters,
            Held::Pool(p, i) => &p.backends[*i].shared.counters,
        }
    }
}

impl InFlight {
    pub(super) fn start(shared: &Arc<Shared>, started: Option<Instant>) -> InFlight {
        InFlight::held(Held::Shared(shared.clone()), started)
    }

    /// A request to `pool`'s backend `i`.
    pub(super) fn of(pool: &Arc<Pool>, i: usize, started: Option<Instant>) -> InFlight {
        InFlight::held(Held::Pool(pool.clone(), i), started)
    }

    fn held(at: Held, started: Option<Instant>) -> InFlight {
        let lane = at.counters().start();
        InFlight {
            at: Some(at),
            started,
            lane,
        }
    }

    /// The request got no answer from this backend (it went to another, or became the
    /// proxy's own 502): no longer in flight here, and not served.
    pub(super) fn abandon(mut self) {
        if let Some(at) = self.at.take() {
            at.counters().end(self.lane, false);
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(at) = self.at.take() {
            let counters = at.counters();
            if let Some(t) = self.started {
                counters.latency(t.elapsed());
            }
            counters.end(self.lane, true);
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
    fn counters_of_backends_that_left_the_route_are_dropped_once_idle() {
        let r = Routes::default();
        let (a, b, c, d) = (
            addr("127.0.0.1:1001"),
            addr("127.0.0.1:1002"),
            addr("127.0.0.1:1003"),
            addr("127.0.0.1:1004"),
        );
        r.route(&[a], Some("v1"));
        let pool_a = r.current().unwrap();
        let held = InFlight::start(&pool_a.backends[0].shared, None);
        r.route(&[b], Some("v2"));
        r.route(&[c], Some("v3"));
        let known = |r: &Routes| r.status().backends.keys().copied().collect::<Vec<_>>();
        assert_eq!(known(&r), vec![a, b, c], "a still has a request in flight");
        drop(held);
        r.prune();
        assert_eq!(
            known(&r),
            vec![b, c],
            "b is the previous route: kept for a rollback"
        );
        r.preview(&[d], Some("v4"), 0, None);
        r.route(&[c], Some("v3"));
        assert_eq!(known(&r), vec![b, c]);
        // a's address given out again starts from zero.
        r.route(&[a], Some("v5"));
        assert_eq!(r.status().backends[&a].served, 0);
    }

    #[test]
    fn routing_keeps_the_previous_backends() {
        let r = Routes::default();
        let a = addr("127.0.0.1:1001");
        let (b, c) = (addr("127.0.0.1:1002"), addr("127.0.0.1:1003"));
        assert_eq!(r.route(&[a], None), Some(vec![]));
        assert_eq!(r.route(&[b, c, b], Some("v2")), Some(vec![a]));
        assert_eq!(r.active(), vec![b, c], "a repeated address counts once");
        assert_eq!(r.previous(), vec![a]);
        // Re-routing to the same backends keeps `previous` (rollback still possible).
        assert_eq!(r.route(&[b, c], Some("v2")), Some(vec![b, c]));
        assert_eq!(r.previous(), vec![a]);
        assert_eq!(r.route(&[], None), None, "no backends: refused");
        assert_eq!(r.status().backends[&c].release.as_deref(), Some("v2"));
    }

    #[test]
    fn a_preview_serves_only_requests_carrying_its_token_until_the_next_route() {
        let r = Routes::default();
        let (a, b) = (addr("127.0.0.1:1001"), addr("127.0.0.1:1002"));
        r.route(&[a], Some("v1"));
        assert!(!r.previewing());
        let on = r.preview(&[b], Some("v2"), 0, Some(("t0k3n".into(), None)));
        assert_eq!(
            on,
            Some(Previewed {
                release: "v2".into(),
                backends: vec![b],
                percent: 0,
            })
        );
        assert!(r.previewing());
        let to = |wanted: Option<&[u8]>| {
            let (pool, given) = r.for_request(wanted, None);
            assert_eq!(given, None, "no canary: no bucket given");
            pool.unwrap().addrs()
        };
        assert_eq!(to(Some(b"t0k3n")), vec![b]);
        assert_eq!(to(Some(b"v2")), vec![a], "the release id alone: the route");
        assert_eq!(to(Some(b"t0k3")), vec![a], "a token's prefix: the route");
        assert_eq!(
            to(Some(b"t0k3n!")),
            vec![a],
            "more than the token: the route"
        );
        assert_eq!(to(None), vec![a]);
        assert_eq!(r.status().preview, on);
        assert_eq!(r.status().backends[&b].release.as_deref(), Some("v2"));
        // The switch (promote) ends it; so does a preview of nothing.
        r.route(&[b], Some("v2"));
        assert!(!r.previewing());
        assert_eq!(r.status().preview, None);
        r.preview(&[a], Some("v1"), 0, Some(("t0k3n".into(), None)));
        assert_eq!(r.preview(&[], None, 0, None), None);
        assert!(!r.previewing());
        assert_eq!(to(Some(b"t0k3n")), vec![b]);
        // A token past its time reaches nothing; a preview without one is reached by no name.
        r.route(&[a], Some("v1"));
        r.preview(&[b], Some("v2"), 0, Some(("old".into(), Some(1))));
        assert_eq!(to(Some(b"old")), vec![a]);
        r.preview(&[b], Some("v2"), 0, None);
        assert_eq!(to(Some(b"v2")), vec![a]);
    }

    #[test]
    fn a_canary_takes_its_share_of_new_sessions_and_each_session_stays() {
        let r = Routes::default();
        let (a, b) = (addr("127.0.0.1:1001"), addr("127.0.0.1:1002"));
        r.route(&[a], Some("v1"));
        r.preview(&[b], Some("v2"), 10, Some(("tok".into(), None)));
        assert_eq!(r.status().preview.unwrap().percent, 10);
        // 200 new sessions: each given a bucket, 20 of them (10 of each 100) to the canary.
        let mut sessions = Vec::new();
        for _ in 0..200 {
            let (pool, given) = r.for_request(None, None);
            let bucket = given.expect("a new session gets a bucket");
            assert!(bucket < BUCKETS);
            sessions.push((bucket, pool.unwrap().addrs()));
        }
        let to_canary = sessions.iter().filter(|(_, to)| *to == vec![b]).count();
        assert_eq!(to_canary, 20);
        // Each session, back with its bucket, goes where it went, and is given nothing new.
        for (bucket, to) in &sessions {
            let (pool, given) = r.for_request(None, Some(*bucket));
            assert_eq!((pool.unwrap().addrs(), given), (to.clone(), None));
        }
        // Stepped up: the canary's sessions stay on it, and more join.
        r.preview(&[b], Some("v2"), 50, Some(("tok".into(), None)));
        let now: Vec<Vec<SocketAddr>> = sessions
            .iter()
            .map(|(bucket, _)| r.for_request(None, Some(*bucket)).0.unwrap().addrs())
            .collect();
        assert!(sessions
            .iter()
            .zip(&now)
            .all(|((_, before), after)| *before != vec![b] || *after == vec![b]));
        assert_eq!(now.iter().filter(|to| **to == vec![b]).count(), 100);
        // Its token still reaches it from any bucket; the switch ends the canary.
        assert_eq!(
            r.for_request(Some(b"tok"), Some(99)).0.unwrap().addrs(),
            vec![b]
        );
        r.route(&[b], Some("v2"));
        let (pool, given) = r.for_request(None, None);
        assert_eq!((pool.unwrap().addrs(), given), (vec![b], None));
    }

    #[test]
    fn least_in_flight_taking_turns_and_skipping_the_down() {
        let r = Routes::default();
        let (a, b, c) = (
            addr("127.0.0.1:1001"),
            addr("127.0.0.1:1002"),
            addr("127.0.0.1:1003"),
        );
        r.route(&[a, b, c], None);
        let pool = r.current().unwrap();
        let picks: Vec<SocketAddr> = (0..3).map(|_| pool.pick(None).unwrap().addr).collect();
        let mut sorted = picks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![a, b, c], "ties take turns: {picks:?}");
        // a and b busy: c.
        let _busy = [
            InFlight::start(&pool.backends[0].shared, None),
            InFlight::start(&pool.backends[1].shared, None),
        ];
        for _ in 0..3 {
            assert_eq!(pool.pick(None).unwrap().addr, c);
        }
        // c down: the least busy of the rest, never c.
        pool.backends[2].shared.counters.connect_error();
        for _ in 0..3 {
            assert_ne!(pool.pick(None).unwrap().addr, c);
        }
        assert!(r.status().backends[&c].down);
        // The one to avoid only when nothing else is left.
        r.route(&[a], None);
        let one = r.current().unwrap();
        assert_eq!(one.pick(Some(a)).unwrap().addr, a);
    }

    #[test]
    fn in_flight_counts_until_finished_and_status_shows_it() {
        let r = Routes::default();
        let a = addr("127.0.0.1:1001");
        r.route(&[a], None);
        let shared = r.current().unwrap().backends[0].shared.clone();
        let mut first = InFlight::start(&shared, Some(Instant::now()));
        let second = InFlight::start(&shared, None);
        assert_eq!((r.inflight(a), r.total_inflight()), (2, 2));
        first.finish();
        first.finish(); // once only
        drop(second);
        let status = r.status();
        assert_eq!(status.backends[&a].inflight, 0);
        assert_eq!(status.backends[&a].served, 2);
        assert!(status.backends[&a].latency.is_empty(), "untimed table");
        assert_eq!(status.active, vec![a]);
    }

    #[test]
    fn the_saved_route_is_restored_and_a_bad_file_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("route.json");
        let (a, b) = (addr("127.0.0.1:1001"), addr("127.0.0.1:1002"));
        let saved = Routes::restore(Some(file.clone()), true);
        assert!(saved.current().is_none(), "no file yet: empty");
        saved.route(&[a], Some("v1"));
        saved.route(&[b], Some("v2"));
        let restored = Routes::restore(Some(file.clone()), true);
        assert_eq!(restored.active(), vec![b]);
        assert_eq!(restored.previous(), vec![a]);
        assert_eq!(
            restored.status().backends[&b].release.as_deref(),
            Some("v2")
        );
        // What an older proxy saved.
        std::fs::write(&file, r#"{"active":"127.0.0.1:1002","previous":null}"#).unwrap();
        let old = Routes::restore(Some(file.clone()), true);
        assert_eq!((old.active(), old.previous()), (vec![b], vec![]));
        std::fs::write(&file, "{").unwrap();
        assert!(Routes::restore(Some(file), true).current().is_none());
    }
}
