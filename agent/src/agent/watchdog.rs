//! The watchdog: while holding, does the serving release still serve? Docker's event stream wakes
//! it at once (a look every `watchdog.observe_secs` is the safety net for a missed event). Each
//! look judges every container of the serving release (the routed service's serving color and
//! the other services; one-shots that completed are done) and repairs:
//!
//! - the proxy strategy's routed replicas are routed again as they are now ([`recover`]): a
//!   replica Docker restarted on a new port goes back in, a dead or sick one leaves the route;
//! - a container that exited is started again when its restart policy says so and Docker has not
//!   done it within [`DOCKER_GRACE`]; one Docker reports unhealthy is restarted (by the same
//!   policy); one that is gone is recreated by deploying the serving release again, once;
//! - after the daemon restarted, every container of the release it stopped is started again.
//!
//! A service with nothing serving turns the health endpoint 503 (phase `repairing`, the reasons
//! in its body, `/status` and systemd's STATUS=) until it serves again. A fault that outlasts
//! `watchdog.repair_secs` fails the instance: 503 for good, said in the journal and `/status`,
//! and reported unhealthy to the AutoScaling group, which replaces it. Reasons name containers,
//! exit codes and health, never a container's output.
//!
//! [`recover`]: crate::upgrade::Upgrader::recover

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use futures_util::StreamExt;
use tokio::sync::Notify;

use super::deployer::Deployer;
use super::{notify, AgentError};
use crate::config::Strategy;
use crate::engine::docker::Engine;
use crate::engine::events::{Condition, Look, Policy};
use crate::engine::progress::{Mode, Progress};
use crate::serve::{AgentState, Phase};
use crate::upgrade::{routed_in, sides_of, Side, UpgradeLock};

/// How long Docker gets to restart a container by its own policy before berth starts it.
pub const DOCKER_GRACE: Duration = Duration::from_secs(2);
/// Events come in bursts (kill, die, stop, start): one look after the burst.
const SETTLE: Duration = Duration::from_millis(100);
/// How often to look while repairing.
const REPAIRING_EVERY: Duration = Duration::from_millis(500);
/// How often a lost event stream tries the daemon again.
const RECONNECT: Duration = Duration::from_millis(500);
/// The grace an unhealthy container gets when berth restarts it: it serves nothing already.
const RESTART_GRACE_SECS: i32 = 2;

/// What to do about a container that does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fix {
    /// Nothing yet: Docker, or the container's own healthcheck, is on it.
    Wait,
    Start,
    Restart,
    /// Its restart policy says it stays down (or someone paused it).
    Never,
}

/// Whether a container's restart policy brings it back after exiting with `code` (None: it did
/// not exit, its healthcheck failed).
fn policy_restarts(policy: Policy, code: Option<i64>, restarts: i64) -> bool {
    match policy {
        Policy::No => false,
        Policy::Always | Policy::UnlessStopped => true,
        Policy::OnFailure { max_retries } => {
            code != Some(0) && (max_retries == 0 || restarts < max_retries)
        }
    }
}

/// What to do about `look`, down for `down_for`; `daemon_restarted`: the daemon stopped it.
pub fn fix(look: &Look, down_for: Duration, daemon_restarted: bool) -> Fix {
    match look.condition {
        Condition::Running | Condition::Starting | Condition::Restarting => Fix::Wait,
        Condition::Paused => Fix::Never,
        Condition::Created => Fix::Start,
        Condition::Unhealthy if policy_restarts(look.policy, None, look.restarts) => Fix::Restart,
        Condition::Unhealthy => Fix::Never,
        Condition::Exited { .. } if daemon_restarted => Fix::Start,
        Condition::Exited { code, .. }
            if policy_restarts(look.policy, Some(code), look.restarts) =>
        {
            if down_for < DOCKER_GRACE {
                Fix::Wait
            } else {
                Fix::Start
            }
        }
        Condition::Exited { .. } => Fix::Never,
    }
}

/// One container of the serving release, judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    /// Looked at; `serving`: it takes its share (running, healthy, and for a routed replica,
    /// passing the proxy's health path).
    Seen { look: Look, serving: bool },
    /// In the release's baseline, and no longer in Docker.
    Gone { service: String, name: String },
}

