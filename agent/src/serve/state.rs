//! The agent's state, shared by the pipeline (which moves the phase on) and the HTTP server
//! (which answers from it): the phase, the release and its fetched objects, the services, the
//! timings, the last error, and the load balancer checker's streaks. Never an environment value.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::engine::progress::Stage;
use crate::release::ObjectRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Identity,
    Fetching,
    Pulling,
    Starting,
    Waiting,
    /// Warm pool: fetched and pulled, nothing started, waiting to go in service.
    Warmed,
    /// Every service is up and healthy: the endpoint answers 200.
    Ready,
    /// While holding, a service stopped serving: 503 until the watchdog has repaired it.
    Repairing,
    Draining,
    /// Left (`berth leave`, a scale-in, a spot notice): the services are stopped, the agent
    /// stays until it is stopped, answering 503.
    Left,
    Failed,
}

impl Phase {
    /// Every phase, in the order a boot goes through them.
    pub const ALL: [Phase; 11] = [
        Phase::Identity,
        Phase::Fetching,
        Phase::Pulling,
        Phase::Starting,
        Phase::Waiting,
        Phase::Warmed,
        Phase::Ready,
        Phase::Repairing,
        Phase::Draining,
        Phase::Left,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Identity => "identity",
            Phase::Fetching => "fetching",
            Phase::Pulling => "pulling",
            Phase::Starting => "starting",
            Phase::Waiting => "waiting",
            Phase::Warmed => "warmed",
            Phase::Ready => "ready",
            Phase::Repairing => "repairing",
            Phase::Draining => "draining",
            Phase::Left => "left",
            Phase::Failed => "failed",
        }
    }
}

impl Phase {
    /// A step of the boot, before the services are known to serve.
    pub fn is_boot(self) -> bool {
        matches!(
            self,
            Phase::Identity | Phase::Fetching | Phase::Pulling | Phase::Starting | Phase::Waiting
        )
    }
}

impl Status {
    /// Whether the load balancer's health check passes: ready, or resuming a restarted agent's
    /// boot beside what still serves.
    pub fn serves(&self) -> bool {
        self.phase == Phase::Ready || (self.resuming && self.phase.is_boot())
    }
}

impl From<Stage> for Phase {
    fn from(stage: Stage) -> Phase {
        match stage {
            Stage::Pulling => Phase::Pulling,
            Stage::Starting => Phase::Starting,
            Stage::Waiting => Phase::Waiting,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub state: String,
}

/// Which berth runs: its version and the commit it was built from (`/status`, `berth status`),
/// so that one can see which berth each instance of a fleet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Berth {
    pub version: &'static str,
    pub commit: &'static str,
}

/// This process's berth.
pub const BERTH: Berth = Berth {
    version: env!("CARGO_PKG_VERSION"),
    commit: env!("BERTH_GIT_COMMIT"),
};

/// The last upgrade's analysis (see `upgrade::analysis`): the new release's traffic since the
/// switch beside the previous release's, while it is watched and after.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub release: String,
    pub previous: Option<String>,
    /// The new release since the switch (or since its canary began).
    pub candidate: Figures,
    /// The previous release before it (or beside it, through the canary).
    pub baseline: Figures,
    /// `watching`, `too few requests`, `passed`, or `failed: ` and why.
    pub verdict: String,
    /// During a weighted canary: the share of sessions the new release has now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
}

/// A release's counts as the proxy counted them.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub requests: u64,
    pub errors_5xx: u64,
    pub percent_5xx: f64,
    pub p99_ms: Option<u64>,
}

