//! The Docker Engine API, through bollard: connecting (with API version negotiation, so older
//! engines work), and the few calls the other stages make, each failure mapped to an error that
//! names the endpoint, container, image, network or volume it was about.

use std::collections::HashMap;

use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ImageInspect};
use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

/// Docker's descriptions of containers, for the stages above the engine, so that only the
/// engine depends on bollard.
pub use bollard::models::{
    ContainerSummary, ContainerSummaryStateEnum, HealthStatusEnum, PortSummary,
};

/// Compose's labels, so that `docker compose ps/logs` see berth's containers as their own.
pub mod labels {
    pub const PROJECT: &str = "com.docker.compose.project";
    pub const SERVICE: &str = "com.docker.compose.service";
    pub const NUMBER: &str = "com.docker.compose.container-number";
    pub const ONEOFF: &str = "com.docker.compose.oneoff";
    pub const CONFIG_HASH: &str = "com.docker.compose.config-hash";
    pub const DEPENDS_ON: &str = "com.docker.compose.depends_on";
    pub const IMAGE: &str = "com.docker.compose.image";
    pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
    pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
    pub const VERSION: &str = "com.docker.compose.version";
    pub const NETWORK: &str = "com.docker.compose.network";
    pub const VOLUME: &str = "com.docker.compose.volume";
    /// berth's own: per-field digests, so a plan can say why it recreates.
    pub const FIELDS: &str = "dev.berth.config-fields";
    /// berth's own: marks what berth created.
    pub const MANAGED: &str = "dev.berth.managed";
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot reach the Docker daemon at {endpoint}: {message} (is dockerd running? set DOCKER_HOST to use another endpoint)")]
    Connect { endpoint: String, message: String },
    #[error("{action} {target}: {message}")]
    Request {
        action: &'static str,
        target: String,
        message: String,
    },
    #[error("pull {image}: {message}")]
    Pull { image: String, message: String },
    #[error("{image} at its registry: {message}")]
    Registry { image: String, message: String },
}

/// The daemon's message for an API error, without bollard's wrapping.
pub fn api_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        BollardError::DockerStreamError { error } => error.trim().to_string(),
        other => other.to_string(),
    }
}

/// A label of a listed container.
pub fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// A container name as people write it: Docker reports names with a leading `/`.
pub fn bare_name(name: &str) -> &str {
    name.trim_start_matches('/')
}

/// A listed container's name, or its id when it has none.
pub fn summary_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| bare_name(n).to_string())
        .or_else(|| c.id.clone())
        .unwrap_or_default()
}

pub fn is_not_found(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

fn request<'a>(
    action: &'static str,
    target: &'a str,
) -> impl FnOnce(BollardError) -> DockerError + 'a {
    move |e| DockerError::Request {
        action,
        target: target.to_string(),
        message: api_message(&e),
    }
}

/// A connected, version-negotiated Docker client.
#[derive(Debug, Clone)]
pub struct Engine {
    pub api: Docker,
    pub endpoint: String,
}

