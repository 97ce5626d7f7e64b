//! The host policy: what a resolved project may ask of the host. The compose file is input
//! (on an instance it comes from S3, and whoever can write there would otherwise be root on
//! every instance); the root-owned berth.toml's `[policy]` decides. Judged before any pull, by
//! `berth up`, `plan` and `config` as by the agent, so that an operator sees what the agent
//! would refuse. Every refusal names the field and the policy key that would allow it.

use std::path::{Component, Path, PathBuf};

use crate::compose::{MountKind, Project};
use crate::config::{never_reaches, registry_of, PolicySettings, NEVER_BOUND};

#[cfg(test)]
mod tests;

/// Capabilities Docker grants every container: naming them in `cap_add` (as `cap_drop: [ALL]`
/// then `cap_add: [NET_BIND_SERVICE]` does) asks for nothing more.
const DOCKER_DEFAULT_CAPS: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Propagation that lets mounts cross between the container and the host.
const SHARED_PROPAGATION: [&str; 4] = ["shared", "rshared", "slave", "rslave"];

/// Where the project lives on this host, and where the policy came from.
#[derive(Debug, Clone)]
pub struct Host {
    /// The project's own directory: binds and files under it need no `bind_prefixes`.
    pub project_dir: PathBuf,
    /// The files berth itself writes in the project directory (the compose file, the env
    /// files' links): read by the project, never bound into a container.
    pub own_files: Vec<PathBuf>,
    /// The run directory (the release's secrets) and the state directory: no container
    /// reaches them, but the project directory inside the state directory.
    pub run_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The compose file's location when it is remote: its S3 directory is an allowed source.
    pub compose_location: Option<String>,
    /// Where the policy was read from (a file, or "the default policy"), for messages.
    pub origin: String,
}

/// One thing refused: the field that asks it, what it asks, and how to allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub what: String,
    pub allow: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.what, self.allow)
    }
}

#[derive(Debug, thiserror::Error)]
#[error(
    "the host policy ({origin}) refuses what the compose file asks of the host: {}",
    list(refusals)
)]
pub struct PolicyError {
    pub origin: String,
    pub refusals: Vec<Refusal>,
}

