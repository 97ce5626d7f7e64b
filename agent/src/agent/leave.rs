//! Leaving, and only on real leaving: a scale-in (IMDS lifecycle state `Terminated`), a spot
//! interruption notice, the whole system shutting down, or `berth leave`. Then `/healthz`
//! fails, the load balancer stops sending (waited for up to `timeouts.leave_secs`), requests in
//! flight finish, the containers stop in dependency order with their stop_grace_period, and on
//! a scale-in the terminate hook is completed.
//!
//! A SIGTERM or SIGINT alone (`systemctl restart berth`, `systemctl stop berth`, a package
//! upgrade, Ctrl-C) ends only the agent: the containers, the proxy and its route keep serving,
//! and the next agent resumes them ([`super::resume`]).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::boot::Booted;
use super::control::{Asker, LeaveRequests};
use super::deployer::Deployer;
use super::{resume, set_phase, AgentError};
use crate::config::Strategy;
use crate::engine::converge;
use crate::engine::progress::{Mode, Progress};
use crate::instance::hook::{Hook, Outcome};
use crate::instance::identity::{Imds, LifecycleState};
use crate::instance::load_balancer::Wait;
use crate::serve::{AgentState, Phase};
use crate::upgrade::{self, UpgradeLock};

/// How long a leave waits for an upgrade under way to finish.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

/// Why the agent leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leave {
    /// The system is shutting down or rebooting.
    Shutdown,
    /// `berth leave`.
    Asked,
    ScaleIn,
    Spot,
}

/// Why the agent stops holding.
#[derive(Debug)]
pub enum Why {
    /// Drain, then stop the stack.
    Leave(Leave),
    /// Only the agent ends, on this signal: what serves keeps serving.
    Exit(&'static str),
}

/// What a leave did, for `berth leave`.
#[derive(Debug, Clone, Serialize)]
pub struct Left {
    pub reason: Leave,
    /// Containers stopped.
    pub stopped: usize,
    pub seconds: f64,
}

/// SIGTERM and SIGINT, watched once for the agent's whole hold: a signal that comes while it
/// leaves is still there for the wait after.
#[derive(Debug)]
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn watch() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind, name| match signal(kind) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch {name}");
                None
            }
        };
        Signals {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// The next SIGTERM or SIGINT, by name.
    pub async fn next(&mut self) -> &'static str {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => "SIGTERM",
            _ = one(&mut self.int) => "SIGINT",
        }
    }
}

/// Waits for a reason to stop holding: a signal, `berth leave` (its answer is sent once the
/// leave is done), or (on EC2) IMDS saying the instance goes away.
pub async fn wait_for_leave(
    local: bool,
    asked: &mut LeaveRequests,
    signals: &mut Signals,
) -> (Why, Option<Asker>) {
    let imds = async {
        if local {
            return std::future::pending::<Leave>().await;
        }
        watch_imds().await
    };
    tokio::select! {
        signal = signals.next() => {
            if signal == "SIGTERM" && system_stopping().await {
                tracing::info!("SIGTERM while the system shuts down: leaving");
                (Why::Leave(Leave::Shutdown), None)
            } else {
                (Why::Exit(signal), None)
            }
        }
        asker = asked.next() => (Why::Leave(Leave::Asked), asker),
        why = imds => (Why::Leave(why), None),
    }
}

/// Whether the whole system is shutting down (poweroff, reboot), as opposed to this unit being
/// restarted or stopped: systemd's state is then `stopping`. Asked through systemctl, which
/// reaches PID 1 over its private socket (no crate here speaks D-Bus). Without systemd: never.
async fn system_stopping() -> bool {
    // The state turns `stopping` as systemd queues the shutdown, and a SIGTERM can come a
    // moment before it reads so (seen once in ten shutdowns of the box): asked again for up
    // to a second. A unit restart never reads so, and costs that second, while the health
    // socket keeps answering.
    let mut last = String::new();
    for attempt in 0..6 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match system_state().await {
            Some(state) if state == "stopping" => {
                tracing::info!(%state, "the system's state: {state}");
                return true;
            }
            // Not booted with systemd: nothing shuts down through it.
            Some(state) if state == "offline" => return false,
            Some(state) => last = state,
            None => return false,
        }
    }
    tracing::info!(state = %last, "the system's state: {last}, not a shutdown");
    false
}

