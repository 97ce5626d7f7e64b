//! Converge: make the Docker daemon match a project. Pulls what is missing (in parallel), checks
//! everything that can be checked before touching a container (images, healthchecks that
//! `service_healthy` needs, host ports), then creates networks and volumes and starts services in
//! `depends_on` order, in parallel where independent, waiting on each condition. A recreate
//! creates the new container before stopping the old one and puts the old one back if the new
//! one cannot start. `down` and `ps` live here too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::models::{
    ContainerStateStatusEnum, ContainerSummary, HealthStatusEnum, NetworkConnectRequest,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;

use crate::compose::{DependencyCondition, MountKind, Project, PullPolicy, Service};
use crate::engine::docker::{api_message, labels, DockerError, Engine};
use crate::engine::plan::{self, Action, ContainerStep, Observed, Plan};
use crate::engine::progress::Progress;
use crate::engine::registry::{self, Registries};

#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("service {service}: image {image} is not present locally and pull_policy is never")]
    ImageMissing { service: String, image: String },
    #[error("service {service}: cannot pull image {image}: {message}")]
    Pull {
        service: String,
        image: String,
        message: String,
    },
    #[error("service {dependent} waits for {service} to be healthy (service_healthy), but {service} has no healthcheck (none in the compose file or its image {image})")]
    NoHealthcheck {
        service: String,
        dependent: String,
        image: String,
    },
    #[error("service {service}: host port {address} is already in use")]
    PortTaken { service: String, address: String },
    #[error("service {service}: cannot create bind mount source {path}: {message}")]
    BindSource {
        service: String,
        path: String,
        message: String,
    },
    #[error("service {service}: {action} {container} failed: {message}")]
    Container {
        service: String,
        container: String,
        action: &'static str,
        message: String,
    },
    #[error("service {service} is unhealthy ({container}); last health check output: {output}")]
    Unhealthy {
        service: String,
        container: String,
        output: String,
    },
    #[error("service {service} exited with code {code} ({container}); last log lines:\n{logs}")]
    Exited {
        service: String,
        container: String,
        code: i64,
        logs: String,
    },
    #[error("service {service} did not become {wanted} within {waited_secs}s ({container}); last health check output: {output}")]
    Timeout {
        service: String,
        container: String,
        wanted: &'static str,
        waited_secs: u64,
        output: String,
    },
    #[error("service {service} not started: its dependency {dependency} failed")]
    DependencyFailed { service: String, dependency: String },
    #[error("network {network} is declared external but does not exist")]
    ExternalNetworkMissing { network: String },
    #[error("volume {volume} is declared external but does not exist")]
    ExternalVolumeMissing { volume: String },
}

/// What `up` did, and where each service stands now (berth's view: `healthy` once a health
/// probe passed, even while Docker still says `starting`).
#[derive(Debug, Clone)]
pub struct UpReport {
    pub plan: Plan,
    pub services: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub remove_orphans: bool,
    pub wait_timeout: Duration,
    pub registries: Arc<Registries>,
    pub pull_concurrency: usize,
}

impl ConvergeError {
    /// The process exit code (see main.rs): 3 bad project, 4 Docker, 5 image, 1 a service.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConvergeError::Docker(_) => 4,
            ConvergeError::ImageMissing { .. }
            | ConvergeError::Pull { .. }
            | ConvergeError::Registry(_) => 5,
            ConvergeError::NoHealthcheck { .. }
            | ConvergeError::PortTaken { .. }
            | ConvergeError::ExternalNetworkMissing { .. }
            | ConvergeError::ExternalVolumeMissing { .. } => 3,
            _ => 1,
        }
    }
}

/// Where a service stands while `up` runs; dependents watch it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServiceState {
    Pending,
    Started,
    Healthy,
    Completed,
    Failed,
}

impl ServiceState {
    fn satisfies(&self, cond: DependencyCondition) -> bool {
        match cond {
            DependencyCondition::ServiceStarted => {
                matches!(
                    self,
                    ServiceState::Started | ServiceState::Healthy | ServiceState::Completed
                )
            }
            DependencyCondition::ServiceHealthy => *self == ServiceState::Healthy,
            DependencyCondition::ServiceCompletedSuccessfully => *self == ServiceState::Completed,
        }
    }
}