fn list(refusals: &[Refusal]) -> String {
    refusals
        .iter()
        .map(Refusal::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Judges the project: Ok with warnings (what the policy leaves open), or every refusal.
pub fn check(
    project: &Project,
    policy: &PolicySettings,
    host: &Host,
) -> Result<Vec<String>, PolicyError> {
    let mut out = Vec::new();
    let judge = Judge { policy, host };
    for svc in project.services.values() {
        let field = |f: &str| format!("services.{}.{f}", svc.name);
        if svc.privileged && !policy.privileged {
            out.push(Refusal {
                field: field("privileged"),
                what: "true gives the container the whole host".into(),
                allow: "allow with `privileged = true` under [policy]".into(),
            });
        }
        for cap in &svc.cap_add {
            let name = cap_name(cap);
            let allowed = DOCKER_DEFAULT_CAPS.contains(&name.as_str())
                || policy.cap_add.iter().any(|c| cap_name(c) == name);
            if !allowed {
                out.push(Refusal {
                    field: field("cap_add"),
                    what: format!("{cap} is beyond Docker's default capabilities"),
                    allow: format!("allow with `cap_add = [\"{name}\"]` under [policy]"),
                });
            }
        }
        for opt in &svc.security_opt {
            let norm = security_opt(opt);
            let allowed = matches!(
                norm.as_str(),
                "no-new-privileges" | "no-new-privileges=true"
            ) || policy.security_opt.iter().any(|o| security_opt(o) == norm);
            if !allowed {
                out.push(Refusal {
                    field: field("security_opt"),
                    what: format!("{opt} loosens the container's confinement"),
                    allow: format!("allow with `security_opt = [\"{opt}\"]` under [policy]"),
                });
            }
        }
        for name in svc.sysctls.keys() {
            if !policy.sysctls.iter().any(|s| sysctl_matches(s, name)) {
                out.push(Refusal {
                    field: field("sysctls"),
                    what: format!("{name} is a kernel setting"),
                    allow: format!("allow with `sysctls = [\"{name}\"]` under [policy]"),
                });
            }
        }
        if !svc.device_requests.is_empty() && !policy.devices {
            out.push(Refusal {
                field: field("deploy.resources.reservations.devices"),
                what: "devices (gpus) are the host's".into(),
                allow: "allow with `devices = true` under [policy]".into(),
            });
        }
        for net in svc.networks.values() {
            if net.name == "host" && !policy.host_network {
                out.push(Refusal {
                    field: field("networks"),
                    what: "the network `host` is the host's own network namespace".into(),
                    allow: "allow with `host_network = true` under [policy]".into(),
                });
            }
        }
        for m in &svc.mounts {
            let (MountKind::Bind, Some(source)) = (&m.kind, &m.source) else {
                continue;
            };
            if let Some(r) = judge.path(&field("volumes"), Path::new(source), Use::Bind) {
                out.push(r);
            }
            if let Some(p) = m
                .propagation
                .as_deref()
                .filter(|p| SHARED_PROPAGATION.contains(p))
            {
                if !policy.bind_propagation {
                    out.push(Refusal {
                        field: field("volumes"),
                        what: format!(
                            "the bind of {source} has {p} propagation: mounts cross to the host"
                        ),
                        allow: "allow with `bind_propagation = true` under [policy]".into(),
                    });
                }
            }
        }
        if let Some(allowed) = &policy.registries {
            let registry = registry_of(&svc.image);
            if !allowed.iter().any(|a| registry_matches(a, registry)) {
                out.push(Refusal {
                    field: field("image"),
                    what: format!("{} is from the registry {registry}", svc.image),
                    allow: format!("allow with `registries = [\"{registry}\"]` under [policy]"),
                });
            }
        }
    }
    for (key, volume) in &project.volumes {
        let Some(device) = bound_device(volume) else {
            continue;
        };
        let field = format!("volumes.{key}.driver_opts");
        if !policy.bind_volumes {
            out.push(Refusal {
                field,
                what: format!("binds the host's {device}"),
                allow: "allow with `bind_volumes = true` under [policy] (the device is then judged as a bind)".into(),
            });
        } else if let Some(r) = judge.path(&field, Path::new(device), Use::Bind) {
            out.push(r);
        }
    }
    for (field, path) in &project.host_files {
        if let Some(r) = judge.path(field, path, Use::Read) {
            out.push(r);
        }
    }
    for (field, location) in &project.remote_files {
        let compose = host.compose_location.as_deref();
        if let Some(r) = check_source(field, location, policy, compose, &project.name) {
            out.push(r);
        }
    }
    if !out.is_empty() {
        out.dedup();
        return Err(PolicyError {
            origin: host.origin.clone(),
            refusals: out,
        });
    }
    let mut warnings = Vec::new();
    if policy.registries.is_none() {
        warnings.push(format!(
            "the host policy ({}) names no `registries`: images may come from any registry",
            host.origin
        ));
    }
    Ok(warnings)
}

/// The judge compose's loader asks before it reads a host file (`env_file`, a secret's or
/// config's `file`): a refused path is never read, so neither its content nor a parse error
/// about it goes anywhere.
pub fn read_gate(policy: &PolicySettings, host: &Host) -> crate::compose::ReadGate {
    let (policy, host) = (policy.clone(), host.clone());
    crate::compose::ReadGate::new(move |field, path| {
        let judge = Judge {
            policy: &policy,
            host: &host,
        };
        judge.path(field, path, Use::Read).map(|r| {
            format!(
                "{} ({}), by the host policy ({})",
                r.what, r.allow, host.origin
            )
        })
    })
}

/// A secret's or config's berth location (`s3://`, `ssm:/`), judged before it is fetched:
/// the compose file's own S3 directory, `ssm:/<project>/` and `policy.sources` may be read.
pub fn check_source(
    field: &str,
    location: &str,
    policy: &PolicySettings,
    compose_location: Option<&str>,
    project: &str,
) -> Option<Refusal> {
    let own_ssm = format!("ssm:/{project}/");
    let compose_dir = compose_location
        .filter(|c| c.starts_with("s3://"))
        .and_then(|c| c.rsplit_once('/'))
        .map(|(dir, _)| format!("{dir}/"));
    let allowed = std::iter::once(own_ssm.as_str())
        .chain(compose_dir.as_deref())
        .chain(policy.sources.iter().map(String::as_str))
        .any(|prefix| under_prefix(location, prefix));
    (!allowed).then(|| Refusal {
        field: field.to_string(),
        what: format!(
            "{location} is outside the release's own locations ({}{})",
            own_ssm,
            compose_dir.map(|d| format!(", {d}")).unwrap_or_default()
        ),
        allow: format!(
            "allow with `sources = [\"{}\"]` under [policy]",
            parent_of(location)
        ),
    })
}

/// `location` lies under `prefix`: a prefix ending in `/` is a directory, any other must
/// match whole or up to a `/` (`s3://b/app` holds `s3://b/app/x`, not `s3://b/apple`).
fn under_prefix(location: &str, prefix: &str) -> bool {
    match location.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn parent_of(location: &str) -> String {
    match location.rsplit_once('/') {
        Some((dir, _)) if dir.len() > "s3:/".len() && dir != "ssm:" => format!("{dir}/"),
        _ => location.to_string(),
    }
}

/// `CAP_NET_ADMIN`, `net_admin` and `NET_ADMIN` are one capability.
fn cap_name(cap: &str) -> String {
    let upper = cap.trim().to_ascii_uppercase();
    upper.strip_prefix("CAP_").unwrap_or(&upper).to_string()
}

/// `seccomp:unconfined` and `seccomp=unconfined` are one option (compose takes both).
fn security_opt(opt: &str) -> String {
    opt.trim().replacen(':', "=", 1)
}

fn sysctl_matches(allowed: &str, name: &str) -> bool {
    match allowed.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => allowed == name,
    }
}

/// `host[:port]` exactly, or `*.suffix` for any host under it.
fn registry_matches(allowed: &str, registry: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(suffix) => registry
            .strip_suffix(suffix)
            .is_some_and(|head| head.ends_with('.')),
        None => allowed == registry,
    }
}

/// A local volume that binds a host path: `o` with `bind` or `rbind`, or `type: none`, and
/// the `device` it binds.
fn bound_device(volume: &crate::compose::VolumeSpec) -> Option<&str> {
    if volume.driver.as_deref().is_some_and(|d| d != "local") {
        return None;
    }
    let opts = &volume.driver_opts;
    let binds = opts.get("o").is_some_and(|o| {
        o.split(',')
            .any(|opt| matches!(opt.trim(), "bind" | "rbind"))
    }) || opts.get("type").is_some_and(|t| t == "none");
    opts.get("device").filter(|_| binds).map(String::as_str)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Mounted into a container: berth's own files are refused too.
    Bind,
    /// Read by berth into the container's environment or files: berth's own links are the
    /// release's env files.
    Read,
}

struct Judge<'a> {
    policy: &'a PolicySettings,
    host: &'a Host,
}

