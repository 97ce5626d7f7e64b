//! What the proxy counts per backend (atomics only: this is on every request's path), the
//! snapshot the control socket's `status` answers with, and the two readings of a snapshot:
//! Prometheus' text format (the agent's `GET /metrics`) and a summary per release (`berth
//! status`, and the canary analysis that compares two releases).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::protocol::{BackendStats, FaultCounts, Status, LATENCY_BOUNDS_MS};

/// One worker's share of a backend's counters, on cache lines of its own: a request counts
/// only in its worker's lane, so cores never write to the same line (the reads sum the lanes).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane {
    /// Requests started in this lane less those finished (each finishes in the lane it
    /// started in, so a lane never goes below zero).
    inflight: AtomicU64,
    served: AtomicU64,
    responses: [AtomicU64; 5],
    upgraded_open: AtomicU64,
    upgraded: AtomicU64,
    connect_errors: AtomicU64,
    bad_responses: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// How many lanes a backend's counters have: one per worker, set before the workers start.
static LANES: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// The lane of this thread's counts: its worker's (0 outside the workers).
    static LANE: Cell<usize> = const { Cell::new(0) };
}

/// The proxy serves with `n` workers: counters made from now on have a lane each.
pub(super) fn set_lanes(n: usize) {
    LANES.store(n.max(1), Ordering::Relaxed);
}

/// This thread is worker `i` (counted in lane `i`).
pub(super) fn set_lane(i: usize) {
    LANE.with(|l| l.set(i));
}

/// One backend's live counters: a lane per worker, and its rotation state.
#[derive(Debug)]
pub(super) struct Counters {
    lanes: Box<[Lane]>,
    /// Out of rotation until this time ([`now_ms`]): set by a failed connect. Written rarely,
    /// read by every pick: shared read-only between cores.
    down_until_ms: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            lanes: (0..LANES.load(Ordering::Relaxed))
                .map(|_| Lane::default())
                .collect(),
            down_until_ms: AtomicU64::new(0),
        }
    }
}

/// How long a backend whose connect failed stays out of rotation before it is tried again.
const DOWN_FOR_MS: u64 = 1_000;

