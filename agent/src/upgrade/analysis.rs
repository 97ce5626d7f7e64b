//! Judged by numbers: after the switch, the new release's traffic as the proxy counted it
//! (5xx ratio, p99 latency) against the previous release's baseline, with the limits of
//! `[upgrade.analysis]`. A passing healthcheck proves that a release starts, not that it
//! serves: a release answering 5 % of its requests with 500 passes every health check.
//!
//! [`judge`] is pure (counts in, verdict out) and tested here; [`Upgrader::watch`] polls the
//! proxy and the containers through the watch window (`verify_secs` + `bake_secs`) and stops at
//! the first failure, so that a bad release serves for as short a time as the numbers allow.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;
use serde::Serialize;

use super::colors::Side;
use super::probe::ProbeError;
use super::Upgrader;
use crate::config::AnalysisSettings;
use crate::proxy::metrics::quantile_ms;
use crate::proxy::protocol::Status;
use crate::serve::traffic;
use crate::serve::{Analysis, Figures};

/// What some backends served, as the proxy counted them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub requests: u64,
    pub errors_5xx: u64,
    /// The latency histogram (the proxy's buckets); empty with `--no-metrics`.
    #[serde(skip)]
    pub latency: Vec<u64>,
}

impl Counts {
    /// The sums over `backends` in the proxy's `status`.
    pub fn of(status: &Status, backends: &[SocketAddr]) -> Counts {
        let mut c = Counts::default();
        for stats in backends.iter().filter_map(|b| status.backends.get(b)) {
            c.requests += stats.responses.iter().sum::<u64>();
            c.errors_5xx += stats.responses[4];
            if c.latency.len() < stats.latency.len() {
                c.latency.resize(stats.latency.len(), 0);
            }
            for (h, n) in c.latency.iter_mut().zip(&stats.latency) {
                *h += n;
            }
        }
        c
    }

    /// What was counted since `earlier` (a backend's counters only grow, but a port that a
    /// new container reuses keeps the old one's counts: they are subtracted).
    pub fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors_5xx: self.errors_5xx.saturating_sub(earlier.errors_5xx),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The 5xx ratio in percent (0 with no request).
    pub fn percent_5xx(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors_5xx as f64 * 100.0 / self.requests as f64
        }
    }

    pub fn p99_ms(&self) -> Option<u64> {
        quantile_ms(&self.latency, 0.99)
    }

    /// As `/status` shows them.
    pub fn figures(&self) -> Figures {
        Figures {
            requests: self.requests,
            errors_5xx: self.errors_5xx,
            percent_5xx: (self.percent_5xx() * 100.0).round() / 100.0,
            p99_ms: self.p99_ms(),
        }
    }
}

/// Why the numbers failed a release. The figures are the proxy's counts: no request content.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failed {
    #[error("5xx on {percent:.1} % of its requests ({errors} of {requests}), over the limit of {limit:.1} % (the previous release: {baseline})")]
    Errors {
        percent: f64,
        errors: u64,
        requests: u64,
        limit: f64,
        baseline: Baseline,
    },
    #[error("p99 latency {p99_ms} ms over {requests} requests, over the limit of {limit_ms} ms (the previous release: p99 {baseline_ms} ms over {baseline_requests})")]
    Latency {
        p99_ms: u64,
        requests: u64,
        limit_ms: u64,
        baseline_ms: u64,
        baseline_requests: u64,
    },
}

/// The previous release's figures as a failure names them.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub percent: f64,
    pub requests: u64,
    /// Fewer than `min_requests`: only the absolute limit applied.
    pub judged: bool,
}

impl std::fmt::Display for Baseline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} % of {}", self.percent, self.requests)?;
        if !self.judged {
            write!(f, ", too few to compare with")?;
        }
        Ok(())
    }
}

/// Where the judgement stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The new release has served fewer than `min_requests` so far.
    TooFew {
        requests: u64,
    },
    Pass,
    Fail(Failed),
}

