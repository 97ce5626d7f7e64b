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
use crate::engine::converge::{self, ConvergeError, UpOptions};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::{self, Plan};
use crate::engine::progress::{Mode, Progress};
use crate::engine::registry::Registries;
use crate::instance::identity::{Identity, IdentityError, Imds};
use crate::instance::lifecycle::{self, Hook, LifecycleError, Outcome};
use crate::release::{self, Release, ReleaseError};
use crate::serve::control::{self, Answer, DaemonError, Request};
use crate::serve::health::{self, Health, HealthError, Phase, ServiceStatus};
use crate::upgrade::{self, Deployed, UpgradeError, UpgradeLock, Upgrader};

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
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("rollback needs the proxy strategy (upgrade.strategy = \"proxy\"); with drain, upgrade to the release you want: berth upgrade --release ID")]
    RollbackNeedsProxy,
}

impl AgentError {
    /// The process exit code (see main.rs): 3 bad input, 4 Docker or a socket, 5 image,
    /// 6 AWS, 7 another upgrade runs, 1 a service (or the new release) failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::Config(_) | AgentError::Compose { .. } | AgentError::Health(_) => 3,
            AgentError::Docker(_) | AgentError::Daemon(_) => 4,
            AgentError::Converge(c) => c.exit_code(),
            AgentError::Release(
                ReleaseError::Local { .. }
                | ReleaseError::Write { .. }
                | ReleaseError::NameClash { .. }
                | ReleaseError::RemoteInLocalRun { .. },
            ) => 3,
            AgentError::Identity(_) | AgentError::Release(_) | AgentError::Lifecycle(_) => 6,
            AgentError::Upgrade(u) => u.exit_code(),
            AgentError::RollbackNeedsProxy => 3,
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
    pub deployer: Arc<Deployer>,
}

/// How long an upgrade waits for a lock held for a moment before it refuses as busy.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

/// Upgrades, rollbacks and status: what the control socket and the in-process commands do.
#[derive(Debug, Clone)]
pub struct Deployer {
    pub config: AgentConfig,
    pub aws: Option<Aws>,
    pub instance_id: String,
    /// The agent's health endpoint (None in-process): the drain strategy turns it 503.
    pub health: Option<Health>,
    pub registries: Arc<Registries>,
}

impl Deployer {
    /// For a command run without an agent: local config, or AWS from the SDK's chain.
    pub async fn in_process(config: AgentConfig) -> Result<Deployer, AgentError> {
        let (instance_id, region) = if config.local {
            (Identity::local().instance_id, None)
        } else {
            let identity = Imds::new()
                .identity(Duration::from_secs(config.timeouts.imds_secs))
                .await?;
            (identity.instance_id, Some(identity.region))
        };
        let aws = aws_for(&config, region).await;
        let registries = Arc::new(Registries::new(
            config.registries.clone(),
            aws.as_ref().map(|a| a.ecr.clone()),
        ));
        Ok(Deployer {
            config,
            aws,
            instance_id,
            health: None,
            registries,
        })
    }

    fn up_options(&self) -> UpOptions {
        UpOptions {
            remove_orphans: true,
            wait_timeout: Duration::from_secs(self.config.timeouts.ready_secs),
            registries: self.registries.clone(),
            pull_concurrency: self.config.pull_concurrency,
        }
    }

