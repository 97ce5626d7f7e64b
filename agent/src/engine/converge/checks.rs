//! What `up` checks before it changes anything, so that a bad project fails with the running
//! release untouched: healthchecks that `service_healthy` needs, free host ports, bind sources.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use super::wait::is_health_test;
use super::ConvergeError;
use crate::compose::{DependencyCondition, MountKind, Project, Service};
use crate::engine::docker::Engine;
use crate::engine::plan::{Action, Observed, Plan};

/// Fields an older engine would ignore without a word are refused on it, naming the field.
pub(super) fn check_engine_features(
    engine: &Engine,
    project: &Project,
) -> Result<(), ConvergeError> {
    let has = engine.api.client_version();
    let (major, minor) = (has.major_version, has.minor_version);
    for svc in project.services.values() {
        // A MAC address per endpoint: API 1.44 (Docker Engine 25).
        if svc.mac_address.is_some() && (major, minor) < (1, 44) {
            return Err(ConvergeError::EngineTooOld {
                service: svc.name.clone(),
                field: "mac_address",
                needs: "1.44 (Docker Engine 25)",
                has: format!("{major}.{minor}"),
            });
        }
    }
    Ok(())
}

/// `service_healthy` needs a healthcheck on the dependency: in the file or in its image.
pub(super) async fn check_healthchecks(
    engine: &Engine,
    project: &Project,
) -> Result<(), ConvergeError> {
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

/// A healthcheck in the compose file, or else in the service's (local) image.
pub(super) async fn has_healthcheck(engine: &Engine, svc: &Service) -> Result<bool, ConvergeError> {
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
    Ok(is_health_test(test.as_deref()))
}

/// Host ports that containers about to start will bind must be free, unless the container
/// being replaced holds them itself. Checked before anything changes.
pub(super) fn check_ports(
    project: &Project,
    plan: &Plan,
    observed: &Observed,
) -> Result<(), ConvergeError> {
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

/// Compose creates a missing bind-mount source directory for the short syntax.
pub(super) fn prepare_bind_sources(project: &Project) -> Result<(), ConvergeError> {
    for svc in project.services.values() {
        for m in svc
            .mounts
            .iter()
            .filter(|m| m.kind == MountKind::Bind && m.create_host_path)
        {
            let Some(src) = &m.source else { continue };
            if !std::path::Path::new(src).exists() {
                std::fs::create_dir_all(src).map_err(|source| ConvergeError::BindSource {
                    service: svc.name.clone(),
                    path: src.clone(),
                    source,
                })?;
            }
        }
    }
    Ok(())
}
