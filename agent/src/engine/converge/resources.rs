//! Networks and volumes: created when the plan says so, labelled as compose labels them; an
//! external one must already exist. Both kinds take the one path in [`ensure`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use bollard::errors::Error as BollardError;
use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};

use super::ConvergeError;
use crate::compose::Project;
use crate::engine::docker::{api_message, labels, DockerError, Engine};
use crate::engine::plan::{Plan, ResourceStep};
use crate::engine::progress::Progress;

/// Which kind of resource, for what differs between them besides the create request.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Network,
    Volume,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Network => "network",
            Kind::Volume => "volume",
        }
    }

    /// The compose label that holds the resource's key in the file.
    fn key_label(self) -> &'static str {
        match self {
            Kind::Network => labels::NETWORK,
            Kind::Volume => labels::VOLUME,
        }
    }

    async fn exists(self, engine: &Engine, name: &str) -> Result<bool, DockerError> {
        match self {
            Kind::Network => engine.network_exists(name).await,
            Kind::Volume => engine.volume_exists(name).await,
        }
    }

    fn missing(self, name: &str) -> ConvergeError {
        match self {
            Kind::Network => ConvergeError::ExternalNetworkMissing {
                network: name.to_string(),
            },
            Kind::Volume => ConvergeError::ExternalVolumeMissing {
                volume: name.to_string(),
            },
        }
    }
}

/// One network or volume of the project, as far as ensuring it goes.
struct Resource<'a> {
    kind: Kind,
    /// Its key in the compose file.
    key: &'a str,
    name: &'a str,
    labels: &'a BTreeMap<String, String>,
}

pub(super) async fn ensure_resources(
    engine: &Engine,
    project: &Project,
    plan: &Plan,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    for (key, n) in &project.networks {
        let resource = Resource {
            kind: Kind::Network,
            key,
            name: &n.name,
            labels: &n.labels,
        };
        ensure(
            engine,
            project,
            &resource,
            &plan.networks,
            progress,
            |labels| {
                engine.api.create_network(NetworkCreateRequest {
                    name: n.name.clone(),
                    driver: n.driver.clone(),
                    internal: Some(n.internal),
                    attachable: Some(n.attachable),
                    enable_ipv6: Some(n.enable_ipv6),
                    options: Some(n.driver_opts.clone().into_iter().collect()),
                    labels: Some(labels),
                    ..Default::default()
                })
            },
        )
        .await?;
    }
    for (key, v) in &project.volumes {
        let resource = Resource {
            kind: Kind::Volume,
            key,
            name: &v.name,
            labels: &v.labels,
        };
        ensure(
            engine,
            project,
            &resource,
            &plan.volumes,
            progress,
            |labels| {
                engine.api.create_volume(VolumeCreateRequest {
                    name: Some(v.name.clone()),
                    driver: v.driver.clone(),
                    driver_opts: Some(v.driver_opts.clone().into_iter().collect()),
                    labels: Some(labels),
                    ..Default::default()
                })
            },
        )
        .await?;
    }
    Ok(())
}

/// Carries out the plan's step for one resource: checks an external one exists, or creates it
/// through `create`, given the labels it must carry.
async fn ensure<T, F, Fut>(
    engine: &Engine,
    project: &Project,
    resource: &Resource<'_>,
    steps: &[ResourceStep],
    progress: &Progress,
    create: F,
) -> Result<(), ConvergeError>
where
    F: FnOnce(HashMap<String, String>) -> Fut,
    Fut: Future<Output = Result<T, BollardError>>,
{
    let kind = resource.kind;
    let step = steps.iter().find(|s| s.name == resource.name);
    match step.map(|s| s.action) {
        Some("external") if !kind.exists(engine, resource.name).await? => {
            Err(kind.missing(resource.name))
        }
        Some("create") => {
            let mut lbls: HashMap<String, String> = resource.labels.clone().into_iter().collect();
            lbls.insert(labels::PROJECT.into(), project.name.clone());
            lbls.insert(kind.key_label().into(), resource.key.to_string());
            lbls.insert(labels::VERSION.into(), env!("CARGO_PKG_VERSION").into());
            create(lbls).await.map_err(|e| DockerError::Request {
                action: match kind {
                    Kind::Network => "create network",
                    Kind::Volume => "create volume",
                },
                target: resource.name.to_string(),
                message: api_message(&e),
            })?;
            progress.finish(&format!("{} {}", kind.noun(), resource.name), "created");
            Ok(())
        }
        _ => Ok(()),
    }
}
