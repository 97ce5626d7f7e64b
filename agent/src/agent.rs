//! The resident agent: the boot pipeline of an AutoScaling instance, then holding.
//!
//! identity (IMDSv2) -> release (S3/SSM/local) -> registry auth (ECR) -> converge -> serve
//! (health endpoint 503 -> 200) -> lifecycle hook CONTINUE -> wait until the load balancer marks
//! the target healthy -> hold. A failure anywhere: `/healthz` says `failed`, the launch hook is
//! ABANDONed (the group replaces the instance), and the error is returned. A warm-pool instance
//! (`Warmed:*`) fetches and pulls only, completes the hook, and converges once it goes InService.
//! The same pipeline runs locally with `local = true`: no IMDS, no AWS calls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::aws::Aws;
use crate::compose::{self, ComposeError, LoadOptions, Project};
use crate::config::{AgentConfig, ConfigError};
use crate::converge::{self, ConvergeError, UpOptions};
use crate::docker::{DockerError, Engine};
use crate::health::{self, Health, HealthError, Phase, ServiceStatus};
use crate::identity::{Identity, IdentityError, Imds};
use crate::lifecycle::{self, Hook, LifecycleError, Outcome};
use crate::plan::{self, Plan};
use crate::progress::{Mode, Progress};
use crate::registry::Registries;
use crate::release::{self, Release, ReleaseError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error("release {compose_file}: {source}")]
    Compose {
        compose_file: String,
        source: ComposeError,
    },
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
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

fn set_phase(health: &Health, phase: Phase) {
    health.set_phase(phase);
    notify(&[sd_notify::NotifyState::Status(phase.as_str())]);
}

/// Everything a boot found out, for holding afterwards.
#[derive(Debug)]
pub struct Booted {
    pub identity: Identity,
    pub project: Project,
    pub release: Release,
}

/// `berth agent`: boot, then hold until SIGTERM (or return once in service with `once`).
pub async fn run(opts: AgentOptions, started: Instant) -> Result<(), AgentError> {
    let config = &opts.config;
    let health = Health::new(&config.project, started);
    let addr = health::serve(
        config.health.listen,
        config.health.path.clone(),
        health.clone(),
    )
    .await?;
    tracing::info!(project = %config.project, health = %addr, local = config.local, "berth agent starting");

    let mut hook_slot: Option<Hook> = None;
    match boot(&opts, &health, &mut hook_slot, started).await {
        Ok(booted) => {
            if opts.once {
                return Ok(());
            }
            hold(&health, &booted).await;
            Ok(())
        }
        Err(e) => {
            let message = e.to_string();
            tracing::error!(error = %message, "boot failed");
            health.fail(&message);
            notify(&[sd_notify::NotifyState::Status(&format!(
                "failed: {}",
                first_line(&message)
            ))]);
            if let Some(hook) = &hook_slot {
                match hook.complete(Outcome::Abandon).await {
                    Ok(()) => {
                        tracing::warn!(hook = %hook.hook, reason = %first_line(&message), "lifecycle action ABANDONed: the group will replace this instance");
                        // This instance is going away: nothing half-started may serve meanwhile.
                        // Stopped, not removed, so that their logs can still be read.
                        stop_project(&config.project).await;
                    }
                    Err(le) => {
                        tracing::error!(error = %le, "could not ABANDON the lifecycle action")
                    }
                }
            }
            Err(e)
        }
    }
}