impl Judged {
    fn service(&self) -> &str {
        match self {
            Judged::Seen { look, .. } => &look.service,
            Judged::Gone { service, .. } => service,
        }
    }
}

/// A container that completed what it was for: a one-shot that exited 0. `deployed` is each
/// service's state when the last deploy finished (`completed` for a one-shot); a service it does
/// not name counts as a one-shot when its restart policy would not bring it back either.
fn completed(look: &Look, deployed: &BTreeMap<String, String>) -> bool {
    if !matches!(look.condition, Condition::Exited { code: 0, .. }) {
        return false;
    }
    match deployed.get(&look.service).map(String::as_str) {
        Some("completed") => true,
        // It ran when deployed: exiting, even cleanly, is a fault (the daemon's restart
        // stops it with exit 0).
        Some(_) => false,
        None => matches!(look.policy, Policy::No | Policy::OnFailure { .. }),
    }
}

/// Why a container does not serve, in a line: its state, exit code, health; never its output.
pub fn reason(j: &Judged) -> String {
    match j {
        Judged::Gone { name, .. } => format!("{name}: gone (removed from Docker)"),
        Judged::Seen { look, .. } => {
            let what = match look.condition {
                Condition::Running => "running, but not answering the proxy's health path".into(),
                Condition::Starting => "starting (its healthcheck has not passed yet)".into(),
                Condition::Unhealthy => "unhealthy (its healthcheck fails)".into(),
                Condition::Restarting => {
                    format!("restarting (restarted {} times by Docker)", look.restarts)
                }
                Condition::Paused => "paused".into(),
                Condition::Created => "created, not started".into(),
                Condition::Exited { code, oom: true } => {
                    format!("exited with code {code} (killed for memory: out of its limit)")
                }
                Condition::Exited { code, .. } => format!("exited with code {code}"),
            };
            format!("{}: {what}", look.name)
        }
    }
}

/// What one look found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Services with nothing serving, one line each: any makes the health endpoint 503.
    pub down: Vec<String>,
    /// Every container that does not serve, one line each (with replicas, some may while the
    /// service still serves).
    pub faults: Vec<String>,
    /// (container id, name, fix) for each container that does not serve.
    pub fixes: Vec<(String, String, Fix)>,
    /// Some container is gone: only a deploy brings it back.
    pub gone: bool,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Judges the serving release's containers: `down_for` is how long each (by id) has not
/// served; `deployed` is each service's state when the last deploy finished.
pub fn judge(
    judged: &[Judged],
    deployed: &BTreeMap<String, String>,
    down_for: &BTreeMap<String, Duration>,
    daemon_restarted: bool,
) -> Verdict {
    let mut services: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
    for j in judged {
        if let Judged::Seen { look, .. } = j {
            if completed(look, deployed) {
                continue;
            }
        }
        services.entry(j.service()).or_default().push(j);
    }
    let mut verdict = Verdict::default();
    for (service, list) in services {
        let mut sick = vec![];
        for j in &list {
            match j {
                Judged::Seen { serving: true, .. } => {}
                Judged::Seen { look, .. } => {
                    let down = down_for.get(&look.id).copied().unwrap_or_default();
                    let f = fix(look, down, daemon_restarted);
                    verdict.fixes.push((look.id.clone(), look.name.clone(), f));
                    sick.push(reason(j));
                }
                Judged::Gone { .. } => {
                    verdict.gone = true;
                    sick.push(reason(j));
                }
            }
        }
        if sick.len() == list.len() && !sick.is_empty() {
            verdict.down.push(format!(
                "service {service}: nothing serving ({})",
                sick.join("; ")
            ));
        }
        verdict.faults.extend(sick);
    }
    verdict
}