/// Milliseconds since the process's first call: a cheap monotonic clock for the counters.
pub(super) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Counters {
    /// This thread's lane.
    fn lane(&self) -> &Lane {
        let i = LANE.with(Cell::get);
        &self.lanes[i.min(self.lanes.len() - 1)]
    }

    fn sum(&self, field: impl Fn(&Lane) -> &AtomicU64) -> u64 {
        self.lanes
            .iter()
            .map(|l| field(l).load(Ordering::Acquire))
            .fold(0, u64::wrapping_add)
    }

    /// A request to this backend starts; the lane to end it in.
    pub(super) fn start(&self) -> usize {
        let i = LANE.with(Cell::get).min(self.lanes.len() - 1);
        self.lanes[i].inflight.fetch_add(1, Ordering::AcqRel);
        i
    }

    /// A request started in `lane` is no longer in flight; `served` when it was answered.
    pub(super) fn end(&self, lane: usize, served: bool) {
        let l = &self.lanes[lane];
        l.inflight.fetch_sub(1, Ordering::AcqRel);
        if served {
            l.served.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests in flight to this backend, all workers: what a pick compares (reads of the
    /// other workers' lanes, no write to them; a single backend is picked without any), so a
    /// replica slowed by one worker's requests is avoided by all.
    pub(super) fn inflight(&self) -> u64 {
        self.sum(|l| &l.inflight)
    }

    /// Requests in flight to this backend from this worker.
    #[cfg(test)]
    fn inflight_here(&self) -> u64 {
        self.lane().inflight.load(Ordering::Relaxed)
    }

    /// A response with `status` went out (or is going out).
    pub(super) fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.lane().responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// A request took `took`, until its response's end.
    pub(super) fn latency(&self, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms < *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let lane = self.lane();
        lane.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        lane.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(super) fn connect_error(&self) {
        self.lane().connect_errors.fetch_add(1, Ordering::Relaxed);
        self.down_until_ms
            .store(now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
    }

    /// The backend answered with a malformed message: alive, so not marked down.
    pub(super) fn bad_response(&self) {
        self.lane().bad_responses.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn is_down(&self, now: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now
    }

    pub(super) fn upgrade_opened(&self) {
        let lane = self.lane();
        lane.upgraded.fetch_add(1, Ordering::Relaxed);
        lane.upgraded_open.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn upgrade_closed(&self) {
        self.lane().upgraded_open.fetch_sub(1, Ordering::AcqRel);
    }

    /// The counters summed over the workers.
    pub(super) fn snapshot(&self, release: Option<String>, timed: bool) -> BackendStats {
        BackendStats {
            release,
            inflight: self.inflight(),
            served: self.sum(|l| &l.served),
            responses: std::array::from_fn(|i| self.sum(|l| &l.responses[i])),
            upgraded_open: self.sum(|l| &l.upgraded_open),
            upgraded: self.sum(|l| &l.upgraded),
            connect_errors: self.sum(|l| &l.connect_errors),
            latency: if timed {
                (0..=LATENCY_BOUNDS_MS.len())
                    .map(|i| self.sum(|l| &l.latency[i]))
                    .collect()
            } else {
                Vec::new()
            },
            latency_sum_us: self.sum(|l| &l.latency_sum_us),
            down: self.is_down(now_ms()),
            bad_responses: self.sum(|l| &l.bad_responses),
        }
    }
}

/// The proxy's own verdicts that no backend is charged with, by kind (the timeouts, and
/// requests refused before any backend saw them).
#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) request_body: AtomicU64,
    pub(super) response_head: AtomicU64,
    pub(super) client_write: AtomicU64,
    pub(super) backend_write: AtomicU64,
    refused: AtomicU64,
}

impl Faults {
    pub(super) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> FaultCounts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            request_body_timeouts: load(&self.request_body),
            response_head_timeouts: load(&self.response_head),
            client_write_timeouts: load(&self.client_write),
            backend_write_timeouts: load(&self.backend_write),
            refused: load(&self.refused),
        }
    }
}

/// One release's traffic, summed over its backends.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReleaseSummary {
    /// `None`: backends routed without a release label.
    pub release: Option<String>,
    pub backends: Vec<SocketAddr>,
    /// The proxy sends new requests to it now.
    pub active: bool,
    pub requests: u64,
    pub inflight: u64,
    /// Responses with a 5xx status (the proxy's own 502s included).
    pub errors_5xx: u64,
    pub upgraded_open: u64,
    pub connect_errors: u64,
    /// From the histogram (the upper bound of the bucket the quantile falls in); `None`
    /// without requests or with metrics off.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

impl ReleaseSummary {
    /// The share of answered requests that were 5xx (0 without requests).
    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 / self.requests as f64
        }
    }
}

/// Per release (in the order the backends sort), the active one first.
pub fn summarize(status: &Status) -> Vec<ReleaseSummary> {
    let mut by_release: BTreeMap<Option<String>, (ReleaseSummary, Vec<u64>)> = BTreeMap::new();
    for (addr, stats) in &status.backends {
        let (sum, hist) = by_release.entry(stats.release.clone()).or_insert_with(|| {
            (
                ReleaseSummary {
                    release: stats.release.clone(),
                    ..ReleaseSummary::default()
                },
                Vec::new(),
            )
        });
        sum.backends.push(*addr);
        sum.active |= status.active.contains(addr);
        sum.requests += stats.responses.iter().sum::<u64>();
        sum.inflight += stats.inflight;
        sum.errors_5xx += stats.responses[4];
        sum.upgraded_open += stats.upgraded_open;
        sum.connect_errors += stats.connect_errors;
        if hist.len() < stats.latency.len() {
            hist.resize(stats.latency.len(), 0);
        }
        for (h, n) in hist.iter_mut().zip(&stats.latency) {
            *h += n;
        }
    }
    let mut out: Vec<ReleaseSummary> = by_release
        .into_values()
        .map(|(mut sum, hist)| {
            sum.p50_ms = quantile_ms(&hist, 0.50);
            sum.p99_ms = quantile_ms(&hist, 0.99);
            sum
        })
        .collect();
    out.sort_by_key(|s| !s.active);
    out
}

/// The upper bound (ms) of the bucket holding quantile `q`; the slowest bucket has no upper
/// bound, so it reads as twice the last one.
pub fn quantile_ms(hist: &[u64], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(
                LATENCY_BOUNDS_MS
                    .get(i)
                    .copied()
                    .unwrap_or(LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1] * 2),
            );
        }
    }
    None
}