async fn stop_project(project: &str) {
    let progress = Progress::new(Mode::Log);
    match Engine::connect().await {
        Ok(engine) => {
            if let Err(e) = converge::stop(&engine, project, &progress).await {
                tracing::error!(error = %e, "could not stop the project's containers");
            }
        }
        Err(e) => tracing::error!(error = %e, "could not stop the project's containers"),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// The project a release describes, with the release id exposed to interpolation.
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
    let opts = LoadOptions {
        files: vec![release.compose_file.clone()],
        project_name: Some(config.project.clone()),
        working_dir,
        environment,
        ..LoadOptions::default()
    };
    compose::load(&opts).map_err(|source| AgentError::Compose {
        compose_file: release.compose_file.display().to_string(),
        source,
    })
}

async fn aws_for(config: &AgentConfig, region: Option<String>) -> Option<Aws> {
    if config.local {
        return None;
    }
    Some(
        Aws::load(
            region,
            config.s3_path_style,
            Duration::from_secs(config.timeouts.fetch_secs),
        )
        .await,
    )
}

async fn boot(
    opts: &AgentOptions,
    health: &Health,
    hook_slot: &mut Option<Hook>,
    started: Instant,
) -> Result<Booted, AgentError> {
    let config = &opts.config;
    set_phase(health, Phase::Identity);
    let imds = Imds::new();
    let identity = if config.local {
        Identity::local()
    } else {
        imds.identity(Duration::from_secs(config.timeouts.imds_secs))
            .await?
    };
    tracing::info!(instance = %identity.instance_id, region = %identity.region, az = %identity.availability_zone, lifecycle = ?identity.lifecycle_state, "identity");
    health.update(|s| s.instance_id = Some(identity.instance_id.clone()));

    let aws = aws_for(config, Some(identity.region.clone())).await;
    if let (Some(aws), Some(hook)) = (&aws, &config.lifecycle.hook) {
        let group = config
            .lifecycle
            .group
            .clone()
            .or_else(|| identity.group.clone());
        let group = group.ok_or_else(|| LifecycleError::NoGroup { hook: hook.clone() })?;
        *hook_slot = Some(Hook {
            aws: aws.clone(),
            group,
            hook: hook.clone(),
            instance: identity.instance_id.clone(),
        });
    }
    boot_steps(
        opts,
        health,
        aws.as_ref(),
        &imds,
        identity,
        hook_slot.as_ref(),
        started,
    )
    .await
}

/// Heartbeats for a pending lifecycle action; they stop when it is completed or dropped.
struct Heartbeat(Option<tokio::task::JoinHandle<()>>);

impl Heartbeat {
    fn start(hook: Option<&Hook>, every: Duration) -> Heartbeat {
        Heartbeat(hook.map(|h| h.keep_alive(every)))
    }

    /// Stops the heartbeats, then completes the action.
    async fn complete(mut self, hook: Option<&Hook>) -> Result<(), AgentError> {
        if let Some(h) = self.0.take() {
            h.abort();
        }
        if let Some(hook) = hook {
            hook.complete(Outcome::Continue).await?;
        }
        Ok(())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

async fn boot_steps(
    opts: &AgentOptions,
    health: &Health,
    aws: Option<&Aws>,
    imds: &Imds,
    identity: Identity,
    hook: Option<&Hook>,
    started: Instant,
) -> Result<Booted, AgentError> {
    let config = &opts.config;
    // Heartbeats keep the hook open while slow steps (fetch, pulls, health) run.
    let mut heartbeat = Heartbeat::start(hook, config.heartbeat());
    set_phase(health, Phase::Fetching);
    let release = release::fetch_release(aws, config, opts.release.as_deref()).await?;
    for o in &release.objects {
        tracing::info!(location = %o.location, version = ?o.version, bytes = o.bytes, "fetched");
    }
    health.update(|s| {
        s.release = release.release_id.clone();
        s.objects = release.objects.clone();
    });
    let project = load_project(config, &release)?;
    let engine = Engine::connect().await?;
    let registries = Arc::new(Registries::new(
        config.registries.clone(),
        aws.map(|a| a.ecr.clone()),
    ));
    let phase_health = health.clone();
    let progress = Progress::new(Mode::Log).with_phases(Arc::new(move |p: &str| {
        if let Some(phase) = Phase::parse(p) {
            set_phase(&phase_health, phase);
        }
    }));

    if identity.is_warm_pool() {
        // A warm-pool instance gets everything ready but starts nothing until it is needed.
        let mut observed = converge::observe(&engine, &project).await?;
        let limit = config.pull_concurrency;
        converge::pull_images(
            &engine,
            &project,
            &mut observed,
            &registries,
            limit,
            &progress,
        )
        .await?;
        set_phase(health, Phase::Warmed);
        heartbeat.complete(hook).await?;
        tracing::info!(state = ?identity.lifecycle_state, "warm pool: images pulled, nothing started; waiting for InService");
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match imds.lifecycle_state().await {
                Ok(Some(s)) if s == "InService" => break,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reading the lifecycle state"),
            }
        }
        // AutoScaling holds the launch hook a second time on the way to InService.
        tracing::info!("InService: converging");
        heartbeat = Heartbeat::start(hook, config.heartbeat());
    }

    let up = UpOptions {
        remove_orphans: true,
        wait_timeout: Duration::from_secs(config.timeouts.ready_secs),
        registries,
        pull_concurrency: config.pull_concurrency,
    };
    let report = converge::up(&engine, &project, &up, &progress).await?;
    health.update(|s| {
        s.services = report
            .services
            .iter()
            .map(|(name, state)| ServiceStatus {
                name: name.clone(),
                state: state.clone(),
            })
            .collect();
    });
    set_phase(health, Phase::Ready);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), release = ?release.release_id, "services up and healthy");

    heartbeat.complete(hook).await?;
    if let Some(aws) = aws {
        let timeout = Duration::from_secs(config.timeouts.in_service_secs);
        let lb = &config.load_balancer;
        match (&lb.target_group_arn, lb.healthy_threshold) {
            (Some(arn), _) => {
                lifecycle::wait_target_healthy(aws, arn, &identity.instance_id, lb.port, timeout)
                    .await?
            }
            (None, Some(n)) => {
                lifecycle::wait_lb_checks(health, n, &identity.instance_id, timeout).await?
            }
            (None, None) => tracing::info!("no load balancer configured: not waiting for it"),
        }
    }
    health.update(|s| s.in_service = true);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "in service");
    Ok(Booted {
        identity,
        project,
        release,
    })
}

/// Stays resident until SIGTERM or SIGINT; the services keep running when berth stops.
async fn hold(health: &Health, booted: &Booted) {
    tracing::info!(project = %booted.project.name, instance = %booted.identity.instance_id, "holding");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(phase = ?health.phase(), "stopping; the services keep running");
}

/// `berth plan --config`: what a boot would do here. Fetches the release, changes nothing.
pub async fn plan(opts: &AgentOptions) -> Result<Plan, AgentError> {
    let config = &opts.config;
    let region = if config.local {
        None
    } else {
        Imds::new()
            .identity(Duration::from_secs(config.timeouts.imds_secs))
            .await
            .ok()
            .map(|i| i.region)
    };
    let aws = aws_for(config, region).await;
    let release = release::fetch_release(aws.as_ref(), config, opts.release.as_deref()).await?;
    let project = load_project(config, &release)?;
    let engine = Engine::connect().await?;
    let plan = converge::plan(&engine, &project, true).await?;
    Ok(plan)
}

pub fn render_plan(plan: &Plan) -> String {
    plan::render(plan)
}
