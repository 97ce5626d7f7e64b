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
use super::sequential::{Decision, Sprt};
use super::Upgrader;
use crate::config::{AnalysisSettings, Method};
use crate::proxy::metrics::quantile_ms;
use crate::proxy::protocol::{Status, LATENCY_BOUNDS_MS};
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
    /// The sequential test: more of its requests over the line than the previous release had.
    #[error("{slow} of {requests} requests after its warm-up ({percent:.1} %) took over {limit_ms} ms, where {baseline_percent:.1} % of the previous release's did (its p99 {baseline_ms} ms over {baseline_requests} requests)")]
    Slower {
        slow: u64,
        requests: u64,
        percent: f64,
        limit_ms: u64,
        baseline_percent: f64,
        baseline_ms: u64,
        baseline_requests: u64,
    },
    /// A fixed line: its p99 over the previous release's times `max_p99_factor`.
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
    /// The sequential test cannot tell yet: the watch goes on (up to `max_secs`).
    Undecided,
    Pass,
    Fail(Failed),
}

/// The least share of requests over the latency line the test assumes of a fine release
/// (the previous release's own share, measured, when higher)...
const SLOW_FINE: f64 = 0.01;
/// ...and how many times that share is a regression (at least this many points more).
const SLOW_TIMES: f64 = 4.0;
const SLOW_MORE: f64 = 0.04;

/// The new release's counts against the previous release's (`baseline`), under `limits`:
/// `candidate` since the switch (its errors count from the first request), `warm` since its
/// warm-up ended (its latency counts only from then; None while it warms up). With the
/// sequential method, `last` is the final look (`max_secs` reached): what is still undecided is
/// judged by the fixed lines once.
///
/// Two sequential tests: the share of 5xx (fine at a quarter of the limit, bad at the limit),
/// and the share of requests over a latency line the previous release rarely crossed (its p95,
/// at least `p99_floor_ms`): fine at the previous release's own share, bad at four times it. A
/// release slower on every answer crosses the line on nearly every request and is caught
/// within a few; a tail-only regression is left to the fixed p99 line at the end.
pub fn judge(
    baseline: &Counts,
    candidate: &Counts,
    warm: Option<&Counts>,
    limits: &AnalysisSettings,
    last: bool,
) -> Verdict {
    if limits.method == Method::Fixed {
        return judge_fixed(baseline, candidate, limits);
    }
    if candidate.requests < limits.min_requests {
        return Verdict::TooFew {
            requests: candidate.requests,
        };
    }
    let errors = Errors::line(baseline, limits);
    let errors_test = Sprt::new(errors.limit / 400.0, errors.limit / 100.0)
        .decide(candidate.errors_5xx, candidate.requests);
    let errors_over = candidate.percent_5xx() > errors.limit;
    if errors_test == Decision::Bad || (last && errors_over) {
        return Verdict::Fail(errors.failed(baseline, candidate));
    }
    let latency_test = match (Slow::line(baseline, limits), warm) {
        // Nothing to compare with, or no histograms (--no-metrics): not judged.
        (None, _) => Decision::Fine,
        (Some(_), None) => Decision::Undecided,
        (Some(line), Some(warm)) => {
            let (over, n) = count_over(warm, line.over_from);
            let fine = line.base_share.max(SLOW_FINE);
            let bad = (fine * SLOW_TIMES).max(fine + SLOW_MORE).min(0.99);
            let decided = Sprt::new(fine, bad).decide(over, n);
            if decided == Decision::Bad {
                return Verdict::Fail(line.slower(baseline, warm));
            }
            if last {
                if let Some(failed) = line.over_p99(baseline, warm) {
                    return Verdict::Fail(failed);
                }
            }
            decided
        }
    };
    match (errors_test, latency_test) {
        (Decision::Fine, Decision::Fine) => Verdict::Pass,
        _ if last => Verdict::Pass,
        _ => Verdict::Undecided,
    }
}