    fn upgrader<'a>(
        &'a self,
        engine: &'a Engine,
        progress: &'a Progress,
        serving: bool,
    ) -> Upgrader<'a> {
        Upgrader {
            engine,
            config: &self.config,
            up: self.up_options(),
            progress,
            health: self.health.as_ref().filter(|_| serving),
            aws: self.aws.as_ref(),
            instance_id: self.instance_id.clone(),
        }
    }

    /// Converges a fetched release by the configured strategy; `serving` is false at boot
    /// (nothing to drain from the load balancer yet).
    async fn deploy(
        &self,
        release: &Release,
        project: &Project,
        progress: &Progress,
        serving: bool,
    ) -> Result<Deployed, AgentError> {
        let what = format!(
            "{} release {}",
            if serving { "upgrade to" } else { "boot" },
            release.release_id.as_deref().unwrap_or("(unnamed)")
        );
        let _lock = UpgradeLock::acquire_within(&self.config.run_dir, &what, LOCK_PATIENCE).await?;
        let engine = Engine::connect().await?;
        let deployed = self
            .upgrader(&engine, progress, serving)
            .deploy(project, release.release_id.as_deref())
            .await?;
        if let Some(h) = &self.health {
            h.update(|s| {
                s.release = release.release_id.clone();
                s.objects = release.objects.clone();
                if !deployed.services.is_empty() {
                    s.services = deployed
                        .services
                        .iter()
                        .map(|(name, state)| ServiceStatus {
                            name: name.clone(),
                            state: state.clone(),
                        })
                        .collect();
                }
            });
        }
        Ok(deployed)
    }

    /// `berth upgrade`: the given release, or the one the release pointer names.
    pub async fn upgrade(&self, release: Option<String>) -> Result<Deployed, AgentError> {
        let fetched =
            release::fetch_release(self.aws.as_ref(), &self.config, release.as_deref()).await?;
        let project = load_project(&self.config, &fetched)?;
        let progress = Progress::new(Mode::Log);
        let deployed = self.deploy(&fetched, &project, &progress, true).await?;
        tracing::info!(release = ?deployed.release, previous = ?deployed.previous, how = deployed.how, to_switch_secs = ?deployed.to_switch_secs, "upgrade done");
        Ok(deployed)
    }

    /// `berth rollback`: the kept previous release serves again (proxy strategy).
    pub async fn rollback(&self) -> Result<Deployed, AgentError> {
        if self.config.upgrade.strategy != crate::config::Strategy::Proxy {
            return Err(AgentError::RollbackNeedsProxy);
        }
        let _lock =
            UpgradeLock::acquire_within(&self.config.run_dir, "rollback", LOCK_PATIENCE).await?;
        let engine = Engine::connect().await?;
        let project = &self.config.project;
        let routed = upgrade::routed_from_labels(&engine, project)
            .await?
            .ok_or_else(|| UpgradeError::NoPrevious {
                project: project.clone(),
            })?;
        let progress = Progress::new(Mode::Log);
        let deployed = self
            .upgrader(&engine, &progress, true)
            .rollback(project, &routed)
            .await?;
        if let Some(h) = &self.health {
            h.update(|s| s.release = deployed.release.clone());
        }
        tracing::info!(release = ?deployed.release, from = ?deployed.previous, "rolled back");
        Ok(deployed)
    }

    /// `berth status`: the agent's phase and release, both colors, the proxy's route.
    pub async fn status(&self) -> Result<serde_json::Value, AgentError> {
        let engine = Engine::connect().await?;
        let project = &self.config.project;
        let mut out = serde_json::json!({
            "project": project,
            "strategy": self.config.upgrade.strategy,
        });
        if let Some(h) = &self.health {
            let s = h.snapshot();
            out["phase"] = serde_json::json!(s.phase);
            out["release"] = serde_json::json!(s.release);
            out["in_service"] = serde_json::json!(s.in_service);
            out["services"] = serde_json::json!(s.services);
            out["last_error"] = serde_json::json!(s.last_error);
        }
        if let Some(routed) = upgrade::routed_from_labels(&engine, project).await? {
            let progress = Progress::new(Mode::Quiet);
            let sides = self
                .upgrader(&engine, &progress, false)
                .sides(&routed)
                .await?;
            out["routed_service"] = serde_json::json!(routed.service);
            out["releases"] = serde_json::json!(sides.values().collect::<Vec<_>>());
        }
        if self.config.upgrade.strategy == crate::config::Strategy::Proxy {
            let socket = &self.config.proxy.control;
            out["proxy"] =
                match crate::proxy::control(socket, &serde_json::json!({"op": "status"})).await {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({ "error": crate::report::chain(&e) }),
                };
        }
        let rows = converge::ps(&engine, project).await?;
        out["containers"] = serde_json::json!(rows);
        Ok(out)
    }

    /// One control-socket request.
    pub async fn handle(&self, req: Request) -> Answer {
        let result = match req {
            Request::Upgrade { release } => {
                self.upgrade(release).await.map(|d| serde_json::json!(d))
            }
            Request::Rollback => self.rollback().await.map(|d| serde_json::json!(d)),
            Request::Status => self.status().await,
        };
        match result {
            Ok(v) => Answer {
                ok: true,
                result: Some(v),
                error: None,
                code: None,
            },
            Err(e) => {
                tracing::error!(error = %e, "control request failed");
                Answer {
                    ok: false,
                    result: None,
                    error: Some(crate::report::chain(&e)),
                    code: Some(e.exit_code()),
                }
            }
        }
    }
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
            hold(&health, &booted).await
        }
        Err(e) => {
            let message = crate::report::chain(&e);
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
    let progress = Progress::new(Mode::Log).with_stages(Arc::new(move |stage| {
        use crate::engine::progress::Stage;
        let phase = match stage {
            Stage::Pulling => Phase::Pulling,
            Stage::Starting => Phase::Starting,
            Stage::Waiting => Phase::Waiting,
        };
        set_phase(&phase_health, phase);
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

    let deployer = Arc::new(Deployer {
        config: config.clone(),
        aws: aws.cloned(),
        instance_id: identity.instance_id.clone(),
        health: Some(health.clone()),
        registries,
    });
    let deployed = deployer
        .deploy(&release, &project, &progress, false)
        .await?;
    tracing::info!(how = deployed.how, color = ?deployed.color, backend = ?deployed.backend, "converged");
    set_phase(health, Phase::Ready);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), release = ?release.release_id, "services up and healthy");

    heartbeat.complete(hook).await?;
    // Counting the checker's passes needs no AWS, so a local run behind a load balancer
    // (HAProxy on a laptop) waits too.
    let timeout = Duration::from_secs(config.timeouts.in_service_secs);
    let lb = &config.load_balancer;
    match (aws, &lb.target_group_arn, lb.healthy_threshold) {
        (Some(aws), Some(arn), _) => {
            lifecycle::wait_target_healthy(aws, arn, &identity.instance_id, lb.port, timeout)
                .await?
        }
        (_, _, Some(n)) => {
            lifecycle::wait_lb_checks(health, n, &identity.instance_id, timeout).await?
        }
        _ => tracing::info!("no load balancer configured: not waiting for it"),
    }
    health.update(|s| s.in_service = true);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "in service");
    Ok(Booted {
        identity,
        project,
        release,
        deployer,
    })
}