/// Looks at Docker (images, containers, networks, volumes) for a project. Changes nothing.
pub async fn observe(engine: &Engine, project: &Project) -> Result<Observed, ConvergeError> {
    // Independent lookups, issued together: a no-op `up` is mostly this.
    let images: BTreeSet<(&str, &PullPolicy)> = project
        .services
        .values()
        .map(|s| (s.image.as_str(), &s.pull_policy))
        .collect();
    let image_lookups = join_all(images.into_iter().map(|(image, policy)| async move {
        let id = engine.local_image(image).await?.and_then(|i| i.id);
        Ok::<_, DockerError>((image.to_string(), id, *policy == PullPolicy::Always))
    }));
    let network_lookups = join_all(project.networks.values().map(|n| async move {
        Ok::<_, DockerError>((n.name.clone(), engine.network_exists(&n.name).await?))
    }));
    let volume_lookups = join_all(project.volumes.values().map(|v| async move {
        Ok::<_, DockerError>((v.name.clone(), engine.volume_exists(&v.name).await?))
    }));
    let (containers, images, networks, volumes) = tokio::join!(
        engine.project_containers(&project.name),
        image_lookups,
        network_lookups,
        volume_lookups
    );
    let mut observed = Observed {
        containers: containers?,
        ..Observed::default()
    };
    for result in images {
        let (image, id, always) = result?;
        if id.is_none() || always {
            observed.pulls.push(image.clone());
        }
        observed.image_ids.insert(image, id);
    }
    for result in networks {
        if let (name, true) = result? {
            observed.networks.insert(name);
        }
    }
    for result in volumes {
        if let (name, true) = result? {
            observed.volumes.insert(name);
        }
    }
    Ok(observed)
}

/// `berth plan`: what `up` would do. Pulls nothing, changes nothing.
pub async fn plan(
    engine: &Engine,
    project: &Project,
    remove_orphans: bool,
) -> Result<Plan, ConvergeError> {
    let observed = observe(engine, project).await?;
    for svc in project.services.values() {
        if svc.pull_policy == PullPolicy::Never && observed.pulls.contains(&svc.image) {
            return Err(ConvergeError::ImageMissing {
                service: svc.name.clone(),
                image: svc.image.clone(),
            });
        }
    }
    Ok(plan::compute(project, &observed, remove_orphans))
}

/// Pulls the images that need it, in parallel; returns the local image id per reference.
const PULL_ATTEMPTS: u32 = 3;

/// Registry answers that no retry will change.
fn is_permanent_pull_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unauthorized",
        "denied",
        "not found",
        "manifest unknown",
        "no basic auth",
        "authentication required",
        "does not exist",
        "invalid reference",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Pulls the images that need it, in parallel (bounded), retrying transient failures with
