//! Converge: make the Docker daemon match a project. Pulls what is missing (in parallel), checks
//! everything that can be checked before touching a container (images, healthchecks that
//! `service_healthy` needs, host ports), then creates networks and volumes and starts services in
//! `depends_on` order, in parallel where independent, waiting on each condition. A recreate
//! creates the new container before stopping the old one and puts the old one back if the new
//! one cannot start. `down` and `ps` live here too.
//!
//! The steps, in the order `up` takes them: [`observe`] (what Docker has), [`pull`], [`checks`]
//! (before anything changes), [`resources`] (networks, volumes), [`services`] (one task per
//! service, gated by [`order`]), which applies [`containers`] steps and [`wait`]s for readiness.

mod checks;
mod containers;
mod down;
mod observe;
mod order;
mod pull;
mod resources;
mod services;
mod wait;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::compose::Project;
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::{self, Plan};
use crate::engine::progress::{Progress, Stage};
use crate::engine::registry::{self, Registries};

pub use down::{down, ps, stop, PsRow};
pub use observe::{observe, plan};
pub use pull::pull_images;
pub use wait::wait_running;

#[derive(Debug, thiserror::Error)]
pub enum ConvergeError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    #[error("service {service}: {field} needs Docker Engine API {needs} or newer; this daemon speaks {has}")]
    EngineTooOld {
        service: String,
        field: &'static str,
        needs: &'static str,
        has: String,
    },
    #[error("service {service}: image {image} is not present locally and pull_policy is never")]
    ImageMissing { service: String, image: String },
    /// `source` is the [`DockerError::Pull`], which names the image and carries the registry's
    /// answer.
    #[error("service {service}: cannot pull its image")]
    Pull {
        service: String,
        image: String,
        #[source]
        source: DockerError,
    },
    #[error("service {dependent} waits for {service} to be healthy (service_healthy), but {service} has no healthcheck (none in the compose file or its image {image})")]
    NoHealthcheck {
        service: String,
        dependent: String,
        image: String,
    },
    #[error("service {service}: host port {address} is already in use")]
    PortTaken { service: String, address: String },
    #[error("service {service}: cannot create bind mount source {path}")]
    BindSource {
        service: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `message` is the daemon's answer alone: a [`DockerError`] as the source would repeat the
    /// action and name the container by its id.
    #[error("service {service}: {action} {container} failed: {message}")]
    Container {
        service: String,
        container: String,
        action: &'static str,
        message: String,
    },
    // A container's output (log lines, healthcheck output) may print what the app is
    // configured with, and errors travel (`/status`, systemd's STATUS=, SSM command output): it
    // goes to the log (the journal) only, logged where it is read.
    #[error("service {service} is unhealthy ({container}): its healthcheck failed; its output: docker inspect --format '{{{{json .State.Health}}}}' {container}")]
    Unhealthy { service: String, container: String },
    #[error("service {service} exited with code {code} ({container}); its output: docker logs --tail 20 {container}")]
    Exited {
        service: String,
        container: String,
        code: i64,
    },
    #[error("service {service} did not become {wanted} within {waited_secs}s ({container}); its healthcheck's last output: docker inspect --format '{{{{json .State.Health}}}}' {container}")]
    Timeout {
        service: String,
        container: String,
        wanted: &'static str,
        waited_secs: u64,
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
    let plan = prepare(engine, project, opts, progress).await?;
    containers::handle_orphans(engine, &plan, progress).await?;
    progress.stage(Stage::Starting);
    let results = services::run_all(engine, project, &plan, deadline, progress).await;
    let services = root_cause(results)?;
    Ok(UpReport { plan, services })
}

/// Everything before the first container changes: pulls, the checks that can fail a bad project
/// early, the plan, and the networks and volumes it needs.
async fn prepare(
    engine: &Engine,
    project: &Project,
    opts: &UpOptions,
    progress: &Progress,
) -> Result<Plan, ConvergeError> {
    let mut observed = observe(engine, project).await?;
    pull_images(
        engine,
        project,
        &mut observed,
        &opts.registries,
        opts.pull_concurrency,
        progress,
    )
    .instrument(tracing::info_span!("pull"))
    .await?;
    checks::check_engine_features(engine, project)?;
    checks::check_healthchecks(engine, project).await?;
    let plan = plan::compute(project, &observed, opts.remove_orphans);
    checks::check_ports(project, &plan, &observed)?;
    checks::prepare_bind_sources(project)?;
    resources::ensure_resources(engine, project, &plan, progress).await?;
    Ok(plan)
}

/// The state per service when all succeeded; otherwise one error, the root cause rather than a
/// dependent that gave up because of it.
fn root_cause(
    results: Vec<Result<(String, String), ConvergeError>>,
) -> Result<BTreeMap<String, String>, ConvergeError> {
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
        None => Ok(services),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dependency_failed(service: &str) -> ConvergeError {
        ConvergeError::DependencyFailed {
            service: service.into(),
            dependency: "db".into(),
        }
    }

    #[test]
    fn root_cause_wins_over_the_dependents_that_gave_up() {
        let results = vec![
            Ok(("cache".to_string(), "running".to_string())),
            Err(dependency_failed("web")),
            Err(ConvergeError::Unhealthy {
                service: "db".into(),
                container: "p-db-1".into(),
            }),
        ];
        let e = root_cause(results).unwrap_err();
        assert!(matches!(e, ConvergeError::Unhealthy { .. }), "{e:?}");
    }

    #[test]
    fn all_succeeded_gives_each_state() {
        let results = vec![
            Ok(("web".to_string(), "healthy".to_string())),
            Ok(("db".to_string(), "running".to_string())),
        ];
        let states = root_cause(results).unwrap();
        assert_eq!(states["web"], "healthy");
        assert_eq!(states["db"], "running");
    }

    #[test]
    fn a_lone_dependency_failure_is_still_reported() {
        let e = root_cause(vec![Err(dependency_failed("web"))]).unwrap_err();
        assert_eq!(
            crate::report::chain(&e),
            "service web not started: its dependency db failed"
        );
    }

    #[test]
    fn causes_are_shown_once_through_the_chain() {
        let e = ConvergeError::BindSource {
            service: "web".into(),
            path: "/x".into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(
            crate::report::chain(&e),
            "service web: cannot create bind mount source /x: denied"
        );
        let e = ConvergeError::Pull {
            service: "web".into(),
            image: "reg/app:1".into(),
            source: DockerError::Pull {
                image: "reg/app:1".into(),
                message: "unauthorized".into(),
            },
        };
        assert_eq!(
            crate::report::chain(&e),
            "service web: cannot pull its image: pull reg/app:1: unauthorized"
        );
    }
}