/// Stays resident: answers the control socket, upgrades when the release pointer changes
/// (`upgrade.watch_secs`), and leaves gracefully on SIGTERM, scale-in or a spot interruption.
async fn hold(health: &Health, booted: &Booted) -> Result<(), AgentError> {
    let deployer = &booted.deployer;
    let config = &deployer.config;
    let socket = config.control_socket();
    control::serve(&socket, deployer.clone()).await?;
    tracing::info!(project = %booted.project.name, instance = %booted.identity.instance_id, "holding");
    let watcher = (config.upgrade.watch_secs > 0 && config.release.is_some())
        .then(|| tokio::spawn(watch(deployer.clone())));
    let keeper = match (config.upgrade.strategy, config.upgrade.keep_previous_secs) {
        (crate::config::Strategy::Proxy, Some(secs)) => Some(tokio::spawn(expire_previous(
            deployer.clone(),
            Duration::from_secs(secs),
        ))),
        _ => None,
    };
    let reason = wait_for_leave(config.local).await;
    for task in [watcher, keeper].into_iter().flatten() {
        task.abort();
    }
    notify(&[sd_notify::NotifyState::Stopping]);
    let result = leave(health, booted, reason).await;
    let _ = std::fs::remove_file(&socket);
    result
}

/// Why the agent leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Signal(&'static str),
    ScaleIn,
    Spot,
}

async fn wait_for_leave(local: bool) -> Leave {
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
        let imds = Imds::new();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Ok(Some(state)) = imds.lifecycle_state().await {
                if state == "Terminated" || state.starts_with("Terminating") {
                    tracing::warn!(%state, "the group is scaling this instance in");
                    return Leave::ScaleIn;
                }
            }
            if let Ok(Some(action)) = imds.spot_action().await {
                tracing::warn!(%action, "spot interruption notice");
                return Leave::Spot;
            }
        }
    };
    tokio::select! {
        _ = sigterm => Leave::Signal("SIGTERM"),
        _ = tokio::signal::ctrl_c() => Leave::Signal("SIGINT"),
        why = imds => why,
    }
}

