//! The typed project: every service resolved to what its container will be (environment merged
//! from `env_file` and `environment`, ports expanded, mounts resolved to absolute paths or volume
//! names, durations in nanoseconds). [`super::resolve`] builds it from the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use indexmap::IndexMap;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub name: String,
    pub working_dir: PathBuf,
    pub config_files: Vec<PathBuf>,
    /// Enabled services, by name.
    pub services: IndexMap<String, Service>,
    /// Services left out by their profiles: their containers are not orphans.
    pub disabled_services: Vec<String>,
    /// Networks the enabled services use, by their key in the file.
    pub networks: BTreeMap<String, NetworkSpec>,
    pub volumes: BTreeMap<String, VolumeSpec>,
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// The values interpolation took from `.env` files: secrets wherever they landed (`berth
    /// config` masks them in any field, not only under `environment`).
    #[serde(skip)]
    pub env_file_values: Vec<String>,
    /// The host files the project reads (`env_file`s, local secret and config files), each
    /// with the field that names it: what the host policy judges, beside the binds.
    #[serde(skip)]
    pub host_files: Vec<(String, PathBuf)>,
    /// The berth locations (`s3://`, `ssm:/`) secrets and configs come from, by field.
    #[serde(skip)]
    pub remote_files: Vec<(String, String)>,
}

/// A service's environment, name to value. Its `Debug` shows the names only: a value is as
/// often a secret as not, and a `{:?}` in a log line or an error must not carry it.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Environment(pub BTreeMap<String, String>);

impl std::fmt::Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|k| (k, "(hidden)")))
            .finish()
    }
}

impl std::ops::Deref for Environment {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Environment {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl From<BTreeMap<String, String>> for Environment {
    fn from(map: BTreeMap<String, String>) -> Environment {
        Environment(map)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub image: String,
    pub pull_policy: PullPolicy,
    pub replicas: u32,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    /// Resolved values: secrets. Never logged; masked by `berth config`.
    pub environment: Environment,
    pub ports: Vec<PortMapping>,
    pub expose: Vec<String>,
    pub mounts: Vec<MountSpec>,
    pub networks: BTreeMap<String, ServiceNetwork>,
    pub depends_on: IndexMap<String, Dependency>,
    pub healthcheck: Option<Healthcheck>,
    /// Docker restart policy name and maximum retry count.
    pub restart: Option<(String, i64)>,
    pub labels: BTreeMap<String, String>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub extra_hosts: Vec<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub init: Option<bool>,
    pub stop_signal: Option<String>,
    pub stop_grace_period_secs: Option<i64>,
    pub ulimits: BTreeMap<String, (i64, i64)>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub shm_size: Option<i64>,
    /// `mem_reservation` or `deploy.resources.reservations.memory`, in bytes. Left out of the
    /// serialized form (so of the config hash) when unset, as every field added later is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_reservation: Option<i64>,
    /// The container's MAC address (`mac_address`, or its first network's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<String>,
    pub logging: Option<Logging>,
    /// Device requests (GPUs): `gpus:` and `deploy.resources.reservations.devices`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub device_requests: Vec<DeviceRequest>,
    /// Secrets and configs, copied into the container before it starts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ServiceFile>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub group_add: Vec<String>,
    pub read_only: bool,
    pub privileged: bool,
    pub tty: bool,
    pub stdin_open: bool,
    pub sysctls: BTreeMap<String, String>,
    pub container_name: Option<String>,
    pub profiles: Vec<String>,
}

/// Fields that do not change what a container is, so they stay out of its config hash.
const UNHASHED: [&str; 5] = ["replicas", "pull_policy", "profiles", "depends_on", "name"];

impl Service {
    /// Short digests of each field that shapes the container, so that a plan can say which
    /// fields changed. Digests, not values: environment values must never reach a label.
    pub fn field_digests(&self) -> BTreeMap<String, String> {
        self.field_digests_keyed("")
    }

    /// As [`Service::field_digests`]; the secrets' and configs' contents enter under `key`
    /// (the engine's id: a short password's digest in a label could be guessed offline, a
    /// keyed one not without the key, which labels shipped off the host do not carry).
    pub fn field_digests_keyed(&self, key: &str) -> BTreeMap<String, String> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return BTreeMap::new();
        };
        let mut digests: BTreeMap<String, String> = fields
            .into_iter()
            .filter(|(k, _)| !UNHASHED.contains(&k.as_str()))
            .map(|(k, v)| {
                let digest = Sha256::digest(v.to_string().as_bytes());
                (k, hex(&digest[..6]))
            })
            .collect();
        if !self.files.is_empty() {
            let all: Vec<&str> = self.files.iter().map(|f| f.digest.as_str()).collect();
            let digest = Sha256::digest(format!("{key}\0{}", all.join(",")).as_bytes());
            digests.insert("files_content".into(), hex(&digest[..6]));
        }
        digests
    }

