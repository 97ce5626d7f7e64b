//! The boot of an instance, stage by stage, each in its own span: identity (IMDSv2) -> fetch
//! (the release from S3/SSM/local) -> pull and converge (by the upgrade strategy, so that a boot
//! is an upgrade from nothing) -> serve (health 200, the launch hook CONTINUE, the load
//! balancer marks the target healthy). A warm-pool instance stops after the pull and goes on
//! once IMDS says InService.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::deployer::Deployer;
use super::{load_project, notify, set_phase, AgentError, AgentOptions};
use crate::compose::Project;
use crate::engine::converge;
use crate::engine::docker::Engine;
use crate::engine::plan::Plan;
use crate::engine::progress::{Mode, Progress, Stage};
use crate::instance::hook::{Heartbeat, Hook};
use crate::instance::identity::{Identity, Imds, LifecycleState};
use crate::instance::load_balancer::{self, Wait};
use crate::instance::target_group;
use crate::instance::{self, Instance};
use crate::release::{self, Release};
use crate::serve::{AgentState, Phase};
use crate::upgrade::Entry;

/// Everything a boot found out, for holding afterwards.
#[derive(Debug)]
pub struct Booted {
    pub identity: Identity,
    pub project: Project,
    pub release: Release,
    pub deployer: Arc<Deployer>,
    /// The release came from `--release`, not the pointer.
    pub release_flag: bool,
}

/// The identity stage: who this instance is, its AWS clients and its launch hook. The hook is
/// put in `hook_slot` as soon as it is known, so that a later failure can ABANDON it. A
/// `resumed` boot (a restarted agent, see [`super::resume`]) has no hook: the previous agent
/// completed it.
pub async fn boot(
    opts: &AgentOptions,
    state: &AgentState,
    hook_slot: &mut Option<Hook>,
    started: Instant,
    resumed: bool,
) -> Result<Booted, AgentError> {
    let config = &opts.config;
    set_phase(state, Phase::Identity);
    let instance = Instance::discover(config)
        .instrument(tracing::info_span!("identity"))
        .await?;
    let identity = &instance.identity;
    tracing::info!(instance = %identity.instance_id, region = %identity.region, az = %identity.availability_zone, lifecycle = ?identity.lifecycle_state.as_ref().map(ToString::to_string), "identity");
    state.update(|s| s.instance_id = Some(identity.instance_id.clone()));
    *hook_slot = match resumed {
        true => None,
        false => Hook::for_instance(
            config.lifecycle.hook.as_ref(),
            config,
            identity,
            instance.aws.as_ref(),
        )?,
    };
    boot_steps(opts, state, instance, hook_slot.as_ref(), started, resumed).await
}

async fn boot_steps(
    opts: &AgentOptions,
    state: &AgentState,
    instance: Instance,
    hook: Option<&Hook>,
    started: Instant,
    resumed: bool,
) -> Result<Booted, AgentError> {
    let config = &opts.config;
    // Heartbeats keep the hook open while slow steps (fetch, pulls, health) run.
    let mut heartbeat = Heartbeat::start(hook, config.heartbeat());
    // A resumed agent serves a release already: if the pointer moved meanwhile, the boot is an
    // upgrade, whose way back is that release (loaded first: both are laid out in the project
    // directory, the new one's files last).
    let serving = resumed
        .then(|| super::resume::read(&config.run_dir).and_then(|s| s.release))
        .flatten();
    let back = super::deployer::way_back(instance.aws.as_ref(), config, serving.as_deref())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(release = ?serving, error = %crate::report::chain(&e), "no way back to the release that served");
            None
        });
    let (release, project) = fetch(opts, state, instance.aws.as_ref())
        .instrument(tracing::info_span!("fetch"))
        .await?;
    let back = back
        .map(|(w, _)| w)
        .filter(|w| Some(&w.release) != release.release_id.as_ref());
    let engine = Engine::connect().await?;
    let deployer = Arc::new(Deployer::new(
        config.clone(),
        Some(engine),
        &instance,
        Some(state.clone()),
    ));
    let phase_state = state.clone();
    let progress = Progress::new(Mode::Log).with_stages(Arc::new(move |stage: Stage| {
        set_phase(&phase_state, Phase::from(stage));
    }));

    if instance.identity.is_warm_pool() {
        warm_pool(&deployer, &project, &progress, &instance.identity)
            .instrument(tracing::info_span!("pull"))
            .await?;
        heartbeat.complete(hook).await?;
        wait_in_service().await;
        // AutoScaling holds the launch hook a second time on the way to InService.
        tracing::info!("InService: converging");
        heartbeat = Heartbeat::start(hook, config.heartbeat());
    }

    // A resumed boot serves already: anything to change is changed as an upgrade would (the
    // drain strategy turns /healthz 503 first; the proxy strategy starts the new color beside).
    let deployed = deployer
        .deploy(
            &release,
            &project,
            &progress,
            resumed,
            Entry::Switch,
            back.as_ref(),
        )
        .instrument(tracing::info_span!("converge"))
        .await?;
    tracing::info!(how = deployed.how.as_str(), color = ?deployed.color, backends = ?deployed.backends, "converged");
    set_phase(state, Phase::Ready);
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("ready"),
    ]);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), release = ?release.release_id, "services up and healthy");

    async {
        heartbeat.complete(hook).await?;
        let id = &instance.identity.instance_id;
        let aws = instance.aws.as_ref();
        if !load_balancer::watches_in(config, aws) {
            tracing::info!("no load balancer configured: not waiting for it");
        }
        let lb = &config.load_balancer;
        let arn = lb.target_group_arn.as_deref();
        // An earlier berth kept the mark on the run directory: honoured too, moved to disk.
        let legacy = config.run_dir.join("deregistered");
        if legacy.exists() {
            let _ = crate::release::files::private_dir(&config.state_dir);
            if let Err(e) = std::fs::copy(&legacy, config.state_dir.join("deregistered")) {
                tracing::warn!(error = %e, "cannot move the deregistered mark to the state directory");
            }
            let _ = std::fs::remove_file(&legacy);
        }
        target_group::rejoin_if_left(aws, arn, id, lb.port, &config.state_dir).await?;
        load_balancer::wait(config, aws, id, state, Wait::In).await?;
        Ok::<(), AgentError>(())
    }
    .instrument(tracing::info_span!("serve"))
    .await?;
    state.update(|s| s.in_service = true);
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "in service");
    Ok(Booted {
        identity: instance.identity,
        project,
        release,
        deployer,
        release_flag: opts.release.is_some(),
    })
}