/// What the watchdog remembers between looks.
#[derive(Debug, Default)]
struct Memory {
    /// The deploy count the memory belongs to.
    deploys: Option<u64>,
    /// Since when each container (by id) has not served.
    down_since: BTreeMap<String, Instant>,
    /// Since when something has been wrong; None: all serves.
    episode: Option<Instant>,
    /// The gone containers have been redeployed once in this episode.
    redeployed: bool,
    /// The episode outlasted `repair_secs` (in this deploy): no more repairs, 503 until a deploy.
    gave_up: Option<u64>,
    /// The daemon restarted since the last look.
    daemon_restarted: bool,
    /// Given up, but the fleet brake held the report back: ask the group again then.
    report_again: Option<Instant>,
}

/// How long the fleet brake holds a report back before asking the group again.
const BRAKE_RETRY: Duration = Duration::from_secs(60);

/// Runs until aborted (the agent leaving).
pub async fn watch(deployer: Arc<Deployer>, state: AgentState) {
    let wake = Arc::new(Notify::new());
    let restarted = Arc::new(AtomicBool::new(false));
    let every = Duration::from_secs(deployer.config.watchdog.observe_secs);
    let looks = async {
        let mut memory = Memory::default();
        let mut first = true;
        loop {
            // While something is wrong, look often: Docker's grace runs out, a restarted
            // container's health settles, without an event to say so.
            let next = if memory.episode.is_some() && memory.gave_up.is_none() {
                REPAIRING_EVERY.min(every)
            } else {
                every
            };
            // The first look at once: what broke between the deploy and now.
            if !std::mem::take(&mut first) {
                tokio::select! {
                    () = wake.notified() => tokio::time::sleep(SETTLE).await,
                    () = tokio::time::sleep(next) => {}
                }
            }
            memory.daemon_restarted |= restarted.swap(false, Ordering::SeqCst);
            look_and_repair(&deployer, &state, &mut memory).await;
        }
    };
    tokio::select! {
        () = follow_events(&deployer, &wake, &restarted) => {}
        () = looks => {}
    }
}

/// Wakes the looks on every event of the project that matters; when the stream breaks (the
/// daemon went away), waits for the daemon and says it restarted.
async fn follow_events(deployer: &Deployer, wake: &Notify, restarted: &AtomicBool) {
    let project = &deployer.config.project;
    loop {
        let Ok(engine) = deployer.engine().await else {
            tokio::time::sleep(RECONNECT).await;
            continue;
        };
        let mut events = std::pin::pin!(engine.events(project));
        while let Some(item) = events.next().await {
            match item {
                Ok(event) if event.matters() => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %crate::report::chain(&e), "watchdog: Docker's event stream broke");
                    break;
                }
            }
        }
        wake.notify_one();
        while engine.ping().await.is_err() {
            tokio::time::sleep(RECONNECT).await;
        }
        tracing::info!("watchdog: the Docker daemon answers again; looking at everything");
        restarted.store(true, Ordering::SeqCst);
        wake.notify_one();
    }
}

/// One look: judge, report, repair.
async fn look_and_repair(deployer: &Deployer, state: &AgentState, memory: &mut Memory) {
    // An upgrade or rollback under way decides what serves; look again after it.
    let Ok(lock) = UpgradeLock::acquire(&deployer.config.run_dir, "the watchdog's look") else {
        return;
    };
    let deploys = state.deploys();
    if memory.deploys != Some(deploys) {
        memory.deploys = Some(deploys);
        memory.down_since.clear();
        memory.redeployed = false;
        // A deploy after giving up (an operator's upgrade or rollback) is a fresh start: judged
        // again from now on.
        if memory.gave_up.take().is_some() {
            memory.episode = None;
            memory.report_again = None;
            state.set_phase_from(&[Phase::Failed], Phase::Repairing);
        }
    }
    let now = Instant::now();
    let judged = match observe(deployer, state).await {
        Ok(j) => j,
        Err(e) => {
            let line = format!(
                "cannot look at the containers: {}",
                crate::report::chain(&e)
            );
            let verdict = Verdict {
                down: vec![line.clone()],
                faults: vec![line],
                ..Verdict::default()
            };
            report(deployer, state, memory, &verdict, now).await;
            return;
        }
    };
    for j in &judged {
        if let Judged::Seen { look, serving } = j {
            if *serving {
                memory.down_since.remove(&look.id);
            } else {
                memory.down_since.entry(look.id.clone()).or_insert(now);
            }
        }
    }
    let down_for = memory
        .down_since
        .iter()
        .map(|(id, since)| (id.clone(), now.duration_since(*since)))
        .collect();
    let deployed = state
        .snapshot()
        .services
        .into_iter()
        .map(|s| (s.name, s.state))
        .collect();
    let verdict = judge(&judged, &deployed, &down_for, memory.daemon_restarted);
    memory.daemon_restarted = false;
    report(deployer, state, memory, &verdict, now).await;
    if memory.gave_up.is_some() {
        if memory.report_again.is_some_and(|t| now >= t) {
            report_to_group(deployer, memory, now).await;
        }
        return;
    }
    if let Ok(engine) = deployer.engine().await {
        repair(engine, &verdict).await;
    }
    drop(lock);
    if verdict.gone && !memory.redeployed {
        memory.redeployed = true;
        let release = state.snapshot().release;
        tracing::warn!(release = ?release, "watchdog: a container of the serving release is gone; deploying the release again");
        match deployer.upgrade(release).await {
            Ok(d) => {
                tracing::info!(
                    how = d.how.as_str(),
                    "watchdog: the release is deployed again"
                )
            }
            Err(e) => {
                tracing::error!(error = %crate::report::chain(&e), "watchdog: deploying the release again failed")
            }
        }
    }
}