/// What `/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub berth: Berth,
    pub phase: Phase,
    pub project: String,
    pub instance_id: Option<String>,
    pub release: Option<String>,
    pub objects: Vec<ObjectRecord>,
    /// Why the serving release floats (no manifest pins its files); absent when pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floating: Option<String>,
    /// The release was deployed without a way back (`--allow-no-rollback`): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_rollback: Option<String>,
    pub services: Vec<ServiceStatus>,
    /// Seconds from process start to the start of each phase.
    pub timings: BTreeMap<String, f64>,
    /// Whether the load balancer has marked this instance healthy.
    pub in_service: bool,
    /// A restarted agent booting beside what the previous one left serving (see
    /// `agent::resume`): the health path answers 200 through the boot's phases.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub resuming: bool,
    pub last_error: Option<String>,
    /// What the watchdog finds wrong now (a service down, a replica out of rotation), one line
    /// each, naming the container and its exit code or health: never its output.
    pub faults: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// The containers the last deploy left running (id -> service, name): what the watchdog
    /// expects to find.
    #[serde(skip)]
    pub expected: BTreeMap<String, (String, String)>,
}

/// The agent's state, cheap to clone: every clone sees the same.
#[derive(Debug, Clone)]
pub struct AgentState {
    status: Arc<Mutex<Status>>,
    started: Instant,
    /// Counts the deploys (boot, upgrade, rollback, repair) that finished: the watchdog takes
    /// a new baseline when it moves.
    deploys: watch::Sender<u64>,
    /// The load balancer's health checkers by source address: each ALB node checks on its own
    /// and decides on its own, so a drain waits until every one of them has seen enough.
    checkers: watch::Sender<BTreeMap<IpAddr, Streak>>,
    /// The proxy's recent counts (proxy strategy, with the analysis on).
    pub recent: super::traffic::Recent,
}

/// One checker's consecutive answers.
#[derive(Debug, Clone, Copy)]
struct Streak {
    passed: u32,
    failed: u32,
    last: Instant,
}

/// A checker not heard from for this long is gone (an ALB node replaced; the longest health
/// check interval is 300 s).
const CHECKER_GONE: Duration = Duration::from_secs(330);

/// Whether every checker still checking has reached `n` on the count `of` picks.
fn all_reached(checkers: &BTreeMap<IpAddr, Streak>, n: u32, of: fn(&Streak) -> u32) -> bool {
    let live: Vec<&Streak> = checkers
        .values()
        .filter(|s| s.last.elapsed() < CHECKER_GONE)
        .collect();
    !live.is_empty() && live.iter().all(|s| of(s) >= n)
}

