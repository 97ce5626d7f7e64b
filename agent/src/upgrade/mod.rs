//! Upgrades: replace the running release without losing a request.
//!
//! - **proxy**: `berth proxy` owns the traffic port. The routed service runs in two colors,
//!   `<service>-blue` and `<service>-green`, each published on an ephemeral 127.0.0.1 port.
//!   An upgrade converges the new release into the color that is not serving (pulls first,
//!   one-shots such as migrations before it, nothing old stops), waits for health, switches the
//!   proxy, watches the new color for `verify_secs` (failing: switch back), drains and stops the
//!   old color. The stopped old color is kept for `berth rollback` until the next upgrade.
//! - **drain**: `/healthz` turns 503, berth waits until the load balancer stops sending, then
//!   converges in place, waits for health and for the load balancer to send again.
//!
//! State is in Docker's labels (color, release) and the proxy's route, never in a file of our
//! own: after a crash at any moment, [`Upgrader::recover`] finds both colors, keeps the healthy
//! serving one, and finishes or undoes what was under way.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, HealthStatusEnum};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::aws::Aws;
use crate::compose::Project;
use crate::config::{AgentConfig, Strategy};
use crate::engine::converge::{self, ConvergeError, UpOptions};
use crate::engine::docker::{labels, DockerError, Engine};
use crate::engine::plan::Action;
use crate::engine::progress::Progress;
use crate::instance::lifecycle::{self, LifecycleError};
use crate::proxy::{self, ProxyError};
use crate::serve::health::{Health, Phase};

/// Which copy of the routed service a container is.
pub const COLOR_LABEL: &str = "dev.berth.color";
/// The release id a routed container was made for.
pub const RELEASE_LABEL: &str = "dev.berth.release";
/// The routed service's name and container port: `web:80` (a rollback needs no compose file).
pub const ROUTED_LABEL: &str = "dev.berth.routed";

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("another upgrade is running ({holder}); try again when it is done")]
    Busy { holder: String },
    #[error("upgrade lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proxy strategy, project {project}: {message}")]
    Routed { project: String, message: String },
    #[error("release {release} did not come up, and the previous release keeps serving: {source}")]
    NewRelease {
        release: String,
        source: ConvergeError,
    },
    #[error("release {release}: GET {path} on {backend} never answered 2xx within {secs}s (last: {last}); the previous release keeps serving")]
    Probe {
        release: String,
        path: String,
        backend: SocketAddr,
        secs: u64,
        last: String,
    },
    #[error("release {release} failed right after the switch ({reason}); rolled back to {previous}, which serves again")]
    RolledBack {
        release: String,
        previous: String,
        reason: String,
    },
    #[error("nothing to roll back to: project {project} keeps no previous release")]
    NoPrevious { project: String },
    #[error(
        "previous release {release} did not come back up, and {current} keeps serving: {source}"
    )]
    Previous {
        release: String,
        current: String,
        source: ConvergeError,
    },
    #[error("{color} container {container} has no port published for {port}/tcp on 127.0.0.1")]
    NoBackend {
        color: Color,
        container: String,
        port: u16,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error("drain strategy: {0}")]
    LoadBalancer(#[from] LifecycleError),
}

impl UpgradeError {
    /// The process exit code (see main.rs): 7 busy; 1 the new release failed and the previous
    /// one serves.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpgradeError::Busy { .. } => 7,
            UpgradeError::Routed { .. } | UpgradeError::NoPrevious { .. } => 3,
            UpgradeError::Proxy(_) | UpgradeError::Docker(_) => 4,
            UpgradeError::Converge(c) | UpgradeError::NewRelease { source: c, .. } => c.exit_code(),
            UpgradeError::LoadBalancer(_) => 6,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The service the proxy sends traffic to, and the container port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub service: String,
    pub port: u16,
}

impl Routed {
    fn colored(&self, color: Color) -> String {
        format!("{}-{color}", self.service)
    }
}

