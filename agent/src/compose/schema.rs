//! The compose file as it is written: serde types that accept every form compose allows
//! (short and long syntax, scalars of any type), and the lists of keys berth knows or refuses.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_norway::Value;

/// A YAML scalar where compose accepts a string, a number or a boolean.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    pub(super) fn text(&self) -> String {
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
pub(super) enum StringOrList {
    Str(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum EnvFileEntry {
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
pub(super) enum PortEntry {
    Short(Scalar),
    Long(LongPort),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongPort {
    pub(super) target: u16,
    #[serde(default)]
    pub(super) published: Option<Scalar>,
    #[serde(default)]
    pub(super) host_ip: Option<String>,
    #[serde(default)]
    pub(super) protocol: Option<String>,
    #[serde(default)]
    pub(super) mode: Option<String>,
    #[serde(default)]
    pub(super) name: Option<String>,
    #[serde(default)]
    pub(super) app_protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum VolumeEntry {
    Short(String),
    Long(Box<LongVolume>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongVolume {
    #[serde(rename = "type")]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) source: Option<String>,
    pub(super) target: String,
    #[serde(default)]
    pub(super) read_only: Option<bool>,
    #[serde(default)]
    pub(super) bind: Option<LongBind>,
    #[serde(default)]
    pub(super) volume: Option<LongVolumeOpts>,
    #[serde(default)]
    pub(super) tmpfs: Option<LongTmpfs>,
    #[serde(default)]
    pub(super) consistency: Option<String>,
    /// `type: image`'s options: read so that the type is refused by name, not by shape.
    #[serde(default)]
    pub(super) image: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LongBind {
    #[serde(default)]
    pub(super) create_host_path: Option<bool>,
    #[serde(default)]
    pub(super) propagation: Option<String>,
    #[serde(default)]
    pub(super) selinux: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LongVolumeOpts {
    #[serde(default)]
    pub(super) nocopy: Option<bool>,
    #[serde(default)]
    pub(super) subpath: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct LongTmpfs {
    #[serde(default)]
    pub(super) size: Option<Scalar>,
    #[serde(default)]
    pub(super) mode: Option<Scalar>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawServiceNetwork {
    pub(super) aliases: Vec<String>,
    pub(super) ipv4_address: Option<String>,
    pub(super) ipv6_address: Option<String>,
    pub(super) mac_address: Option<String>,
    pub(super) link_local_ips: Vec<String>,
    pub(super) driver_opts: IndexMap<String, Option<Scalar>>,
    /// Read to be refused by name: the Docker Engine API takes them from 1.48 on.
    pub(super) priority: Option<Value>,
    pub(super) gw_priority: Option<Value>,
    pub(super) interface_name: Option<Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDependency {
    pub(super) condition: Option<String>,
    pub(super) required: Option<bool>,
    pub(super) restart: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawHealthcheck {
    pub(super) test: Option<StringOrList>,
    pub(super) interval: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) start_period: Option<String>,
    pub(super) start_interval: Option<String>,
    pub(super) retries: Option<i64>,
    pub(super) disable: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RawDeploy {
    pub(super) replicas: Option<u32>,
    pub(super) resources: Option<RawResources>,
    pub(super) restart_policy: Option<RawRestartPolicy>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawResources {
    pub(super) limits: Option<RawLimits>,
    pub(super) reservations: Option<RawReservations>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawReservations {
    pub(super) memory: Option<Scalar>,
    /// Read to be refused by name: Docker has no CPU reservation for a container.
    pub(super) cpus: Option<Scalar>,
    pub(super) devices: Vec<RawDevice>,
    pub(super) generic_resources: Option<Value>,
}

/// A device request (a GPU, mostly): `gpus:` and `deploy.resources.reservations.devices`.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDevice {
    pub(super) driver: Option<String>,
    /// A number, or `all`.
    pub(super) count: Option<Scalar>,
    pub(super) device_ids: Vec<String>,
    pub(super) capabilities: Vec<String>,
    pub(super) options: IndexMap<String, Option<Scalar>>,
}

/// `gpus:`: `all`, or a list of requests.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawGpus {
    All(String),
    List(Vec<RawDevice>),
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) cpus: Option<Scalar>,
    pub(super) memory: Option<Scalar>,
    pub(super) pids: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawRestartPolicy {
    pub(super) condition: Option<String>,
    pub(super) max_attempts: Option<i64>,
    /// Swarm's: Docker's restart policy has neither (a warning, as compose ignores them too).
    pub(super) delay: Option<Value>,
    pub(super) window: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawUlimit {
    Single(i64),
    Pair { soft: i64, hard: i64 },
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawLogging {
    pub(super) driver: Option<String>,
    pub(super) options: IndexMap<String, Option<Scalar>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ExtraHosts {
    List(Vec<String>),
    Map(IndexMap<String, Addresses>),
}

/// The addresses of one host in `extra_hosts`' map form: one, or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum Addresses {
    One(Scalar),
    Many(Vec<Scalar>),
}

impl Default for ExtraHosts {
    fn default() -> Self {
        ExtraHosts::List(vec![])
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RawService {
    pub(super) image: Option<String>,
    pub(super) pull_policy: Option<String>,
    pub(super) command: Option<StringOrList>,
    pub(super) entrypoint: Option<StringOrList>,
    pub(super) environment: IndexMap<String, Option<Scalar>>,
    pub(super) env_file: Vec<EnvFileEntry>,
    pub(super) ports: Vec<PortEntry>,
    pub(super) expose: Vec<Scalar>,
    pub(super) volumes: Vec<VolumeEntry>,
    pub(super) tmpfs: Vec<String>,
    pub(super) networks: IndexMap<String, Option<RawServiceNetwork>>,
    pub(super) depends_on: IndexMap<String, RawDependency>,
    pub(super) healthcheck: Option<RawHealthcheck>,
    pub(super) restart: Option<String>,
    pub(super) deploy: Option<RawDeploy>,
    pub(super) labels: IndexMap<String, Option<Scalar>>,
    pub(super) user: Option<Scalar>,
    pub(super) working_dir: Option<String>,
    pub(super) hostname: Option<String>,
    pub(super) domainname: Option<String>,
    pub(super) extra_hosts: ExtraHosts,
    pub(super) dns: Vec<String>,
    pub(super) dns_search: Vec<String>,
    pub(super) init: Option<bool>,
    pub(super) stop_signal: Option<String>,
    pub(super) stop_grace_period: Option<String>,
    pub(super) ulimits: IndexMap<String, RawUlimit>,
    pub(super) mem_limit: Option<Scalar>,
    pub(super) cpus: Option<Scalar>,
    pub(super) pids_limit: Option<i64>,
    pub(super) shm_size: Option<Scalar>,
    pub(super) mem_reservation: Option<Scalar>,
    pub(super) mac_address: Option<String>,
    pub(super) secrets: Vec<FileUse>,
    pub(super) configs: Vec<FileUse>,
    pub(super) gpus: Option<RawGpus>,
    pub(super) logging: Option<RawLogging>,
    pub(super) cap_add: Vec<String>,
    pub(super) cap_drop: Vec<String>,
    pub(super) security_opt: Vec<String>,
    pub(super) group_add: Vec<Scalar>,
    pub(super) read_only: Option<bool>,
    pub(super) privileged: Option<bool>,
    pub(super) tty: Option<bool>,
    pub(super) stdin_open: Option<bool>,
    pub(super) sysctls: IndexMap<String, Option<Scalar>>,
    pub(super) container_name: Option<String>,
    pub(super) profiles: Vec<String>,
    pub(super) scale: Option<u32>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RawNetwork {
    pub(super) name: Option<String>,
    pub(super) external: Option<Value>,
    pub(super) driver: Option<String>,
    pub(super) driver_opts: IndexMap<String, Option<Scalar>>,
    pub(super) internal: Option<bool>,
    pub(super) attachable: Option<bool>,
    pub(super) enable_ipv6: Option<bool>,
    pub(super) labels: IndexMap<String, Option<Scalar>>,
    pub(super) ipam: Option<Value>,
    /// Any other key: an `x-` extension, or a field berth refuses by name.
    #[serde(flatten)]
    pub(super) other: IndexMap<String, Value>,
}

/// A top-level `secrets` or `configs` entry: where its content comes from.
#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawFileSource {
    pub(super) file: Option<String>,
    pub(super) environment: Option<String>,
    pub(super) content: Option<String>,
    /// Swarm's: read to be refused by name.
    pub(super) external: Option<Value>,
    pub(super) name: Option<String>,
    pub(super) driver: Option<Value>,
    pub(super) template_driver: Option<Value>,
    pub(super) labels: Option<Value>,
}

/// A service's use of a secret or config: its name, or the long form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum FileUse {
    Name(String),
    Long(LongFileUse),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LongFileUse {
    pub(super) source: String,
    #[serde(default)]
    pub(super) target: Option<String>,
    #[serde(default)]
    pub(super) uid: Option<Scalar>,
    #[serde(default)]
    pub(super) gid: Option<Scalar>,
    #[serde(default)]
    pub(super) mode: Option<Scalar>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub(super) struct RawVolume {
    pub(super) name: Option<String>,
    pub(super) external: Option<Value>,
    pub(super) driver: Option<String>,
    pub(super) driver_opts: IndexMap<String, Option<Scalar>>,
    pub(super) labels: IndexMap<String, Option<Scalar>>,
    /// Any other key: an `x-` extension, or a field berth refuses by name.
    #[serde(flatten)]
    pub(super) other: IndexMap<String, Value>,
}

// ---------------------------------------------------------------------------------------------
// Keys: those read above, and those berth refuses rather than skip.

/// The fields of [`RawService`], by name: any other key is unknown (a warning) or unsupported.
pub(super) const SERVICE_KEYS: &[&str] = &[
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
    "mem_reservation",
    "mac_address",
    "secrets",
    "configs",
    "gpus",
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
pub(super) const UNSUPPORTED_SERVICE_KEYS: &[&str] = &[
    "devices",
    "network_mode",
    "pid",
    "ipc",
    "links",
    "external_links",
    "volumes_from",
    "develop",
    "platform",
    "runtime",
    "userns_mode",
    "cgroup",
    "cgroup_parent",
    "isolation",
    "storage_opt",
    "device_cgroup_rules",
    "credential_spec",
    "oom_score_adj",
    "oom_kill_disable",
    "memswap_limit",
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

pub(super) const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets", "configs",
];
pub(super) const UNSUPPORTED_TOP_KEYS: &[&str] = &["models"];
pub(super) const DEPLOY_KEYS: &[&str] = &["replicas", "resources", "restart_policy", "mode"];