/// The snapshot in Prometheus' text exposition format, one series per backend, labelled
/// with its address and release.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let labels = |addr: &SocketAddr, stats: &BackendStats| {
        format!(
            "backend=\"{addr}\",release=\"{}\"",
            escape(stats.release.as_deref().unwrap_or(""))
        )
    };
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&BackendStats) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (addr, stats) in &status.backends {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(addr, stats), value(stats));
        }
    };
    family(
        "berth_proxy_requests_in_flight",
        "gauge",
        "Requests not yet answered in full, and open upgraded connections.",
        &|s| s.inflight,
    );
    family(
        "berth_proxy_upgraded_connections_open",
        "gauge",
        "Upgraded (WebSocket) connections open now.",
        &|s| s.upgraded_open,
    );
    family(
        "berth_proxy_upgraded_connections_total",
        "counter",
        "Upgraded (WebSocket) connections opened.",
        &|s| s.upgraded,
    );
    family(
        "berth_proxy_backend_connect_errors_total",
        "counter",
        "Connections to the backend that failed.",
        &|s| s.connect_errors,
    );
    family(
        "berth_proxy_bad_responses_total",
        "counter",
        "Answers from the backend that were not well-framed HTTP/1.1 (each a 502).",
        &|s| s.bad_responses,
    );
    family(
        "berth_proxy_backend_up",
        "gauge",
        "1 while the backend is in rotation, 0 after a failed connect.",
        &|s| u64::from(!s.down),
    );
    let name = "berth_proxy_responses_total";
    let _ = writeln!(
        out,
        "# HELP {name} Responses by status class.\n# TYPE {name} counter"
    );
    for (addr, stats) in &status.backends {
        for (i, n) in stats.responses.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}{{{},code=\"{}xx\"}} {n}",
                labels(addr, stats),
                i + 1
            );
        }
    }
    let name = "berth_proxy_timeouts_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests cut short by a proxy timeout, by phase.\n# TYPE {name} counter"
    );
    let f = &status.faults;
    for (kind, n) in [
        ("request_body", f.request_body_timeouts),
        ("response_head", f.response_head_timeouts),
        ("client_write", f.client_write_timeouts),
        ("backend_write", f.backend_write_timeouts),
    ] {
        let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
    }
    let name = "berth_proxy_refused_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests refused before any backend saw them.\n# TYPE {name} counter\n{name} {}",
        f.refused
    );
    let name = "berth_proxy_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from the request to the end of its response.\n# TYPE {name} histogram"
    );
    for (addr, stats) in &status.backends {
        if stats.latency.is_empty() {
            continue;
        }
        let l = labels(addr, stats);
        let mut cumulative = 0;
        for (i, n) in stats.latency.iter().enumerate() {
            cumulative += n;
            let le = LATENCY_BOUNDS_MS.get(i).map_or_else(
                || "+Inf".to_string(),
                |ms| format!("{}", *ms as f64 / 1000.0),
            );
            let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{{{l}}} {}\n{name}_count{{{l}}} {cumulative}",
            stats.latency_sum_us as f64 / 1e6
        );
    }
    out
}