impl AgentState {
    pub fn new(project: &str, started: Instant) -> AgentState {
        let status = Status {
            berth: BERTH,
            phase: Phase::Identity,
            project: project.to_string(),
            instance_id: None,
            release: None,
            objects: vec![],
            floating: None,
            no_rollback: None,
            services: vec![],
            timings: BTreeMap::from([("identity".to_string(), started.elapsed().as_secs_f64())]),
            in_service: false,
            resuming: false,
            last_error: None,
            faults: vec![],
            analysis: None,
            expected: BTreeMap::new(),
        };
        AgentState {
            status: Arc::new(Mutex::new(status)),
            started,
            deploys: watch::channel(0).0,
            checkers: watch::channel(BTreeMap::new()).0,
            recent: super::traffic::Recent::default(),
        }
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    pub fn snapshot(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_phase(&self, phase: Phase) {
        let elapsed = self.started.elapsed().as_secs_f64();
        self.update(|s| {
            if s.phase != phase {
                s.phase = phase;
                s.timings
                    .entry(phase.as_str().to_string())
                    .or_insert(elapsed);
            }
            // Resuming ends with the boot, whichever way it ends.
            s.resuming &= phase.is_boot();
        });
        tracing::info!(phase = phase.as_str(), "phase");
    }

    /// Moves to `to` only from one of `from`; whether it did. The watchdog uses it so that it
    /// never undoes a drain or a failure it did not cause.
    pub fn set_phase_from(&self, from: &[Phase], to: Phase) -> bool {
        let mut moved = false;
        self.update(|s| {
            if s.phase != to && from.contains(&s.phase) {
                s.phase = to;
                moved = true;
            }
        });
        if moved {
            tracing::info!(phase = to.as_str(), "phase");
        }
        moved
    }

    /// A deploy finished (boot, upgrade, rollback), leaving `running` (id -> service, name).
    pub fn deployed(&self, running: BTreeMap<String, (String, String)>) {
        self.update(|s| s.expected = running);
        self.deploys.send_modify(|n| *n += 1);
    }

    /// How many deploys have finished.
    pub fn deploys(&self) -> u64 {
        *self.deploys.borrow()
    }

    pub fn fail(&self, error: &str) {
        self.update(|s| s.last_error = Some(error.to_string()));
        self.set_phase(Phase::Failed);
    }

    /// Waits until every checker of the load balancer has had `threshold` consecutive 200s.
    pub async fn lb_streak_reaches(&self, threshold: u32) {
        self.checkers_reach(threshold, |s| s.passed).await;
    }

    /// Waits until every checker of the load balancer has had `threshold` consecutive
    /// failures, counted from now on.
    pub fn lb_fail_streak_reaches(
        &self,
        threshold: u32,
    ) -> impl std::future::Future<Output = ()> + '_ {
        // Now, not at the first poll: failures from here on count.
        self.checkers
            .send_modify(|m| m.values_mut().for_each(|s| s.failed = 0));
        self.checkers_reach(threshold, |s| s.failed)
    }

    async fn checkers_reach(&self, n: u32, of: fn(&Streak) -> u32) {
        let mut rx = self.checkers.subscribe();
        loop {
            if all_reached(&rx.borrow_and_update(), n, of) {
                return;
            }
            // Also on a timer: a checker going quiet changes nothing to be told of.
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
        }
    }

    /// Counts passing checks from now on (after a drain, the old streaks mean nothing).
    pub fn reset_lb_streak(&self) {
        self.checkers
            .send_modify(|m| m.values_mut().for_each(|s| s.passed = 0));
    }

    /// Counts a check by the load balancer's checker at `from`, answered ready (200) or not.
    pub fn record_lb_check(&self, from: IpAddr, ready: bool) {
        self.checkers.send_modify(|m| {
            m.retain(|_, s| s.last.elapsed() < CHECKER_GONE);
            let s = m.entry(from).or_insert(Streak {
                passed: 0,
                failed: 0,
                last: Instant::now(),
            });
            s.last = Instant::now();
            if ready {
                s.passed += 1;
                s.failed = 0;
            } else {
                s.failed += 1;
                s.passed = 0;
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[tokio::test]
    async fn a_drain_waits_for_every_checker_and_a_quiet_one_stops_counting() {
        let state = AgentState::new("shop", Instant::now());
        // Two ALB nodes check; one has seen two failures, the other one.
        for from in [ip(1), ip(2)] {
            state.record_lb_check(from, true);
        }
        let drained = state.lb_fail_streak_reaches(2);
        tokio::pin!(drained);
        state.record_lb_check(ip(1), false);
        state.record_lb_check(ip(1), false);
        state.record_lb_check(ip(2), false);
        let early = tokio::time::timeout(Duration::from_millis(50), &mut drained).await;
        assert!(early.is_err(), "one node still sends here");
        state.record_lb_check(ip(2), false);
        tokio::time::timeout(Duration::from_secs(1), drained)
            .await
            .unwrap();
        let mut stale = state.checkers.borrow().clone();
        if let Some(s) = stale.get_mut(&ip(2)) {
            s.failed = 0;
            s.last = Instant::now() - CHECKER_GONE;
        }
        assert!(
            all_reached(&stale, 2, |s| s.failed),
            "a gone node is not waited for"
        );
        assert!(
            !all_reached(&BTreeMap::new(), 1, |s| s.passed),
            "nobody checked yet"
        );
    }

    #[tokio::test]
    async fn in_service_once_every_checker_passed_enough() {
        let state = AgentState::new("shop", Instant::now());
        state.record_lb_check(ip(1), true);
        state.record_lb_check(ip(1), true);
        state.record_lb_check(ip(2), true);
        let waited = tokio::time::timeout(Duration::from_millis(50), state.lb_streak_reaches(2));
        assert!(waited.await.is_err());
        state.record_lb_check(ip(2), true);
        tokio::time::timeout(Duration::from_secs(1), state.lb_streak_reaches(2))
            .await
            .unwrap();
    }
}
