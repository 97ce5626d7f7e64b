//! What the proxy counts per backend (atomics only: this is on every request's path), the
//! snapshot the control socket's `status` answers with, and the two readings of a snapshot:
//! Prometheus' text format (the agent's `GET /metrics`) and a summary per release (`berth
//! status`, and the canary analysis that compares two releases).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::protocol::{BackendStats, FaultCounts, Status, LATENCY_BOUNDS_MS};

/// One backend's live counters.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) inflight: AtomicU64,
    pub(super) served: AtomicU64,
    responses: [AtomicU64; 5],
    pub(super) upgraded_open: AtomicU64,
    upgraded: AtomicU64,
    connect_errors: AtomicU64,
    bad_responses: AtomicU64,
    latency: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    latency_sum_us: AtomicU64,
    /// Out of rotation until this time ([`now_ms`]): set by a failed connect.
    down_until_ms: AtomicU64,
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
    /// A response with `status` went out (or is going out).
    pub(super) fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// A request took `took`, until its response's end.
    pub(super) fn latency(&self, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms < *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(super) fn connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        self.down_until_ms
            .store(now_ms() + DOWN_FOR_MS, Ordering::Relaxed);
    }

    /// The backend answered with a malformed message: alive, so not marked down.
    pub(super) fn bad_response(&self) {
        self.bad_responses.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn is_down(&self, now: u64) -> bool {
        self.down_until_ms.load(Ordering::Relaxed) > now
    }

    pub(super) fn upgrade_opened(&self) {
        self.upgraded.fetch_add(1, Ordering::Relaxed);
        self.upgraded_open.fetch_add(1, Ordering::AcqRel);
    }

    pub(super) fn upgrade_closed(&self) {
        self.upgraded_open.fetch_sub(1, Ordering::AcqRel);
    }

    pub(super) fn snapshot(&self, release: Option<String>, timed: bool) -> BackendStats {
        let load = |a: &AtomicU64| a.load(Ordering::Acquire);
        BackendStats {
            release,
            inflight: load(&self.inflight),
            served: load(&self.served),
            responses: std::array::from_fn(|i| load(&self.responses[i])),
            upgraded_open: load(&self.upgraded_open),
            upgraded: load(&self.upgraded),
            connect_errors: load(&self.connect_errors),
            latency: if timed {
                self.latency.iter().map(load).collect()
            } else {
                Vec::new()
            },
            latency_sum_us: load(&self.latency_sum_us),
            down: self.is_down(now_ms()),
            bad_responses: load(&self.bad_responses),
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
            faults: FaultCounts::default(),
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
        assert!(text
            .contains("berth_proxy_backend_up{backend=\"127.0.0.1:2001\",release=\"v2\\\"\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