/// backoff; records the local image id per reference.
pub async fn pull_images(
    engine: &Engine,
    project: &Project,
    observed: &mut Observed,
    registries: &Registries,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    for image in &observed.pulls {
        if let Some(svc) = project
            .services
            .values()
            .find(|s| &s.image == image && s.pull_policy == PullPolicy::Never)
        {
            return Err(ConvergeError::ImageMissing {
                service: svc.name.clone(),
                image: image.clone(),
            });
        }
    }
    if !observed.pulls.is_empty() {
        progress.phase("pulling");
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let jobs = observed.pulls.iter().map(|image| {
        let svc = project.services.values().find(|s| &s.image == image).map(|s| s.name.clone()).unwrap_or_default();
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await;
            let subject = format!("image {image}");
            let mut attempt = 1;
            loop {
                // Fetched per attempt: an ECR token is renewed when it is about to expire.
                let credentials = registries.credentials_for(image).await?;
                progress.update(&subject, "pulling");
                let mut last = Instant::now();
                let result = engine
                    .pull(image, credentials, |status| {
                        if last.elapsed() > Duration::from_millis(500) {
                            last = Instant::now();
                            progress.update(&subject, &format!("pulling: {status}"));
                        }
                    })
                    .await;
                match result {
                    Ok(()) => {
                        progress.finish(&subject, "pulled");
                        break;
                    }
                    Err(DockerError::Pull { message, .. }) if attempt < PULL_ATTEMPTS && !is_permanent_pull_error(&message) => {
                        let wait = Duration::from_secs(1 << (attempt - 1));
                        tracing::warn!(%image, attempt, error = %message, "pull failed; retrying in {wait:?}");
                        progress.update(&subject, &format!("retrying in {}s: {message}", wait.as_secs()));
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    Err(DockerError::Pull { image, message }) => {
                        progress.finish(&subject, "failed");
                        return Err(ConvergeError::Pull { service: svc, image, message });
                    }
                    Err(other) => return Err(ConvergeError::Docker(other)),
                }
            }
            let id = engine.local_image(image).await?.and_then(|i| i.id);
            Ok::<_, ConvergeError>((image.clone(), id))
        }
    });
    for result in join_all(jobs).await {
        let (image, id) = result?;
        observed.image_ids.insert(image, id);
    }
    observed.pulls.clear();
    Ok(())
}

/// `service_healthy` needs a healthcheck on the dependency: in the file or in its image.
async fn check_healthchecks(engine: &Engine, project: &Project) -> Result<(), ConvergeError> {
    for svc in project.services.values() {
        for (dep_name, dep) in &svc.depends_on {
            if dep.condition != DependencyCondition::ServiceHealthy {
                continue;
            }
            let Some(dep_svc) = project.services.get(dep_name) else {
                continue;
            };
            if has_healthcheck(engine, dep_svc).await? {
                continue;
            }
            return Err(ConvergeError::NoHealthcheck {
                service: dep_name.clone(),
                dependent: svc.name.clone(),
                image: dep_svc.image.clone(),
            });
        }
    }
    Ok(())
}

async fn has_healthcheck(engine: &Engine, svc: &Service) -> Result<bool, ConvergeError> {
    if svc.health_disabled() {
        return Ok(false);
    }
    if svc.healthcheck.as_ref().is_some_and(|h| h.test.is_some()) {
        return Ok(true);
    }
    let image = engine.local_image(&svc.image).await?;
    let test = image
        .and_then(|i| i.config)
        .and_then(|c| c.healthcheck)
        .and_then(|h| h.test);
    Ok(test.is_some_and(|t| t.first().map(String::as_str) != Some("NONE") && !t.is_empty()))
}

/// Host ports that containers about to start will bind must be free, unless the container
/// being replaced holds them itself. Checked before anything changes.
fn check_ports(project: &Project, plan: &Plan, observed: &Observed) -> Result<(), ConvergeError> {
    let starting = [Action::Create, Action::Recreate, Action::Start];
    for step in plan
        .containers
        .iter()
        .filter(|s| starting.contains(&s.action))
    {
        let Some(svc) = project.services.get(&step.service) else {
            continue;
        };
        let held: Vec<(Option<String>, u16)> = observed
            .containers
            .iter()
            .filter(|c| c.id.is_some() && c.id == step.existing)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.ip.clone(), p.public_port?)))
            .collect();
        for p in &svc.ports {
            let Some(Ok(port)) = p.published.as_deref().map(str::parse::<u16>) else {
                continue; // random ports and ranges: Docker picks a free one
            };
            if p.protocol != "tcp" || held.iter().any(|(_, held_port)| *held_port == port) {
                continue;
            }
            let ip: IpAddr = p
                .host_ip
                .as_deref()
                .and_then(|h| h.parse().ok())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            if TcpListener::bind(SocketAddr::new(ip, port)).is_err() {
                return Err(ConvergeError::PortTaken {
                    service: svc.name.clone(),
                    address: SocketAddr::new(ip, port).to_string(),
                });
            }
        }
    }
    Ok(())
}

