//! Looking before acting: what Docker has of a project (images, containers, networks, volumes),
//! and `berth plan`, which only looks.

use std::collections::BTreeSet;

use futures_util::future::join_all;

use super::ConvergeError;
use crate::compose::{Project, PullPolicy};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::{self, Observed, Plan};

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
    // Only when secrets or configs are there to key: `info` costs a request.
    let digest_key = if project.services.values().any(|s| !s.files.is_empty()) {
        engine.daemon_id().await?
    } else {
        String::new()
    };
    let mut observed = Observed {
        digest_key,
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
