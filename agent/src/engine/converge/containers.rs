//! Container steps: create, start, restart, and the safe recreate (the new container is made
//! beside the old one, which is only stopped until the new one is proven ready, and comes back
//! if it is not); orphans.

use bollard::models::NetworkConnectRequest;
use bollard::query_parameters::CreateContainerOptionsBuilder;

use super::ConvergeError;
use crate::compose::Service;
use crate::engine::docker::{api_message, DockerError, Engine};
use crate::engine::plan::{Action, ContainerStep, Plan};
use crate::engine::progress::Progress;

/// A container a step left serving, and the one it replaced (kept, stopped, until the new one
/// is proven ready).
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) id: String,
    pub(super) name: String,
    replaced: Option<Replaced>,
}

#[derive(Debug)]
struct Replaced {
    id: String,
    was_running: bool,
}

/// Removes the orphans the plan removes; warns about those it keeps.
pub(super) async fn handle_orphans(
    engine: &Engine,
    plan: &Plan,
    progress: &Progress,
) -> Result<(), ConvergeError> {
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
    Ok(())
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
pub(super) async fn restore(
    engine: &Engine,
    svc: &Service,
    applied: &[Applied],
    progress: &Progress,
) {
    for a in applied {
        let Some(old) = &a.replaced else { continue };
        let _ = engine.remove(&a.id, true).await;
        if old.was_running {
            match engine.start(&old.id).await {
                Ok(()) => progress.update(&svc.name, "previous container restored"),
                Err(e) => {
                    tracing::error!(service = %svc.name, error = %crate::report::chain(&e), "cannot restart the previous container")
                }
            }
        }
    }
}

/// Once the new containers are ready: removes the ones they replaced and gives the new ones
/// their names.
pub(super) async fn retire_replaced(
    engine: &Engine,
    svc: &Service,
    applied: &[Applied],
) -> Result<(), ConvergeError> {
    for a in applied {
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
    Ok(())
}

/// Carries out one container step; returns the container that now serves.
pub(super) async fn apply_step(
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
        Action::Recreate => recreate(engine, svc, step, existing, progress).await,
    }
}

/// The new container is made beside the old one under a temporary name; the old one is only
/// stopped, and goes once the new one is proven ready (see [`retire_replaced`]).
async fn recreate(
    engine: &Engine,
    svc: &Service,
    step: &ContainerStep,
    existing: String,
    progress: &Progress,
) -> Result<Applied, ConvergeError> {
    let fail = |action, e| container_error(svc, &step.name, action, e);
    let why = step.reasons.join("; ");
    progress.update(&svc.name, &format!("recreating ({why})"));
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

/// Creates the step's container under `name` and joins it to its networks past the first.
async fn create(
    engine: &Engine,
    svc: &Service,
    step: &ContainerStep,
    name: &str,
) -> Result<String, ConvergeError> {
    let failed = |action, message| ConvergeError::Container {
        service: svc.name.clone(),
        container: step.name.clone(),
        action,
        message,
    };
    let Some(spec) = &step.spec else {
        return Err(failed("create", "no container spec".into()));
    };
    let opts = CreateContainerOptionsBuilder::default().name(name).build();
    let created = engine
        .api
        .create_container(Some(opts), spec.body.clone())
        .await
        .map_err(|e| failed("create", api_message(&e)))?;
    for (net, endpoint) in &spec.extra_networks {
        let req = NetworkConnectRequest {
            container: created.id.clone(),
            endpoint_config: Some(endpoint.clone()),
        };
        if let Err(e) = engine.api.connect_network(net, req).await {
            let _ = engine.remove(&created.id, true).await;
            return Err(failed(
                "connect network",
                format!("{net}: {}", api_message(&e)),
            ));
        }
    }
    if !svc.files.is_empty() {
        if let Err(e) = engine.copy_files(&created.id, &svc.files).await {
            let _ = engine.remove(&created.id, true).await;
            let targets: Vec<&str> = svc.files.iter().map(|f| f.target.as_str()).collect();
            return Err(failed(
                "copy secrets and configs",
                format!("{}: {}", targets.join(", "), crate::report::chain(&e)),
            ));
        }
    }
    Ok(created.id)
}