async fn ensure_resources(
    engine: &Engine,
    project: &Project,
    plan: &Plan,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    for (key, n) in &project.networks {
        let step = plan.networks.iter().find(|s| s.name == n.name);
        match step.map(|s| s.action) {
            Some("external") if !engine.network_exists(&n.name).await? => {
                return Err(ConvergeError::ExternalNetworkMissing {
                    network: n.name.clone(),
                });
            }
            Some("create") => {
                let mut lbls: HashMap<String, String> = n.labels.clone().into_iter().collect();
                lbls.insert(labels::PROJECT.into(), project.name.clone());
                lbls.insert(labels::NETWORK.into(), key.clone());
                lbls.insert(labels::VERSION.into(), env!("CARGO_PKG_VERSION").into());
                let req = bollard::models::NetworkCreateRequest {
                    name: n.name.clone(),
                    driver: n.driver.clone(),
                    internal: Some(n.internal),
                    attachable: Some(n.attachable),
                    enable_ipv6: Some(n.enable_ipv6),
                    options: Some(n.driver_opts.clone().into_iter().collect()),
                    labels: Some(lbls),
                    ..Default::default()
                };
                engine
                    .api
                    .create_network(req)
                    .await
                    .map_err(|e| DockerError::Request {
                        action: "create network",
                        target: n.name.clone(),
                        message: api_message(&e),
                    })?;
                progress.finish(&format!("network {}", n.name), "created");
            }
            _ => {}
        }
    }
    for (key, v) in &project.volumes {
        let step = plan.volumes.iter().find(|s| s.name == v.name);
        match step.map(|s| s.action) {
            Some("external") if !engine.volume_exists(&v.name).await? => {
                return Err(ConvergeError::ExternalVolumeMissing {
                    volume: v.name.clone(),
                });
            }
            Some("create") => {
                let mut lbls: HashMap<String, String> = v.labels.clone().into_iter().collect();
                lbls.insert(labels::PROJECT.into(), project.name.clone());
                lbls.insert(labels::VOLUME.into(), key.clone());
                lbls.insert(labels::VERSION.into(), env!("CARGO_PKG_VERSION").into());
                let req = bollard::models::VolumeCreateRequest {
                    name: Some(v.name.clone()),
                    driver: v.driver.clone(),
                    driver_opts: Some(v.driver_opts.clone().into_iter().collect()),
                    labels: Some(lbls),
                    ..Default::default()
                };
                engine
                    .api
                    .create_volume(req)
                    .await
                    .map_err(|e| DockerError::Request {
                        action: "create volume",
                        target: v.name.clone(),
                        message: api_message(&e),
                    })?;
                progress.finish(&format!("volume {}", v.name), "created");
            }
            _ => {}
        }
    }
    Ok(())
}

