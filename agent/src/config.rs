//! The agent's own settings: `/etc/berth/berth.toml` on an instance, any file locally. Every
//! key is documented in the README; every error names the key and says what is wrong.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/berth/berth.toml";

/// Release objects are small text files; a larger one is a mistake (or worse), refused.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 16 * 1024 * 1024;

/// Images pulled at once unless `pull_concurrency` says otherwise.
pub const DEFAULT_PULL_CONCURRENCY: usize = 4;

/// Where a file of the release is: S3, an SSM parameter, or a local path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, key: String },
    Ssm { name: String },
    Local(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            Location::Ssm { name } => write!(f, "ssm:{name}"),
            Location::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Location {
    /// Parses a location; a relative local path is taken from `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Location, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            return match rest.split_once('/') {
                Some((bucket, key))
                    if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') =>
                {
                    Ok(Location::S3 {
                        bucket: bucket.into(),
                        key: key.into(),
                    })
                }
                _ => Err(format!("{text:?} is not s3://bucket/key")),
            };
        }
        if let Some(name) = text.strip_prefix("ssm:") {
            if !name.starts_with('/') || name.len() < 2 {
                return Err(format!("{text:?} is not ssm:/parameter/name"));
            }
            return Ok(Location::Ssm { name: name.into() });
        }
        if text.is_empty() || text.contains("://") {
            return Err(format!(
                "{text:?} is not s3://bucket/key, ssm:/name or a file path"
            ));
        }
        Ok(Location::Local(base.join(text)))
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Location::Local(_))
    }

    /// The file name the object takes in the run directory.
    pub fn file_name(&self) -> String {
        let s = match self {
            Location::S3 { key, .. } => key.as_str(),
            Location::Ssm { name } => name.as_str(),
            Location::Local(p) => {
                return p
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default()
            }
        };
        s.rsplit('/').next().unwrap_or(s).to_string()
    }
}

/// Where release manifests (and what they pin) are kept: a prefix of a versioned S3 bucket, or
/// a local directory (a laptop's releases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// `prefix` is empty or ends with `/`.
    S3 {
        bucket: String,
        prefix: String,
    },
    Local(PathBuf),
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            Store::Local(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Store {
    /// `s3://bucket[/prefix[/]]`, or a directory (relative to `base`).
    pub fn parse(text: &str, base: &Path) -> Result<Store, String> {
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() || prefix.starts_with('/') || prefix.contains("//") {
                return Err(format!("{text:?} is not s3://bucket/prefix/"));
            }
            let mut prefix = prefix.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            return Ok(Store::S3 {
                bucket: bucket.into(),
                prefix,
            });
        }
        if text.is_empty() || text.contains("://") || text.starts_with("ssm:") {
            return Err(format!(
                "{text:?} is not s3://bucket/prefix/ or a directory"
            ));
        }
        Ok(Store::Local(base.join(text)))
    }
}

/// Compose's rule for project names: lowercase letters, digits, dashes and underscores, starting
/// with a letter or digit. Here because the settings name a project too.
pub fn is_project_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The account id an ECR host names: `123456789012.dkr.ecr.us-east-1.amazonaws.com`. Here
/// because `registries` is checked against it when the settings load.
pub fn ecr_registry_id(host: &str) -> Option<String> {
    let (account, rest) = host.split_once('.')?;
    let is_ecr = rest.starts_with("dkr.ecr.")
        && (rest.ends_with(".amazonaws.com") || rest.ends_with(".amazonaws.com.cn"));
    (is_ecr && account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()))
        .then(|| account.to_string())
}

/// An AWS account id: 12 digits.
pub fn check_account_id(text: &str) -> Result<(), String> {
    if text.len() == 12 && text.chars().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("{text:?} is not an AWS account id (12 digits)"))
    }
}