/// Starts or restarts what the verdict says, together.
async fn repair(engine: &Engine, verdict: &Verdict) {
    let acts = verdict.fixes.iter().map(|(id, name, f)| async move {
        let result = match f {
            Fix::Start => engine.start(id).await,
            Fix::Restart => engine.restart(id, RESTART_GRACE_SECS).await,
            Fix::Wait | Fix::Never => return,
        };
        match result {
            Ok(()) => tracing::info!(container = %name, action = ?f, "watchdog: repaired"),
            Err(e) => {
                tracing::warn!(container = %name, error = %crate::report::chain(&e), "watchdog: repair failed")
            }
        }
    });
    join_all(acts).await;
}

/// Says what the verdict means: the phase, the faults, the journal, systemd's STATUS=; gives up
/// when the episode outlasts the budget.
async fn report(
    deployer: &Deployer,
    state: &AgentState,
    memory: &mut Memory,
    verdict: &Verdict,
    now: Instant,
) {
    let budget = Duration::from_secs(deployer.config.watchdog.repair_secs);
    // Logged and told to systemd only when they change.
    let mut changed = false;
    state.update(|s| {
        changed = s.faults != verdict.faults;
        s.faults = verdict.faults.clone();
    });
    if verdict.clean() {
        if let Some(since) = memory.episode.take() {
            tracing::info!(
                seconds = now.duration_since(since).as_secs_f64(),
                "watchdog: everything serves again"
            );
        }
        memory.redeployed = false;
        if state.set_phase_from(&[Phase::Repairing], Phase::Ready) {
            notify(&[sd_notify::NotifyState::Status("ready")]);
        }
        return;
    }
    let since = *memory.episode.get_or_insert(now);
    if changed {
        tracing::warn!(faults = %verdict.faults.join("; "), down = verdict.down.len(), "watchdog");
    }
    if memory.gave_up.is_some() {
        return;
    }
    if !verdict.down.is_empty() {
        let first = verdict.down.first().map(String::as_str).unwrap_or_default();
        if state.set_phase_from(&[Phase::Ready], Phase::Repairing) || changed {
            notify(&[sd_notify::NotifyState::Status(&format!(
                "repairing: {first}"
            ))]);
        }
    }
    if now.duration_since(since) >= budget {
        let message = format!(
            "not repaired within {}s (watchdog.repair_secs): {}",
            budget.as_secs(),
            verdict.faults.join("; ")
        );
        tracing::error!(error = %message, "watchdog: giving up; this instance stays unhealthy so that it is replaced");
        memory.gave_up = memory.deploys;
        state.update(|s| s.last_error = Some(message.clone()));
        if state.set_phase_from(&[Phase::Ready, Phase::Repairing], Phase::Failed) {
            notify(&[sd_notify::NotifyState::Status(&format!(
                "failed: {}",
                crate::engine::progress::first_line(&message)
            ))]);
        }
        // Not at once: instances that gave up on one shared outage together would all find
        // the group still whole. A random wait spreads their looks apart.
        memory.report_again = Some(now + report_jitter(budget, &deployer.instance_id));
    }
}

