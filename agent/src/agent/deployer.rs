//! The deployer: what a boot, `berth upgrade`, `rollback` and `status` do, whether they come
//! through the control socket or run in-process. One Docker connection (made when first
//! needed, after the lock, as each operation always has), one set of registry credentials, one
//! lock: one upgrade at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::OnceCell;

use super::control::{Reply, Request};
use super::{load_project, AgentError};
use crate::aws::Aws;
use crate::compose::Project;
use crate::config::{AgentConfig, Strategy};
use crate::engine::converge::{self, PsRow, UpOptions};
use crate::engine::docker::{
    label, labels, summary_name, ContainerSummaryStateEnum, DockerError, Engine,
};
use crate::engine::progress::{Mode, Progress};
use crate::engine::registry::Registries;
use crate::instance::Instance;
use crate::proxy::metrics::{summarize, ReleaseSummary};
use crate::release::{self, history, Manifest, Release};
use crate::serve::{traffic, AgentState, Analysis, Phase, ServiceStatus};
use crate::upgrade::{
    self, Color, Deployed, Entry, How, Side, UpgradeError, UpgradeLock, Upgrader, WayBack,
};

/// How long an upgrade waits for a lock held for a moment before it refuses as busy.
const LOCK_PATIENCE: Duration = Duration::from_secs(3);

/// Upgrades, rollbacks and status: what the control socket and the in-process commands do.
#[derive(Debug, Clone)]
pub struct Deployer {
    pub config: AgentConfig,
    engine: Arc<OnceCell<Engine>>,
    pub aws: Option<Aws>,
    pub instance_id: String,
    /// The instance's AutoScaling group, when known (the watchdog's fleet brake asks it).
    pub group: Option<String>,
    /// The agent's state (None in-process): the drain strategy turns its health 503.
    pub state: Option<AgentState>,
    pub registries: Arc<Registries>,
    /// When the preview started by this agent ends by itself, and its release.
    preview_until: Arc<Mutex<Option<PreviewDeadline>>>,
}

/// When a preview ends by itself (`upgrade.preview_secs`), and its release.
type PreviewDeadline = (Instant, Option<String>);

/// What [`Deployer::switch_routed`] does.
#[derive(Debug, Clone, Copy)]
enum Switch {
    Promote,
    /// `force`: across a contract migration too.
    Rollback {
        force: bool,
    },
}

/// `berth status`: the agent's phase and release (when an agent answers), both colors, the
/// proxy's route and traffic, the containers.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// The answering process's berth: the agent's, or this command's when none runs.
    pub berth: crate::serve::Berth,
    pub project: String,
    pub strategy: Strategy,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routed_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub releases: Option<Vec<Side>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyView>,
    /// The proxy's traffic per release (requests, 5xx, p50/p99, in flight, backends), the
    /// active release first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<ReleaseSummary>>,
    pub containers: Vec<PsRow>,
}

/// The proxy's own status answer, or why there is none.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ProxyView {
    Status(crate::proxy::protocol::Status),
    Unreachable { error: String },
}

/// What only a running agent knows.
#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub phase: Phase,
    pub release: Option<String>,
    pub in_service: bool,
    pub services: Vec<ServiceStatus>,
    pub last_error: Option<String>,
    /// What the watchdog finds wrong now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<String>,
    /// The last upgrade's analysis: both releases' figures side by side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

impl Deployer {
    /// The deployer for `instance`; `engine`, when Docker has already answered.
    pub fn new(
        config: AgentConfig,
        engine: Option<Engine>,
        instance: &Instance,
        state: Option<AgentState>,
    ) -> Deployer {
        let registries = Arc::new(Registries::new(
            config.registries.clone(),
            instance.aws.as_ref().map(|a| a.ecr.clone()),
        ));
        let group = config
            .lifecycle
            .group
            .clone()
            .or_else(|| instance.identity.group.clone());
        Deployer {
            config,
            engine: Arc::new(OnceCell::new_with(engine)),
            aws: instance.aws.clone(),
            instance_id: instance.identity.instance_id.clone(),
            group,
            state,
            registries,
            preview_until: Arc::default(),
        }
    }

    /// For a command run without an agent: local config, or AWS from the SDK's chain.
    pub async fn in_process(config: AgentConfig) -> Result<Deployer, AgentError> {
        let instance = Instance::discover(&config).await?;
        Ok(Deployer::new(config, None, &instance, None))
    }