/// Finds the routed service: the configured one, else the one publishing the traffic port.
pub fn routed(project: &Project, config: &AgentConfig) -> Result<Routed, UpgradeError> {
    let err = |message: String| UpgradeError::Routed {
        project: project.name.clone(),
        message,
    };
    let traffic = config.proxy.port.to_string();
    let publishes = |s: &crate::compose::Service| {
        s.ports
            .iter()
            .find(|p| p.protocol == "tcp" && p.published.as_deref() == Some(traffic.as_str()))
            .map(|p| p.target)
    };
    let (service, port) = match &config.proxy.service {
        Some(name) => {
            let svc = project.services.get(name).ok_or_else(|| {
                err(format!(
                    "proxy.service {name:?} is not a service of the project"
                ))
            })?;
            let port = publishes(svc)
                .or_else(|| (svc.ports.len() == 1).then(|| svc.ports[0].target))
                .ok_or_else(|| err(format!("service {name} must publish the traffic port {traffic} (proxy.port), e.g. \"{traffic}:80\"")))?;
            (name.clone(), port)
        }
        None => {
            let found: Vec<(&String, u16)> = project
                .services
                .iter()
                .filter_map(|(n, s)| publishes(s).map(|p| (n, p)))
                .collect();
            match found.as_slice() {
                [(name, port)] => ((*name).clone(), *port),
                [] => return Err(err(format!("no service publishes the traffic port {traffic} (proxy.port); publish it on the web service, or set proxy.service"))),
                _ => return Err(err(format!("several services publish port {traffic}; set proxy.service"))),
            }
        }
    };
    let svc = &project.services[&service];
    if svc.replicas != 1 {
        return Err(err(format!(
            "service {service} has {} replicas; the proxy routes to one container per release",
            svc.replicas
        )));
    }
    if svc.container_name.is_some() {
        return Err(err(format!(
            "service {service} sets container_name; two releases of it run side by side, so it cannot have a fixed name"
        )));
    }
    for color in [Color::Blue, Color::Green] {
        let name = format!("{service}-{color}");
        if project.services.contains_key(&name) {
            return Err(err(format!(
                "a service is named {name}, which berth needs for the {color} copy of {service}"
            )));
        }
    }
    Ok(Routed { service, port })
}

/// The routed service as the containers' labels name it (for a rollback, which has no
/// compose file at hand).
pub async fn routed_from_labels(
    engine: &Engine,
    project: &str,
) -> Result<Option<Routed>, UpgradeError> {
    let containers = engine.project_containers(project).await?;
    Ok(containers.iter().find_map(|c| {
        let (service, port) = label(c, ROUTED_LABEL)?.rsplit_once(':')?;
        Some(Routed {
            service: service.to_string(),
            port: port.parse().ok()?,
        })
    }))
}

/// The project with the routed service as its `color` copy: renamed `<service>-<color>`
/// (other services still reach it as `<service>`), the traffic port published on an ephemeral
/// 127.0.0.1 port, labelled with the color and the release. The other color is left alone.
pub fn colorize(
    project: &Project,
    routed: &Routed,
    color: Color,
    release: Option<&str>,
    traffic_port: u16,
) -> Project {
    let mut out = project.clone();
    let name = routed.colored(color);
    let mut services = indexmap::IndexMap::new();
    for (key, svc) in &project.services {
        let mut svc = svc.clone();
        if let Some(dep) = svc.depends_on.shift_remove(&routed.service) {
            svc.depends_on.insert(name.clone(), dep);
        }
        if *key == routed.service {
            svc.name = name.clone();
            for net in svc.networks.values_mut() {
                net.aliases.push(routed.service.clone());
            }
            let traffic = traffic_port.to_string();
            for p in &mut svc.ports {
                if p.published.as_deref() == Some(traffic.as_str()) {
                    p.host_ip = Some("127.0.0.1".into());
                    p.published = None;
                }
            }
            svc.labels.insert(COLOR_LABEL.into(), color.as_str().into());
            svc.labels.insert(
                ROUTED_LABEL.into(),
                format!("{}:{}", routed.service, routed.port),
            );
            if let Some(r) = release {
                svc.labels.insert(RELEASE_LABEL.into(), r.into());
            }
            services.insert(name.clone(), svc);
        } else {
            services.insert(key.clone(), svc);
        }
    }
    out.services = services;
    // Left alone by this converge: never an orphan to remove.
    out.disabled_services.push(routed.colored(color.other()));
    out
}

