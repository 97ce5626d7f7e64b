//! The typed project: every service resolved to what its container will be (environment merged
//! from `env_file` and `environment`, ports expanded, mounts resolved to absolute paths or volume
//! names, durations in nanoseconds), checked, with its dependencies validated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_norway::Value;
use sha2::{Digest, Sha256};

use super::dotenv;
use super::fields::{parse_duration, parse_port, parse_size, parse_volume};
use super::ComposeError;

// ---------------------------------------------------------------------------------------------
// The resolved model.

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
    pub environment: BTreeMap<String, String>,
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
    pub logging: Option<Logging>,
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
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(self) else {
            return BTreeMap::new();
        };
        fields
            .into_iter()
            .filter(|(k, _)| !UNHASHED.contains(&k.as_str()))
            .map(|(k, v)| {
                let digest = Sha256::digest(v.to_string().as_bytes());
                (k, hex(&digest[..6]))
            })
            .collect()
    }

    /// The hash compose's `com.docker.compose.config-hash` label carries.
    pub fn config_hash(&self) -> String {
        let digests = self.field_digests();
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceNetwork {
    /// The network's Docker name.
    pub name: String,
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
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

// ---------------------------------------------------------------------------------------------
// What the YAML may hold, before resolution.

/// A YAML scalar where compose accepts a string, a number or a boolean.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Str(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    Str(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EnvFileEntry {
    Path(String),
    Long {
        path: String,
        #[serde(default)]
        required: Option<bool>,
        #[serde(default)]
        format: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortEntry {
    Short(Scalar),
    Long(LongPort),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongPort {
    target: u16,
    #[serde(default)]
    published: Option<Scalar>,
    #[serde(default)]
    host_ip: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    app_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum VolumeEntry {
    Short(String),
    Long(LongVolume),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LongVolume {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    source: Option<String>,
    target: String,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    bind: Option<LongBind>,
    #[serde(default)]
    volume: Option<LongVolumeOpts>,
    #[serde(default)]
    tmpfs: Option<LongTmpfs>,
    #[serde(default)]
    consistency: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct LongBind {
    #[serde(default)]
    create_host_path: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct LongVolumeOpts {
    #[serde(default)]
    nocopy: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct LongTmpfs {
    #[serde(default)]
    size: Option<Scalar>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawServiceNetwork {
    aliases: Vec<String>,
    ipv4_address: Option<String>,
    ipv6_address: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawDependency {
    condition: Option<String>,
    required: Option<bool>,
    restart: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawHealthcheck {
    test: Option<StringOrList>,
    interval: Option<String>,
    timeout: Option<String>,
    start_period: Option<String>,
    start_interval: Option<String>,
    retries: Option<i64>,
    disable: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawDeploy {
    replicas: Option<u32>,
    resources: Option<RawResources>,
    restart_policy: Option<RawRestartPolicy>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawResources {
    limits: Option<RawLimits>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawLimits {
    cpus: Option<Scalar>,
    memory: Option<Scalar>,
    pids: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawRestartPolicy {
    condition: Option<String>,
    max_attempts: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawLogging {
    driver: Option<String>,
    options: IndexMap<String, Option<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ExtraHosts {
    List(Vec<String>),
    Map(IndexMap<String, Scalar>),
}

impl Default for ExtraHosts {
    fn default() -> Self {
        ExtraHosts::List(vec![])
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawService {
    image: Option<String>,
    pull_policy: Option<String>,
    command: Option<StringOrList>,
    entrypoint: Option<StringOrList>,
    environment: IndexMap<String, Option<Scalar>>,
    env_file: Vec<EnvFileEntry>,
    ports: Vec<PortEntry>,
    expose: Vec<Scalar>,
    volumes: Vec<VolumeEntry>,
    tmpfs: Vec<String>,
    networks: IndexMap<String, Option<RawServiceNetwork>>,
    depends_on: IndexMap<String, RawDependency>,
    healthcheck: Option<RawHealthcheck>,
    restart: Option<String>,
    deploy: Option<RawDeploy>,
    labels: IndexMap<String, Option<Scalar>>,
    user: Option<Scalar>,
    working_dir: Option<String>,
    hostname: Option<String>,
    domainname: Option<String>,
    extra_hosts: ExtraHosts,
    dns: Vec<String>,
    dns_search: Vec<String>,
    init: Option<bool>,
    stop_signal: Option<String>,
    stop_grace_period: Option<String>,
    ulimits: IndexMap<String, RawUlimit>,
    mem_limit: Option<Scalar>,
    cpus: Option<Scalar>,
    pids_limit: Option<i64>,
    shm_size: Option<Scalar>,
    logging: Option<RawLogging>,
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    security_opt: Vec<String>,
    group_add: Vec<Scalar>,
    read_only: Option<bool>,
    privileged: Option<bool>,
    tty: Option<bool>,
    stdin_open: Option<bool>,
    sysctls: IndexMap<String, Option<Scalar>>,
    container_name: Option<String>,
    profiles: Vec<String>,
    scale: Option<u32>,
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "pull_policy",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "volumes",
    "tmpfs",
    "networks",
    "depends_on",
    "healthcheck",
    "restart",
    "deploy",
    "labels",
    "user",
    "working_dir",
    "hostname",
    "domainname",
    "extra_hosts",
    "dns",
    "dns_search",
    "init",
    "stop_signal",
    "stop_grace_period",
    "ulimits",
    "mem_limit",
    "cpus",
    "pids_limit",
    "shm_size",
    "logging",
    "cap_add",
    "cap_drop",
    "security_opt",
    "group_add",
    "read_only",
    "privileged",
    "tty",
    "stdin_open",
    "sysctls",
    "container_name",
    "profiles",
    "scale",
];

/// Compose fields berth knows and does not implement: an error, never a silent skip.
const UNSUPPORTED_SERVICE_KEYS: &[&str] = &[
    "secrets",
    "configs",
    "devices",
    "network_mode",
    "pid",
    "ipc",
    "links",
    "external_links",
    "volumes_from",
    "extends",
    "develop",
    "gpus",
    "platform",
    "runtime",
    "userns_mode",
    "cgroup",
    "cgroup_parent",
    "isolation",
    "storage_opt",
    "device_cgroup_rules",
    "credential_spec",
    "mac_address",
    "oom_score_adj",
    "oom_kill_disable",
    "memswap_limit",
    "mem_reservation",
    "mem_swappiness",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_count",
    "cpu_percent",
    "cpu_rt_runtime",
    "cpu_rt_period",
    "cpuset",
    "blkio_config",
    "annotations",
    "attach",
    "post_start",
    "pre_stop",
    "uts",
    "label_file",
    "models",
    "provider",
    "use_api_socket",
];

const TOP_KEYS: &[&str] = &["version", "name", "services", "networks", "volumes"];
const UNSUPPORTED_TOP_KEYS: &[&str] = &["secrets", "configs", "include", "models"];
const DEPLOY_KEYS: &[&str] = &["replicas", "resources", "restart_policy", "mode"];

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawNetwork {
    name: Option<String>,
    external: Option<Value>,
    driver: Option<String>,
    driver_opts: IndexMap<String, Option<Scalar>>,
    internal: Option<bool>,
    attachable: Option<bool>,
    enable_ipv6: Option<bool>,
    labels: IndexMap<String, Option<Scalar>>,
    ipam: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
struct RawVolume {
    name: Option<String>,
    external: Option<Value>,
    driver: Option<String>,
    driver_opts: IndexMap<String, Option<Scalar>>,
    labels: IndexMap<String, Option<Scalar>>,
}

// ---------------------------------------------------------------------------------------------
// Resolution.

pub(super) struct BuildInput<'a> {
    pub document: Value,
    pub files: &'a [PathBuf],
    pub project_dir: &'a Path,
    pub name_flag: Option<String>,
    pub env: &'a BTreeMap<String, String>,
    pub profiles: &'a [String],
}

struct Ctx<'a> {
    project: String,
    project_dir: &'a Path,
    env: &'a BTreeMap<String, String>,
    top_networks: &'a BTreeMap<String, NetworkSpec>,
    top_volumes: &'a BTreeMap<String, VolumeSpec>,
    warnings: Vec<String>,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

const BOOL_KEYS: &[&str] = &[
    "read_only",
    "privileged",
    "init",
    "tty",
    "stdin_open",
    "disable",
    "required",
    "restart",
    "internal",
    "attachable",
    "enable_ipv6",
    "external",
    "create_host_path",
    "nocopy",
];
const INT_KEYS: &[&str] = &[
    "replicas",
    "scale",
    "retries",
    "pids_limit",
    "pids",
    "target",
    "max_attempts",
    "soft",
    "hard",
];
/// Maps whose keys are the user's (variable names, label keys): never coerced.
const FREE_MAPS: &[&str] = &[
    "environment",
    "labels",
    "sysctls",
    "options",
    "driver_opts",
    "extra_hosts",
    "annotations",
];

/// Interpolation yields strings; compose casts them back to the field's type
/// (`replicas: "${N}"` is a number). Only the typed fields are touched.
fn coerce_scalars(v: &mut Value) {
    let Value::Mapping(m) = v else {
        if let Value::Sequence(items) = v {
            items.iter_mut().for_each(coerce_scalars);
        }
        return;
    };
    for (k, child) in m.iter_mut() {
        let key = k.as_str().unwrap_or_default();
        if FREE_MAPS.contains(&key) || key.starts_with("x-") {
            continue;
        }
        if key == "ulimits" {
            if let Value::Mapping(limits) = child {
                for (_, limit) in limits.iter_mut() {
                    if let Some(n) = limit.as_str().and_then(|t| t.trim().parse::<i64>().ok()) {
                        *limit = Value::from(n);
                    }
                    coerce_scalars(limit);
                }
            }
            continue;
        }
        if let Value::String(text) = child {
            let t = text.trim();
            if BOOL_KEYS.contains(&key) {
                match t {
                    "true" | "True" | "TRUE" | "1" | "t" | "T" => *child = Value::Bool(true),
                    "false" | "False" | "FALSE" | "0" | "f" | "F" => *child = Value::Bool(false),
                    _ => {}
                }
            } else if INT_KEYS.contains(&key) {
                if let Ok(n) = t.parse::<i64>() {
                    *child = Value::from(n);
                }
            }
        } else {
            coerce_scalars(child);
        }
    }
}

/// Deserializes `value` into `T`, reporting the failing path below `prefix`.
fn typed<T: serde::de::DeserializeOwned>(
    mut value: Value,
    prefix: &str,
) -> Result<T, ComposeError> {
    coerce_scalars(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        let message = e.inner().to_string();
        // serde's untagged message says nothing useful; say what shape was expected instead.
        let message = if message.starts_with("data did not match any variant") {
            "unexpected value: see the Compose Specification for this field's forms".to_string()
        } else {
            message
        };
        invalid(field, message)
    })
}

fn map_text(m: IndexMap<String, Option<Scalar>>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| (k, v.map(|s| s.text()).unwrap_or_default()))
        .collect()
}

pub(super) fn build_project(input: BuildInput<'_>) -> Result<Project, ComposeError> {
    let Value::Mapping(mut doc) = input.document else {
        return Err(ComposeError::Structure {
            path: input.files[0].clone(),
            message: "top level must be a mapping".into(),
        });
    };
    let mut warnings = Vec::new();
    for key in doc.keys().filter_map(Value::as_str) {
        if UNSUPPORTED_TOP_KEYS.contains(&key) {
            return Err(ComposeError::Unsupported {
                field: key.to_string(),
            });
        }
        if key == "version" {
            warnings.push("the top-level `version` key is obsolete and ignored".to_string());
        } else if !TOP_KEYS.contains(&key) && !key.starts_with("x-") {
            warnings.push(format!("unknown top-level key `{key}` ignored"));
        }
    }

    let top_name = doc.get("name").and_then(Value::as_str).map(String::from);
    let dir_name = input
        .project_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string());
    let name = match input.name_flag.or_else(|| {
        let from_env = input.env.get("COMPOSE_PROJECT_NAME");
        from_env.filter(|n| !n.is_empty()).cloned()
    }) {
        Some(explicit) => explicit,
        None => top_name
            .or(dir_name)
            .map(|n| super::normalize_project_name(&n))
            .unwrap_or_default(),
    };
    super::validate_project_name(&name)?;

    let raw_networks: IndexMap<String, Option<RawNetwork>> = typed(
        doc.remove("networks").unwrap_or(Value::Null).or_empty(),
        "networks",
    )?;
    let raw_volumes: IndexMap<String, Option<RawVolume>> = typed(
        doc.remove("volumes").unwrap_or(Value::Null).or_empty(),
        "volumes",
    )?;
    let top_networks = resolve_networks(&name, raw_networks)?;
    let top_volumes = resolve_volumes(&name, raw_volumes)?;

    let services_value = doc.remove("services").unwrap_or(Value::Null).or_empty();
    let Value::Mapping(services_map) = services_value else {
        return Err(invalid("services", "must be a mapping"));
    };

    let mut ctx = Ctx {
        project: name.clone(),
        project_dir: input.project_dir,
        env: input.env,
        top_networks: &top_networks,
        top_volumes: &top_volumes,
        warnings,
    };
    let all_profiles = input.profiles.iter().any(|p| p == "*");
    let mut services = IndexMap::new();
    let mut disabled = Vec::new();
    let mut entries: Vec<(String, Value)> = services_map
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (svc_name, value) in entries {
        let svc = resolve_service(&mut ctx, &svc_name, value)?;
        let enabled = svc.profiles.is_empty()
            || all_profiles
            || svc.profiles.iter().any(|p| input.profiles.contains(p));
        if enabled {
            services.insert(svc_name, svc);
        } else {
            disabled.push(svc_name);
        }
    }
    check_dependencies(&mut services, &disabled, &mut ctx.warnings)?;
    check_cycles(&services)?;

    let mut used_networks = BTreeSet::new();
    for svc in services.values() {
        used_networks.extend(svc.networks.keys().cloned());
    }
    let networks: BTreeMap<String, NetworkSpec> = used_networks
        .into_iter()
        .map(|key| {
            let spec = top_networks
                .get(&key)
                .cloned()
                .unwrap_or_else(|| default_network(&name));
            (key, spec)
        })
        .collect();
    let warnings = ctx.warnings;
    Ok(Project {
        name,
        working_dir: input.project_dir.to_path_buf(),
        config_files: input.files.to_vec(),
        services,
        disabled_services: disabled,
        networks,
        volumes: top_volumes,
        warnings,
    })
}

trait OrEmpty {
    fn or_empty(self) -> Value;
}

impl OrEmpty for Value {
    fn or_empty(self) -> Value {
        if self.is_null() {
            Value::Mapping(Default::default())
        } else {
            self
        }
    }
}

fn default_network(project: &str) -> NetworkSpec {
    NetworkSpec {
        name: format!("{project}_default"),
        external: false,
        driver: None,
        driver_opts: BTreeMap::new(),
        internal: false,
        attachable: false,
        enable_ipv6: false,
        labels: BTreeMap::new(),
    }
}

/// A network's or volume's Docker name, and whether it is external: `name:`, else the
/// deprecated `external: {name: x}`, else the key itself when external, else `<project>_<key>`.
fn resource_name(
    project: &str,
    key: &str,
    name: Option<String>,
    external: &Option<Value>,
) -> (String, bool) {
    let is_ext = is_external(external);
    let legacy = external
        .as_ref()
        .and_then(|e| e.get("name")?.as_str().map(String::from));
    let name = name.or(legacy).unwrap_or_else(|| {
        if is_ext {
            key.to_string()
        } else {
            format!("{project}_{key}")
        }
    });
    (name, is_ext)
}

fn is_external(v: &Option<Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Mapping(_)) => true,
        _ => false,
    }
}

fn resolve_networks(
    project: &str,
    raw: IndexMap<String, Option<RawNetwork>>,
) -> Result<BTreeMap<String, NetworkSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    for (key, net) in raw {
        let net = net.unwrap_or_default();
        if net.ipam.is_some() {
            return Err(ComposeError::Unsupported {
                field: format!("networks.{key}.ipam"),
            });
        }
        let (name, external) = resource_name(project, &key, net.name, &net.external);
        out.insert(
            key,
            NetworkSpec {
                name,
                external,
                driver: net.driver,
                driver_opts: map_text(net.driver_opts),
                internal: net.internal.unwrap_or(false),
                attachable: net.attachable.unwrap_or(false),
                enable_ipv6: net.enable_ipv6.unwrap_or(false),
                labels: map_text(net.labels),
            },
        );
    }
    Ok(out)
}

fn resolve_volumes(
    project: &str,
    raw: IndexMap<String, Option<RawVolume>>,
) -> Result<BTreeMap<String, VolumeSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    for (key, vol) in raw {
        let vol = vol.unwrap_or_default();
        let (name, external) = resource_name(project, &key, vol.name, &vol.external);
        out.insert(
            key,
            VolumeSpec {
                name,
                external,
                driver: vol.driver,
                driver_opts: map_text(vol.driver_opts),
                labels: map_text(vol.labels),
            },
        );
    }
    Ok(out)
}

fn check_keys(ctx: &mut Ctx<'_>, name: &str, value: &Value) -> Result<(), ComposeError> {
    let Value::Mapping(m) = value else {
        return Err(invalid(format!("services.{name}"), "must be a mapping"));
    };
    for key in m.keys().filter_map(Value::as_str) {
        if key == "build" {
            if m.get("image").is_none() {
                return Err(ComposeError::Build {
                    service: name.to_string(),
                });
            }
            ctx.warnings.push(format!(
                "services.{name}.build is ignored: berth pulls `image` and never builds"
            ));
        } else if UNSUPPORTED_SERVICE_KEYS.contains(&key) {
            return Err(ComposeError::Unsupported {
                field: format!("services.{name}.{key}"),
            });
        } else if !SERVICE_KEYS.contains(&key) && !key.starts_with("x-") {
            ctx.warnings
                .push(format!("unknown key services.{name}.{key} ignored"));
        }
    }
    if let Some(Value::Mapping(deploy)) = m.get("deploy") {
        for key in deploy.keys().filter_map(Value::as_str) {
            if !DEPLOY_KEYS.contains(&key) && !key.starts_with("x-") {
                ctx.warnings
                    .push(format!("services.{name}.deploy.{key} is ignored by berth"));
            }
        }
        if let Some(mode) = deploy.get("mode").and_then(Value::as_str) {
            if mode != "replicated" {
                return Err(ComposeError::Unsupported {
                    field: format!("services.{name}.deploy.mode: {mode}"),
                });
            }
        }
    }
    Ok(())
}

fn resolve_service(ctx: &mut Ctx<'_>, name: &str, value: Value) -> Result<Service, ComposeError> {
    check_keys(ctx, name, &value)?;
    let p = format!("services.{name}");
    let mut value = value;
    if let Value::Mapping(m) = &mut value {
        m.remove("build");
    }
    let raw: RawService = typed(value, &p)?;

    let image = raw
        .image
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| invalid(format!("{p}.image"), "is required"))?;
    let pull_policy = match raw.pull_policy.as_deref() {
        None | Some("missing") | Some("if_not_present") => PullPolicy::Missing,
        Some("always") => PullPolicy::Always,
        Some("never") => PullPolicy::Never,
        Some(other) => {
            return Err(invalid(
                format!("{p}.pull_policy"),
                format!("{other:?} is not one of missing, always, never"),
            ))
        }
    };
    let deploy = raw.deploy.unwrap_or_default();
    let replicas = raw.scale.or(deploy.replicas).unwrap_or(1);
    if raw.container_name.is_some() && replicas > 1 {
        return Err(invalid(
            format!("{p}.container_name"),
            "cannot be set with more than one replica",
        ));
    }

    let command = raw
        .command
        .map(|c| split_command(c, &format!("{p}.command")))
        .transpose()?;
    let entrypoint = raw
        .entrypoint
        .map(|c| split_command(c, &format!("{p}.entrypoint")))
        .transpose()?;
    let environment = resolve_environment(ctx, name, raw.env_file, raw.environment)?;
    let ports = resolve_ports(&p, raw.ports)?;
    let mut mounts = resolve_mounts(ctx, &p, raw.volumes)?;
    for (i, t) in raw.tmpfs.iter().enumerate() {
        let (target, options) = t.split_once(':').unwrap_or((t, ""));
        if !target.starts_with('/') {
            return Err(invalid(
                format!("{p}.tmpfs[{i}]"),
                format!("{t:?} must be an absolute path"),
            ));
        }
        let mut tmpfs_size = None;
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => {
                    let size = parse_size(v).map_err(|e| invalid(format!("{p}.tmpfs[{i}]"), e))?;
                    tmpfs_size = Some(size);
                }
                Some(("mode" | "uid" | "gid", _)) | None => {}
                Some((k, _)) => {
                    let message = format!("unknown tmpfs option {k:?}");
                    return Err(invalid(format!("{p}.tmpfs[{i}]"), message));
                }
            }
        }
        mounts.push(MountSpec {
            kind: MountKind::Tmpfs,
            source: None,
            target: target.to_string(),
            read_only: false,
            create_host_path: false,
            tmpfs_size,
            nocopy: false,
        });
    }

    let networks = resolve_service_networks(ctx, &p, raw.networks)?;
    let depends_on = resolve_depends_on(&p, raw.depends_on)?;
    let healthcheck = raw
        .healthcheck
        .map(|h| resolve_healthcheck(&p, h))
        .transpose()?;
    let restart = resolve_restart(&p, raw.restart, deploy.restart_policy)?;

    let limits = deploy.resources.and_then(|r| r.limits).unwrap_or_default();
    let memory = raw
        .mem_limit
        .or(limits.memory)
        .map(|m| parse_size(&m.text()).map_err(|e| invalid(format!("{p}.mem_limit"), e)))
        .transpose()?;
    let nano_cpus = raw
        .cpus
        .or(limits.cpus)
        .map(|c| {
            c.text()
                .parse::<f64>()
                .map(|f| (f * 1e9) as i64)
                .map_err(|_| {
                    invalid(
                        format!("{p}.cpus"),
                        format!("{:?} is not a number", c.text()),
                    )
                })
        })
        .transpose()?;
    let shm_size = raw
        .shm_size
        .map(|m| parse_size(&m.text()).map_err(|e| invalid(format!("{p}.shm_size"), e)))
        .transpose()?;
    let stop_grace_period_secs = raw
        .stop_grace_period
        .map(|d| {
            parse_duration(&d)
                .map(|ns| ns.div_euclid(1_000_000_000))
                .map_err(|e| invalid(format!("{p}.stop_grace_period"), e))
        })
        .transpose()?;
    let ulimits = raw
        .ulimits
        .into_iter()
        .map(|(k, v)| match v {
            RawUlimit::Single(n) => (k, (n, n)),
            RawUlimit::Pair { soft, hard } => (k, (soft, hard)),
        })
        .collect();
    let logging = raw.logging.map(|l| Logging {
        driver: l.driver,
        options: map_text(l.options),
    });
    let extra_hosts = match raw.extra_hosts {
        ExtraHosts::List(l) => l.into_iter().map(|h| h.replacen('=', ":", 1)).collect(),
        ExtraHosts::Map(m) => m
            .into_iter()
            .map(|(h, ip)| format!("{h}:{}", ip.text()))
            .collect(),
    };
    let expose = raw.expose.into_iter().map(|e| e.text()).collect();

    Ok(Service {
        name: name.to_string(),
        image,
        pull_policy,
        replicas,
        command,
        entrypoint,
        environment,
        ports,
        expose,
        mounts,
        networks,
        depends_on,
        healthcheck,
        restart,
        labels: map_text(raw.labels),
        user: raw.user.map(|u| u.text()),
        working_dir: raw.working_dir,
        hostname: raw.hostname,
        domainname: raw.domainname,
        extra_hosts,
        dns: raw.dns,
        dns_search: raw.dns_search,
        init: raw.init,
        stop_signal: raw.stop_signal,
        stop_grace_period_secs,
        ulimits,
        memory,
        nano_cpus,
        pids_limit: raw.pids_limit.or(limits.pids),
        shm_size,
        logging,
        cap_add: raw.cap_add,
        cap_drop: raw.cap_drop,
        security_opt: raw.security_opt,
        group_add: raw.group_add.into_iter().map(|g| g.text()).collect(),
        read_only: raw.read_only.unwrap_or(false),
        privileged: raw.privileged.unwrap_or(false),
        tty: raw.tty.unwrap_or(false),
        stdin_open: raw.stdin_open.unwrap_or(false),
        sysctls: map_text(raw.sysctls),
        container_name: raw.container_name,
        profiles: raw.profiles,
    })
}

/// A string command is split the way a POSIX shell splits words; a list is taken verbatim.
fn split_command(c: StringOrList, field: &str) -> Result<Vec<String>, ComposeError> {
    match c {
        StringOrList::List(l) => Ok(l),
        StringOrList::Str(s) => shell_words::split(&s).map_err(|e| invalid(field, e.to_string())),
    }
}

/// `env_file`s in order, then `environment` over them; a bare name takes the process (and `.env`)
/// value or, when that is unset, removes the variable.
fn resolve_environment(
    ctx: &mut Ctx<'_>,
    service: &str,
    env_files: Vec<EnvFileEntry>,
    environment: IndexMap<String, Option<Scalar>>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    for entry in env_files {
        let (path, required, raw_format) = match entry {
            EnvFileEntry::Path(p) => (p, true, false),
            EnvFileEntry::Long {
                path,
                required,
                format,
            } => {
                let raw = match format.as_deref() {
                    None => false,
                    Some("raw") => true,
                    Some(other) => {
                        return Err(invalid(
                            format!("services.{service}.env_file"),
                            format!("unknown format {other:?} (expected raw)"),
                        ))
                    }
                };
                (path, required.unwrap_or(true), raw)
            }
        };
        let full = resolve_path(ctx.project_dir, ctx.env, &path);
        let content = match std::fs::read_to_string(&full) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ComposeError::EnvFileMissing {
                    service: service.to_string(),
                    path: full,
                })
            }
            Err(source) => return Err(ComposeError::Read { path: full, source }),
        };
        let entries = if raw_format {
            dotenv::parse_raw(&content)
        } else {
            let env = ctx.env;
            dotenv::parse(&content, &|n: &str| env.get(n).cloned())
        }
        .map_err(|source| ComposeError::EnvFile {
            path: full.clone(),
            source,
        })?;
        for (k, v) in entries {
            match v.or_else(|| ctx.env.get(&k).cloned()) {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
    }
    for (k, v) in environment {
        match v.map(|s| s.text()).or_else(|| ctx.env.get(&k).cloned()) {
            Some(v) => out.insert(k, v),
            None => out.remove(&k),
        };
    }
    Ok(out)
}

/// A host path relative to the project directory, with `~` as the home directory.
fn resolve_path(project_dir: &Path, env: &BTreeMap<String, String>, p: &str) -> PathBuf {
    let joined = if let Some(rest) = p.strip_prefix("~/") {
        PathBuf::from(env.get("HOME").cloned().unwrap_or_else(|| "/root".into())).join(rest)
    } else if p == "~" {
        PathBuf::from(env.get("HOME").cloned().unwrap_or_else(|| "/root".into()))
    } else {
        project_dir.join(p)
    };
    // Lexical clean-up (`./a/../b`), as compose does; the path need not exist yet.
    let mut out = PathBuf::new();
    for comp in joined.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn resolve_ports(p: &str, ports: Vec<PortEntry>) -> Result<Vec<PortMapping>, ComposeError> {
    let mut out = Vec::new();
    for (i, entry) in ports.into_iter().enumerate() {
        let field = format!("{p}.ports[{i}]");
        match entry {
            PortEntry::Short(s) => {
                let sp = parse_port(&s.text()).map_err(|e| invalid(&field, e))?;
                let (ta, tb) = sp.target;
                for (offset, target) in (ta..=tb).enumerate() {
                    let published = match sp.published {
                        None => None,
                        Some((a, b)) if ta == tb && a != b => Some(format!("{a}-{b}")),
                        Some((a, _)) => Some((a + offset as u16).to_string()),
                    };
                    out.push(PortMapping {
                        target,
                        protocol: sp.protocol.clone(),
                        host_ip: sp.host_ip.clone(),
                        published,
                    });
                }
            }
            PortEntry::Long(l) => {
                let _ = (&l.name, &l.app_protocol);
                if let Some(mode) = &l.mode {
                    if mode != "ingress" && mode != "host" {
                        return Err(invalid(
                            format!("{field}.mode"),
                            format!("unknown mode {mode:?}"),
                        ));
                    }
                }
                let protocol = l.protocol.unwrap_or_else(|| "tcp".into());
                if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
                    return Err(invalid(
                        format!("{field}.protocol"),
                        format!("unknown protocol {protocol:?}"),
                    ));
                }
                let published = l.published.map(|s| s.text()).filter(|s| !s.is_empty());
                if let Some(pubd) = &published {
                    let ok = pubd.split('-').all(|x| x.parse::<u16>().is_ok());
                    if !ok {
                        return Err(invalid(
                            format!("{field}.published"),
                            format!("invalid port {pubd:?}"),
                        ));
                    }
                }
                if let Some(ip) = &l.host_ip {
                    if ip.parse::<std::net::IpAddr>().is_err() {
                        return Err(invalid(
                            format!("{field}.host_ip"),
                            format!("invalid IP {ip:?}"),
                        ));
                    }
                }
                out.push(PortMapping {
                    target: l.target,
                    protocol,
                    host_ip: l.host_ip,
                    published,
                });
            }
        }
    }
    Ok(out)
}

fn resolve_mounts(
    ctx: &mut Ctx<'_>,
    p: &str,
    volumes: Vec<VolumeEntry>,
) -> Result<Vec<MountSpec>, ComposeError> {
    let mut out = Vec::new();
    for (i, entry) in volumes.into_iter().enumerate() {
        let field = format!("{p}.volumes[{i}]");
        let is_path = |s: &str| s.starts_with('/') || s.starts_with('.') || s.starts_with('~');
        let (kind, source, target, read_only, create, size, nocopy) = match entry {
            VolumeEntry::Short(s) => {
                let sv = parse_volume(&s).map_err(|e| invalid(&field, e))?;
                match sv.source {
                    None => (
                        MountKind::Volume,
                        None,
                        sv.target,
                        sv.read_only,
                        false,
                        None,
                        false,
                    ),
                    Some(src) if is_path(&src) => (
                        MountKind::Bind,
                        Some(src),
                        sv.target,
                        sv.read_only,
                        true,
                        None,
                        false,
                    ),
                    Some(src) => (
                        MountKind::Volume,
                        Some(src),
                        sv.target,
                        sv.read_only,
                        false,
                        None,
                        false,
                    ),
                }
            }
            VolumeEntry::Long(l) => {
                let _ = &l.consistency;
                let kind = match l.kind.as_str() {
                    "bind" => MountKind::Bind,
                    "volume" => MountKind::Volume,
                    "tmpfs" => MountKind::Tmpfs,
                    other => {
                        return Err(ComposeError::Unsupported {
                            field: format!("{field}.type: {other}"),
                        })
                    }
                };
                if !l.target.starts_with('/') {
                    return Err(invalid(
                        format!("{field}.target"),
                        "must be an absolute path",
                    ));
                }
                let size = l
                    .tmpfs
                    .and_then(|t| t.size)
                    .map(|s| {
                        parse_size(&s.text()).map_err(|e| invalid(format!("{field}.tmpfs.size"), e))
                    })
                    .transpose()?;
                let create = l.bind.and_then(|b| b.create_host_path).unwrap_or(false);
                let nocopy = l.volume.and_then(|v| v.nocopy).unwrap_or(false);
                if kind == MountKind::Bind && l.source.is_none() {
                    return Err(invalid(
                        format!("{field}.source"),
                        "is required for a bind mount",
                    ));
                }
                (
                    kind,
                    l.source,
                    l.target,
                    l.read_only.unwrap_or(false),
                    create,
                    size,
                    nocopy,
                )
            }
        };
        let source = match (kind, source) {
            (MountKind::Bind, Some(src)) => Some(
                resolve_path(ctx.project_dir, ctx.env, &src)
                    .to_string_lossy()
                    .to_string(),
            ),
            (MountKind::Volume, Some(src)) => match ctx.top_volumes.get(&src) {
                Some(spec) => Some(spec.name.clone()),
                None => {
                    return Err(invalid(
                        &field,
                        format!("named volume {src:?} is not declared in the top-level `volumes`"),
                    ))
                }
            },
            (_, src) => src,
        };
        out.push(MountSpec {
            kind,
            source,
            target,
            read_only,
            create_host_path: create,
            tmpfs_size: size,
            nocopy,
        });
    }
    Ok(out)
}

fn resolve_service_networks(
    ctx: &mut Ctx<'_>,
    p: &str,
    raw: IndexMap<String, Option<RawServiceNetwork>>,
) -> Result<BTreeMap<String, ServiceNetwork>, ComposeError> {
    let raw = if raw.is_empty() {
        IndexMap::from([("default".to_string(), None)])
    } else {
        raw
    };
    let mut out = BTreeMap::new();
    for (key, opts) in raw {
        let name = match ctx.top_networks.get(&key) {
            Some(spec) => spec.name.clone(),
            None if key == "default" => format!("{}_default", ctx.project),
            None => {
                return Err(invalid(
                    format!("{p}.networks.{key}"),
                    "network is not declared in the top-level `networks`",
                ))
            }
        };
        let opts = opts.unwrap_or_default();
        out.insert(
            key,
            ServiceNetwork {
                name,
                aliases: opts.aliases,
                ipv4_address: opts.ipv4_address,
                ipv6_address: opts.ipv6_address,
            },
        );
    }
    Ok(out)
}

fn resolve_depends_on(
    p: &str,
    raw: IndexMap<String, RawDependency>,
) -> Result<IndexMap<String, Dependency>, ComposeError> {
    raw.into_iter()
        .map(|(dep, d)| {
            let condition = match d.condition.as_deref() {
                None | Some("service_started") => DependencyCondition::ServiceStarted,
                Some("service_healthy") => DependencyCondition::ServiceHealthy,
                Some("service_completed_successfully") => {
                    DependencyCondition::ServiceCompletedSuccessfully
                }
                Some(other) => {
                    return Err(invalid(
                        format!("{p}.depends_on.{dep}.condition"),
                        format!("unknown condition {other:?}"),
                    ))
                }
            };
            let dependency = Dependency {
                condition,
                required: d.required.unwrap_or(true),
                restart: d.restart.unwrap_or(false),
            };
            Ok((dep, dependency))
        })
        .collect()
}

fn resolve_healthcheck(p: &str, h: RawHealthcheck) -> Result<Healthcheck, ComposeError> {
    let dur = |v: Option<String>, key: &str| {
        v.map(|d| parse_duration(&d).map_err(|e| invalid(format!("{p}.healthcheck.{key}"), e)))
            .transpose()
    };
    let test =
        match h.test {
            None => None,
            Some(StringOrList::Str(s)) => Some(vec!["CMD-SHELL".to_string(), s]),
            Some(StringOrList::List(l)) => {
                match l.first().map(String::as_str) {
                    Some("CMD" | "CMD-SHELL") if l.len() >= 2 => {}
                    Some("NONE") => {}
                    _ => return Err(invalid(
                        format!("{p}.healthcheck.test"),
                        "a list must start with CMD, CMD-SHELL or NONE, followed by the command",
                    )),
                }
                Some(l)
            }
        };
    let disabled = h.disable.unwrap_or(false)
        || test
            .as_ref()
            .is_some_and(|t| t.first().map(String::as_str) == Some("NONE"));
    Ok(Healthcheck {
        test: if disabled {
            Some(vec!["NONE".to_string()])
        } else {
            test
        },
        interval_ns: dur(h.interval, "interval")?,
        timeout_ns: dur(h.timeout, "timeout")?,
        start_period_ns: dur(h.start_period, "start_period")?,
        start_interval_ns: dur(h.start_interval, "start_interval")?,
        retries: h.retries,
        disabled,
    })
}

fn resolve_restart(
    p: &str,
    restart: Option<String>,
    policy: Option<RawRestartPolicy>,
) -> Result<Option<(String, i64)>, ComposeError> {
    if let Some(r) = restart {
        let parsed = match r.split_once(':') {
            None if matches!(
                r.as_str(),
                "no" | "always" | "unless-stopped" | "on-failure"
            ) =>
            {
                (r, 0)
            }
            Some(("on-failure", n)) => match n.parse::<i64>() {
                Ok(n) => ("on-failure".to_string(), n),
                Err(_) => {
                    return Err(invalid(
                        format!("{p}.restart"),
                        format!("invalid retry count {n:?}"),
                    ))
                }
            },
            _ => {
                return Err(invalid(
                    format!("{p}.restart"),
                    format!("{r:?} is not one of no, always, on-failure[:N], unless-stopped"),
                ))
            }
        };
        return Ok(Some(parsed));
    }
    let Some(policy) = policy else {
        return Ok(None);
    };
    let name = match policy.condition.as_deref() {
        None | Some("any") => "always",
        Some("on-failure") => "on-failure",
        Some("none") => "no",
        Some(other) => {
            return Err(invalid(
                format!("{p}.deploy.restart_policy.condition"),
                format!("{other:?} is not one of none, on-failure, any"),
            ))
        }
    };
    Ok(Some((name.to_string(), policy.max_attempts.unwrap_or(0))))
}

fn check_dependencies(
    services: &mut IndexMap<String, Service>,
    disabled: &[String],
    warnings: &mut Vec<String>,
) -> Result<(), ComposeError> {
    let names: BTreeSet<String> = services.keys().cloned().collect();
    for svc in services.values_mut() {
        let mut dropped = Vec::new();
        for (dep, d) in &svc.depends_on {
            if names.contains(dep) {
                continue;
            }
            let is_disabled = disabled.contains(dep);
            if d.required {
                return Err(if is_disabled {
                    ComposeError::DisabledDependency {
                        service: svc.name.clone(),
                        dependency: dep.clone(),
                    }
                } else {
                    ComposeError::UnknownDependency {
                        service: svc.name.clone(),
                        dependency: dep.clone(),
                    }
                });
            }
            warnings.push(format!(
                "{}: optional dependency {dep} is not enabled; ignored",
                svc.name
            ));
            dropped.push(dep.clone());
        }
        for dep in dropped {
            svc.depends_on.shift_remove(&dep);
        }
    }
    Ok(())
}

fn check_cycles(services: &IndexMap<String, Service>) -> Result<(), ComposeError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        services: &IndexMap<String, Service>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Result<(), ComposeError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_string());
                return Err(ComposeError::Cycle { cycle });
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        stack.push(name.to_string());
        if let Some(svc) = services.get(name) {
            for dep in svc.depends_on.keys() {
                visit(dep, services, marks, stack)?;
            }
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for name in services.keys() {
        visit(name, services, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}
