//! The resident agent: the boot pipeline of an AutoScaling instance, then holding, then
//! leaving.
//!
//! [`boot`]: identity (IMDSv2) -> release (S3/SSM/local) -> converge (pulls with ECR tokens, by
//! the upgrade strategy) -> serve (health endpoint 503 -> 200, lifecycle hook CONTINUE, the load
//! balancer marks the target healthy). [`hold`]: the control socket ([`control`], served by the
//! [`deployer`]), the release pointer's watch, the previous release's expiry, the [`watchdog`].
//! [`leave`]: drain and stop on a scale-in, a spot notice, a system shutdown or `berth leave`;
//! a signal alone ends only the agent, and the next one [`resume`]s what serves. A failure
//! during the boot: `/healthz` says `failed`, the launch hook is ABANDONed (the group replaces
//! the instance), and the error is returned. The same pipeline runs locally with
//! `local = true`: no IMDS, no AWS calls.

pub mod boot;
pub mod control;
pub mod deployer;
pub mod hold;
pub mod leave;
mod migrate;
pub mod resume;
pub mod watchdog;

use std::collections::BTreeMap;
use std::time::Instant;

use crate::compose::{self, ComposeError, LoadOptions, Project};
use crate::config::{AgentConfig, ConfigError, Strategy};
use crate::engine::converge::{self, ConvergeError};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::progress::{first_line, Mode, Progress};
use crate::exit::{Coded, Exit};
use crate::instance::hook::{Hook, HookError, Outcome};
use crate::instance::identity::IdentityError;
use crate::instance::load_balancer::LoadBalancerError;
use crate::ipc::IpcError;
use crate::release::{Release, ReleaseError};
use crate::serve::http::{self, HttpError};
use crate::serve::{AgentState, Phase};
use crate::upgrade::UpgradeError;