/// The 5xx line: the floor, or a multiple of the previous release's ratio when that is higher
/// (and it served enough to compare with).
struct Errors {
    limit: f64,
    compared: bool,
}

impl Errors {
    fn line(baseline: &Counts, limits: &AnalysisSettings) -> Errors {
        let compared = baseline.requests >= limits.min_requests;
        let mut limit = limits.max_5xx_percent;
        if compared {
            limit = limit.max(baseline.percent_5xx() * limits.max_5xx_factor);
        }
        Errors { limit, compared }
    }

    fn failed(&self, baseline: &Counts, candidate: &Counts) -> Failed {
        Failed::Errors {
            percent: candidate.percent_5xx(),
            errors: candidate.errors_5xx,
            requests: candidate.requests,
            limit: self.limit,
            baseline: Baseline {
                percent: baseline.percent_5xx(),
                requests: baseline.requests,
                judged: self.compared,
            },
        }
    }
}

/// The latency lines, from the previous release's histogram.
struct Slow {
    /// The sequential test's line: the previous release's p95 (a bound of the proxy's
    /// histogram), at least the largest bound within `p99_floor_ms`.
    limit_ms: u64,
    /// The first bucket over it.
    over_from: usize,
    /// The previous release's share of requests over it.
    base_share: f64,
    baseline_ms: u64,
    /// The fixed line: the previous release's p99 times `max_p99_factor`, at least
    /// `p99_floor_ms`.
    wanted_ms: u64,
}

impl Slow {
    fn line(baseline: &Counts, limits: &AnalysisSettings) -> Option<Slow> {
        if baseline.requests < limits.min_requests {
            return None;
        }
        let p99 = baseline.p99_ms()?;
        let p95 = quantile_ms(&baseline.latency, 0.95)?;
        let floor = LATENCY_BOUNDS_MS
            .iter()
            .rev()
            .find(|&&b| b <= limits.p99_floor_ms)
            .copied()
            .unwrap_or(0);
        let limit_ms = p95.max(floor);
        // Past the last bound (the slowest bucket): nothing can be counted over it.
        let i = LATENCY_BOUNDS_MS.iter().position(|&b| b == limit_ms)?;
        let (over, n) = count_over(baseline, i + 1);
        Some(Slow {
            limit_ms,
            over_from: i + 1,
            base_share: if n == 0 { 0.0 } else { over as f64 / n as f64 },
            baseline_ms: p99,
            wanted_ms: ((p99 as f64 * limits.max_p99_factor).ceil() as u64)
                .max(limits.p99_floor_ms),
        })
    }

    fn slower(&self, baseline: &Counts, warm: &Counts) -> Failed {
        let (slow, requests) = count_over(warm, self.over_from);
        Failed::Slower {
            slow,
            requests,
            percent: percent(slow, requests),
            limit_ms: self.limit_ms,
            baseline_percent: self.base_share * 100.0,
            baseline_ms: self.baseline_ms,
            baseline_requests: baseline.requests,
        }
    }

    /// The fixed line: `counts`' p99 over it, if it is.
    fn over_p99(&self, baseline: &Counts, counts: &Counts) -> Option<Failed> {
        let p99 = counts.p99_ms()?;
        (p99 > self.wanted_ms).then_some(Failed::Latency {
            p99_ms: p99,
            requests: counts.requests,
            limit_ms: self.wanted_ms,
            baseline_ms: self.baseline_ms,
            baseline_requests: baseline.requests,
        })
    }
}

/// Requests in the buckets from `from` on, and all, in `counts`' histogram.
fn count_over(counts: &Counts, from: usize) -> (u64, u64) {
    let over = counts.latency.iter().skip(from).sum();
    (over, counts.latency.iter().sum())
}

fn percent(part: u64, all: u64) -> f64 {
    if all == 0 {
        0.0
    } else {
        part as f64 * 100.0 / all as f64
    }
}