/// `systemctl is-system-running`'s answer; None without systemd.
async fn system_state() -> Option<String> {
    let asked = tokio::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(5), asked).await {
        // It exits non-zero for any state but `running`, and prints the state either way.
        Ok(Ok(out)) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Ok(Err(e)) => {
            tracing::info!(error = %e, "no systemctl: not a system shutdown");
            None
        }
        Err(_) => {
            tracing::warn!("systemctl is-system-running did not answer within 5 s");
            Some("unknown".into())
        }
    }
}

/// Polls IMDS for a scale-in or a spot interruption notice.
async fn watch_imds() -> Leave {
    let imds = Imds::new();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Ok(Some(LifecycleState::Leaving(state))) = imds.lifecycle_state().await {
            tracing::warn!(%state, "the group is scaling this instance in");
            return Leave::ScaleIn;
        }
        if let Ok(Some(action)) = imds.spot_action().await {
            tracing::warn!(%action, "spot interruption notice");
            return Leave::Spot;
        }
    }
}

/// Drains this instance and stops its stack (see the module's doc).
pub async fn leave(state: &AgentState, booted: &Booted, why: Leave) -> Result<Left, AgentError> {
    let started = Instant::now();
    let deployer = &booted.deployer;
    let config = &deployer.config;
    tracing::info!(reason = ?why, "leaving: draining, then stopping the services");
    resume::forget(&config.run_dir);
    // Not beside an upgrade or rollback, which would start what this stops; one that does not
    // finish within a minute is left to the stop (a shutdown does not wait).
    let _lock = match UpgradeLock::acquire_within(&config.run_dir, "leaving", LOCK_PATIENCE).await {
        Ok(lock) => Some(lock),
        Err(e) => {
            tracing::warn!(error = %crate::report::chain(&e), "leaving beside an upgrade that still runs");
            None
        }
    };
    set_phase(state, Phase::Draining);
    let engine = deployer.engine().await?;
    let progress = Progress::new(Mode::Log);
    let upgrader = deployer.upgrader(engine, &progress, true);
    if let Err(e) = upgrader.wait_lb(Wait::Out, state).await {
        tracing::warn!(error = %crate::report::chain(&e), "the load balancer did not confirm the drain; stopping anyway");
    }
    let stopped = stop_stack(deployer, &progress).await?;
    if why == Leave::ScaleIn {
        let hook = Hook::for_instance(
            config.lifecycle.terminate_hook.as_ref(),
            config,
            &booted.identity,
            deployer.aws.as_ref(),
        )?;
        if let Some(hook) = hook {
            hook.complete(Outcome::Continue).await?;
            tracing::info!(hook = %hook.hook, "terminate lifecycle action completed");
        }
    }
    Ok(Left {
        reason: why,
        stopped,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Lets requests in flight to the serving release finish (proxy strategy), then stops the
/// project's containers in dependency order. Returns how many stopped.
pub async fn stop_stack(deployer: &Deployer, progress: &Progress) -> Result<usize, AgentError> {
    let config = &deployer.config;
    let engine = deployer.engine().await?;
    if config.upgrade.strategy == Strategy::Proxy {
        if let Some(routed) = upgrade::routed_from_labels(engine, &config.project).await? {
            deployer
                .upgrader(engine, progress, true)
                .drain_serving(&routed)
                .await;
        }
    }
    let stopped = converge::stop(engine, &config.project, progress).await?;
    tracing::info!(containers = stopped, "services stopped");
    Ok(stopped)
}