/// The new release's counts (`candidate`, since the switch) against the previous release's
/// (`baseline`), under `limits`.
pub fn judge(baseline: &Counts, candidate: &Counts, limits: &AnalysisSettings) -> Verdict {
    if candidate.requests < limits.min_requests {
        return Verdict::TooFew {
            requests: candidate.requests,
        };
    }
    let compared = baseline.requests >= limits.min_requests;
    let mut limit = limits.max_5xx_percent;
    if compared {
        limit = limit.max(baseline.percent_5xx() * limits.max_5xx_factor);
    }
    let percent = candidate.percent_5xx();
    if percent > limit {
        return Verdict::Fail(Failed::Errors {
            percent,
            errors: candidate.errors_5xx,
            requests: candidate.requests,
            limit,
            baseline: Baseline {
                percent: baseline.percent_5xx(),
                requests: baseline.requests,
                judged: compared,
            },
        });
    }
    if let (true, Some(base), Some(p99)) = (compared, baseline.p99_ms(), candidate.p99_ms()) {
        let limit_ms =
            ((base as f64 * limits.max_p99_factor).ceil() as u64).max(limits.p99_floor_ms);
        if p99 > limit_ms {
            return Verdict::Fail(Failed::Latency {
                p99_ms: p99,
                requests: candidate.requests,
                limit_ms,
                baseline_ms: base,
                baseline_requests: baseline.requests,
            });
        }
    }
    Verdict::Pass
}

/// Why the watch after a switch failed the new release.
#[derive(Debug, thiserror::Error)]
pub enum WatchFailure {
    #[error(transparent)]
    Health(#[from] ProbeError),
    #[error("judged by its traffic: {0}")]
    Numbers(#[source] Failed),
}

/// What the analysis compares: both releases' counts just before the switch.
#[derive(Debug, Clone)]
pub struct Before {
    pub baseline: Counts,
    pub candidate: Counts,
    pub previous: Option<String>,
}

impl Upgrader<'_> {
    /// Both sides' counts before the switch; None (the analysis is off, or the proxy did not
    /// answer: the health checks still judge) when there is nothing to compare from.
    pub(super) async fn before_switch(&self, new: &Side, old: &Side) -> Option<Before> {
        if !self.config.upgrade.analysis.enabled {
            return None;
        }
        match traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT).await {
            Ok(status) => Some(Before {
                baseline: Counts::of(&status, &old.backends),
                candidate: Counts::of(&status, &new.backends),
                previous: old.release.clone(),
            }),
            Err(e) => {
                self.progress.warn(&format!(
                    "analysis off for this upgrade: {}",
                    crate::report::chain(&e)
                ));
                None
            }
        }
    }