/// A random wait of up to a tenth of the repair budget (15 s at most).
fn report_jitter(budget: Duration, instance: &str) -> Duration {
    use std::hash::BuildHasher;
    let most = (budget / 10).min(Duration::from_secs(15));
    // A process-random hasher: random enough to spread instances apart, with no new crate.
    let random = std::collections::hash_map::RandomState::new().hash_one(instance);
    let millis = u64::try_from(most.as_millis()).unwrap_or(0).max(1);
    Duration::from_millis(random % millis)
}

/// Reports this instance Unhealthy to its group, unless the fleet brake holds it back (then
/// asks again after [`BRAKE_RETRY`]). Its /healthz stays 503 either way.
async fn report_to_group(deployer: &Deployer, memory: &mut Memory, now: Instant) {
    use crate::instance::group::{report_unhealthy, Reported};
    memory.report_again = None;
    let Some(aws) = &deployer.aws else {
        return;
    };
    let percent = deployer.config.watchdog.max_unhealthy_percent;
    match report_unhealthy(
        aws,
        &deployer.instance_id,
        deployer.group.as_deref(),
        percent,
    )
    .await
    {
        Ok(Reported::Reported) => {}
        Ok(Reported::Braked {
            busy,
            size,
            allowed,
        }) => {
            tracing::warn!(
                busy,
                size,
                allowed,
                "watchdog: fleet brake: {busy} of the group's {size} instances are already unhealthy or being replaced (at most {allowed} at once, watchdog.max_unhealthy_percent = {percent}); not reporting this one, asking again in {}s",
                BRAKE_RETRY.as_secs()
            );
            memory.report_again = Some(now + BRAKE_RETRY);
        }
        Err(e) => {
            tracing::error!(error = %crate::report::chain(&e), "watchdog: could not report this instance unhealthy");
        }
    }
}