    /// The Docker connection, made on first use.
    pub async fn engine(&self) -> Result<&Engine, DockerError> {
        self.engine.get_or_try_init(Engine::connect).await
    }

    pub(super) fn up_options(&self) -> UpOptions {
        UpOptions {
            remove_orphans: true,
            wait_timeout: Duration::from_secs(self.config.timeouts.ready_secs),
            registries: self.registries.clone(),
            pull_concurrency: self.config.pull_concurrency,
        }
    }

    /// The upgrade machinery; `serving` is false at boot (nothing to drain from the load
    /// balancer yet) and for housekeeping.
    pub(super) fn upgrader<'a>(
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
            state: self.state.as_ref().filter(|_| serving),
            aws: self.aws.as_ref(),
            instance_id: self.instance_id.clone(),
            entry: Entry::Switch,
            way_back: None,
            preview_token: None,
            contract: None,
            migration: None,
            alarms: None,
        }
    }

    /// One control-socket request.
    pub async fn handle_request(&self, request: Request) -> Result<Reply, AgentError> {
        Ok(match request {
            Request::Upgrade {
                release,
                preview,
                canary,
                allow_no_rollback,
                preview_until,
            } => {
                let entry = match (preview, canary) {
                    (true, Some(_)) => return Err(AgentError::PreviewAndCanary),
                    (true, None) => Entry::Preview,
                    (false, Some(steps)) if steps.is_empty() => {
                        Entry::Canary(self.config.upgrade.canary.steps.clone())
                    }
                    (false, Some(steps)) => {
                        if let Err(why) = crate::config::check_canary_steps(&steps) {
                            return Err(AgentError::CanarySteps { steps, why });
                        }
                        Entry::Canary(steps)
                    }
                    (false, None) => Entry::Switch,
                };
                Reply::Deployed(Box::new(
                    self.upgrade_as(release, entry, allow_no_rollback, preview_until)
                        .await?,
                ))
            }
            Request::Promote => Reply::Deployed(Box::new(self.promote().await?)),
            Request::Rollback { force } => Reply::Deployed(Box::new(self.rollback(force).await?)),
            Request::Status => Reply::Status(Box::new(self.status().await?)),
            // In-process (no agent holds this instance): nothing answers the load balancer
            // already, so only the stack is left to drain and stop.
            Request::Leave => {
                let started = std::time::Instant::now();
                let progress = Progress::new(Mode::Log);
                let stopped = super::leave::stop_stack(self, &progress).await?;
                super::resume::forget(&self.config.run_dir);
                Reply::Left(super::leave::Left {
                    reason: super::leave::Leave::Asked,
                    stopped,
                    seconds: started.elapsed().as_secs_f64(),
                })
            }
        })
    }

    /// Converges a fetched release by the configured strategy, under the upgrade lock; the
    /// services go back to `way_back` when it fails. What happened is said of the release (its
    /// history), when there is a release store.
    pub(super) async fn deploy(
        &self,
        release: &Release,
        project: &Project,
        progress: &Progress,
        serving: bool,
        entry: Entry,
        way_back: Option<&WayBack>,
    ) -> Result<Deployed, AgentError> {
        let what = format!(
            "{} release {}",
            if serving { "upgrade to" } else { "boot" },
            release.release_id.as_deref().unwrap_or("(unnamed)")
        );
        let _lock = UpgradeLock::acquire_within(&self.config.run_dir, &what, LOCK_PATIENCE).await?;
        self.deploy_locked(release, project, progress, serving, entry, way_back)
            .await
    }

    /// [`Deployer::deploy`] for a caller that holds the upgrade lock.
    async fn deploy_locked(
        &self,
        release: &Release,
        project: &Project,
        progress: &Progress,
        serving: bool,
        entry: Entry,
        way_back: Option<&WayBack>,
    ) -> Result<Deployed, AgentError> {
        let engine = self.engine().await?;
        let (result, migration) = self
            .run_upgrader(
                engine, progress, serving, release, project, entry, way_back, None,
            )
            .await?;
        let previous = way_back.map(|w| w.release.clone());
        let mut deployed = match result {
            Ok(d) => d,
            Err(e) => {
                self.tell(release.release_id.as_deref(), &Err(&e), previous)
                    .await;
                if let UpgradeError::NotRolledBack { .. } = &e {
                    // The new release serves, failing: what `/status` and the next agent say.
                    self.now_serves(engine, release, None).await;
                }
                return Err(e.into());
            }
        };
        deployed.migration = migration;
        self.now_serves(engine, release, Some(&deployed.services))
            .await;
        if deployed.how != How::UpToDate && deployed.how != How::Previewing {
            let previous = deployed.previous.clone().or(previous);
            self.tell(release.release_id.as_deref(), &Ok(&deployed), previous)
                .await;
        }
        Ok(deployed)
    }

    /// The upgrade machinery on `project` (its migration planned, run and said; the alarms'
    /// gate open when it replaces a serving release), by `entry`.
    #[allow(clippy::too_many_arguments)]
    async fn run_upgrader(
        &self,
        engine: &Engine,
        progress: &Progress,
        serving: bool,
        release: &Release,
        project: &Project,
        entry: Entry,
        way_back: Option<&WayBack>,
        preview_token: Option<(String, u64)>,
    ) -> Result<
        (
            Result<Deployed, UpgradeError>,
            Option<upgrade::MigrationOutcome>,
        ),
        AgentError,
    > {
        let mut project = project.clone();
        let planned = self.plan_migration(release, &mut project).await?;
        let run = Deployer::migration_run(release, planned.as_ref());
        let gate = match serving && entry != Entry::Preview {
            true => self.alarm_gate().await?,
            false => None,
        };
        let mut upgrader = self.upgrader(engine, progress, serving);
        upgrader.entry = entry;
        upgrader.way_back = way_back;
        upgrader.preview_token = preview_token;
        upgrader.contract = planned.as_ref().and_then(|p| p.contract());
        upgrader.migration = run.as_ref();
        upgrader.alarms = gate.as_ref();
        let result = upgrader
            .deploy(&project, release.release_id.as_deref())
            .await;
        let migration = match &planned {
            Some(p) => Some(
                self.note_migration(engine, release, p, run.as_ref(), result.is_ok())
                    .await,
            ),
            None => None,
        };
        Ok((result, migration))
    }

    /// `release` serves now: the agent's state, and the record of what serves for the next
    /// agent, say so.
    async fn now_serves(
        &self,
        engine: &Engine,
        release: &Release,
        services: Option<&BTreeMap<String, String>>,
    ) {
        let Some(state) = &self.state else {
            return;
        };
        state.update(|s| {
            s.release = release.release_id.clone();
            s.objects = release.objects.clone();
            s.floating = release.floating.clone();
            if let Some(services) = services.filter(|m| !m.is_empty()) {
                s.services = service_statuses(services);
            }
        });
        state.deployed(running(engine, &self.config.project).await);
        super::resume::note(state, &self.config.run_dir);
    }

    /// `[upgrade.alarms]`'s gate for an upgrade starting now: an alarm already in ALARM is
    /// excused (said), and counts only if it fires again. None without alarms, or without
    /// AWS (said).
    async fn alarm_gate(&self) -> Result<Option<crate::alarms::Gate>, AgentError> {
        let names = &self.config.upgrade.alarms.names;
        if names.is_empty() {
            return Ok(None);
        }
        let Some(aws) = &self.aws else {
            tracing::warn!(alarms = ?names, "upgrade.alarms names alarms, but this host has no AWS (local): they are not looked at");
            return Ok(None);
        };
        let (gate, now) = crate::alarms::Gate::open(&aws.cloudwatch, names, true)
            .await
            .map_err(AgentError::Alarms)?;
        for f in now {
            tracing::warn!(alarm = %f.name, reason = %f.reason, "in ALARM before this upgrade: it fails the release only if it goes to ALARM again");
        }
        Ok(Some(gate))
    }

    /// Says of `release` in its history what this instance did with it.
    async fn tell(
        &self,
        release: Option<&str>,
        outcome: &Result<&Deployed, &UpgradeError>,
        previous: Option<String>,
    ) {
        let (Some(store), Some(release)) = (&self.config.manifests, release) else {
            return;
        };
        let (event, detail) = match outcome {
            Ok(d) if d.how == How::RolledBack => ("rolled back", None),
            Ok(_) => ("deployed", None),
            Err(e @ (UpgradeError::RolledBack { .. } | UpgradeError::CanaryFailed { .. })) => {
                ("rolled back", Some(crate::report::chain(*e)))
            }
            Err(e @ UpgradeError::NotRolledBack { .. }) => {
                ("failed, not rolled back", Some(crate::report::chain(*e)))
            }
            Err(e) => ("failed", Some(crate::report::chain(*e))),
        };
        let report = history::Report {
            release: release.to_string(),
            by: self.instance_id.clone(),
            event: event.to_string(),
            at: history::now(),
            previous,
            detail,
            migration: None,
        };
        history::say(self.aws.as_ref(), store, &report).await;
    }

    /// `berth upgrade`: the given release, or the one the release pointer names.
    pub async fn upgrade(&self, release: Option<String>) -> Result<Deployed, AgentError> {
        self.upgrade_as(release, Entry::Switch, false, None).await
    }

    /// An upgrade that takes the traffic by `entry`: at the switch, through a canary, or not
    /// yet (`berth upgrade --preview`: the release in preview until `berth promote` or `berth
    /// rollback`, or until `upgrade.preview_secs` passes). First the way back: the serving
    /// release, which must still be complete (`allow_no_rollback`: go on without it, said in
    /// the answer and `/status`).
    pub async fn upgrade_as(
        &self,
        release: Option<String>,
        entry: Entry,
        allow_no_rollback: bool,
        preview_until: Option<u64>,
    ) -> Result<Deployed, AgentError> {
        // Held from before the first fetch: two upgrades would lay their files out in the one
        // project directory, each loading the other's.
        let what = match (&entry, &release) {
            (Entry::Preview, r) => format!(
                "preview of release {}",
                r.as_deref().unwrap_or("(the pointer's)")
            ),
            (_, r) => format!(
                "upgrade to release {}",
                r.as_deref().unwrap_or("(the pointer's)")
            ),
        };
        let _lock = UpgradeLock::acquire_within(&self.config.run_dir, &what, LOCK_PATIENCE).await?;
        let serving = self.serving_release().await;
        // Loaded before the new release is fetched: both are laid out in the project
        // directory, and the new one's files are the ones left there.
        let loading = Instant::now();
        let back = self.way_back(serving.as_deref()).await;
        if let Ok(Some((w, _))) = &back {
            tracing::info!(release = %w.release, seconds = loading.elapsed().as_secs_f64(), "the way back loaded as its manifest pins it");
        }
        let fetched =
            release::fetch_release(self.aws.as_ref(), &self.config, release.as_deref()).await?;
        let project = load_project(&self.config, &fetched)?;
        let moving = serving.is_some() && serving != fetched.release_id;
        let (way_back, no_way_back) = self.ready(back, moving, allow_no_rollback).await?;
        let progress = Progress::new(Mode::Log);
        let mut deployed = if entry == Entry::Preview {
            self.preview(
                &fetched,
                &project,
                &progress,
                way_back.as_ref(),
                preview_until,
            )
            .await?
        } else {
            self.deploy_locked(
                &fetched,
                &project,
                &progress,
                true,
                entry,
                way_back.as_ref(),
            )
            .await?
        };
        if let (Some(why), Some(state)) = (&no_way_back, &self.state) {
            state.update(|s| s.no_rollback = Some(why.clone()));
        } else if let Some(state) = &self.state {
            state.update(|s| s.no_rollback = None);
        }
        deployed.no_way_back = no_way_back;
        tracing::info!(release = ?deployed.release, previous = ?deployed.previous, how = deployed.how.as_str(), to_switch_secs = ?deployed.to_switch_secs, "upgrade done");
        Ok(deployed)
    }

    /// The release serving now: the agent's, or (in-process) the routed service's serving color.
    async fn serving_release(&self) -> Option<String> {
        if let Some(state) = &self.state {
            return state.snapshot().release;
        }
        let engine = self.engine().await.ok()?;
        let routed = upgrade::routed_from_labels(engine, &self.config.project)
            .await
            .ok()??;
        let progress = Progress::new(Mode::Quiet);
        let serving = self
            .upgrader(engine, &progress, false)
            .recover(&routed)
            .await
            .ok()??;
        serving.release
    }

    /// The release `id` as its manifest pins it, loaded (its files fetched at their versions):
    /// what the services go back to. None with no release store, or for a floating release;
    /// an error when its manifest names what is gone.
    async fn way_back(&self, id: Option<&str>) -> Result<Option<(WayBack, Manifest)>, AgentError> {
        way_back(self.aws.as_ref(), &self.config, id).await
    }

    /// Rollback readiness: when the upgrade moves away from the serving release (`moving`), the
    /// way back must be whole, its images still at their registries by digest. Missing pieces
    /// refuse the upgrade before anything changes, unless `allow` (then they are said).
    async fn ready(
        &self,
        back: Result<Option<(WayBack, Manifest)>, AgentError>,
        moving: bool,
        allow: bool,
    ) -> Result<(Option<WayBack>, Option<String>), AgentError> {
        let refused = |e: AgentError| -> Result<(Option<WayBack>, Option<String>), AgentError> {
            let why = crate::report::chain(&e);
            if allow {
                tracing::warn!(reason = %why, "NO WAY BACK: upgrading anyway (--allow-no-rollback)");
                Ok((None, Some(why)))
            } else {
                Err(e)
            }
        };
        let (back, manifest) = match back {
            Ok(Some(b)) => b,
            Ok(None) => return Ok((None, None)),
            Err(e) if moving => return refused(e),
            // Deploying the serving release again: its way back is itself.
            Err(_) => return Ok((None, None)),
        };
        if !moving {
            return Ok((Some(back), None));
        }
        let engine = self.engine().await?;
        let started = Instant::now();
        let checked =
            release::ready::check(self.aws.as_ref(), engine, &self.registries, &manifest).await;
        tracing::info!(release = %back.release, seconds = started.elapsed().as_secs_f64(), ok = checked.is_ok(), "rollback readiness checked");
        match checked {
            Ok(()) => Ok((Some(back), None)),
            Err(e) => refused(e.into()).map(|(_, why)| (Some(back), why)),
        }
    }

    /// The new release beside the serving one, in preview (the caller holds the upgrade
    /// lock). Nothing of the agent's state moves: the serving release is still the one
    /// `/status` names.
    async fn preview(
        &self,
        release: &Release,
        project: &Project,
        progress: &Progress,
        way_back: Option<&WayBack>,
        until: Option<u64>,
    ) -> Result<Deployed, AgentError> {
        let engine = self.engine().await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let until = until.unwrap_or(now + self.config.upgrade.preview_secs);
        let mut token = None;
        if let Some(id) = &release.release_id {
            let key = crate::upgrade::token::key(&self.config, self.aws.as_ref()).await?;
            token = Some((crate::upgrade::token::derive(&key, id, until), until));
        }
        let (result, migration) = self
            .run_upgrader(
                engine,
                progress,
                true,
                release,
                project,
                Entry::Preview,
                way_back,
                token,
            )
            .await?;
        let mut deployed = result?;
        deployed.migration = migration;
        // Only a release really in preview ends by itself: one whose routed service did not
        // change was converged in place, and there is no preview to end.
        if deployed.how == How::Previewing {
            let until = Instant::now() + Duration::from_secs(self.config.upgrade.preview_secs);
            *self.preview_until.lock().unwrap_or_else(|e| e.into_inner()) =
                Some((until, deployed.release.clone()));
        }
        Ok(deployed)
    }

    /// `berth promote`: the release in preview takes the traffic (proxy strategy).
    pub async fn promote(&self) -> Result<Deployed, AgentError> {
        let deployed = self.switch_routed(Switch::Promote).await?;
        tracing::info!(release = ?deployed.release, previous = ?deployed.previous, "promoted");
        Ok(deployed)
    }

    /// Promote or rollback: under the lock, on the routed service its labels name; then the
    /// agent's state (and the record of what serves, for the next agent) follow.
    async fn switch_routed(&self, switch: Switch) -> Result<Deployed, AgentError> {
        if self.config.upgrade.strategy != Strategy::Proxy {
            return Err(AgentError::RollbackNeedsProxy);
        }
        let what = match switch {
            Switch::Promote => "promote",
            Switch::Rollback { .. } => "rollback",
        };
        let _lock = UpgradeLock::acquire_within(&self.config.run_dir, what, LOCK_PATIENCE).await?;
        let engine = self.engine().await?;
        let project = &self.config.project;
        let Some(routed) = upgrade::routed_from_labels(engine, project).await? else {
            return Err(match switch {
                Switch::Promote => UpgradeError::NoPreview {
                    service: project.clone(),
                },
                Switch::Rollback { .. } => UpgradeError::NoPrevious {
                    project: project.clone(),
                },
            }
            .into());
        };
        let progress = Progress::new(Mode::Log);
        // The release whose services run once this is done: the serving one after a promote
        // that fails or a preview that ends, the previous one after a rollback.
        let quiet = Progress::new(Mode::Quiet);
        let sides = self.upgrader(engine, &quiet, false).sides(&routed).await?;
        let serving = self
            .upgrader(engine, &quiet, false)
            .recover(&routed)
            .await?;
        let in_preview = self.upgrader(engine, &quiet, false).preview_on().await?;
        let back_to = match (switch, &serving, &in_preview) {
            (Switch::Rollback { .. }, _, None) => {
                let prev = serving.as_ref().map_or(Color::Blue, |s| s.color.other());
                sides.get(&prev).and_then(|s| s.release.clone())
            }
            (_, Some(s), _) => s.release.clone(),
            (_, None, _) => None,
        };
        if let (Switch::Rollback { force }, None) = (switch, &in_preview) {
            let current = serving.as_ref().and_then(|s| s.release.clone());
            if let Some(service) = self.contract_of(engine, current.as_deref()).await {
                let (release, previous) = (
                    current.unwrap_or_else(|| "(unnamed)".into()),
                    back_to.clone().unwrap_or_else(|| "(unnamed)".into()),
                );
                if !force {
                    return Err(AgentError::ContractRollback {
                        release,
                        previous,
                        service,
                    });
                }
                tracing::warn!(%release, %previous, migration = %service, "rolling back across a contract migration (--force): the previous release runs against the contracted schema");
            }
        }
        let back = match self.way_back(back_to.as_deref()).await {
            Ok(b) => b.map(|(w, _)| w),
            Err(e) => {
                // The routed service still goes back as it was; the rest cannot be had whole.
                tracing::warn!(release = ?back_to, error = %crate::report::chain(&e), "the other services stay as they are");
                None
            }
        };
        let mut upgrader = self.upgrader(engine, &progress, true);
        upgrader.way_back = back.as_ref();
        // A promoted release is watched as any upgrade: its contract migration and the
        // alarms' gate hold for it too.
        let gate = match switch {
            Switch::Promote => {
                let promoted = sides
                    .values()
                    .find(|s| Some(s.color) != serving.as_ref().map(|v| v.color))
                    .and_then(|s| s.release.clone());
                upgrader.contract = self.contract_of(engine, promoted.as_deref()).await;
                self.alarm_gate().await?
            }
            Switch::Rollback { .. } => None,
        };
        upgrader.alarms = gate.as_ref();
        let result = match switch {
            Switch::Promote => upgrader.promote(&routed).await,
            Switch::Rollback { .. } => upgrader.rollback(project, &routed).await,
        };
        let deployed = match result {
            Ok(d) => d,
            Err(e) => {
                if let Switch::Promote = switch {
                    let promoted = sides
                        .values()
                        .find(|s| Some(s.color) != serving.as_ref().map(|v| v.color))
                        .and_then(|s| s.release.clone());
                    self.tell(promoted.as_deref(), &Err(&e), back_to.clone())
                        .await;
                }
                return Err(e.into());
            }
        };
        self.tell(
            deployed.release.as_deref(),
            &Ok(&deployed),
            deployed.previous.clone(),
        )
        .await;
        self.preview_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(state) = &self.state {
            state.update(|s| {
                s.release = deployed.release.clone();
                // Gone back to a pinned release: its objects are what `/status` shows now.
                if let Some(b) = back
                    .as_ref()
                    .filter(|b| Some(&b.release) == s.release.as_ref())
                {
                    s.objects = b.objects.clone();
                    s.floating = None;
                }
            });
            state.deployed(running(engine, project).await);
            super::resume::note(state, &self.config.run_dir);
        }
        Ok(deployed)
    }

    /// Ends a preview whose `upgrade.preview_secs` have passed, as `berth rollback` would.
    pub async fn expire_preview(&self) {
        let due = {
            let until = self.preview_until.lock().unwrap_or_else(|e| e.into_inner());
            until.as_ref().is_some_and(|(at, _)| Instant::now() >= *at)
        };
        if !due {
            return;
        }
        let Some((_, release)) = self
            .preview_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        else {
            return;
        };
        let secs = self.config.upgrade.preview_secs;
        match self.rollback(false).await {
            Ok(d) => {
                tracing::warn!(release = ?release, serving = ?d.release, preview_secs = secs, "the preview was neither promoted nor rolled back in time: ended")
            }
            Err(e) => {
                tracing::warn!(release = ?release, error = %crate::report::chain(&e), "ending the preview that timed out")
            }
        }
    }

    /// `berth rollback`: the kept previous release serves again, or a preview ends (proxy
    /// strategy).
    pub async fn rollback(&self, force: bool) -> Result<Deployed, AgentError> {
        let deployed = self.switch_routed(Switch::Rollback { force }).await?;
        tracing::info!(release = ?deployed.release, from = ?deployed.previous, "rolled back");
        Ok(deployed)
    }

    /// `berth status`.
    pub async fn status(&self) -> Result<AgentStatus, AgentError> {
        let engine = self.engine().await?;
        let project = &self.config.project;
        let agent = self.state.as_ref().map(|state| {
            let s = state.snapshot();
            AgentView {
                phase: s.phase,
                release: s.release,
                in_service: s.in_service,
                services: s.services,
                last_error: s.last_error,
                faults: s.faults,
                analysis: s.analysis,
            }
        });
        let mut status = AgentStatus {
            berth: crate::serve::BERTH,
            project: project.clone(),
            strategy: self.config.upgrade.strategy,
            agent,
            routed_service: None,
            releases: None,
            proxy: None,
            traffic: None,
            containers: vec![],
        };
        if let Some(routed) = upgrade::routed_from_labels(engine, project).await? {
            let progress = Progress::new(Mode::Quiet);
            let sides = self
                .upgrader(engine, &progress, false)
                .sides(&routed)
                .await?;
            status.routed_service = Some(routed.service);
            status.releases = Some(sides.into_values().collect());
        }
        if self.config.upgrade.strategy == Strategy::Proxy {
            let socket = &self.config.proxy.control;
            status.proxy = Some(match traffic::ask(socket, traffic::ASK_TIMEOUT).await {
                Ok(s) => {
                    status.traffic = Some(summarize(&s));
                    ProxyView::Status(s)
                }
                Err(e) => ProxyView::Unreachable {
                    error: crate::report::chain(&e),
                },
            });
        }
        status.containers = converge::ps(engine, project).await?;
        Ok(status)
    }
}