pub use boot::plan_boot;
pub use deployer::Deployer;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("release {compose_file}")]
    Compose {
        compose_file: String,
        source: ComposeError,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    LoadBalancer(#[from] LoadBalancerError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error("the agent's control socket")]
    Control(#[from] IpcError),
    #[error("rollback and promote need the proxy strategy (upgrade.strategy = \"proxy\"); with drain, upgrade to the release you want: berth upgrade --release ID")]
    RollbackNeedsProxy,
    #[error("upgrade.alarms")]
    Alarms(#[source] crate::alarms::GateError),
    #[error("release's migration: {message}")]
    Migration { message: String },
    #[error("berth rollback: the serving release {release} ran a contract migration ({service}): the previous release {previous} may not read the database as it is now (columns or tables it needs are gone). Fix forward with a new release, or, knowing that, berth rollback --force")]
    ContractRollback {
        release: String,
        previous: String,
        service: String,
    },
    #[error("berth upgrade: --preview and --canary are two ways before the switch; choose one")]
    PreviewAndCanary,
    #[error("berth upgrade --canary {}: {why}", steps.iter().map(u8::to_string).collect::<Vec<_>>().join(","))]
    CanarySteps { steps: Vec<u8>, why: String },
}

/// Each cause's own code (see `exit.rs`).
impl Coded for AgentError {
    fn exit(&self) -> Exit {
        match self {
            AgentError::Config(e) => e.exit(),
            AgentError::Http(e) => e.exit(),
            AgentError::Identity(e) => e.exit(),
            AgentError::Release(e) => e.exit(),
            AgentError::Compose { source, .. } => source.exit(),
            AgentError::Docker(e) => e.exit(),
            AgentError::Converge(e) => e.exit(),
            AgentError::Hook(e) => e.exit(),
            AgentError::LoadBalancer(e) => e.exit(),
            AgentError::Upgrade(e) => e.exit(),
            AgentError::Control(e) => e.exit(),
            AgentError::Alarms(_) => Exit::Aws,
            AgentError::RollbackNeedsProxy
            | AgentError::Migration { .. }
            | AgentError::ContractRollback { .. }
            | AgentError::PreviewAndCanary
            | AgentError::CanarySteps { .. } => Exit::Invalid,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: AgentConfig,
    /// A release id that wins over the config's `release` location.
    pub release: Option<String>,
    /// Exit once in service instead of holding (for a one-shot boot, and for measuring it).
    pub once: bool,
}

/// Tells systemd (when it started us with `Type=notify`); a no-op otherwise.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

fn set_phase(state: &AgentState, phase: Phase) {
    state.set_phase(phase);
    notify(&[sd_notify::NotifyState::Status(phase.as_str())]);
}

/// `berth agent`: boot, then hold until SIGTERM (or return once in service with `once`).
pub async fn run(opts: AgentOptions, started: Instant) -> Result<(), AgentError> {
    let config = &opts.config;
    let state = AgentState::new(&config.project, started);
    // Before the health endpoint answers: a restarted agent beside a serving stack answers 200
    // from its first request.
    let resumed = resuming(config).await;
    state.update(|s| s.resuming = resumed);
    let endpoint = http::Endpoint {
        listen: config.health.listen,
        health_path: config.health.path.clone(),
        proxy: (config.upgrade.strategy == Strategy::Proxy).then(|| config.proxy.control.clone()),
    };
    let addr = http::serve(endpoint, state.clone()).await?;
    tracing::info!(project = %config.project, health = %addr, local = config.local, "berth agent starting");
    // From the start: until the boot is done it answers busy, so that an upgrade sent now
    // cannot run in-process beside the boot.
    let socket = config.control_socket();
    let (gate, asked) = control::listen(&socket, state.clone()).await?;

    let mut hook_slot: Option<Hook> = None;
    let result = match boot::boot(&opts, &state, &mut hook_slot, started, resumed).await {
        Ok(_) if opts.once => Ok(()),
        Ok(booted) => {
            let held = hold::hold(&state, &booted, &gate, asked).await;
            gate.leave_answered(std::time::Duration::from_secs(2)).await;
            held
        }
        Err(e) => Err(boot_failed(&state, config, hook_slot.as_ref(), e).await),
    };
    let _ = std::fs::remove_file(&socket);
    result
}

/// Whether the previous agent left a stack serving here that still runs (see [`resume`]).
async fn resuming(config: &AgentConfig) -> bool {
    let Some(serving) = resume::read(&config.run_dir) else {
        return false;
    };
    let look = async {
        match Engine::connect().await {
            Ok(engine) => resume::still_serving(&engine, &serving).await,
            Err(_) => false,
        }
    };
    let resumed = tokio::time::timeout(std::time::Duration::from_secs(3), look)
        .await
        .unwrap_or(false);
    if resumed {
        tracing::info!(release = ?serving.release, containers = serving.containers.len(), "resuming: the previous agent's release still serves");
    } else {
        tracing::info!(release = ?serving.release, "the previous agent's release no longer serves as it left it: booting afresh");
        resume::forget(&config.run_dir);
    }
    resumed
}

/// A failed boot: said in `/status` and systemd's STATUS=, and with a lifecycle hook pending,
/// ABANDONed so that the group replaces this instance.
async fn boot_failed(
    state: &AgentState,
    config: &AgentConfig,
    hook: Option<&Hook>,
    e: AgentError,
) -> AgentError {
    let message = crate::report::chain(&e);
    tracing::error!(error = %message, "boot failed");
    state.fail(&message);
    resume::forget(&config.run_dir);
    notify(&[sd_notify::NotifyState::Status(&format!(
        "failed: {}",
        first_line(&message)
    ))]);
    if let Some(hook) = hook {
        match hook.complete(Outcome::Abandon).await {
            Ok(()) => {
                tracing::warn!(hook = %hook.hook, reason = %first_line(&message), "lifecycle action ABANDONed: the group will replace this instance");
                // This instance is going away: nothing half-started may serve meanwhile.
                // Stopped, not removed, so that their logs can still be read.
                stop_project(&config.project).await;
            }
            Err(le) => {
                tracing::error!(error = %crate::report::chain(&le), "could not ABANDON the lifecycle action")
            }
        }
    }
    e
}

async fn stop_project(project: &str) {
    let progress = Progress::new(Mode::Log);
    match Engine::connect().await {
        Ok(engine) => {
            if let Err(e) = converge::stop(&engine, project, &progress).await {
                tracing::error!(error = %crate::report::chain(&e), "could not stop the project's containers");
            }
        }
        Err(e) => {
            tracing::error!(error = %crate::report::chain(&e), "could not stop the project's containers")
        }
    }
}

/// The project a release describes, with the release id exposed to interpolation, pinned as
/// its manifest says (images by digest), and judged by the host policy (a host file it may
/// not read is not read).
fn load_project(config: &AgentConfig, release: &Release) -> Result<Project, AgentError> {
    let mut environment: BTreeMap<String, String> = std::env::vars().collect();
    if let Some(id) = &release.release_id {
        environment.insert(config.release_var.clone(), id.clone());
    }
    let working_dir = release
        .compose_file
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    // The project directory looked at once: the loader's gate and the check after it judge
    // by the same host.
    let host = crate::release::layout::host(config, &release.compose_file);
    let opts = LoadOptions {
        files: vec![release.compose_file.clone()],
        project_name: Some(config.project.clone()),
        working_dir,
        environment,
        remote_sources: release.sources.clone(),
        read_gate: crate::policy::read_gate(&config.policy, &host),
        ..LoadOptions::default()
    };
    let mut project = compose::load(&opts).map_err(|source| AgentError::Compose {
        compose_file: release.compose_file.display().to_string(),
        source,
    })?;
    release.pin(&mut project, config, &host)?;
    Ok(project)
}