/// One color's containers as Docker reports them.
#[derive(Debug, Clone, Serialize)]
pub struct Side {
    pub color: Color,
    pub ids: Vec<String>,
    pub running: bool,
    pub release: Option<String>,
    pub backend: Option<SocketAddr>,
    /// Unix seconds; the later side is the newer attempt.
    pub created: i64,
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// Outcome of a deploy, for the log and for `berth upgrade`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    pub release: Option<String>,
    pub previous: Option<String>,
    /// `switched`, `in place`, `up to date`, `rolled back`.
    pub how: &'static str,
    pub color: Option<Color>,
    pub backend: Option<SocketAddr>,
    /// From the start of the upgrade to the proxy's switch.
    pub to_switch_secs: Option<f64>,
    /// Each service's state after the converge (`healthy`, `running`, `completed`).
    pub services: BTreeMap<String, String>,
}

/// Held while an upgrade, rollback or boot converge runs: one at a time per project, across the
/// daemon and in-process commands. The kernel drops the lock with its holder, so a killed berth
/// never leaves it stale.
#[derive(Debug)]
pub struct UpgradeLock {
    _file: File,
}

impl UpgradeLock {
    /// As `acquire`, but a lock held for a moment (the previous release's expiry, a status
    /// look) is waited out for up to `patience` before refusing.
    pub async fn acquire_within(
        run_dir: &Path,
        what: &str,
        patience: Duration,
    ) -> Result<UpgradeLock, UpgradeError> {
        let until = Instant::now() + patience;
        loop {
            match UpgradeLock::acquire(run_dir, what) {
                Err(UpgradeError::Busy { .. }) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub fn acquire(run_dir: &Path, what: &str) -> Result<UpgradeLock, UpgradeError> {
        let path = run_dir.join("upgrade.lock");
        let lock_err = |source| UpgradeError::Lock {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(run_dir).map_err(lock_err)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                return Err(UpgradeError::Busy {
                    holder: holder.trim().to_string(),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let note = format!("{what}, pid {}, since {}", std::process::id(), unix_now());
        let _ = file.set_len(0);
        let _ = file.write_all(note.as_bytes());
        Ok(UpgradeLock { _file: file })
    }
}

fn unix_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("unix time {secs}")
}

/// What an upgrade needs; built by the agent (and by in-process commands).
#[derive(Debug)]
pub struct Upgrader<'a> {
    pub engine: &'a Engine,
    pub config: &'a AgentConfig,
    pub up: UpOptions,
    pub progress: &'a Progress,
    /// The health endpoint, when the agent serves one (the drain strategy turns it 503).
    pub health: Option<&'a Health>,
    pub aws: Option<&'a Aws>,
    pub instance_id: String,
}

impl Upgrader<'_> {
    fn proxy_socket(&self) -> &Path {
        &self.config.proxy.control
    }

    /// The proxy's route: the backend it sends to now, and the one before it.
    async fn proxy_route(&self) -> Result<(Option<SocketAddr>, Option<SocketAddr>), UpgradeError> {
        let status =
            proxy::control(self.proxy_socket(), &serde_json::json!({"op": "status"})).await?;
        let addr = |key: &str| {
            status
                .get(key)
                .and_then(|a| a.as_str())
                .and_then(|a| a.parse().ok())
        };
        Ok((addr("active"), addr("previous")))
    }

    async fn switch(&self, backend: SocketAddr) -> Result<(), UpgradeError> {
        let answer = proxy::control(
            self.proxy_socket(),
            &serde_json::json!({"op": "route", "backend": backend.to_string()}),
        )
        .await?;
        proxy::expect_ok(self.proxy_socket(), &answer)?;
        Ok(())
    }

    async fn drain(&self, backend: SocketAddr) -> Result<(), UpgradeError> {
        let ms = self.config.upgrade.drain_secs * 1000;
        let answer = proxy::control(
            self.proxy_socket(),
            &serde_json::json!({"op": "drain", "backend": backend.to_string(), "timeout_ms": ms}),
        )
        .await?;
        if answer.get("ok").and_then(|v| v.as_bool()) != Some(true) {
            // Not fatal: the old release is past its drain time and stops anyway (gracefully).
            self.progress.warn(&format!(
                "drain of {backend}: {}",
                answer
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("incomplete")
            ));
        }
        Ok(())
    }

    /// Both colors of the routed service, as Docker reports them.
    pub async fn sides(&self, routed: &Routed) -> Result<BTreeMap<Color, Side>, UpgradeError> {
        let containers = self.engine.project_containers(&self.config.project).await?;
        let mut sides: BTreeMap<Color, Side> = BTreeMap::new();
        for c in &containers {
            let Some(color) = label(c, COLOR_LABEL).and_then(Color::parse) else {
                continue;
            };
            if label(c, labels::SERVICE) != Some(routed.colored(color).as_str()) {
                continue;
            }
            let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
            let backend = c.ports.as_ref().and_then(|ports| {
                ports
                    .iter()
                    .find(|p| {
                        p.private_port == routed.port
                            && p.ip.as_deref() == Some("127.0.0.1")
                            && p.public_port.is_some()
                    })
                    .and_then(|p| p.public_port)
                    .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
            });
            let side = sides.entry(color).or_insert_with(|| Side {
                color,
                ids: vec![],
                running: false,
                release: None,
                backend: None,
                created: 0,
            });
            side.ids.push(c.id.clone().unwrap_or_default());
            side.running |= running;
            if running {
                side.backend = side.backend.or(backend);
            }
            side.release = side
                .release
                .clone()
                .or_else(|| label(c, RELEASE_LABEL).map(String::from));
            side.created = side.created.max(c.created.unwrap_or(0));
        }
        Ok(sides)
    }

    /// One look at a serving container: running, not unhealthy, and (with
    /// `proxy.health_path`) answering 2xx there.
    async fn check(&self, id: &str, backend: Option<SocketAddr>) -> Result<(), String> {
        let info = self
            .engine
            .inspect_container(id)
            .await
            .map_err(|e| e.to_string())?;
        let state = info.state.unwrap_or_default();
        if state.running != Some(true) {
            return Err(format!(
                "container stopped (exit code {})",
                state.exit_code.unwrap_or(-1)
            ));
        }
        if let Some(h) = &state.health {
            if h.status == Some(HealthStatusEnum::UNHEALTHY) {
                let out = h
                    .log
                    .as_ref()
                    .and_then(|l| l.last())
                    .and_then(|l| l.output.clone())
                    .unwrap_or_default();
                return Err(format!("unhealthy: {}", out.trim()));
            }
        }
        if let (Some(path), Some(backend)) = (&self.config.proxy.health_path, backend) {
            let code = probe(backend, path).await?;
            if !(200..300).contains(&code) {
                return Err(format!("GET {path} answered {code}"));
            }
        }
        Ok(())
    }

    /// Before the switch: GET `proxy.health_path` must answer 2xx (when configured).
    async fn gate(&self, release: &str, backend: SocketAddr) -> Result<(), UpgradeError> {
        let Some(path) = &self.config.proxy.health_path else {
            return Ok(());
        };
        let secs = self.config.timeouts.ready_secs;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::from("(no answer yet)");
        while Instant::now() < deadline {
            match probe(backend, path).await {
                Ok(code) if (200..300).contains(&code) => return Ok(()),
                Ok(code) => last = format!("{code}"),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(UpgradeError::Probe {
            release: release.into(),
            path: path.clone(),
            backend,
            secs,
            last,
        })
    }

    /// After the switch: the new side must stay healthy for `verify_secs`.
    async fn verify(&self, side: &Side) -> Result<(), String> {
        let until = Instant::now() + Duration::from_secs(self.config.upgrade.verify_secs);
        loop {
            for id in &side.ids {
                self.check(id, side.backend).await?;
            }
            if Instant::now() >= until {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn stop_side(&self, side: &Side) {
        for id in &side.ids {
            // The container's own stop_grace_period (set at create) applies.
            if let Err(e) = self.engine.stop(id, None).await {
                tracing::warn!(color = %side.color, error = %e, "stopping the old release");
            }
        }
    }

    async fn remove_side(&self, side: &Side) {
        for id in &side.ids {
            if let Err(e) = self.engine.remove(id, true).await {
                tracing::warn!(color = %side.color, error = %e, "removing containers");
            }
        }
    }

    /// Puts things straight after a crash or a restart: returns the serving side, if any.
    /// The proxy routes to the healthy side; a side started by an upgrade that never switched
    /// is removed; an old side left running after a switch is drained and stopped.
    pub async fn recover(&self, routed: &Routed) -> Result<Option<Side>, UpgradeError> {
        let mut sides = self.sides(routed).await?;
        let (route, previous) = self.proxy_route().await?;
        let routed_color = sides
            .values()
            .find(|s| s.running && s.backend.is_some() && s.backend == route)
            .map(|s| s.color);
        let mut healthy = Vec::new();
        for s in sides.values().filter(|s| s.running) {
            let mut ok = true;
            for id in &s.ids {
                ok &= self.check(id, s.backend).await.is_ok();
            }
            if ok && s.backend.is_some() {
                healthy.push(s.color);
            }
        }
        let active = match routed_color {
            Some(c) if healthy.contains(&c) => Some(c),
            // The routed side is sick (or nothing is routed): serve from a healthy one, the
            // older if both are (the newer is an upgrade that never finished).
            _ => healthy
                .iter()
                .copied()
                .min_by_key(|c| sides[c].created)
                .or(routed_color),
        };
        let Some(active) = active else {
            return Ok(None);
        };
        let serving = sides[&active].clone();
        if route != serving.backend {
            if let Some(b) = serving.backend {
                self.progress.warn(&format!(
                    "proxy routed to {}; switching to the healthy {} release {} at {b}",
                    route
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "nothing".into()),
                    active,
                    serving.release.as_deref().unwrap_or("?")
                ));
                self.switch(b).await?;
            }
        }
        if let Some(other) = sides.remove(&active.other()) {
            // The side the proxy switched away from is an old release; any other running side
            // is an upgrade that never switched (or, with the proxy's memory lost, the newer).
            let switched_from = other.backend.is_some() && other.backend == previous;
            let never_switched =
                !switched_from && (route == serving.backend || other.created >= serving.created);
            if other.running && never_switched {
                self.progress.warn(&format!(
                    "removing release {} ({}): an upgrade that never switched",
                    other.release.as_deref().unwrap_or("?"),
                    other.color
                ));
                self.remove_side(&other).await;
            } else if other.running {
                self.progress.warn(&format!(
                    "stopping release {} ({}): still running after the switch",
                    other.release.as_deref().unwrap_or("?"),
                    other.color
                ));
                if let Some(b) = other.backend {
                    self.drain(b).await?;
                }
                self.stop_side(&other).await;
            }
        }
        Ok(Some(serving))
    }

    /// Makes the host run `project` (boot, upgrade, or an agent restart), by the configured
    /// strategy.
    pub async fn deploy(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        match self.config.upgrade.strategy {
            Strategy::Proxy => self.deploy_proxy(project, release).await,
            Strategy::Drain => self.deploy_drain(project, release).await,
        }
    }

    async fn deploy_proxy(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        let started = Instant::now();
        let routed = routed(project, self.config)?;
        let release_name = release.unwrap_or("(unnamed)").to_string();
        let serving = self.recover(&routed).await?;
        let traffic = self.config.proxy.port;

        // The routed service unchanged: converge the rest in place.
        if let Some(serving) = &serving {
            let same = colorize(project, &routed, serving.color, release, traffic);
            let plan = converge::plan(self.engine, &same, self.up.remove_orphans).await?;
            let keep = plan
                .steps_for(&routed.colored(serving.color))
                .all(|s| s.action == Action::Keep);
            if keep {
                let report = converge::up(self.engine, &same, &self.up, self.progress).await?;
                return Ok(Deployed {
                    release: release.map(String::from),
                    previous: serving.release.clone(),
                    how: if report.plan.is_noop() {
                        "up to date"
                    } else {
                        "in place"
                    },
                    color: Some(serving.color),
                    backend: serving.backend,
                    to_switch_secs: None,
                    services: report.services,
                });
            }
        }

        let next = serving
            .as_ref()
            .map(|s| s.color.other())
            .unwrap_or(Color::Blue);
        // A kept previous release in the color we need goes now.
        if let Some(stale) = self.sides(&routed).await?.remove(&next) {
            self.remove_side(&stale).await;
        }
        let colored = colorize(project, &routed, next, release, traffic);
        tracing::info!(release = %release_name, color = %next, "starting the new release beside the serving one");
        let report = match converge::up(self.engine, &colored, &self.up, self.progress).await {
            Ok(r) => r,
            Err(source) => {
                if let Some(new) = self.sides(&routed).await?.remove(&next) {
                    self.remove_side(&new).await;
                }
                if serving.is_none() {
                    // A first start: there is no previous release to speak of.
                    return Err(UpgradeError::Converge(source));
                }
                return Err(UpgradeError::NewRelease {
                    release: release_name,
                    source,
                });
            }
        };
        let new = self.sides(&routed).await?.remove(&next);
        let Some((new, backend)) = new.and_then(|s| s.backend.map(|b| (s, b))) else {
            return Err(UpgradeError::NoBackend {
                color: next,
                container: routed.colored(next),
                port: routed.port,
            });
        };
        if let Err(e) = self.gate(&release_name, backend).await {
            self.remove_side(&new).await;
            return Err(e);
        }
        self.switch(backend).await?;
        let to_switch = started.elapsed().as_secs_f64();
        tracing::info!(release = %release_name, color = %next, %backend, seconds = to_switch, "switched");

        let Some(old) = serving else {
            return Ok(Deployed {
                release: release.map(String::from),
                previous: None,
                how: "started",
                color: Some(next),
                backend: Some(backend),
                to_switch_secs: Some(to_switch),
                services: report.services,
            });
        };
        if let Err(reason) = self.verify(&new).await {
            // Back to the release that was serving; it never stopped.
            if let Some(b) = old.backend {
                self.switch(b).await?;
            }
            self.drain(backend).await?;
            self.remove_side(&new).await;
            let previous = old.release.clone().unwrap_or_else(|| old.color.to_string());
            tracing::error!(release = %release_name, %reason, previous = %previous, "rolled back");
            return Err(UpgradeError::RolledBack {
                release: release_name,
                previous,
                reason,
            });
        }
        if let Some(b) = old.backend {
            self.drain(b).await?;
        }
        self.stop_side(&old).await;
        Ok(Deployed {
            release: release.map(String::from),
            previous: old.release.clone(),
            how: "switched",
            color: Some(next),
            backend: Some(backend),
            to_switch_secs: Some(to_switch),
            services: report.services,
        })
    }

    /// `berth rollback`: the kept previous release serves again.
    pub async fn rollback(&self, project: &str, routed: &Routed) -> Result<Deployed, UpgradeError> {
        let serving = self.recover(routed).await?;
        let mut sides = self.sides(routed).await?;
        let prev_color = serving
            .as_ref()
            .map(|s| s.color.other())
            .unwrap_or(Color::Blue);
        let Some(prev) = sides.remove(&prev_color) else {
            return Err(UpgradeError::NoPrevious {
                project: project.into(),
            });
        };
        let prev_name = prev
            .release
            .clone()
            .unwrap_or_else(|| prev.color.to_string());
        let current = serving
            .as_ref()
            .and_then(|s| s.release.clone())
            .unwrap_or_else(|| "nothing".into());
        let deadline = Instant::now() + Duration::from_secs(self.config.timeouts.ready_secs);
        for id in &prev.ids {
            let started = match self.engine.start(id).await {
                Ok(()) => Ok(()),
                Err(e) => Err(ConvergeError::Docker(e)),
            };
            let ready = match started {
                Ok(()) => {
                    converge::wait_running(self.engine, &routed.colored(prev_color), id, deadline)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(source) = ready {
                self.stop_side(&prev).await;
                return Err(UpgradeError::Previous {
                    release: prev_name,
                    current,
                    source,
                });
            }
        }
        // A restarted container gets a new ephemeral port.
        let prev = self.sides(routed).await?.remove(&prev_color);
        let Some((prev, backend)) = prev.and_then(|s| s.backend.map(|b| (s, b))) else {
            return Err(UpgradeError::NoBackend {
                color: prev_color,
                container: routed.colored(prev_color),
                port: routed.port,
            });
        };
        self.gate(&prev_name, backend).await?;
        self.switch(backend).await?;
        if let Some(old) = &serving {
            if let Some(b) = old.backend {
                self.drain(b).await?;
            }
            self.stop_side(old).await;
        }
        Ok(Deployed {
            release: prev.release.clone(),
            previous: serving.and_then(|s| s.release),
            how: "rolled back",
            color: Some(prev_color),
            backend: Some(backend),
            to_switch_secs: None,
            services: BTreeMap::new(),
        })
    }

    async fn deploy_drain(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        // At boot nothing is in the load balancer yet: a plain converge, one look at Docker.
        let Some(health) = self.health else {
            return self.converge_in_place(project, release, None).await;
        };
        // Pull while still in service: the instance is out of the load balancer only for the
        // recreate itself.
        let mut observed = converge::observe(self.engine, project).await?;
        converge::pull_images(
            self.engine,
            project,
            &mut observed,
            &self.up.registries,
            self.up.pull_concurrency,
            self.progress,
        )
        .await?;
        let plan = crate::engine::plan::compute(project, &observed, self.up.remove_orphans);
        let serving = plan
            .containers
            .iter()
            .any(|c| c.existing.is_some() && c.action != Action::Orphan);
        if !serving || plan.is_noop() {
            return self.converge_in_place(project, release, None).await;
        }
        let previous = health.snapshot().release;
        health.set_phase(Phase::Draining);
        if let Err(e) = self.wait_lb(false, health).await {
            health.set_phase(Phase::Ready);
            return Err(e);
        }
        let result = self.converge_in_place(project, release, previous).await;
        // Either the new release or (restored by converge) the old one serves now.
        health.reset_lb_streak();
        health.set_phase(Phase::Ready);
        let deployed = result.map_err(|e| match e {
            UpgradeError::Converge(source) => UpgradeError::NewRelease {
                release: release.unwrap_or("(unnamed)").into(),
                source,
            },
            other => other,
        })?;
        self.wait_lb(true, health).await?;
        Ok(deployed)
    }

    async fn converge_in_place(
        &self,
        project: &Project,
        release: Option<&str>,
        previous: Option<String>,
    ) -> Result<Deployed, UpgradeError> {
        let report = converge::up(self.engine, project, &self.up, self.progress).await?;
        Ok(Deployed {
            release: release.map(String::from),
            previous,
            how: if report.plan.is_noop() {
                "up to date"
            } else {
                "in place"
            },
            color: None,
            backend: None,
            to_switch_secs: None,
            services: report.services,
        })
    }

    /// Removes the stopped previous release once it has been seen stopped for `keep`
    /// (`upgrade.keep_previous_secs`). `seen` remembers since when, per container; after an
    /// agent restart the count starts again, which only keeps it longer.
    pub async fn expire_previous(
        &self,
        routed: &Routed,
        seen: &mut BTreeMap<String, Instant>,
        keep: Duration,
    ) -> Result<(), UpgradeError> {
        let sides = self.sides(routed).await?;
        let stopped: Vec<&Side> = sides.values().filter(|s| !s.running).collect();
        seen.retain(|id, _| stopped.iter().any(|s| s.ids.contains(id)));
        for side in stopped {
            let since = side
                .ids
                .iter()
                .map(|id| *seen.entry(id.clone()).or_insert_with(Instant::now))
                .min()
                .unwrap_or_else(Instant::now);
            if since.elapsed() >= keep {
                self.remove_side(side).await;
                tracing::info!(release = ?side.release, color = %side.color, kept_secs = keep.as_secs(), "removed the previous release");
            }
        }
        Ok(())
    }

    /// Before the services stop for good: the proxy lets requests in flight to the serving
    /// release finish (up to `drain_secs`).
    pub async fn drain_serving(&self, routed: &Routed) {
        match self.proxy_route().await {
            Ok((Some(b), _)) => {
                if let Err(e) = self.drain(b).await {
                    tracing::warn!(error = %e, "drain before stopping");
                }
            }
            Ok((None, _)) => {}
            Err(e) => {
                tracing::warn!(error = %e, service = %routed.service, "drain before stopping")
            }
        }
    }

    /// Waits until the load balancer stops (`back == false`) or resumes sending here. With no
    /// load balancer configured there is nothing to wait for.
    pub async fn wait_lb(&self, back: bool, health: &Health) -> Result<(), UpgradeError> {
        let lb = &self.config.load_balancer;
        let timeout = Duration::from_secs(self.config.timeouts.in_service_secs);
        let instance = &self.instance_id;
        match (self.aws, &lb.target_group_arn) {
            (Some(aws), Some(arn)) if back => {
                lifecycle::wait_target_healthy(aws, arn, instance, lb.port, timeout).await?
            }
            (Some(aws), Some(arn)) => {
                lifecycle::wait_target_out(aws, arn, instance, lb.port, timeout).await?
            }
            _ if back => {
                if let Some(n) = lb.healthy_threshold {
                    lifecycle::wait_lb_checks(health, n, instance, timeout).await?
                }
            }
            _ if lb.healthy_threshold.is_none() && lb.unhealthy_threshold.is_none() => {
                tracing::info!("no load balancer configured: not waiting for it to drain");
            }
            _ => {
                let n = lb.unhealthy_threshold.unwrap_or(2);
                tracing::info!(
                    checks = n,
                    "draining: waiting for the load balancer's failed checks"
                );
                lifecycle::wait_lb_out(health, n, instance, timeout).await?
            }
        }
        Ok(())
    }
}

/// One GET, its status code. Written on hyper's client connection rather than a client
/// library: it is one request to a loopback port, and hyper is already here for the proxy.
pub async fn probe(backend: SocketAddr, path: &str) -> Result<u16, String> {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(backend)
            .await
            .map_err(|e| format!("connect {backend}: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, backend.to_string())
            .header(hyper::header::USER_AGENT, "berth-upgrade")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .unwrap_or_else(|_| Err(format!("GET {path} on {backend}: no answer within 2s")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compose::{self, LoadOptions};

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, yaml).unwrap();
        compose::load(&LoadOptions {
            files: vec![file],
            project_name: Some("shop".into()),
            working_dir: dir.path().to_path_buf(),
            ..LoadOptions::default()
        })
        .unwrap()
    }

    fn config(extra: &str) -> AgentConfig {
        let text = format!("project = \"shop\"\ncompose = \"/c.yaml\"\n{extra}");
        AgentConfig::parse(Path::new("/etc/berth/berth.toml"), &text).unwrap()
    }

    const STACK: &str = "
services:
  web:
    image: web:1
    ports: [\"8080:80\", \"9000:9000\"]
    depends_on: [migrate]
  migrate:
    image: tool:1
  worker:
    image: tool:1
    depends_on: [web]
";

    #[test]
    fn the_routed_service_is_the_one_publishing_the_traffic_port() {
        let p = project(STACK);
        let r = routed(&p, &config("")).unwrap();
        assert_eq!(
            r,
            Routed {
                service: "web".into(),
                port: 80
            }
        );
        let e = routed(&p, &config("[proxy]\nport = 8081\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("no service publishes the traffic port 8081"),
            "{e}"
        );
        let e = routed(&p, &config("[proxy]\nservice = \"api\"\n")).unwrap_err();
        assert!(e.to_string().contains("\"api\" is not a service"), "{e}");
    }

    #[test]
    fn two_replicas_or_a_fixed_name_cannot_be_routed() {
        let e = routed(
            &project("services:\n  web:\n    image: w\n    ports: [\"8080:80\"]\n    deploy: {replicas: 2}\n"),
            &config(""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("2 replicas"), "{e}");
        let e = routed(
            &project("services:\n  web:\n    image: w\n    container_name: w\n    ports: [\"8080:80\"]\n"),
            &config(""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("container_name"), "{e}");
    }

    #[test]
    fn colorize_renames_republishes_and_keeps_the_other_color_out_of_reach() {
        let p = project(STACK);
        let r = routed(&p, &config("")).unwrap();
        let c = colorize(&p, &r, Color::Green, Some("v7"), 8080);
        let web = &c.services["web-green"];
        assert_eq!(web.name, "web-green");
        assert!(!c.services.contains_key("web"));
        let traffic = web.ports.iter().find(|p| p.target == 80).unwrap();
        assert_eq!(traffic.published, None);
        assert_eq!(traffic.host_ip.as_deref(), Some("127.0.0.1"));
        // Other published ports stay as they are.
        let other = web.ports.iter().find(|p| p.target == 9000).unwrap();
        assert_eq!(other.published.as_deref(), Some("9000"));
        assert_eq!(web.labels[COLOR_LABEL], "green");
        assert_eq!(web.labels[RELEASE_LABEL], "v7");
        assert!(web
            .networks
            .values()
            .all(|n| n.aliases.contains(&"web".to_string())));
        assert!(c.services["worker"].depends_on.contains_key("web-green"));
        assert!(!c.services["worker"].depends_on.contains_key("web"));
        assert!(c.disabled_services.contains(&"web-blue".to_string()));
        // A different release is a different container.
        let c8 = colorize(&p, &r, Color::Green, Some("v8"), 8080);
        assert_ne!(
            c.services["web-green"].config_hash(),
            c8.services["web-green"].config_hash()
        );
    }
}