/// Leaving: `/healthz` fails, the load balancer stops sending, requests in flight finish,
/// the containers stop with their stop_grace_period, and the terminate hook is completed.
async fn leave(health: &Health, booted: &Booted, why: Leave) -> Result<(), AgentError> {
    let deployer = &booted.deployer;
    let config = &deployer.config;
    tracing::info!(reason = ?why, "leaving: draining, then stopping the services");
    set_phase(health, Phase::Draining);
    let engine = Engine::connect().await?;
    let progress = Progress::new(Mode::Log);
    let upgrader = deployer.upgrader(&engine, &progress, true);
    if let Err(e) = upgrader.wait_lb(false, health).await {
        tracing::warn!(error = %e, "the load balancer did not confirm the drain; stopping anyway");
    }
    if config.upgrade.strategy == crate::config::Strategy::Proxy {
        if let Some(routed) = upgrade::routed_from_labels(&engine, &config.project).await? {
            upgrader.drain_serving(&routed).await;
        }
    }
    let stopped = converge::stop(&engine, &config.project, &progress).await?;
    tracing::info!(containers = stopped, "services stopped");
    if matches!(why, Leave::ScaleIn) {
        if let (Some(aws), Some(hook)) = (&deployer.aws, &config.lifecycle.terminate_hook) {
            let group = config
                .lifecycle
                .group
                .clone()
                .or_else(|| booted.identity.group.clone())
                .ok_or_else(|| LifecycleError::NoGroup { hook: hook.clone() })?;
            let hook = Hook {
                aws: aws.clone(),
                group,
                hook: hook.clone(),
                instance: booted.identity.instance_id.clone(),
            };
            hook.complete(Outcome::Continue).await?;
            tracing::info!(hook = %hook.hook, "terminate lifecycle action completed");
        }
    }
    Ok(())
}

/// Removes the stopped previous release after `keep` (checked every quarter of it).
async fn expire_previous(deployer: Arc<Deployer>, keep: Duration) {
    let mut seen = BTreeMap::new();
    let tick = (keep / 4).clamp(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        tokio::time::sleep(tick).await;
        // Not while an upgrade or rollback runs: they decide about the previous release.
        let Ok(_lock) =
            UpgradeLock::acquire(&deployer.config.run_dir, "expiring the previous release")
        else {
            continue;
        };
        let result = async {
            let engine = Engine::connect().await?;
            if let Some(routed) =
                upgrade::routed_from_labels(&engine, &deployer.config.project).await?
            {
                let progress = Progress::new(Mode::Quiet);
                deployer
                    .upgrader(&engine, &progress, false)
                    .expire_previous(&routed, &mut seen, keep)
                    .await?;
            }
            Ok::<(), AgentError>(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "expiring the previous release");
        }
    }
}

/// Upgrades when the release pointer names another release.
async fn watch(deployer: Arc<Deployer>) {
    let every = Duration::from_secs(deployer.config.upgrade.watch_secs);
    let Some(pointer) = deployer.config.release.clone() else {
        return;
    };
    let mut failed: Option<String> = None;
    loop {
        tokio::time::sleep(every).await;
        let wanted = match release::fetch(deployer.aws.as_ref(), &pointer).await {
            Ok((bytes, _)) => String::from_utf8_lossy(&bytes).trim().to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "watch: cannot read the release pointer");
                continue;
            }
        };
        let current = deployer.health.as_ref().and_then(|h| h.snapshot().release);
        // A release that failed is not retried until the pointer moves on.
        if wanted.is_empty()
            || Some(&wanted) == current.as_ref()
            || Some(&wanted) == failed.as_ref()
        {
            continue;
        }
        tracing::info!(release = %wanted, previous = ?current, "watch: the release pointer moved");
        match deployer.upgrade(Some(wanted.clone())).await {
            Ok(_) => failed = None,
            Err(AgentError::Upgrade(UpgradeError::Busy { .. })) => {}
            Err(e) => {
                tracing::error!(release = %wanted, error = %e, "watch: upgrade failed");
                failed = Some(wanted);
            }
        }
    }
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