/// `berth up`: converge, then wait until every service is running, healthy where it has a
/// healthcheck, and completed where others wait for its completion.
pub async fn up(
    engine: &Engine,
    project: &Project,
    opts: &UpOptions,
    progress: &Progress,
) -> Result<UpReport, ConvergeError> {
    let deadline = Instant::now() + opts.wait_timeout;
    for w in &project.warnings {
        progress.warn(w);
    }
    let mut observed = observe(engine, project).await?;
    pull_images(
        engine,
        project,
        &mut observed,
        &opts.registries,
        opts.pull_concurrency,
        progress,
    )
    .await?;
    check_healthchecks(engine, project).await?;
    let plan = plan::compute(project, &observed, opts.remove_orphans);
    check_ports(project, &plan, &observed)?;
    prepare_bind_sources(project)?;
    ensure_resources(engine, project, &plan, progress).await?;

    for step in plan
        .containers
        .iter()
        .filter(|s| matches!(s.action, Action::Orphan | Action::RemoveOrphan))
    {
        if step.action == Action::RemoveOrphan {
            engine
                .remove(step.existing.as_deref().unwrap_or(&step.name), false)
                .await?;
            let why = step.reasons.first().map(String::as_str).unwrap_or("orphan");
            progress.finish(&step.name, &format!("removed ({why})"));
        } else {
            progress.warn(&format!(
                "found orphan container {} (service {:?} is not in the project); remove it with --remove-orphans",
                step.name, step.service
            ));
        }
    }

    progress.phase("starting");
    let targets = plan::completion_targets(project);
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for name in project.services.keys() {
        let (tx, rx) = watch::channel(ServiceState::Pending);
        senders.insert(name.clone(), tx);
        receivers.insert(name.clone(), rx);
    }
    let tasks = project.services.values().map(|svc| {
        let tx = senders
            .remove(&svc.name)
            .unwrap_or_else(|| watch::channel(ServiceState::Pending).0);
        let deps: Vec<(String, DependencyCondition, watch::Receiver<ServiceState>)> = svc
            .depends_on
            .iter()
            .filter_map(|(d, dep)| {
                receivers
                    .get(d)
                    .map(|rx| (d.clone(), dep.condition, rx.clone()))
            })
            .collect();
        let steps: Vec<ContainerStep> = plan.steps_for(&svc.name).cloned().collect();
        let one_shot = targets.contains(&svc.name);
        async move {
            let result =
                run_service(engine, svc, steps, deps, one_shot, deadline, progress, &tx).await;
            if let Err(e) = &result {
                let _ = tx.send(ServiceState::Failed);
                progress.finish(
                    &svc.name,
                    &format!("failed: {}", first_line(&e.to_string())),
                );
            }
            result.map(|state| (svc.name.clone(), state.to_string()))
        }
    });
    let results = join_all(tasks).await;
    // Report the root cause, not the dependents that gave up because of it.
    let mut services = BTreeMap::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((name, state)) => {
                services.insert(name, state);
            }
            Err(e) => errors.push(e),
        }
    }
    errors.sort_by_key(|e| matches!(e, ConvergeError::DependencyFailed { .. }));
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(UpReport { plan, services }),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Compose creates a missing bind-mount source directory for the short syntax.
fn prepare_bind_sources(project: &Project) -> Result<(), ConvergeError> {
    for svc in project.services.values() {
        for m in svc
            .mounts
            .iter()
            .filter(|m| m.kind == MountKind::Bind && m.create_host_path)
        {
            let Some(src) = &m.source else { continue };
            if !std::path::Path::new(src).exists() {
                std::fs::create_dir_all(src).map_err(|e| ConvergeError::BindSource {
                    service: svc.name.clone(),
                    path: src.clone(),
                    message: e.to_string(),
                })?;
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn run_service(
    engine: &Engine,
    svc: &Service,
    steps: Vec<ContainerStep>,
    deps: Vec<(String, DependencyCondition, watch::Receiver<ServiceState>)>,
    one_shot: bool,
    deadline: Instant,
    progress: &Progress,
    tx: &watch::Sender<ServiceState>,
) -> Result<&'static str, ConvergeError> {
    // A service with nothing to do is only checked, silently.
    let unchanged = steps.iter().all(|s| s.action == Action::Keep);
    for (dep, cond, mut rx) in deps {
        if !unchanged && !rx.borrow().satisfies(cond) {
            progress.update(&svc.name, &format!("waiting for {dep} ({})", cond.as_str()));
        }
        let state = rx
            .wait_for(|s| s.satisfies(cond) || *s == ServiceState::Failed)
            .await
            .map(|s| s.clone())
            .unwrap_or(ServiceState::Failed);
        if state == ServiceState::Failed {
            return Err(ConvergeError::DependencyFailed {
                service: svc.name.clone(),
                dependency: dep,
            });
        }
    }
    let mut applied = Vec::new();
    for step in &steps {
        match apply_step(engine, svc, step, progress).await {
            Ok(a) => applied.push(a),
            Err(e) => {
                restore(engine, svc, &applied, progress).await;
                return Err(e);
            }
        }
    }
    let _ = tx.send(ServiceState::Started);
    let mut final_state = ServiceState::Healthy;
    for a in &applied {
        let quiet = if unchanged { None } else { Some(progress) };
        match wait_ready(engine, &svc.name, &a.id, one_shot, deadline, quiet).await {
            Ok(state) => final_state = state,
            Err(e) => {
                restore(engine, svc, &applied, progress).await;
                return Err(e);
            }
        }
    }
    // Proven: the replaced containers can go, and the new ones take their names.
    for a in &applied {
        if let Some(old) = &a.replaced {
            let fail = |action, e: DockerError| container_error(svc, &a.name, action, e);
            engine
                .remove(&old.id, false)
                .await
                .map_err(|e| fail("remove", e))?;
            engine
                .rename(&a.id, &a.name)
                .await
                .map_err(|e| fail("rename", e))?;
        }
    }
    let _ = tx.send(final_state.clone());
    let state = match final_state {
        ServiceState::Completed => "completed",
        ServiceState::Healthy if has_healthcheck(engine, svc).await.unwrap_or(false) => "healthy",
        _ => "running",
    };
    progress.finish(&svc.name, if unchanged { "up to date" } else { state });
    Ok(state)
}

/// A container a step left serving, and the one it replaced (kept, stopped, until the new one
/// is proven ready).
#[derive(Debug)]
struct Applied {
    id: String,
    name: String,
    replaced: Option<Replaced>,
}

#[derive(Debug)]
struct Replaced {
    id: String,
    was_running: bool,
}

fn container_error(
    svc: &Service,
    container: &str,
    action: &'static str,
    e: DockerError,
) -> ConvergeError {
    ConvergeError::Container {
        service: svc.name.clone(),
        container: container.to_string(),
        action,
        message: match e {
            DockerError::Request { message, .. } => message,
            other => other.to_string(),
        },
    }
}

/// Undoes a service's recreates: the new containers go, the old ones come back as they were.
async fn restore(engine: &Engine, svc: &Service, applied: &[Applied], progress: &Progress) {
    for a in applied {
        let Some(old) = &a.replaced else { continue };
        let _ = engine.remove(&a.id, true).await;
        if old.was_running {
            match engine.start(&old.id).await {
                Ok(()) => progress.update(&svc.name, "previous container restored"),
                Err(e) => {
                    tracing::error!(service = %svc.name, error = %e, "cannot restart the previous container")
                }
            }
        }
    }
}

/// Carries out one container step; returns the container that now serves.
async fn apply_step(
    engine: &Engine,
    svc: &Service,
    step: &ContainerStep,
    progress: &Progress,
) -> Result<Applied, ConvergeError> {
    let existing = step.existing.clone().unwrap_or_default();
    let fail = |action, e| container_error(svc, &step.name, action, e);
    let serving = |id: String| Applied {
        id,
        name: step.name.clone(),
        replaced: None,
    };
    match step.action {
        Action::Keep | Action::Orphan | Action::RemoveOrphan => Ok(serving(existing)),
        Action::Start => {
            progress.update(&svc.name, "starting");
            engine
                .start(&existing)
                .await
                .map_err(|e| fail("start", e))?;
            Ok(serving(existing))
        }
        Action::Restart => {
            let why = step.reasons.join("; ");
            progress.update(&svc.name, &format!("restarting ({why})"));
            let grace = svc.stop_grace_period_secs;
            engine
                .stop(&existing, grace)
                .await
                .map_err(|e| fail("stop", e))?;
            engine
                .start(&existing)
                .await
                .map_err(|e| fail("start", e))?;
            Ok(serving(existing))
        }
        Action::Create => {
            progress.update(&svc.name, "creating");
            let id = create(engine, svc, step, &step.name).await?;
            progress.update(&svc.name, "starting");
            if let Err(e) = engine.start(&id).await {
                // Leave nothing half-made behind.
                let _ = engine.remove(&id, true).await;
                return Err(fail("start", e));
            }
            Ok(serving(id))
        }
        Action::Recreate => {
            let why = step.reasons.join("; ");
            progress.update(&svc.name, &format!("recreating ({why})"));
            // The new container is made beside the old one under a temporary name; the old one
            // is only stopped, and goes once the new one is proven ready (see `run_service`).
            let hash = step
                .spec
                .as_ref()
                .map(|s| s.config_hash.as_str())
                .unwrap_or("new");
            let temp = format!("{}_{}", step.name, &hash[..hash.len().min(12)]);
            let _ = engine.remove(&temp, true).await;
            let id = create(engine, svc, step, &temp).await?;
            let was_running = engine
                .inspect_container(&existing)
                .await?
                .state
                .and_then(|s| s.running)
                .unwrap_or(false);
            if let Err(e) = engine.stop(&existing, svc.stop_grace_period_secs).await {
                let _ = engine.remove(&id, true).await;
                return Err(fail("stop", e));
            }
            progress.update(&svc.name, "starting");
            if let Err(e) = engine.start(&id).await {
                let _ = engine.remove(&id, true).await;
                if was_running {
                    let _ = engine.start(&existing).await;
                }
                return Err(fail("start", e));
            }
            Ok(Applied {
                id,
                name: step.name.clone(),
                replaced: Some(Replaced {
                    id: existing,
                    was_running,
                }),
            })
        }
    }
}

async fn create(
    engine: &Engine,
    svc: &Service,
    step: &ContainerStep,
    name: &str,
) -> Result<String, ConvergeError> {
    let Some(spec) = &step.spec else {
        return Err(ConvergeError::Container {
            service: svc.name.clone(),
            container: step.name.clone(),
            action: "create",
            message: "no container spec".into(),
        });
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let created = engine
        .api
        .create_container(Some(opts), spec.body.clone())
        .await
        .map_err(|e| ConvergeError::Container {
            service: svc.name.clone(),
            container: step.name.clone(),
            action: "create",
            message: api_message(&e),
        })?;
    for (net, endpoint) in &spec.extra_networks {
        let req = NetworkConnectRequest {
            container: created.id.clone(),
            endpoint_config: Some(endpoint.clone()),
        };
        if let Err(e) = engine.api.connect_network(net, req).await {
            let _ = engine.remove(&created.id, true).await;
            return Err(ConvergeError::Container {
                service: svc.name.clone(),
                container: step.name.clone(),
                action: "connect network",
                message: format!("{net}: {}", api_message(&e)),
            });
        }
    }
    Ok(created.id)
}

/// Waits until an existing container (say, a stopped previous release started again) is
/// healthy when it has a healthcheck, running otherwise.
pub async fn wait_running(
    engine: &Engine,
    service: &str,
    id: &str,
    deadline: Instant,
) -> Result<(), ConvergeError> {
    wait_ready(engine, service, id, false, deadline, None)
        .await
        .map(|_| ())
}

/// Waits until a container is ready: healthy when it has a healthcheck, exited 0 when it is a
/// one-shot others wait for, running otherwise.
async fn wait_ready(
    engine: &Engine,
    service: &str,
    id: &str,
    one_shot: bool,
    deadline: Instant,
    progress: Option<&Progress>,
) -> Result<ServiceState, ConvergeError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(25);
    let mut last_output = String::new();
    let mut announced = false;
    loop {
        let info = engine.inspect_container(id).await?;
        let name = info
            .name
            .clone()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string();
        let state = info.state.clone().unwrap_or_default();
        let test = info
            .config
            .as_ref()
            .and_then(|c| c.healthcheck.as_ref())
            .and_then(|h| h.test.clone());
        let has_health = test
            .as_ref()
            .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
        match state.status {
            Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
                let code = state.exit_code.unwrap_or(-1);
                if code == 0 && (one_shot || !has_health) {
                    return Ok(ServiceState::Completed);
                }
                return Err(ConvergeError::Exited {
                    service: service.to_string(),
                    container: name,
                    code,
                    logs: tail_logs(engine, id).await,
                });
            }
            Some(ContainerStateStatusEnum::RUNNING) if !one_shot => {
                if !has_health {
                    return Ok(ServiceState::Started);
                }
                let health = state.health.clone().unwrap_or_default();
                if let Some(log) = health.log.as_ref().and_then(|l| l.last()) {
                    if let Some(o) = &log.output {
                        last_output = o.trim().to_string();
                    }
                }
                match health.status {
                    Some(HealthStatusEnum::HEALTHY) => return Ok(ServiceState::Healthy),
                    Some(HealthStatusEnum::UNHEALTHY) => {
                        return Err(ConvergeError::Unhealthy {
                            service: service.to_string(),
                            container: name,
                            output: last_output,
                        })
                    }
                    _ => {
                        if let (false, Some(progress)) = (announced, progress) {
                            progress.update(service, "waiting for health");
                            progress.phase("waiting");
                            announced = true;
                        }
                        // Docker checks only every `interval`; probing the same test sooner (as
                        // `start_interval` does on newer engines) keeps `up` fast. One passing
                        // run is what makes Docker call a container healthy, too.
                        if let Some(t) = &test {
                            let cmd = match t[0].as_str() {
                                "CMD-SHELL" => {
                                    vec!["/bin/sh".to_string(), "-c".to_string(), t[1..].join(" ")]
                                }
                                _ => t[1..].to_vec(),
                            };
                            let timeout = info
                                .config
                                .as_ref()
                                .and_then(|c| c.healthcheck.as_ref())
                                .and_then(|h| h.timeout)
                                .filter(|t| *t > 0)
                                .map(|ns| Duration::from_nanos(ns as u64))
                                .unwrap_or(Duration::from_secs(30));
                            match tokio::time::timeout(timeout, engine.exec(id, cmd)).await {
                                Ok(Ok((0, _))) => return Ok(ServiceState::Healthy),
                                Ok(Ok((code, out))) => {
                                    last_output = if out.is_empty() {
                                        format!("exit code {code}")
                                    } else {
                                        out
                                    }
                                }
                                Ok(Err(_)) => {} // the container may be between states
                                Err(_) => {
                                    last_output =
                                        format!("health check timed out after {timeout:?}")
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(ConvergeError::Timeout {
                service: service.to_string(),
                container: name,
                wanted: if one_shot {
                    "completed"
                } else if has_health {
                    "healthy"
                } else {
                    "running"
                },
                waited_secs: started.elapsed().as_secs(),
                output: if last_output.is_empty() {
                    "(none yet)".into()
                } else {
                    last_output
                },
            });
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

async fn tail_logs(engine: &Engine, id: &str) -> String {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("10")
        .build();
    let mut stream = engine.api.logs(id, Some(opts));
    let mut out = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    let out = out.trim_end().to_string();
    if out.is_empty() {
        "(no output)".into()
    } else {
        out
    }
}

/// `berth down`: stops dependents before their dependencies (from the containers' labels, so no
/// compose file is needed), removes containers and networks, and volumes with `-v`.
pub async fn down(
    engine: &Engine,
    project: &str,
    volumes: bool,
    progress: &Progress,
) -> Result<usize, ConvergeError> {
    let containers = engine.project_containers(project).await?;
    stop_in_order(engine, &containers, Some(volumes), progress).await?;
    for net in engine.project_networks(project).await? {
        engine.remove_network(&net).await?;
        progress.finish(&format!("network {net}"), "removed");
    }
    if volumes {
        for vol in engine.project_volumes(project).await? {
            engine.remove_volume(&vol).await?;
            progress.finish(&format!("volume {vol}"), "removed");
        }
    }
    Ok(containers.len())
}

/// Stops a project's containers, dependents first, each with its own stop timeout; keeps them.
pub async fn stop(
    engine: &Engine,
    project: &str,
    progress: &Progress,
) -> Result<usize, ConvergeError> {
    let containers = engine.project_containers(project).await?;
    stop_in_order(engine, &containers, None, progress).await?;
    Ok(containers.len())
}

/// Stops containers in reverse dependency order (from their labels, so no compose file is
/// needed); with `remove: Some(volumes)`, removes them too.
async fn stop_in_order(
    engine: &Engine,
    containers: &[ContainerSummary],
    remove: Option<bool>,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    // service -> services it depends on
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in containers {
        let lbl = |k: &str| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(k))
                .cloned()
                .unwrap_or_default()
        };
        let list = lbl(labels::DEPENDS_ON)
            .split(',')
            .filter_map(|d| d.split(':').next())
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect();
        deps.insert(lbl(labels::SERVICE), list);
    }
    // Reverse dependency order: a service goes once nothing still running depends on it.
    let mut remaining: BTreeSet<String> = deps.keys().cloned().collect();
    while !remaining.is_empty() {
        let wave: Vec<String> = remaining
            .iter()
            .filter(|s| {
                !remaining
                    .iter()
                    .any(|o| deps.get(o).is_some_and(|d| d.contains(s)))
            })
            .cloned()
            .collect();
        // A cycle in stale labels must not hang `down`: take everything left.
        let wave = if wave.is_empty() {
            remaining.iter().cloned().collect()
        } else {
            wave
        };
        let jobs = containers
            .iter()
            .filter(|c| {
                let svc = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::SERVICE))
                    .cloned()
                    .unwrap_or_default();
                wave.contains(&svc)
            })
            .map(|c| async move {
                let id = c.id.clone().unwrap_or_default();
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or(id.clone());
                progress.update(&name, "stopping");
                engine.stop(&id, None).await?;
                match remove {
                    Some(volumes) => {
                        engine.remove(&id, volumes).await?;
                        progress.finish(&name, "removed");
                    }
                    None => progress.finish(&name, "stopped"),
                }
                Ok::<_, ConvergeError>(())
            });
        for r in join_all(jobs).await {
            r?;
        }
        for s in wave {
            remaining.remove(&s);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct PsRow {
    pub name: String,
    pub service: String,
    pub state: String,
    pub health: Option<String>,
    pub exit_code: Option<i64>,
    pub image: String,
    pub ports: Vec<String>,
}

/// `berth ps`: the project's containers as Docker reports them.
pub async fn ps(engine: &Engine, project: &str) -> Result<Vec<PsRow>, ConvergeError> {
    let mut rows = Vec::new();
    for c in engine.project_containers(project).await? {
        let id = c.id.clone().unwrap_or_default();
        let info = engine.inspect_container(&id).await?;
        let state = info.state.clone().unwrap_or_default();
        let mut ports = Vec::new();
        if let Some(map) = info
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
        {
            for (port, binds) in map {
                for b in binds.iter().flatten() {
                    ports.push(format!(
                        "{}:{}->{port}",
                        b.host_ip.clone().unwrap_or_default(),
                        b.host_port.clone().unwrap_or_default()
                    ));
                }
            }
        }
        ports.sort();
        rows.push(PsRow {
            name: info
                .name
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            service: c
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::SERVICE))
                .cloned()
                .unwrap_or_default(),
            state: state.status.map(|s| s.to_string()).unwrap_or_default(),
            health: state
                .health
                .and_then(|h| h.status)
                .map(|s| s.to_string())
                .filter(|s| !s.is_empty() && s != "none"),
            exit_code: state.exit_code,
            image: c.image.clone().unwrap_or_default(),
            ports,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}