    /// After the switch, for `verify_secs` + `bake_secs`: every replica of the new side stays
    /// healthy, and (with `before`) its traffic passes [`judge`]. The first failure ends it.
    pub(super) async fn watch(
        &self,
        new: &Side,
        release: &str,
        before: Option<&Before>,
    ) -> Result<(), WatchFailure> {
        let limits = &self.config.upgrade.analysis;
        let mut secs = self.config.upgrade.verify_secs;
        if before.is_some() {
            secs += limits.bake_secs;
        }
        let until = Instant::now() + Duration::from_secs(secs);
        let mut last = None;
        loop {
            try_join_all(new.replicas.iter().map(|r| self.check(&r.id, r.backend))).await?;
            if let Some(before) = before {
                // A proxy that does not answer one look is not the release's fault: the next
                // look judges.
                if let Ok(status) = traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT).await {
                    let candidate = Counts::of(&status, &new.backends).since(&before.candidate);
                    let verdict = judge(&before.baseline, &candidate, limits);
                    self.record(release, before, &candidate, &verdict, false, None);
                    if let Verdict::Fail(failed) = verdict {
                        return Err(WatchFailure::Numbers(failed));
                    }
                    last = Some((candidate, verdict));
                }
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let (Some(before), Some((candidate, verdict))) = (before, last) {
            self.record(release, before, &candidate, &verdict, true, None);
            if let Verdict::TooFew { requests } = verdict {
                tracing::warn!(release, requests, min_requests = limits.min_requests, "too little traffic to judge the release by its numbers: judged by its health checks");
            } else {
                tracing::info!(release, requests = candidate.requests, errors_5xx = candidate.errors_5xx, p99_ms = ?candidate.p99_ms(), "the release passed its analysis");
            }
        }
        Ok(())
    }

    /// Puts the judgement so far into `/status` (with the canary's share, during one).
    pub(super) fn record(
        &self,
        release: &str,
        before: &Before,
        candidate: &Counts,
        verdict: &Verdict,
        done: bool,
        canary_percent: Option<u8>,
    ) {
        let Some(state) = self.state else {
            return;
        };
        let verdict = match (verdict, done) {
            (Verdict::Fail(f), _) => format!("failed: {f}"),
            (Verdict::TooFew { .. }, true) => "too few requests".into(),
            (Verdict::Pass, true) => "passed".into(),
            (_, false) => "watching".into(),
        };
        let analysis = Analysis {
            release: release.to_string(),
            previous: before.previous.clone(),
            candidate: candidate.figures(),
            baseline: before.baseline.figures(),
            verdict,
            canary_percent,
        };
        state.update(|s| s.analysis = Some(analysis));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `requests` answered, `errors` of them 5xx, all in latency bucket `bucket`.
    fn counts(requests: u64, errors: u64, bucket: usize) -> Counts {
        let mut latency = vec![0; 14];
        latency[bucket] = requests;
        Counts {
            requests,
            errors_5xx: errors,
            latency,
        }
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        let limits = AnalysisSettings::default();
        let v = judge(&counts(1000, 0, 0), &counts(99, 99, 0), &limits);
        assert_eq!(v, Verdict::TooFew { requests: 99 });
    }

    #[test]
    fn five_percent_of_500s_fail_against_a_clean_baseline_and_name_the_figures() {
        let limits = AnalysisSettings::default();
        let v = judge(&counts(2000, 0, 0), &counts(200, 10, 0), &limits);
        let Verdict::Fail(f) = v else {
            panic!("{v:?}");
        };
        assert_eq!(
            f.to_string(),
            "5xx on 5.0 % of its requests (10 of 200), over the limit of 1.0 % (the previous release: 0.0 % of 2000)"
        );
    }

    #[test]
    fn the_5xx_limit_is_the_floor_or_a_multiple_of_the_baseline() {
        let limits = AnalysisSettings::default();
        // The previous release answered 3 % with 5xx: up to 6 % passes, 7 % does not.
        let base = counts(1000, 30, 0);
        assert_eq!(judge(&base, &counts(100, 6, 0), &limits), Verdict::Pass);
        assert!(matches!(
            judge(&base, &counts(100, 7, 0), &limits),
            Verdict::Fail(Failed::Errors { limit, .. }) if (limit - 6.0).abs() < 1e-9
        ));
        // Under 1 %, always fine.
        assert_eq!(
            judge(&counts(1000, 0, 0), &counts(1000, 10, 0), &limits),
            Verdict::Pass
        );
        // A baseline of too few requests is not compared with: only the floor applies.
        let v = judge(&counts(50, 25, 0), &counts(100, 2, 0), &limits);
        assert!(
            matches!(&v, Verdict::Fail(Failed::Errors { limit, baseline, .. }) if *limit == 1.0 && !baseline.judged),
            "{v:?}"
        );
    }

    #[test]
    fn latency_fails_over_its_factor_and_floor_only_against_a_baseline() {
        let limits = AnalysisSettings::default();
        // Buckets: index 6 is <= 100 ms, 8 is <= 500 ms, 2 is <= 5 ms, 4 is <= 25 ms.
        let v = judge(&counts(1000, 0, 6), &counts(100, 0, 8), &limits);
        assert_eq!(
            v,
            Verdict::Fail(Failed::Latency {
                p99_ms: 500,
                requests: 100,
                limit_ms: 150,
                baseline_ms: 100,
                baseline_requests: 1000,
            })
        );
        // 5 ms to 25 ms is five times slower, but under the 50 ms floor.
        assert_eq!(
            judge(&counts(1000, 0, 2), &counts(100, 0, 4), &limits),
            Verdict::Pass
        );
        // No baseline to compare with: latency is not judged.
        assert_eq!(
            judge(&counts(10, 0, 2), &counts(100, 0, 8), &limits),
            Verdict::Pass
        );
        // Without histograms (--no-metrics) neither.
        let flat = |r| Counts {
            requests: r,
            ..Counts::default()
        };
        assert_eq!(judge(&flat(1000), &flat(100), &limits), Verdict::Pass);
    }

    #[test]
    fn counts_since_the_switch_leave_out_what_a_reused_port_served_before() {
        let now = counts(300, 12, 1);
        let then = counts(100, 2, 1);
        let d = now.since(&then);
        assert_eq!((d.requests, d.errors_5xx, d.latency[1]), (200, 10, 200));
        assert_eq!(then.since(&now).requests, 0);
    }

    #[test]
    fn settings_out_of_range_name_their_key() {
        let bad = AnalysisSettings {
            max_5xx_factor: 0.5,
            ..AnalysisSettings::default()
        };
        assert_eq!(
            bad.check().map_err(|e| e.0),
            Err("upgrade.analysis.max_5xx_factor".into())
        );
        let bad = AnalysisSettings {
            max_5xx_percent: 101.0,
            ..AnalysisSettings::default()
        };
        assert!(bad.check().is_err());
        assert!(AnalysisSettings::default().check().is_ok());
    }
}