/// The judge before the sequential one (`method = "fixed"`, kept to measure against): every
/// look compares the figures since the switch with fixed lines, and the first over one fails.
pub fn judge_fixed(baseline: &Counts, candidate: &Counts, limits: &AnalysisSettings) -> Verdict {
    if candidate.requests < limits.min_requests {
        return Verdict::TooFew {
            requests: candidate.requests,
        };
    }
    let errors = Errors::line(baseline, limits);
    if candidate.percent_5xx() > errors.limit {
        return Verdict::Fail(errors.failed(baseline, candidate));
    }
    if let Some(failed) =
        Slow::line(baseline, limits).and_then(|line| line.over_p99(baseline, candidate))
    {
        return Verdict::Fail(failed);
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
    #[error("{0}")]
    Alarm(crate::alarms::Firing),
    #[error(transparent)]
    Hook(#[from] super::hooks::HookFailed),
}

/// Looks at `[upgrade.alarms]` every `check_secs` through a watch.
pub(super) struct AlarmLooks {
    every: Duration,
    next: Instant,
}

impl AlarmLooks {
    pub(super) fn new(every_secs: u64) -> AlarmLooks {
        AlarmLooks {
            every: Duration::from_secs(every_secs),
            next: Instant::now(),
        }
    }
}

impl Upgrader<'_> {
    /// An alarm of the gate gone to ALARM since it opened, when it is time to look. A look
    /// CloudWatch does not answer is logged, and the next one judges.
    pub(super) async fn alarm_look(&self, looks: &mut AlarmLooks) -> Result<(), WatchFailure> {
        let (Some(gate), Some(aws)) = (self.alarms, self.aws) else {
            return Ok(());
        };
        if Instant::now() < looks.next {
            return Ok(());
        }
        looks.next = Instant::now() + looks.every;
        match gate.check(&aws.cloudwatch).await {
            Ok(Some(firing)) => Err(WatchFailure::Alarm(firing)),
            Ok(None) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %crate::report::chain(&e), "cannot look at the alarms: the next look judges");
                Ok(())
            }
        }
    }
}

/// What the analysis compares: the previous release's baseline, and both releases' counts at
/// the switch.
#[derive(Debug, Clone)]
pub struct Before {
    /// The previous release's recent traffic: what it served from the start of this upgrade to
    /// the switch (the same load, the same machine), or over its whole life when that was
    /// fewer than `min_requests` (and with the fixed method, as that judge had it).
    pub baseline: Counts,
    pub candidate: Counts,
    pub previous: Option<String>,
}

/// The counts behind the new release's judgement, as the looks go: from the switch, and from
/// the end of its warm-up.
pub(super) struct Looks<'a> {
    limits: &'a AnalysisSettings,
    started: Instant,
    at_start: Counts,
    warm_from: Option<Counts>,
}