    /// The hash compose's `com.docker.compose.config-hash` label carries.
    pub fn config_hash(&self) -> String {
        self.config_hash_keyed("")
    }

    /// As [`Service::config_hash`], the contents of files keyed as in
    /// [`Service::field_digests_keyed`].
    pub fn config_hash_keyed(&self, key: &str) -> String {
        let digests = self.field_digests_keyed(key);
        let joined: Vec<String> = digests.iter().map(|(k, v)| format!("{k}={v}")).collect();
        hex(&Sha256::digest(joined.join(",").as_bytes()))
    }

    /// The healthcheck is explicitly off (`disable: true` or `test: [NONE]`).
    pub fn health_disabled(&self) -> bool {
        self.healthcheck.as_ref().is_some_and(|h| h.disabled)
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A request for devices of a driver (Docker's `DeviceRequests`): `count` -1 is all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRequest {
    pub driver: Option<String>,
    pub count: i64,
    pub device_ids: Vec<String>,
    pub capabilities: Vec<String>,
    pub options: BTreeMap<String, String>,
}

/// Whether a file comes from `secrets` or `configs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Secret,
    Config,
}

/// A secret or config as a file in a service's container. Serialized (`berth config`) without
/// its content or a digest of it (a short password's digest can be guessed); the content's
/// digest enters the config hash only ([`Service::field_digests`]), so that a changed secret
/// recreates the container without its value reaching a label.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ServiceFile {
    pub kind: FileKind,
    /// The top-level entry's name.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// sha256 of the content, hex.
    #[serde(skip)]
    pub digest: String,
    #[serde(skip)]
    pub content: Vec<u8>,
}

impl std::fmt::Debug for ServiceFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceFile")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .field("target", &self.target)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("mode", &format_args!("{:o}", self.mode))
            .field(
                "content",
                &format_args!("({} bytes, hidden)", self.content.len()),
            )
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    pub target: u16,
    pub protocol: String,
    pub host_ip: Option<String>,
    /// A port, a range (`8000-8010`, Docker picks one), or None for a random port.
    pub published: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    Bind,
    Volume,
    Tmpfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Absolute host path (bind), the volume's Docker name (volume; None = anonymous).
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    /// Create a missing bind source directory (compose does for the short syntax).
    pub create_host_path: bool,
    pub tmpfs_size: Option<i64>,
    pub nocopy: bool,
    // Left out of the serialized form (and so of the config hash) when unset: containers made
    // before these existed are not recreated for them.
    /// A bind's propagation (`rprivate`, `shared`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// A bind's SELinux relabelling: `z` (shared) or `Z` (private).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selinux: Option<String>,
    /// A tmpfs's mode bits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
    /// A `tmpfs:` entry's options as written, when they hold more than `size` and `mode`
    /// (`noexec`, `uid=...`): Docker's `Tmpfs` takes them as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmpfs_options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceNetwork {
    /// The network's Docker name.
    pub name: String,
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link_local_ips: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyCondition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

impl DependencyCondition {
    pub fn as_str(self) -> &'static str {
        match self {
            DependencyCondition::ServiceStarted => "service_started",
            DependencyCondition::ServiceHealthy => "service_healthy",
            DependencyCondition::ServiceCompletedSuccessfully => "service_completed_successfully",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub condition: DependencyCondition,
    pub required: bool,
    /// Restart this service when the dependency is recreated.
    pub restart: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Healthcheck {
    /// `["CMD", ...]`, `["CMD-SHELL", cmd]` or `["NONE"]`; None inherits the image's.
    pub test: Option<Vec<String>>,
    pub interval_ns: Option<i64>,
    pub timeout_ns: Option<i64>,
    pub start_period_ns: Option<i64>,
    pub start_interval_ns: Option<i64>,
    pub retries: Option<i64>,
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logging {
    pub driver: Option<String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkSpec {
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub internal: bool,
    pub attachable: bool,
    pub enable_ipv6: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    pub name: String,
    pub external: bool,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

#[cfg(test)]
mod environment_tests {
    use super::*;

    #[test]
    fn debug_shows_the_names_and_never_a_value() {
        let env = Environment::from(BTreeMap::from([
            ("API_TOKEN".to_string(), "s3cr3t-debug".to_string()),
            ("PORT".to_string(), "8080".to_string()),
        ]));
        let shown = format!("{env:?} {env:#?}");
        assert!(
            shown.contains("API_TOKEN") && shown.contains("PORT"),
            "{shown}"
        );
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("8080"),
            "{shown}"
        );
        assert_eq!(env["PORT"], "8080", "values are there for the container");
        assert_eq!(
            serde_json::to_string(&env).unwrap_or_default(),
            r#"{"API_TOKEN":"s3cr3t-debug","PORT":"8080"}"#,
            "serialized as the map it is (berth config masks it before)"
        );
    }
}