impl Engine {
    /// Connects through `DOCKER_HOST` or the default socket, and agrees on an API version.
    pub async fn connect() -> Result<Engine, DockerError> {
        let endpoint = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_string());
        let connect_err = |e: BollardError| DockerError::Connect {
            endpoint: endpoint.clone(),
            message: api_message(&e),
        };
        let api = Docker::connect_with_defaults().map_err(connect_err)?;
        // Negotiation pings the daemon, so an absent daemon fails here, naming the socket.
        let api = api.negotiate_version().await.map_err(connect_err)?;
        Ok(Engine { api, endpoint })
    }

    fn project_filter(project: &str, extra: Option<&str>) -> HashMap<String, Vec<String>> {
        let mut labels = vec![format!("{}={project}", labels::PROJECT)];
        labels.extend(extra.map(String::from));
        HashMap::from([("label".to_string(), labels)])
    }

    /// All containers of a project, running or not (one-off containers excluded).
    pub async fn project_containers(
        &self,
        project: &str,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters = Self::project_filter(project, None);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .api
            .list_containers(Some(opts))
            .await
            .map_err(request("list containers of project", project))?;
        Ok(list
            .into_iter()
            .filter(|c| label(c, labels::ONEOFF) != Some("True"))
            .collect())
    }

    pub async fn inspect_container(
        &self,
        id: &str,
    ) -> Result<ContainerInspectResponse, DockerError> {
        self.api
            .inspect_container(id, None)
            .await
            .map_err(request("inspect container", id))
    }

    /// The container, or None when it is gone (removed since it was listed).
    pub async fn inspect_present(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        match self.api.inspect_container(id, None).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(request("inspect container", id)(e)),
        }
    }

    /// The local image, or None when it is not there.
    pub async fn local_image(&self, image: &str) -> Result<Option<ImageInspect>, DockerError> {
        match self.api.inspect_image(image).await {
            Ok(i) => Ok(Some(i)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(request("inspect image", image)(e)),
        }
    }

    /// Pulls an image, calling `progress` with short status lines.
    pub async fn pull(
        &self,
        image: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
        mut progress: impl FnMut(&str),
    ) -> Result<(), DockerError> {
        let (repo, tag) = split_tag(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_image(repo)
            .tag(tag)
            .build();
        let mut stream = self.api.create_image(Some(opts), None, credentials);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| DockerError::Pull {
                image: image.to_string(),
                message: api_message(&e),
            })?;
            if let Some(status) = info.status {
                progress(&status);
            }
        }
        Ok(())
    }

    /// The digest the registry has for `image` (a tag, or a digest it must still hold),
    /// asked through the daemon's distribution endpoint: the daemon does the registry's
    /// authentication dance (basic, token, ECR) with `credentials`, as a pull would.
    pub async fn registry_digest(
        &self,
        image: &str,
        credentials: Option<bollard::auth::DockerCredentials>,
    ) -> Result<String, DockerError> {
        let found = self
            .api
            .inspect_registry_image(image, credentials)
            .await
            .map_err(|e| DockerError::Registry {
                image: image.to_string(),
                message: api_message(&e),
            })?;
        found
            .descriptor
            .digest
            .filter(|d| !d.is_empty())
            .ok_or_else(|| DockerError::Registry {
                image: image.to_string(),
                message: "the registry's answer has no digest".into(),
            })
    }

    pub async fn stop(&self, id: &str, grace_secs: Option<i64>) -> Result<(), DockerError> {
        let mut opts = StopContainerOptionsBuilder::default();
        if let Some(t) = grace_secs {
            opts = opts.t(t.clamp(0, i32::MAX as i64) as i32);
        }
        match self.api.stop_container(id, Some(opts.build())).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(request("stop container", id)(e)),
        }
    }

    pub async fn remove(&self, id: &str, volumes: bool) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(volumes)
            .build();
        match self.api.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request("remove container", id)(e)),
        }
    }

    pub async fn start(&self, id: &str) -> Result<(), DockerError> {
        match self.api.start_container(id, None).await {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(request("start container", id)(e)),
        }
    }

    /// Writes `files` (secrets and configs) into the created container `id`, owners and modes
    /// as given: one tar archive, extracted by the daemon at `/` (missing parent directories
    /// are made 0755). The content never leaves this call but in that archive.
    pub async fn copy_files(
        &self,
        id: &str,
        files: &[crate::compose::ServiceFile],
    ) -> Result<(), DockerError> {
        let mut archive = tar::Builder::new(Vec::new());
        for f in files {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(f.content.len() as u64);
            header.set_mode(f.mode);
            header.set_uid(u64::from(f.uid));
            header.set_gid(u64::from(f.gid));
            header.set_mtime(0);
            archive
                .append_data(
                    &mut header,
                    f.target.trim_start_matches('/'),
                    f.content.as_slice(),
                )
                .map_err(|e| DockerError::Request {
                    action: "archive a secret or config",
                    target: f.target.clone(),
                    message: e.to_string(),
                })?;
        }
        let bytes = archive.into_inner().map_err(|e| DockerError::Request {
            action: "archive secrets and configs",
            target: id.to_string(),
            message: e.to_string(),
        })?;
        let opts = bollard::query_parameters::UploadToContainerOptionsBuilder::default()
            .path("/")
            .build();
        self.api
            .upload_to_container(id, Some(opts), bollard::body_full(bytes.into()))
            .await
            .map_err(request("copy secrets and configs into", id))
    }

    /// The daemon's id (`docker info`'s ID): random per engine, known to whoever can reach its
    /// socket.
    pub async fn daemon_id(&self) -> Result<String, DockerError> {
        let info = self
            .api
            .info()
            .await
            .map_err(request("read the engine's info", &self.endpoint))?;
        Ok(info.id.unwrap_or_default())
    }

    pub async fn rename(&self, id: &str, name: &str) -> Result<(), DockerError> {
        let opts = bollard::query_parameters::RenameContainerOptionsBuilder::default()
            .name(name)
            .build();
        self.api
            .rename_container(id, opts)
            .await
            .map_err(request("rename container", id))
    }

    /// Names of a project's networks.
    pub async fn project_networks(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let filters = Self::project_filter(project, None);
        let opts = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let nets = self
            .api
            .list_networks(Some(opts))
            .await
            .map_err(request("list networks of project", project))?;
        Ok(nets.into_iter().filter_map(|n| n.name).collect())
    }

    pub async fn network_exists(&self, name: &str) -> Result<bool, DockerError> {
        match self
            .api
            .inspect_network(
                name,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(request("inspect network", name)(e)),
        }
    }

    /// Names of a project's volumes.
    pub async fn project_volumes(&self, project: &str) -> Result<Vec<String>, DockerError> {
        let filters = Self::project_filter(project, None);
        let opts = ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let vols = self
            .api
            .list_volumes(Some(opts))
            .await
            .map_err(request("list volumes of project", project))?;
        Ok(vols
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    pub async fn volume_exists(&self, name: &str) -> Result<bool, DockerError> {
        match self.api.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(request("inspect volume", name)(e)),
        }
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        match self.api.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request("remove network", name)(e)),
        }
    }

    pub async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        match self
            .api
            .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request("remove volume", name)(e)),
        }
    }

    /// The last `lines` lines a container wrote (stdout and stderr, at most 16 KiB): for a
    /// record kept where only root reads it, never for an error.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, DockerError> {
        let opts = bollard::query_parameters::LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.api.logs(id, Some(opts));
        let mut out = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(request("logs of container", id))?;
            if out.len() < 16 * 1024 {
                out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
        }
        Ok(out)
    }

    /// Runs `cmd` in a running container; returns its exit code and its output (trimmed).
    pub async fn exec(&self, id: &str, cmd: Vec<String>) -> Result<(i64, String), DockerError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let opts = CreateExecOptions {
            cmd: Some(cmd),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let created = self
            .api
            .create_exec(id, opts)
            .await
            .map_err(request("exec in container", id))?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self
            .api
            .start_exec(&created.id, None)
            .await
            .map_err(request("exec in container", id))?
        {
            while let Some(Ok(chunk)) = out.next().await {
                if output.len() < 4096 {
                    output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                }
            }
        }
        let inspected = self
            .api
            .inspect_exec(&created.id)
            .await
            .map_err(request("exec in container", id))?;
        Ok((inspected.exit_code.unwrap_or(-1), output.trim().to_string()))
    }
}

/// `registry/repo:tag` into (`registry/repo`, `tag`); a digest reference keeps its digest.
pub fn split_tag(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    let last_slash = image.rfind('/').map(|i| i + 1).unwrap_or(0);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], &image[last_slash + i + 1..]),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn tags_split_after_the_last_path_component() {
        assert_eq!(split_tag("web"), ("web", "latest"));
        assert_eq!(split_tag("web:1"), ("web", "1"));
        assert_eq!(
            split_tag("127.0.0.1:5000/team/web:2"),
            ("127.0.0.1:5000/team/web", "2")
        );
        assert_eq!(
            split_tag("127.0.0.1:5000/web"),
            ("127.0.0.1:5000/web", "latest")
        );
        assert_eq!(split_tag("web@sha256:abc"), ("web", "sha256:abc"));
    }
}