/// A label value as the exposition format wants it.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_worker_counts_in_its_own_lane_and_readings_sum_the_lanes() {
        let c = std::sync::Arc::new(Counters {
            lanes: (0..2).map(|_| Lane::default()).collect(),
            down_until_ms: AtomicU64::new(0),
        });
        assert!(
            std::mem::align_of::<Lane>() >= 128,
            "a lane has its own cache lines"
        );
        let here = c.start();
        assert_eq!(here, 0, "outside the workers: lane 0");
        let other = c.clone();
        std::thread::spawn(move || {
            set_lane(1);
            let lane = other.start();
            assert_eq!(lane, 1);
            other.response(200);
            other.end(lane, true);
            other.start();
            assert_eq!(other.inflight_here(), 1);
        })
        .join()
        .unwrap();
        assert_eq!(c.inflight(), 2, "one in flight in each lane");
        assert_eq!(c.inflight_here(), 1, "a pick here sees its own");
        c.end(here, true);
        let s = c.snapshot(None, true);
        assert_eq!((s.inflight, s.served, s.responses[1]), (1, 2, 1));
    }

    fn status() -> Status {
        let (a, b, c) = (
            addr("127.0.0.1:1001"),
            addr("127.0.0.1:1002"),
            addr("127.0.0.1:2001"),
        );
        let old = Counters::default();
        for _ in 0..99 {
            old.response(200);
            old.latency(Duration::from_micros(1500));
        }
        old.response(502);
        old.latency(Duration::from_millis(700));
        let new = Counters::default();
        new.response(503);
        new.latency(Duration::from_secs(20));
        new.connect_error();
        Status {
            ok: true,
            active: vec![c],
            previous: vec![a, b],
            backends: BTreeMap::from([
                (a, old.snapshot(Some("v1".into()), true)),
                (b, Counters::default().snapshot(Some("v1".into()), true)),
                (c, new.snapshot(Some("v2\"".into()), true)),
            ]),
            preview: None,
            pid: None,
            faults: FaultCounts {
                request_body_timeouts: 1,
                response_head_timeouts: 2,
                client_write_timeouts: 3,
                backend_write_timeouts: 4,
                refused: 5,
            },
        }
    }

    #[test]
    fn a_summary_per_release_with_the_active_first() {
        let sums = summarize(&status());
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].release.as_deref(), Some("v2\""));
        assert!(sums[0].active);
        assert_eq!((sums[0].requests, sums[0].errors_5xx), (1, 1));
        assert_eq!(sums[0].p99_ms, Some(20_000), "slower than the last bound");
        assert_eq!(sums[0].connect_errors, 1);
        let v1 = &sums[1];
        assert_eq!(v1.backends.len(), 2);
        assert_eq!((v1.requests, v1.errors_5xx), (100, 1));
        assert!((v1.error_ratio() - 0.01).abs() < 1e-9);
        assert_eq!(v1.p50_ms, Some(2));
        assert_eq!(
            v1.p99_ms,
            Some(2),
            "the 99th of 100 is still in the 1-2 ms bucket"
        );
    }

    #[test]
    fn no_requests_no_quantile() {
        assert_eq!(quantile_ms(&[], 0.99), None);
        assert_eq!(quantile_ms(&[0, 0], 0.5), None);
        assert_eq!(quantile_ms(&[1, 0, 1], 1.0), Some(5));
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_escaped_labels() {
        let text = render(&status());
        assert!(text.contains(
            "berth_proxy_responses_total{backend=\"127.0.0.1:1001\",release=\"v1\",code=\"2xx\"} 99"
        ), "{text}");
        assert!(text.contains(
            "berth_proxy_request_duration_seconds_bucket{backend=\"127.0.0.1:1001\",release=\"v1\",le=\"0.002\"} 99"
        ), "{text}");
        assert!(text.contains(
            "berth_proxy_request_duration_seconds_bucket{backend=\"127.0.0.1:1001\",release=\"v1\",le=\"+Inf\"} 100"
        ), "{text}");
        assert!(text.contains("release=\"v2\\\"\""), "{text}");
        for (kind, n) in [
            ("request_body", 1),
            ("response_head", 2),
            ("client_write", 3),
            ("backend_write", 4),
        ] {
            let line = format!("berth_proxy_timeouts_total{{kind=\"{kind}\"}} {n}\n");
            assert!(text.contains(&line), "{line}: {text}");
        }
        assert!(
            text.contains("berth_proxy_refused_requests_total 5\n"),
            "{text}"
        );
        assert!(text
            .contains("berth_proxy_backend_up{backend=\"127.0.0.1:2001\",release=\"v2\\\"\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