/// The fetch stage: the release's files, and the project they describe.
async fn fetch(
    opts: &AgentOptions,
    state: &AgentState,
    aws: Option<&crate::aws::Aws>,
) -> Result<(Release, Project), AgentError> {
    set_phase(state, Phase::Fetching);
    let release = release::fetch_release(aws, &opts.config, opts.release.as_deref()).await?;
    for o in &release.objects {
        tracing::info!(location = %o.location, version = ?o.version, bytes = o.bytes, "fetched");
    }
    state.update(|s| {
        s.release = release.release_id.clone();
        s.objects = release.objects.clone();
        s.floating = release.floating.clone();
    });
    let project = load_project(&opts.config, &release)?;
    Ok((release, project))
}

/// A warm-pool instance gets everything ready but starts nothing until it is needed.
async fn warm_pool(
    deployer: &Deployer,
    project: &Project,
    progress: &Progress,
    identity: &Identity,
) -> Result<(), AgentError> {
    let engine = deployer.engine().await?;
    let mut observed = converge::observe(engine, project).await?;
    converge::pull_images(
        engine,
        project,
        &mut observed,
        &deployer.registries,
        deployer.config.pull_concurrency,
        progress,
    )
    .await?;
    if let Some(state) = &deployer.state {
        set_phase(state, Phase::Warmed);
    }
    tracing::info!(state = ?identity.lifecycle_state.as_ref().map(ToString::to_string), "warm pool: images pulled, nothing started; waiting for InService");
    Ok(())
}

async fn wait_in_service() {
    let imds = Imds::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match imds.lifecycle_state().await {
            Ok(Some(LifecycleState::InService)) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %crate::report::chain(&e), "reading the lifecycle state")
            }
        }
    }
}

/// `berth plan --config`: what a boot would do here. Fetches the release, changes nothing. An
/// unreachable IMDS only leaves the region to the environment.
pub async fn plan_boot(opts: &AgentOptions) -> Result<Plan, AgentError> {
    let config = &opts.config;
    // A release from a store or S3 is laid out where a boot lays it (relative paths resolve
    // there, so the plan compares what a boot would run): not while an upgrade lays out
    // another. A local compose file is read in place.
    let _lock = match config.manifests.is_some() || !config.compose.is_local() {
        true => Some(
            crate::upgrade::UpgradeLock::acquire_within(
                &config.run_dir,
                "berth plan --config",
                Duration::from_secs(3),
            )
            .await?,
        ),
        false => None,
    };
    let identity = if config.local {
        None
    } else {
        Imds::new()
            .identity(Duration::from_secs(config.timeouts.imds_secs))
            .await
            .ok()
    };
    let (region, account) = identity.map_or((None, None), |i| (Some(i.region), i.account));
    let owner = config.bucket_owner.clone().or(account);
    let aws = instance::aws_for(config, region, owner).await;
    let release = release::fetch_release(aws.as_ref(), config, opts.release.as_deref()).await?;
    let project = load_project(config, &release)?;
    let engine = Engine::connect().await?;
    Ok(converge::plan(&engine, &project, true).await?)
}
