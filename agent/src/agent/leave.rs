//! Leaving: on SIGTERM, a scale-in (IMDS lifecycle state `Terminated`) or a spot interruption
//! notice, `/healthz` fails, the load balancer stops sending, requests in flight finish, the
//! containers stop with their stop_grace_period, and on a scale-in the terminate hook is
//! completed.

use std::time::Duration;

use super::boot::Booted;
use super::{set_phase, AgentError};
use crate::config::Strategy;
use crate::engine::converge;
use crate::engine::progress::{Mode, Progress};
use crate::instance::hook::{Hook, Outcome};
use crate::instance::identity::{Imds, LifecycleState};
use crate::instance::load_balancer::Wait;
use crate::serve::{AgentState, Phase};
use crate::upgrade;

/// Why the agent leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    Signal(&'static str),
    ScaleIn,
    Spot,
}

/// Waits for a reason to leave: a signal, or (on EC2) IMDS saying the instance goes away.
pub async fn wait_for_leave(local: bool) -> Leave {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            None
        }
    };
    let sigterm = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let imds = async {
        if local {
            return std::future::pending::<Leave>().await;
        }
        watch_imds().await
    };
    tokio::select! {
        _ = sigterm => Leave::Signal("SIGTERM"),
        _ = tokio::signal::ctrl_c() => Leave::Signal("SIGINT"),
        why = imds => why,
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

pub async fn leave(state: &AgentState, booted: &Booted, why: Leave) -> Result<(), AgentError> {
    let deployer = &booted.deployer;
    let config = &deployer.config;
    tracing::info!(reason = ?why, "leaving: draining, then stopping the services");
    set_phase(state, Phase::Draining);
    let engine = deployer.engine().await?;
    let progress = Progress::new(Mode::Log);
    let upgrader = deployer.upgrader(engine, &progress, true);
    if let Err(e) = upgrader.wait_lb(Wait::Out, state).await {
        tracing::warn!(error = %crate::report::chain(&e), "the load balancer did not confirm the drain; stopping anyway");
    }
    if config.upgrade.strategy == Strategy::Proxy {
        if let Some(routed) = upgrade::routed_from_labels(engine, &config.project).await? {
            upgrader.drain_serving(&routed).await;
        }
    }
    let stopped = converge::stop(engine, &config.project, &progress).await?;
    tracing::info!(containers = stopped, "services stopped");
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
    Ok(())
}