/// The registry host an image reference names (`docker.io` when it names none).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// How a registry's pulls authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryAuth {
    /// An ECR authorization token (GetAuthorizationToken), user `AWS`.
    Ecr,
    /// The Docker client config's `auths`.
    DockerConfig,
    /// Anonymous.
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    pub auth: RegistryAuth,
    /// The ECR registry (account) id; for ECR hosts it is read from the host name.
    pub registry_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    pub listen: SocketAddr,
    pub path: String,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            path: "/healthz".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleSettings {
    /// The launch lifecycle hook to complete; none: no lifecycle calls.
    pub hook: Option<String>,
    /// The terminate lifecycle hook (scale-in).
    pub terminate_hook: Option<String>,
    /// The AutoScaling group; default: the instance tag `aws:autoscaling:groupName` from IMDS.
    pub group: Option<String>,
    /// Seconds between RecordLifecycleActionHeartbeat calls while a slow step runs.
    pub heartbeat_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancerSettings {
    /// With it, "in service" means DescribeTargetHealth says healthy for this instance.
    pub target_group_arn: Option<String>,
    /// The target's port in the target group.
    pub port: Option<u16>,
    /// Without a target group: consecutive 200s to the ALB's checker that mean healthy.
    pub healthy_threshold: Option<u32>,
    /// Failed checks after which the load balancer stops sending (ALB default 2); a drain
    /// without `target_group_arn` waits for that many 503s to its checker.
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub imds_secs: u64,
    pub fetch_secs: u64,
    pub ready_secs: u64,
    pub in_service_secs: u64,
    /// The longest a drain (leaving, or an upgrade by the drain strategy) waits for the load
    /// balancer to stop sending: its failed checks, or the target's state. The ALB's defaults
    /// (two failed checks 30 s apart) need up to 90 s.
    pub lb_drain_secs: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            imds_secs: 30,
            fetch_secs: 60,
            ready_secs: 600,
            in_service_secs: 600,
            lb_drain_secs: 90,
        }
    }
}

/// The file as written.
/// How an upgrade replaces the running release (see the README's "Upgrades").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// berth's proxy owns the traffic port; the new release starts beside the old one.
    Proxy,
    /// No proxy: fail health, wait for the load balancer to stop sending, recreate.
    Drain,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpgradeSettings {
    pub strategy: Strategy,
    /// The agent's control socket (`berth upgrade`, `rollback`, `status`); default
    /// `<run_dir>/control.sock`.
    pub control: Option<PathBuf>,
    /// After the switch, how long the new release must stay healthy before the old one stops.
    pub verify_secs: u64,
    /// How long in-flight requests to the old release may take to finish.
    pub drain_secs: u64,
    /// Poll the release pointer this often and upgrade when it changes; 0: off.
    pub watch_secs: u64,
    /// Proxy strategy: how long the stopped previous release is kept for `berth rollback`;
    /// None: until the next upgrade.
    pub keep_previous_secs: Option<u64>,
    /// Proxy strategy: the new release judged by its traffic after the switch.
    pub analysis: AnalysisSettings,
    /// Proxy strategy: a preview (`berth upgrade --preview`) neither promoted nor rolled back
    /// within this ends as a rollback does.
    pub preview_secs: u64,
    /// The key a preview's token is derived under (`ssm:/` SecureString, `s3://` object or a
    /// file), shared by the fleet; none: this host's own (`<state_dir>/preview.key`).
    pub preview_key: Option<String>,
    /// Proxy strategy: the weighted canary of `berth upgrade --canary`.
    pub canary: CanarySettings,
    /// CloudWatch alarms that fail a release when they go to ALARM while it is watched.
    pub alarms: AlarmSettings,
    /// Commands (or URLs) run at named stages of an upgrade on this instance.
    pub hooks: HooksSettings,
}

/// `[upgrade.hooks.<stage>]`: the team's own checks between "healthy" and "takes traffic".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksSettings {
    /// The new release is healthy and reached by nothing but the hook (its backends in
    /// `BERTH_BACKENDS`): a failure fails the release before any traffic moves.
    pub after_healthy: Option<HookSettings>,
    /// The new release took the traffic: a failure fails it as a failed watch does (it is
    /// switched back).
    pub after_switch: Option<HookSettings>,
    /// The previous release serves again (an automatic rollback, or `berth rollback`): a
    /// failure is logged.
    pub after_rollback: Option<HookSettings>,
}

impl HooksSettings {
    /// Each stage's hook with its name.
    pub fn each(&self) -> [(&'static str, Option<&HookSettings>); 3] {
        [
            ("after_healthy", self.after_healthy.as_ref()),
            ("after_switch", self.after_switch.as_ref()),
            ("after_rollback", self.after_rollback.as_ref()),
        ]
    }
}

/// One hook: a command (a string for `sh -c`, or an argument list) or an `http://` URL (POSTed
/// a JSON of the stage, the releases and the backends).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HookSettings {
    #[serde(default)]
    pub command: Option<HookCommand>,
    #[serde(default)]
    pub url: Option<String>,
    /// How long it may take, its "not yet" answers (exit 75, HTTP 503) asked again included.
    #[serde(default = "default_hook_timeout")]
    pub timeout_secs: u64,
    /// How long to wait before asking again after a "not yet".
    #[serde(default = "default_hook_retry")]
    pub retry_secs: u64,
}