impl Judge<'_> {
    /// A host path a bind or a read reaches, as written (`..` folded) and as the host
    /// resolves it (links followed: /var/run is /run, a link an app left in its data
    /// directory): both must pass.
    fn path(&self, field: &str, path: &Path, used: Use) -> Option<Refusal> {
        let written = normalize(path);
        // The null device masks a file (`/dev/null:/app/config.local`): nothing of the host
        // passes through it, either way.
        if used == Use::Bind && written == Path::new("/dev/null") {
            return None;
        }
        let own = |p: &Path| self.host.own_files.iter().any(|f| normalize(f) == *p);
        if used == Use::Read && own(&written) {
            return None;
        }
        let resolved = resolve(path);
        let project = normalize(&self.host.project_dir);
        let project_resolved = resolve(&self.host.project_dir);
        let as_written = self.why_not(&written, &project, used, &own);
        let as_resolved = self.why_not(&resolved, &project_resolved, used, &own);
        // What no policy allows says more than "outside the prefixes".
        let why = match (as_written, as_resolved) {
            (Some(w), Some(r)) if w.starts_with("outside") => r,
            (w, r) => w.or(r)?,
        };
        let what = match used {
            Use::Bind => format!("the bind of {} reaches {why}", path.display()),
            Use::Read => format!("{} reaches {why}", path.display()),
        };
        let allow = if why.starts_with("outside") {
            let dir = if used == Use::Read {
                written.parent().unwrap_or(&written).to_path_buf()
            } else {
                written
            };
            format!(
                "allow with `bind_prefixes = [\"{}\"]` under [policy], or use a directory under the project directory",
                dir.display()
            )
        } else {
            format!(
                "no policy allows it: use a directory of its own under the project directory ({})",
                self.host.project_dir.display()
            )
        };
        Some(Refusal {
            field: field.to_string(),
            what,
            allow,
        })
    }

    fn why_not(
        &self,
        p: &Path,
        project: &Path,
        used: Use,
        own: &dyn Fn(&Path) -> bool,
    ) -> Option<String> {
        let host = self.host;
        let (run, state) = (normalize(&host.run_dir), normalize(&host.state_dir));
        let (run_r, state_r) = (resolve(&host.run_dir), resolve(&host.state_dir));
        let in_project = p.starts_with(project);
        if used == Use::Bind && (p == project || own(p)) {
            return Some(
                "the project directory's own files (the compose file, the env files)".into(),
            );
        }
        for r in [&run, &run_r] {
            if p.starts_with(r) {
                return Some("berth's run directory, which holds the release's secrets".into());
            }
        }
        for s in [&state, &state_r] {
            if p.starts_with(s) && !in_project {
                return Some("berth's state directory, outside the project's own".into());
            }
        }
        if [&run, &run_r, &state, &state_r]
            .iter()
            .any(|d| d.starts_with(p))
        {
            return Some("a directory holding berth's own".into());
        }
        for never in NEVER_BOUND {
            let never = Path::new(never);
            // The project's own directory may lie under /etc (a compose file kept there);
            // what holds the host's own never passes.
            let reaches = if in_project {
                never.starts_with(p)
            } else {
                never_reaches(never, p)
            };
            if reaches {
                return Some(format!("{}, the host's own", never.display()));
            }
        }
        if in_project
            || self
                .policy
                .bind_prefixes
                .iter()
                .any(|prefix| p.starts_with(normalize(prefix)))
        {
            return None;
        }
        Some("outside the project directory and the policy's bind_prefixes".into())
    }
}

/// `..` and `.` folded away, without touching the file system (a source may not exist yet).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The path as the host resolves it: its longest existing ancestor with links followed, then
/// the rest as written (`..` folded).
pub fn resolve(path: &Path) -> PathBuf {
    let path = normalize(path);
    let mut existing = path.clone();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalize(&out);
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path,
        }
    }
}