impl<'a> Looks<'a> {
    pub(super) fn new(limits: &'a AnalysisSettings, at_start: Counts) -> Looks<'a> {
        Looks {
            limits,
            started: Instant::now(),
            at_start,
            warm_from: None,
        }
    }

    /// One look at the new side's counts `now`: the counts since the start, and the verdict.
    pub(super) fn look(
        &mut self,
        baseline: &Counts,
        now: &Counts,
        last: bool,
    ) -> (Counts, Verdict) {
        let warmup = Duration::from_secs(self.limits.warmup_secs);
        if self.warm_from.is_none() && self.started.elapsed() >= warmup {
            self.warm_from = Some(if warmup.is_zero() {
                self.at_start.clone()
            } else {
                now.clone()
            });
        }
        let candidate = now.since(&self.at_start);
        let warm = self.warm_from.as_ref().map(|w| now.since(w));
        let verdict = judge(baseline, &candidate, warm.as_ref(), self.limits, last);
        (candidate, verdict)
    }
}

impl Upgrader<'_> {
    /// The proxy's counts now, when the analysis will want them (the start of an upgrade: the
    /// previous release's recent traffic is counted from here).
    pub(super) async fn traffic_now(&self) -> Option<Status> {
        if !self.config.upgrade.analysis.enabled {
            return None;
        }
        traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT)
            .await
            .ok()
    }

    /// Both sides' counts before the switch; None (the analysis is off, or the proxy did not
    /// answer: the health checks still judge) when there is nothing to compare from. `early`:
    /// the proxy's counts at the start of the upgrade.
    pub(super) async fn before_switch(
        &self,
        new: &Side,
        old: &Side,
        early: Option<&Status>,
    ) -> Option<Before> {
        let limits = &self.config.upgrade.analysis;
        if !limits.enabled {
            return None;
        }
        match traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT).await {
            Ok(status) => {
                let life = Counts::of(&status, &old.backends);
                let since = |then: &Status| life.since(&Counts::of(then, &old.backends));
                // The same length of time as the watch, just before the switch; or further
                // back (what the agent kept, the start of this upgrade) until it served
                // `min_requests`; or its whole life.
                let window =
                    Duration::from_secs(self.config.upgrade.verify_secs + limits.bake_secs);
                let mut recent = vec![];
                if let Some(state) = self.state {
                    recent.extend(state.recent.back(window).map(|(_, s)| since(&s)));
                    recent.extend(state.recent.oldest().map(|(_, s)| since(&s)));
                }
                recent.extend(early.map(since));
                let baseline = match limits.method {
                    Method::Fixed => life,
                    Method::Sequential => recent
                        .into_iter()
                        .find(|c| c.requests >= limits.min_requests)
                        .unwrap_or(life),
                };
                Some(Before {
                    baseline,
                    candidate: Counts::of(&status, &new.backends),
                    previous: old.release.clone(),
                })
            }
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
    /// healthy, and (with `before`) its traffic passes [`judge`]; while the sequential test is
    /// undecided, the watch goes on up to `max_secs`. The first failure ends it.
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
        let window = Duration::from_secs(secs);
        let longest = window.max(Duration::from_secs(limits.max_secs));
        let started = Instant::now();
        let mut looks = before.map(|b| Looks::new(limits, b.candidate.clone()));
        let mut alarms = AlarmLooks::new(self.config.upgrade.alarms.check_secs);
        let mut last = None;
        loop {
            try_join_all(new.replicas.iter().map(|r| self.check(&r.id, r.backend))).await?;
            self.alarm_look(&mut alarms).await?;
            let elapsed = started.elapsed();
            if let (Some(before), Some(looks)) = (before, looks.as_mut()) {
                // A proxy that does not answer one look is not the release's fault: the next
                // look judges.
                if let Ok(status) = traffic::ask(self.proxy_socket(), traffic::ASK_TIMEOUT).await {
                    let now = Counts::of(&status, &new.backends);
                    let (candidate, verdict) =
                        looks.look(&before.baseline, &now, elapsed >= longest);
                    self.record(release, before, &candidate, &verdict, false, None);
                    if let Verdict::Fail(failed) = verdict {
                        return Err(WatchFailure::Numbers(failed));
                    }
                    last = Some((candidate, verdict));
                }
            }
            if elapsed >= window {
                let undecided = matches!(last, Some((_, Verdict::Undecided)));
                if !undecided || elapsed >= longest {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let (Some(before), Some((candidate, verdict))) = (before, last) {
            self.record(release, before, &candidate, &verdict, true, None);
            if let Verdict::TooFew { requests } = verdict {
                tracing::warn!(release, requests, min_requests = limits.min_requests, "too little traffic to judge the release by its numbers: judged by its health checks");
            } else {
                tracing::info!(release, requests = candidate.requests, errors_5xx = candidate.errors_5xx, p99_ms = ?candidate.p99_ms(), watched_secs = started.elapsed().as_secs_f64(), "the release passed its analysis");
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
            (Verdict::Pass | Verdict::Undecided, true) => "passed".into(),
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

    fn fixed() -> AnalysisSettings {
        AnalysisSettings {
            method: Method::Fixed,
            ..AnalysisSettings::default()
        }
    }

    /// The sequential judge, the warm-up over.
    fn seq(baseline: &Counts, candidate: &Counts, last: bool) -> Verdict {
        judge(
            baseline,
            candidate,
            Some(candidate),
            &AnalysisSettings::default(),
            last,
        )
    }

    #[test]
    fn too_few_requests_are_not_judged() {
        let v = seq(&counts(1000, 0, 0), &counts(99, 99, 0), true);
        assert_eq!(v, Verdict::TooFew { requests: 99 });
        let v = judge_fixed(&counts(1000, 0, 0), &counts(99, 99, 0), &fixed());
        assert_eq!(v, Verdict::TooFew { requests: 99 });
    }

    #[test]
    fn five_percent_of_500s_fail_against_a_clean_baseline_and_name_the_figures() {
        let v = seq(&counts(2000, 0, 0), &counts(200, 10, 0), false);
        let Verdict::Fail(f) = v else {
            panic!("{v:?}");
        };
        assert_eq!(
            f.to_string(),
            "5xx on 5.0 % of its requests (10 of 200), over the limit of 1.0 % (the previous release: 0.0 % of 2000)"
        );
        assert!(matches!(
            judge_fixed(&counts(2000, 0, 0), &counts(200, 10, 0), &fixed()),
            Verdict::Fail(Failed::Errors { .. })
        ));
    }

    #[test]
    fn the_sequential_test_waits_while_it_cannot_tell_and_judges_by_the_line_at_the_end() {
        let base = counts(2000, 0, 2);
        // 100 clean requests cannot tell 0 % from 1 %: undecided, then passed at the end.
        assert_eq!(seq(&base, &counts(100, 0, 2), false), Verdict::Undecided);
        assert_eq!(seq(&base, &counts(100, 0, 2), true), Verdict::Pass);
        // 400 can.
        assert_eq!(seq(&base, &counts(400, 0, 2), false), Verdict::Pass);
        // 2 of 120 (1.7 %) is not proof of a regression yet; at the end it is over the line.
        assert_eq!(seq(&base, &counts(120, 2, 2), false), Verdict::Undecided);
        assert!(matches!(
            seq(&base, &counts(120, 2, 2), true),
            Verdict::Fail(Failed::Errors { errors: 2, .. })
        ));
        // The fixed judge fails it at the first look.
        assert!(matches!(
            judge_fixed(&base, &counts(120, 2, 2), &fixed()),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn the_5xx_limit_is_the_floor_or_a_multiple_of_the_baseline() {
        let limits = fixed();
        // The previous release answered 3 % with 5xx: up to 6 % passes, 7 % does not.
        let base = counts(1000, 30, 0);
        assert_eq!(
            judge_fixed(&base, &counts(100, 6, 0), &limits),
            Verdict::Pass
        );
        assert!(matches!(
            judge_fixed(&base, &counts(100, 7, 0), &limits),
            Verdict::Fail(Failed::Errors { limit, .. }) if (limit - 6.0).abs() < 1e-9
        ));
        // Under 1 %, always fine.
        assert_eq!(
            judge_fixed(&counts(1000, 0, 0), &counts(1000, 10, 0), &limits),
            Verdict::Pass
        );
        assert_eq!(
            seq(&counts(1000, 0, 0), &counts(5000, 10, 0), false),
            Verdict::Pass
        );
        // A baseline of too few requests is not compared with: only the floor applies.
        let v = seq(&counts(50, 25, 0), &counts(1000, 50, 0), false);
        assert!(
            matches!(&v, Verdict::Fail(Failed::Errors { limit, baseline, .. }) if *limit == 1.0 && !baseline.judged),
            "{v:?}"
        );
    }

    #[test]
    fn latency_fails_over_its_factor_and_floor_only_against_a_baseline() {
        let limits = fixed();
        // Buckets: index 6 is <= 100 ms, 8 is <= 500 ms, 2 is <= 5 ms, 4 is <= 25 ms.
        let v = judge_fixed(&counts(1000, 0, 6), &counts(100, 0, 8), &limits);
        assert_eq!(
            v,
            Verdict::Fail(Failed::Latency {
                requests: 100,
                p99_ms: 500,
                limit_ms: 150,
                baseline_ms: 100,
                baseline_requests: 1000,
            })
        );
        // 5 ms to 25 ms is five times slower, but under the 50 ms floor.
        assert_eq!(
            judge_fixed(&counts(1000, 0, 2), &counts(100, 0, 4), &limits),
            Verdict::Pass
        );
        assert_eq!(
            seq(&counts(1000, 0, 2), &counts(1000, 0, 4), false),
            Verdict::Pass
        );
        // No baseline to compare with: latency is not judged.
        assert_eq!(
            judge_fixed(&counts(10, 0, 2), &counts(100, 0, 8), &limits),
            Verdict::Pass
        );
        // Without histograms (--no-metrics) neither.
        let flat = |r| Counts {
            requests: r,
            ..Counts::default()
        };
        assert_eq!(judge_fixed(&flat(1000), &flat(100), &limits), Verdict::Pass);
        assert_eq!(seq(&flat(1000), &flat(1000), false), Verdict::Pass);
    }

    #[test]
    fn sixty_ms_more_on_every_answer_is_caught_after_the_warm_up_and_not_before() {
        // The previous release answers within 5 ms; the new one within 100 (the line: 50 ms).
        let base = counts(1000, 0, 2);
        let slow = counts(100, 0, 6);
        let limits = AnalysisSettings::default();
        assert_eq!(
            judge(&base, &slow, None, &limits, false),
            Verdict::Undecided,
            "warming up"
        );
        let v = judge(&base, &slow, Some(&slow), &limits, false);
        let Verdict::Fail(f) = v else {
            panic!("{v:?}");
        };
        assert_eq!(
            f.to_string(),
            "100 of 100 requests after its warm-up (100.0 %) took over 50 ms, where 0.0 % of the previous release's did (its p99 5 ms over 1000 requests)"
        );
        // A cold start (its first requests slow) followed by warm ones passes: only the
        // requests after the warm-up count.
        let mut cold = counts(400, 0, 2);
        cold.latency[7] = 40;
        cold.requests += 40;
        let warm = counts(400, 0, 2);
        assert_eq!(
            judge(&base, &cold, Some(&warm), &limits, false),
            Verdict::Pass
        );
        // The fixed judge failed it on the first look.
        assert!(matches!(
            judge_fixed(&base, &cold, &fixed()),
            Verdict::Fail(Failed::Latency { .. })
        ));
    }

    #[test]
    fn a_noisy_baseline_sets_the_share_a_fine_release_may_have_over_the_line() {
        // The previous release on a busy machine: 95 % within 5 ms, 3 % within 50, 2 % within
        // 100 (its p99: 100 ms; the fixed line 150 ms, which +60 ms on every answer stays under).
        let shape = |n: u64, bucket_of_most: usize| {
            let mut c = counts(n * 95 / 100, 0, bucket_of_most);
            c.latency[5] += n * 3 / 100;
            c.latency[6] += n * 2 / 100;
            c.requests = c.latency.iter().sum();
            c
        };
        let base = shape(1000, 2);
        let limits = AnalysisSettings::default();
        // The same release again: fine.
        let same = shape(1000, 2);
        assert_eq!(
            judge(&base, &same, Some(&same), &limits, false),
            Verdict::Pass
        );
        // 60 ms more on every answer: most of them over 50 ms, caught.
        let slower = shape(200, 6);
        assert!(matches!(
            judge(&base, &slower, Some(&slower), &limits, false),
            Verdict::Fail(Failed::Slower { limit_ms: 50, .. })
        ));
        assert_eq!(judge_fixed(&base, &slower, &fixed()), Verdict::Pass);
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