fn default_hook_timeout() -> u64 {
    60
}

fn default_hook_retry() -> u64 {
    2
}

/// A hook's command: `sh -c` of a string, or an argument list run as it is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum HookCommand {
    Shell(String),
    Argv(Vec<String>),
}

/// `[upgrade.alarms]`: CloudWatch alarms as gates on this instance's upgrades.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlarmSettings {
    /// Alarm names (metric or composite). One going to ALARM during the canary's steps, the
    /// watch or the bake fails the release, which rolls back as after a failed analysis.
    pub names: Vec<String>,
    /// How often they are looked at (CloudWatch's DescribeAlarms).
    pub check_secs: u64,
}

impl Default for AlarmSettings {
    fn default() -> Self {
        AlarmSettings {
            names: vec![],
            check_secs: 10,
        }
    }
}

/// The weighted canary's schedule (`[upgrade.canary]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CanarySettings {
    /// The shares of new sessions (percent, rising, below 100) the new release gets in turn
    /// before the switch.
    pub steps: Vec<u8>,
    /// How long each step holds while the analysis watches it.
    pub step_secs: u64,
}

impl Default for CanarySettings {
    fn default() -> Self {
        CanarySettings {
            steps: vec![10, 25, 50],
            step_secs: 60,
        }
    }
}

/// Why a canary schedule cannot run, if it cannot: shares rising, each 1 to 99.
pub fn check_canary_steps(steps: &[u8]) -> Result<(), String> {
    if steps.is_empty() {
        return Err("needs at least one step".into());
    }
    if let Some(bad) = steps.iter().find(|p| !(1..=99).contains(*p)) {
        return Err(format!("{bad} is not a share from 1 to 99 percent"));
    }
    if let Some(w) = steps.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!("must rise: {} then {}", w[0], w[1]));
    }
    Ok(())
}

impl Default for UpgradeSettings {
    fn default() -> Self {
        UpgradeSettings {
            strategy: Strategy::Drain,
            control: None,
            verify_secs: 10,
            drain_secs: 30,
            watch_secs: 0,
            keep_previous_secs: None,
            analysis: AnalysisSettings::default(),
            preview_secs: 3600,
            preview_key: None,
            canary: CanarySettings::default(),
            alarms: AlarmSettings::default(),
            hooks: HooksSettings::default(),
        }
    }
}

/// The limits a new release is held to (`[upgrade.analysis]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSettings {
    /// Off: the new release is judged by its health checks only.
    pub enabled: bool,
    /// How long the new release is watched after `verify_secs`, before the old one stops.
    pub bake_secs: u64,
    /// Requests a release must have served before its figures are judged (the new one's, and
    /// the previous one's for the relative limits).
    pub min_requests: u64,
    /// The new release's 5xx ratio may always reach this (percent).
    pub max_5xx_percent: f64,
    /// ...and this many times the previous release's ratio, when that is higher.
    pub max_5xx_factor: f64,
    /// The new release's p99 may reach this many times the previous release's...
    pub max_p99_factor: f64,
    /// ...and at least this (ms): below it, latency is not judged (the proxy's histogram has
    /// buckets of 1, 2, 5, 10, 25, 50 ms: a fast app moving one bucket up is not a regression).
    pub p99_floor_ms: u64,
    /// After the switch (or the canary's start), latency counts only after this long: new
    /// connections, cold caches and a JIT still compiling are not a regression. Errors count
    /// from the first request.
    pub warmup_secs: u64,
    /// How the figures are judged: `sequential` (a sequential test that holds its error rates
    /// under repeated looks, watching past the window while undecided) or `fixed` (the first
    /// look over a fixed line fails: the judge before it, kept to measure against).
    pub method: Method,
    /// Sequential: the longest the watch goes on, from the switch, while the test cannot
    /// decide; then the fixed lines judge once.
    pub max_secs: u64,
}

