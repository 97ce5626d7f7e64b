//! The agent's state, shared by the pipeline (which moves the phase on) and the HTTP server
//! (which answers from it): the phase, the release and its fetched objects, the services, the
//! timings, the last error, and the load balancer checker's streaks. Never an environment value.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
    Failed,
}

impl Phase {
    /// Every phase, in the order a boot goes through them.
    pub const ALL: [Phase; 10] = [
        Phase::Identity,
        Phase::Fetching,
        Phase::Pulling,
        Phase::Starting,
        Phase::Waiting,
        Phase::Warmed,
        Phase::Ready,
        Phase::Repairing,
        Phase::Draining,
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
            Phase::Failed => "failed",
        }
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

/// What `/status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: Phase,
    pub project: String,
    pub instance_id: Option<String>,
    pub release: Option<String>,
    pub objects: Vec<ObjectRecord>,
    pub services: Vec<ServiceStatus>,
    /// Seconds from process start to the start of each phase.
    pub timings: BTreeMap<String, f64>,
    /// Whether the load balancer has marked this instance healthy.
    pub in_service: bool,
    pub last_error: Option<String>,
    /// What the watchdog finds wrong now (a service down, a replica out of rotation), one line
    /// each, naming the container and its exit code or health: never its output.
    pub faults: Vec<String>,
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
    /// Consecutive 200s answered to the ALB's checker.
    lb_streak: watch::Sender<u32>,
    /// Consecutive non-200s answered to the ALB's checker (while draining).
    lb_fail_streak: watch::Sender<u32>,
}

impl AgentState {
    pub fn new(project: &str, started: Instant) -> AgentState {
        let status = Status {
            phase: Phase::Identity,
            project: project.to_string(),
            instance_id: None,
            release: None,
            objects: vec![],
            services: vec![],
            timings: BTreeMap::from([("identity".to_string(), started.elapsed().as_secs_f64())]),
            in_service: false,
            last_error: None,
            faults: vec![],
            expected: BTreeMap::new(),
        };
        AgentState {
            status: Arc::new(Mutex::new(status)),
            started,
            deploys: watch::channel(0).0,
            lb_streak: watch::channel(0).0,
            lb_fail_streak: watch::channel(0).0,
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
        });
        tracing::info!(phase = phase.as_str(), "phase");
    }

    /// Moves to `to` only from one of `from`; whether it did. The watchdog uses it so that it
    /// never undoes a drain or a failure it did not cause.
    pub fn set_phase_from(&self, from: &[Phase], to: Phase) -> bool {
        let now = self.snapshot().phase;
        if now == to || !from.contains(&now) {
            return false;
        }
        let mut moved = false;
        self.update(|s| {
            if from.contains(&s.phase) {
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

    /// Waits until the ALB's checker has had `threshold` consecutive 200s.
    pub async fn lb_streak_reaches(&self, threshold: u32) {
        let mut rx = self.lb_streak.subscribe();
        let _ = rx.wait_for(|n| *n >= threshold).await;
    }

    /// Waits until the ALB's checker has had `threshold` consecutive failures, counted from
    /// now on.
    pub async fn lb_fail_streak_reaches(&self, threshold: u32) {
        self.lb_fail_streak.send_replace(0);
        let mut rx = self.lb_fail_streak.subscribe();
        let _ = rx.wait_for(|n| *n >= threshold).await;
    }

    /// Counts passing checks from now on (after a drain, the old streak means nothing).
    pub fn reset_lb_streak(&self) {
        self.lb_streak.send_replace(0);
    }

    /// Counts a check by the load balancer's checker, answered ready (200) or not (503).
    pub fn record_lb_check(&self, ready: bool) {
        self.lb_streak
            .send_modify(|n| *n = if ready { *n + 1 } else { 0 });
        self.lb_fail_streak
            .send_modify(|n| *n = if ready { 0 } else { *n + 1 });
    }
}