/// The serving release's containers, judged; re-routes the proxy on the way.
async fn observe(deployer: &Deployer, state: &AgentState) -> Result<Vec<Judged>, AgentError> {
    let engine = deployer.engine().await?;
    let project = &deployer.config.project;
    let containers = engine.project_containers(project).await?;
    let mut skip: BTreeSet<String> = BTreeSet::new();
    let mut serving_backends: Option<(BTreeSet<String>, Vec<SocketAddr>, Side)> = None;
    if deployer.config.upgrade.strategy == Strategy::Proxy {
        if let Some(routed) = routed_in(&containers) {
            let progress = Progress::new(Mode::Log);
            let upgrader = deployer.upgrader(engine, &progress, false);
            let recovered = upgrader.recover_serving(&routed).await?;
            // Which container is which color does not change with the route: the list above
            // serves.
            let sides = sides_of(&containers, &routed);
            let release = state.snapshot().release;
            let active = recovered
                .as_ref()
                .map(|(s, _)| s.color)
                .or_else(|| {
                    sides
                        .values()
                        .find(|s| s.release.is_some() && s.release == release)
                        .map(|s| s.color)
                })
                .or_else(|| sides.values().max_by_key(|s| s.created).map(|s| s.color));
            for side in sides.values() {
                if Some(side.color) != active {
                    skip.extend(side.ids().map(String::from));
                }
            }
            // Nothing passed when nothing serves: recover checked every running side.
            let healthy = recovered.map(|(_, h)| h).unwrap_or_default();
            if let Some(side) = active.and_then(|c| sides.get(&c)) {
                let ids = side.ids().map(String::from).collect();
                serving_backends = Some((ids, healthy, side.clone()));
            }
        }
    }
    let ids: Vec<String> = containers
        .iter()
        .filter_map(|c| c.id.clone())
        .filter(|id| !skip.contains(id))
        .collect();
    let looks = join_all(ids.iter().map(|id| engine.look(id))).await;
    let mut judged = vec![];
    let mut present = BTreeSet::new();
    for look in looks {
        // Gone between the list and the look: the baseline catches it next time.
        let Some(look) = look? else { continue };
        present.insert(look.id.clone());
        let serving = match &serving_backends {
            Some((ids, healthy, side)) if ids.contains(&look.id) => side
                .replicas
                .iter()
                .find(|r| r.id == look.id)
                .and_then(|r| r.backend)
                .is_some_and(|b| healthy.contains(&b)),
            // Starting: Docker's healthcheck has not run yet since the start (its interval may
            // be 30 s); the deploy or the restart that started it decides, not a look now.
            _ => matches!(look.condition, Condition::Running | Condition::Starting),
        };
        judged.push(Judged::Seen { look, serving });
    }
    // What the last deploy left running and Docker no longer has.
    for (id, (service, name)) in &state.snapshot().expected {
        if !present.contains(id) && !skip.contains(id) {
            judged.push(Judged::Gone {
                service: service.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(judged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(name: &str, service: &str, condition: Condition, policy: Policy) -> Look {
        Look {
            id: format!("{name}-id"),
            name: name.into(),
            service: service.into(),
            condition,
            policy,
            restarts: 0,
        }
    }

    fn seen(l: Look, serving: bool) -> Judged {
        Judged::Seen { look: l, serving }
    }

    const KILLED: Condition = Condition::Exited {
        code: 137,
        oom: false,
    };

    #[test]
    fn docker_gets_a_moment_to_restart_by_policy_then_berth_starts_it() {
        let l = look("web-1", "web", KILLED, Policy::UnlessStopped);
        assert_eq!(fix(&l, Duration::from_millis(500), false), Fix::Wait);
        assert_eq!(fix(&l, DOCKER_GRACE, false), Fix::Start);
        let always = look("web-1", "web", KILLED, Policy::Always);
        assert_eq!(fix(&always, DOCKER_GRACE, false), Fix::Start);
    }

    #[test]
    fn the_restart_policy_decides_whether_a_dead_container_comes_back() {
        let no = look("web-1", "web", KILLED, Policy::No);
        assert_eq!(fix(&no, Duration::from_secs(60), false), Fix::Never);
        // Unless the daemon itself stopped it: then the release is converged again.
        assert_eq!(fix(&no, Duration::ZERO, true), Fix::Start);
        let mut on_failure = look("web-1", "web", KILLED, Policy::OnFailure { max_retries: 3 });
        assert_eq!(fix(&on_failure, DOCKER_GRACE, false), Fix::Start);
        on_failure.restarts = 3;
        assert_eq!(
            fix(&on_failure, DOCKER_GRACE, false),
            Fix::Never,
            "Docker gave up after its retries"
        );
        let clean_exit = look(
            "web-1",
            "web",
            Condition::Exited {
                code: 0,
                oom: false,
            },
            Policy::OnFailure { max_retries: 0 },
        );
        assert_eq!(fix(&clean_exit, DOCKER_GRACE, false), Fix::Never);
    }

    #[test]
    fn unhealthy_is_restarted_by_policy_and_starting_or_restarting_is_waited_for() {
        let sick = look("web-1", "web", Condition::Unhealthy, Policy::Always);
        assert_eq!(fix(&sick, Duration::ZERO, false), Fix::Restart);
        let sick_no = look("web-1", "web", Condition::Unhealthy, Policy::No);
        assert_eq!(fix(&sick_no, Duration::from_secs(60), false), Fix::Never);
        for c in [
            Condition::Starting,
            Condition::Restarting,
            Condition::Running,
        ] {
            let l = look("web-1", "web", c, Policy::Always);
            assert_eq!(fix(&l, Duration::from_secs(60), false), Fix::Wait, "{c:?}");
        }
        let paused = look("web-1", "web", Condition::Paused, Policy::Always);
        assert_eq!(fix(&paused, Duration::from_secs(60), false), Fix::Never);
    }

    #[test]
    fn a_service_with_nothing_serving_is_down_and_one_dead_replica_of_three_is_not() {
        let judged = vec![
            seen(look("web-1", "web", KILLED, Policy::Always), false),
            seen(
                look("web-2", "web", Condition::Running, Policy::Always),
                true,
            ),
            seen(
                look("web-3", "web", Condition::Running, Policy::Always),
                true,
            ),
            seen(look("db-1", "db", Condition::Unhealthy, Policy::No), false),
        ];
        let v = judge(&judged, &BTreeMap::new(), &BTreeMap::new(), false);
        assert_eq!(
            v.down,
            ["service db: nothing serving (db-1: unhealthy (its healthcheck fails))"]
        );
        assert_eq!(
            v.faults,
            [
                "db-1: unhealthy (its healthcheck fails)",
                "web-1: exited with code 137"
            ]
        );
        assert_eq!(
            v.fixes,
            [
                ("db-1-id".to_string(), "db-1".to_string(), Fix::Never),
                ("web-1-id".to_string(), "web-1".to_string(), Fix::Wait),
            ]
        );
        assert!(!v.gone);
        assert!(!v.clean());
    }

    #[test]
    fn completed_one_shots_are_done_and_a_gone_container_needs_a_deploy() {
        let done = Condition::Exited {
            code: 0,
            oom: false,
        };
        let judged = vec![
            seen(look("migrate-1", "migrate", done, Policy::No), false),
            // A one-shot by the deploy's record, even with a policy that restarts.
            seen(look("seed-1", "seed", done, Policy::Always), false),
            seen(look("web-1", "web", Condition::Running, Policy::No), true),
        ];
        let deployed = BTreeMap::from([
            ("seed".to_string(), "completed".to_string()),
            ("web".to_string(), "healthy".to_string()),
        ]);
        let v = judge(&judged, &deployed, &BTreeMap::new(), false);
        assert!(v.clean(), "{v:?}");
        let mut gone = judged;
        gone.retain(|j| j.service() != "web");
        gone.push(Judged::Gone {
            service: "web".into(),
            name: "shop-web-1".into(),
        });
        let v = judge(&gone, &deployed, &BTreeMap::new(), false);
        assert!(v.gone);
        assert_eq!(
            v.down,
            ["service web: nothing serving (shop-web-1: gone (removed from Docker))"]
        );
    }

    #[test]
    fn a_service_that_ran_at_the_deploy_and_exited_0_is_down_and_started_after_a_daemon_restart() {
        // The daemon's stop ends it with 0; its policy (none) would leave it down.
        let judged = vec![seen(
            look(
                "worker-1",
                "worker",
                Condition::Exited {
                    code: 0,
                    oom: false,
                },
                Policy::No,
            ),
            false,
        )];
        let deployed = BTreeMap::from([("worker".to_string(), "running".to_string())]);
        let v = judge(&judged, &deployed, &BTreeMap::new(), true);
        assert_eq!(v.down.len(), 1, "{v:?}");
        assert_eq!(v.fixes[0].2, Fix::Start);
        let v = judge(&judged, &deployed, &BTreeMap::new(), false);
        assert_eq!(
            v.fixes[0].2,
            Fix::Never,
            "without a daemon restart, its policy decides"
        );
    }

    #[test]
    fn a_routed_replica_running_but_failing_the_health_path_is_a_fault_without_a_restart() {
        let judged = vec![seen(
            look("web-blue-1", "web-blue", Condition::Running, Policy::Always),
            false,
        )];
        let down = BTreeMap::from([("web-blue-1-id".to_string(), Duration::from_secs(30))]);
        let v = judge(&judged, &BTreeMap::new(), &down, false);
        assert_eq!(v.fixes[0].2, Fix::Wait);
        assert!(
            v.down[0].contains("not answering the proxy's health path"),
            "{v:?}"
        );
    }

    #[test]
    fn reasons_say_the_exit_code_and_an_oom_kill() {
        let oom = look(
            "web-1",
            "web",
            Condition::Exited {
                code: 137,
                oom: true,
            },
            Policy::No,
        );
        assert_eq!(
            reason(&seen(oom, false)),
            "web-1: exited with code 137 (killed for memory: out of its limit)"
        );
    }
}