/// How `[upgrade.analysis]` judges (see [`AnalysisSettings::method`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    #[default]
    Sequential,
    Fixed,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            enabled: true,
            bake_secs: 0,
            min_requests: 100,
            max_5xx_percent: 1.0,
            max_5xx_factor: 2.0,
            max_p99_factor: 1.5,
            p99_floor_ms: 50,
            warmup_secs: 5,
            method: Method::Sequential,
            max_secs: 60,
        }
    }
}

impl AnalysisSettings {
    /// A key and why it is wrong.
    pub fn check(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("upgrade.analysis.{k}");
        if !(0.0..=100.0).contains(&self.max_5xx_percent) {
            return Err((key("max_5xx_percent"), "must be 0 to 100".into()));
        }
        for (k, v) in [
            ("max_5xx_factor", self.max_5xx_factor),
            ("max_p99_factor", self.max_p99_factor),
        ] {
            if !v.is_finite() || v < 1.0 {
                return Err((key(k), "must be 1.0 or more".into()));
            }
        }
        if self.min_requests == 0 {
            return Err((key("min_requests"), "must be at least 1".into()));
        }
        Ok(())
    }
}

/// The watchdog that, while holding, keeps what serves serving (see the README's "Holding").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogSettings {
    /// Off: nothing is looked at after the boot (the health endpoint stays 200).
    pub enabled: bool,
    /// Looks this often even when Docker reports no event (a safety net for a missed one).
    pub observe_secs: u64,
    /// How long a fault may last while berth repairs it; after that the instance stays 503
    /// (and is reported unhealthy to its AutoScaling group) so that it is replaced.
    pub repair_secs: u64,
    /// The fleet brake: an instance reports itself unhealthy only while fewer than this share
    /// of its group (at least one instance) is already unhealthy or being replaced; else it
    /// logs, and asks again a minute later.
    pub max_unhealthy_percent: u8,
}

impl Default for WatchdogSettings {
    fn default() -> Self {
        WatchdogSettings {
            enabled: true,
            observe_secs: 5,
            repair_secs: 120,
            max_unhealthy_percent: 30,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxySettings {
    /// The `berth proxy` control socket.
    pub control: PathBuf,
    /// The traffic port the proxy listens on; the routed service publishes it in the compose
    /// file, and berth publishes that container port on an ephemeral 127.0.0.1 port instead.
    pub port: u16,
    /// The routed service; default: the one that publishes `port`.
    pub service: Option<String>,
    /// Probed on each new replica (GET, 2xx) before the switch and while verifying.
    pub health_path: Option<String>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            control: PathBuf::from("/run/berth-proxy.sock"),
            port: 8080,
            service: None,
            health_path: None,
        }
    }
}

/// What a release's compose file may ask of the host: the root-owned config decides, never the
/// file (it comes from S3, whoever can write there would otherwise be root on every instance).
/// Every default refuses; each key allows one thing. The `policy` module checks a resolved
/// project against it before any pull.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySettings {
    /// `privileged: true`.
    pub privileged: bool,
    /// Capabilities `cap_add` may name beyond Docker's default set (`NET_ADMIN`, ...).
    pub cap_add: Vec<String>,
    /// `security_opt` entries allowed beyond `no-new-privileges` (e.g. `seccomp=unconfined`).
    pub security_opt: Vec<String>,
    /// `sysctls` names allowed; `net.core.*` allows a prefix.
    pub sysctls: Vec<String>,
    /// Host directories binds (and local secret, config and env files) may reach beyond the
    /// project's own directory.
    pub bind_prefixes: Vec<PathBuf>,
    /// Bind propagation other than private (`shared`, `slave` and their `r` forms).
    pub bind_propagation: bool,
    /// Local volumes that bind a host path (`driver_opts: {o: bind, device: ...}`), judged
    /// against `bind_prefixes` too.
    pub bind_volumes: bool,
    /// Device requests (`gpus:`, `deploy.resources.reservations.devices`).
    pub devices: bool,
    /// A network named `host` (the host's network namespace).
    pub host_network: bool,
    /// Where secrets' and configs' `s3://` and `ssm:/` sources may be, as prefixes; besides
    /// these, the compose file's own S3 directory and `ssm:/<project>/`.
    pub sources: Vec<String>,
    /// Registries images may come from (`host[:port]`, `*.example.com`, `docker.io`); unset:
    /// any (warned at every deploy).
    pub registries: Option<Vec<String>>,
}

/// Host paths no bind or file of a release may reach, whatever `policy.bind_prefixes` says:
/// each is the host itself (or Docker's control of it).
pub const NEVER_BOUND: [&str; 13] = [
    "/",
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/run/docker",
];