/// The release `id` as its manifest pins it, loaded (its files fetched at their versions):
/// what the services go back to. None with no release store, or for a floating release; an
/// error when its manifest names what is gone.
pub(super) async fn way_back(
    aws: Option<&Aws>,
    config: &AgentConfig,
    id: Option<&str>,
) -> Result<Option<(WayBack, Manifest)>, AgentError> {
    let (Some(id), Some(store)) = (id, &config.manifests) else {
        return Ok(None);
    };
    // A floating release pins nothing to go back to: its files are not fetched for nothing.
    if release::manifest_of(aws, config, store, id)
        .await?
        .is_none()
    {
        tracing::warn!(release = %id, "the way back floats (no manifest): only the routed service can go back as it was");
        return Ok(None);
    }
    let fetched = release::fetch_release(aws, config, Some(id)).await?;
    let Some(manifest) = fetched.manifest.clone() else {
        tracing::warn!(release = %id, "the way back floats (no manifest): only the routed service can go back as it was");
        return Ok(None);
    };
    let project = load_project(config, &fetched)?;
    Ok(Some((
        WayBack {
            release: id.to_string(),
            project,
            objects: fetched.objects,
        },
        manifest,
    )))
}

/// The project's running containers (id -> service, name), as a deploy leaves them: the
/// serving release (the previous one is stopped; one-shots have exited).
async fn running(engine: &Engine, project: &str) -> BTreeMap<String, (String, String)> {
    let containers = match engine.project_containers(project).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %crate::report::chain(&e), "listing the deployed containers");
            return BTreeMap::new();
        }
    };
    containers
        .into_iter()
        .filter(|c| c.state == Some(ContainerSummaryStateEnum::RUNNING))
        .filter_map(|c| {
            let service = label(&c, labels::SERVICE)?.to_string();
            let name = summary_name(&c);
            Some((c.id?, (service, name)))
        })
        .collect()
}

fn service_statuses(services: &BTreeMap<String, String>) -> Vec<ServiceStatus> {
    services
        .iter()
        .map(|(name, state)| ServiceStatus {
            name: name.clone(),
            state: state.clone(),
        })
        .collect()
}