impl PolicySettings {
    /// Only the `[policy]` table of a berth.toml (`berth up --policy`): the rest of the file
    /// is the agent's and need not be complete for a local command.
    pub fn load(path: &Path) -> Result<PolicySettings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse = |e: toml::de::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " ").replace("  ", " "),
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse)?;
        let policy: PolicySettings = match table.remove("policy") {
            Some(v) => v.try_into().map_err(parse)?,
            None => PolicySettings::default(),
        };
        policy
            .check()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(policy)
    }

    fn check(&self) -> Result<(), (String, String)> {
        for (i, p) in self.bind_prefixes.iter().enumerate() {
            let key = format!("policy.bind_prefixes[{i}]");
            if !p.is_absolute() {
                return Err((key, format!("{} must be an absolute path", p.display())));
            }
            let p = p.components().collect::<PathBuf>();
            if let Some(never) = NEVER_BOUND.iter().find(|n| never_reaches(Path::new(n), &p)) {
                return Err((
                    key,
                    format!("{} reaches {never}, which no release may bind", p.display()),
                ));
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            let ok = s
                .strip_prefix("s3://")
                .is_some_and(|r| r.split('/').next().is_some_and(|b| !b.is_empty()))
                || s.starts_with("ssm:/");
            if !ok {
                return Err((
                    format!("policy.sources[{i}]"),
                    format!("{s:?} is not an s3://bucket/prefix or ssm:/prefix"),
                ));
            }
        }
        for (i, s) in self.sysctls.iter().enumerate() {
            if s.is_empty() || s == "*" {
                return Err((
                    format!("policy.sysctls[{i}]"),
                    format!("{s:?} names no sysctl; list names or prefixes such as net.core.*"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `path` reaches `never`: is it, lies under it, or holds it (a bind of /var holds
/// /var/lib/docker). Under `/` lies everything, so `/` reaches only itself that way.
pub fn never_reaches(never: &Path, path: &Path) -> bool {
    never.starts_with(path) || (path.starts_with(never) && never != Path::new("/"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    project: String,
    compose: String,
    #[serde(default)]
    env_files: Vec<String>,
    release: Option<String>,
    release_var: Option<String>,
    manifests: Option<String>,
    #[serde(default)]
    local: bool,
    run_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    #[serde(default)]
    s3_path_style: bool,
    bucket_owner: Option<String>,
    pull_concurrency: Option<usize>,
    max_object_bytes: Option<u64>,
    #[serde(default)]
    health: HealthSettings,
    #[serde(default)]
    lifecycle: LifecycleSettings,
    #[serde(default)]
    load_balancer: LoadBalancerSettings,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default)]
    upgrade: UpgradeSettings,
    #[serde(default)]
    proxy: ProxySettings,
    #[serde(default)]
    watchdog: WatchdogSettings,
    #[serde(default)]
    registries: BTreeMap<String, RegistrySettings>,
    #[serde(default)]
    policy: PolicySettings,
}

impl RawConfig {
    /// The keys checked one by one; an error is the key and what is wrong with it.
    fn check(&self) -> Result<(), (String, String)> {
        if !self.health.path.starts_with('/') {
            return Err((
                "health.path".into(),
                format!("{:?} must start with /", self.health.path),
            ));
        }
        if self.health.path == "/status" {
            return Err((
                "health.path".into(),
                "/status is berth's status page; choose another path".into(),
            ));
        }
        if let Some(arn) = &self.load_balancer.target_group_arn {
            if !arn.starts_with("arn:") || !arn.contains(":targetgroup/") {
                return Err((
                    "load_balancer.target_group_arn".into(),
                    format!("{arn:?} is not a target group ARN"),
                ));
            }
        }
        if self.load_balancer.healthy_threshold == Some(0) {
            return Err((
                "load_balancer.healthy_threshold".into(),
                "must be at least 1".into(),
            ));
        }
        for (key, secs) in [
            ("timeouts.imds_secs", self.timeouts.imds_secs),
            ("timeouts.fetch_secs", self.timeouts.fetch_secs),
            ("timeouts.ready_secs", self.timeouts.ready_secs),
            ("timeouts.in_service_secs", self.timeouts.in_service_secs),
            ("timeouts.lb_drain_secs", self.timeouts.lb_drain_secs),
            ("watchdog.observe_secs", self.watchdog.observe_secs),
            ("watchdog.repair_secs", self.watchdog.repair_secs),
        ] {
            if secs == 0 {
                return Err((key.into(), "must be at least 1 second".into()));
            }
        }
        if self.watchdog.max_unhealthy_percent > 100 {
            return Err((
                "watchdog.max_unhealthy_percent".into(),
                "is a share of the group: 0 to 100".into(),
            ));
        }
        self.upgrade.analysis.check()?;
        for (stage, hook) in self.upgrade.hooks.each() {
            let Some(hook) = hook else { continue };
            let key = |k: &str| format!("upgrade.hooks.{stage}.{k}");
            match (&hook.command, &hook.url) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err((
                        format!("upgrade.hooks.{stage}"),
                        "needs one of command or url".into(),
                    ))
                }
                (Some(HookCommand::Argv(argv)), None) if argv.is_empty() => {
                    return Err((key("command"), "is an empty argument list".into()))
                }
                (None, Some(url)) if !url.starts_with("http://") => {
                    return Err((
                        key("url"),
                        format!("{url:?}: an http:// URL (for https, a command running curl)"),
                    ))
                }
                _ => {}
            }
            if hook.timeout_secs == 0 || hook.retry_secs == 0 {
                return Err((
                    key(if hook.timeout_secs == 0 {
                        "timeout_secs"
                    } else {
                        "retry_secs"
                    }),
                    "must be at least 1 second".into(),
                ));
            }
        }
        if self.upgrade.alarms.check_secs == 0 {
            return Err((
                "upgrade.alarms.check_secs".into(),
                "must be at least 1 second".into(),
            ));
        }
        if let Some(bad) = self
            .upgrade
            .alarms
            .names
            .iter()
            .find(|n| n.is_empty() || n.len() > 255)
        {
            return Err((
                "upgrade.alarms.names".into(),
                format!("{bad:?} is not an alarm name (1 to 255 characters)"),
            ));
        }
        self.policy.check()?;
        if let Err(why) = check_canary_steps(&self.upgrade.canary.steps) {
            return Err(("upgrade.canary.steps".into(), why));
        }
        if self.upgrade.canary.step_secs == 0 {
            return Err((
                "upgrade.canary.step_secs".into(),
                "must be at least 1 second".into(),
            ));
        }
        if self.upgrade.preview_secs == 0 {
            return Err((
                "upgrade.preview_secs".into(),
                "must be at least 1 second".into(),
            ));
        }
        if self.upgrade.drain_secs == 0 {
            return Err((
                "upgrade.drain_secs".into(),
                "must be at least 1 second".into(),
            ));
        }
        if self.proxy.port == 0 {
            return Err((
                "proxy.port".into(),
                "must be a port number (1-65535)".into(),
            ));
        }
        if let Some(p) = &self.proxy.health_path {
            if !p.starts_with('/') {
                return Err((
                    "proxy.health_path".into(),
                    format!("{p:?} must start with /"),
                ));
            }
        }
        if let Some(owner) = &self.bucket_owner {
            check_account_id(owner).map_err(|m| ("bucket_owner".to_string(), m))?;
        }
        if self.max_object_bytes == Some(0) {
            return Err(("max_object_bytes".into(), "must be at least 1".into()));
        }
        if self.pull_concurrency == Some(0) {
            return Err(("pull_concurrency".into(), "must be at least 1".into()));
        }
        if self.lifecycle.heartbeat_secs == Some(0) {
            return Err((
                "lifecycle.heartbeat_secs".into(),
                "must be at least 1".into(),
            ));
        }
        for (host, r) in &self.registries {
            if r.auth == RegistryAuth::Ecr
                && r.registry_id.is_none()
                && ecr_registry_id(host).is_none()
            {
                return Err((
                    format!("registries.\"{host}\".registry_id"),
                    "is required for an ECR registry whose host does not name its account".into(),
                ));
            }
        }
        Ok(())
    }
}

fn check_release_var(name: &str) -> Result<(), (&'static str, String)> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        || name.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(("release_var", format!("{name:?} is not a variable name")));
    }
    Ok(())
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub path: PathBuf,
    pub project: String,
    pub compose: Location,
    pub env_files: Vec<Location>,
    pub release: Option<Location>,
    /// The interpolation variable that carries the release id (default `RELEASE`).
    pub release_var: String,
    /// Where release manifests are (`berth release create` writes them): a release id the
    /// pointer names runs exactly what its manifest pins. None: every release floats (its
    /// files are read as they are now).
    pub manifests: Option<Store>,
    /// No IMDS, no lifecycle or load-balancer calls: the laptop mode.
    pub local: bool,
    /// Where fetched files are written (0700 directory, 0600 files): a tmpfs under systemd.
    pub run_dir: PathBuf,
    /// What must outlive a reboot: the project directory (relative binds), the deployed
    /// manifests, the drain strategy's mark. On disk.
    pub state_dir: PathBuf,
    pub s3_path_style: bool,
    /// The account that must own every bucket berth reads or writes (ExpectedBucketOwner);
    /// default: the instance's own (IMDS), none in a local run.
    pub bucket_owner: Option<String>,
    /// Images pulled at once (default 4).
    pub pull_concurrency: usize,
    /// The largest release object (compose file, env file, pointer) read from S3, SSM or disk.
    pub max_object_bytes: u64,
    pub health: HealthSettings,
    pub lifecycle: LifecycleSettings,
    pub load_balancer: LoadBalancerSettings,
    pub timeouts: Timeouts,
    pub upgrade: UpgradeSettings,
    pub proxy: ProxySettings,
    pub watchdog: WatchdogSettings,
    pub registries: BTreeMap<String, RegistrySettings>,
    /// What a release may ask of the host.
    pub policy: PolicySettings,
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AgentConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " ").replace("  ", " "),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        if !is_project_name(&raw.project) {
            return Err(invalid(
                "project",
                format!("invalid project name {:?}: use lowercase letters, digits, dashes and underscores, starting with a letter or digit", raw.project),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let location = |key: &str, text: &str| {
            Location::parse(text, base).map_err(|message| invalid(key, message))
        };
        let compose = location("compose", &raw.compose)?;
        let env_files = raw
            .env_files
            .iter()
            .enumerate()
            .map(|(i, e)| location(&format!("env_files[{i}]"), e))
            .collect::<Result<Vec<_>, _>>()?;
        if compose.is_local() && env_files.iter().any(|e| !e.is_local()) {
            return Err(invalid(
                "env_files",
                "remote env files are written beside a remote compose file; with a local `compose`, list local files".into(),
            ));
        }
        let release = raw
            .release
            .as_deref()
            .map(|r| location("release", r))
            .transpose()?;
        let manifests = raw
            .manifests
            .as_deref()
            .map(|m| Store::parse(m, base).map_err(|message| invalid("manifests", message)))
            .transpose()?;
        if let (Some(Store::Local(_)), false) = (&manifests, compose.is_local()) {
            return Err(invalid(
                "manifests",
                "a local directory of manifests goes with a local `compose`; with a remote one, use s3://bucket/prefix/".into(),
            ));
        }
        let run_dir = raw
            .run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/berth"));
        let state_dir = raw
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/berth"));
        if state_dir.starts_with(&run_dir) || run_dir.starts_with(&state_dir) {
            return Err(invalid(
                "state_dir",
                format!(
                    "{} and run_dir {} must not contain one another: the state outlives a reboot, the run directory (secrets) must not",
                    state_dir.display(),
                    run_dir.display()
                ),
            ));
        }
        let release_var = raw.release_var.clone().unwrap_or_else(|| "RELEASE".into());
        check_release_var(&release_var).map_err(|(k, m)| invalid(k, m))?;
        raw.check().map_err(|(k, m)| invalid(&k, m))?;
        Ok(AgentConfig {
            path: path.to_path_buf(),
            project: raw.project,
            compose,
            env_files,
            release,
            release_var,
            manifests,
            local: raw.local,
            run_dir,
            state_dir,
            s3_path_style: raw.s3_path_style,
            bucket_owner: raw.bucket_owner,
            pull_concurrency: raw.pull_concurrency.unwrap_or(DEFAULT_PULL_CONCURRENCY),
            max_object_bytes: raw.max_object_bytes.unwrap_or(DEFAULT_MAX_OBJECT_BYTES),
            health: raw.health,
            lifecycle: raw.lifecycle,
            load_balancer: raw.load_balancer,
            timeouts: raw.timeouts,
            upgrade: raw.upgrade,
            proxy: raw.proxy,
            watchdog: raw.watchdog,
            registries: raw.registries,
            policy: raw.policy,
        })
    }

    /// The agent's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.upgrade
            .control
            .clone()
            .unwrap_or_else(|| self.run_dir.join("control.sock"))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.lifecycle.heartbeat_secs.unwrap_or(60))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(Path::new("/etc/berth/berth.toml"), text)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("project = \"api\"\ncompose = \"s3://b/k/compose.yaml\"\n").unwrap();
        assert_eq!(c.project, "api");
        assert_eq!(c.release_var, "RELEASE");
        assert_eq!(c.health.path, "/healthz");
        assert_eq!(c.health.listen.port(), 8081);
        assert_eq!(c.run_dir, PathBuf::from("/run/berth"));
        assert_eq!(c.timeouts.ready_secs, 600);
        assert!(!c.local);
    }

    #[test]
    fn full_config_parses() {
        let c = parse(
            r#"
project = "api"
compose = "s3://cfg/api/compose.yaml"
env_files = ["s3://cfg/api/api.env", "ssm:/api/extra.env"]
release = "ssm:/api/release"
s3_path_style = true
[health]
listen = "127.0.0.1:9000"
path = "/ready"
[lifecycle]
hook = "launch"
group = "asg"
heartbeat_secs = 30
[load_balancer]
target_group_arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/api/0123"
port = 8080
[timeouts]
ready_secs = 60
[registries."127.0.0.1:5000"]
auth = "ecr"
registry_id = "123456789012"
"#,
        )
        .unwrap();
        assert_eq!(c.env_files.len(), 2);
        assert_eq!(c.lifecycle.hook.as_deref(), Some("launch"));
        assert_eq!(c.heartbeat(), Duration::from_secs(30));
        assert_eq!(c.registries["127.0.0.1:5000"].auth, RegistryAuth::Ecr);
        assert!(c.s3_path_style);
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key() {
        let base = "project = \"api\"\ncompose = \"s3://b/c.yaml\"\n";
        let e = error_of("compose = \"s3://b/c.yaml\"\n");
        assert!(e.contains("project"), "{e}");
        let e = error_of(&format!("{base}bogus = 1\n"));
        assert!(e.contains("bogus"), "{e}");
        let e = error_of("project = \"API!\"\ncompose = \"s3://b/c\"\n");
        assert!(e.contains("`project`"), "{e}");
        let e = error_of("project = \"api\"\ncompose = \"s3://bucket-only\"\n");
        assert!(e.contains("`compose`") && e.contains("bucket-only"), "{e}");
        let e = error_of(&format!("{base}[health]\npath = \"healthz\"\n"));
        assert!(e.contains("health.path"), "{e}");
        let e = error_of(&format!("{base}[health]\nlisten = \"nowhere\"\n"));
        assert!(e.contains("listen"), "{e}");
        let e = error_of(&format!(
            "{base}[load_balancer]\ntarget_group_arn = \"tg\"\n"
        ));
        assert!(e.contains("load_balancer.target_group_arn"), "{e}");
        let e = error_of(&format!("{base}[timeouts]\nready_secs = 0\n"));
        assert!(e.contains("timeouts.ready_secs"), "{e}");
        for (steps, why) in [
            ("[]", "at least one"),
            ("[10, 100]", "100 is not a share"),
            ("[0, 10]", "0 is not a share"),
            ("[50, 25]", "must rise: 50 then 25"),
        ] {
            let e = error_of(&format!("{base}[upgrade.canary]\nsteps = {steps}\n"));
            assert!(e.contains("upgrade.canary.steps") && e.contains(why), "{e}");
        }
        let e = error_of(&format!("{base}[upgrade.canary]\nstep_secs = 0\n"));
        assert!(e.contains("upgrade.canary.step_secs"), "{e}");
        let e = error_of(&format!("{base}release_var = \"1X\"\n"));
        assert!(e.contains("release_var"), "{e}");
        let e = error_of(&format!(
            "{base}[registries.\"r.example:5000\"]\nauth = \"ecr\"\n"
        ));
        assert!(e.contains("registry_id"), "{e}");
        let e = error_of(&format!("{base}[registries.\"r\"]\nauth = \"magic\"\n"));
        assert!(e.contains("magic") || e.contains("auth"), "{e}");
        let e = error_of(
            "project = \"api\"\ncompose = \"/srv/compose.yaml\"\nenv_files = [\"s3://b/e.env\"]\n",
        );
        assert!(e.contains("env_files"), "{e}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let e = error_of("project = \n");
        assert!(e.contains("/etc/berth/berth.toml"), "{e}");
    }
}
