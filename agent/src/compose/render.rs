//! The resolved project in compose's own shape (`berth config`), so that a user can diff it
//! against `docker compose config`: durations as Go prints them (`1m30s`), sizes in bytes,
//! ports and volumes in their long forms, defaults left out as compose leaves them out.
//! Values are as resolved: `berth config` masks secrets before it prints.

use serde_json::{json, Map, Value};

use super::model::{
    FileKind, MountKind, MountSpec, NetworkSpec, PortMapping, Project, Service, VolumeSpec,
};

/// Nanoseconds as Go's `time.Duration` prints them: `1h2m3s`, `1.5s`, `250ms`.
fn duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    if ns % 1_000_000_000 != 0 && ns < 1_000_000_000 {
        return match ns {
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n if n % 1_000 == 0 => format!("{}µs", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let secs = ns as f64 / 1e9;
    let (h, rest) = ((secs / 3600.0).floor(), secs % 3600.0);
    let (m, s) = ((rest / 60.0).floor(), rest % 60.0);
    let mut out = String::new();
    if h > 0.0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0.0 || m > 0.0 {
        out.push_str(&format!("{m}m"));
    }
    // Whole seconds print bare; a fraction keeps what it needs.
    let s = format!("{s:.9}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    out.push_str(&format!("{s}s"));
    out
}

/// Sets `key` when `v` is not what compose leaves out (null, false, an empty list or map).
fn put(m: &mut Map<String, Value>, key: &str, v: Value) {
    let empty = match &v {
        Value::Null | Value::Bool(false) => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if !empty {
        m.insert(key.to_string(), v);
    }
}

fn port(p: &PortMapping) -> Value {
    let mut m = Map::new();
    m.insert("mode".into(), json!("ingress"));
    put(&mut m, "host_ip", json!(p.host_ip));
    m.insert("target".into(), json!(p.target));
    put(&mut m, "published", json!(p.published));
    m.insert("protocol".into(), json!(p.protocol));
    Value::Object(m)
}

fn mount(m: &MountSpec, project: &Project) -> Value {
    let mut out = Map::new();
    let kind = match m.kind {
        MountKind::Bind => "bind",
        MountKind::Volume => "volume",
        MountKind::Tmpfs => "tmpfs",
    };
    out.insert("type".into(), json!(kind));
    // A named volume by its key in the file, as compose prints it.
    let source = match (m.kind, &m.source) {
        (MountKind::Volume, Some(name)) => project
            .volumes
            .iter()
            .find(|(_, v)| &v.name == name)
            .map(|(k, _)| k.clone())
            .or(Some(name.clone())),
        (_, s) => s.clone(),
    };
    put(&mut out, "source", json!(source));
    out.insert("target".into(), json!(m.target));
    put(&mut out, "read_only", json!(m.read_only));
    let mut bind = Map::new();
    put(&mut bind, "create_host_path", json!(m.create_host_path));
    put(&mut bind, "propagation", json!(m.propagation));
    put(&mut bind, "selinux", json!(m.selinux));
    put(&mut out, "bind", Value::Object(bind));
    if m.kind == MountKind::Volume {
        let mut volume = Map::new();
        put(&mut volume, "nocopy", json!(m.nocopy));
        out.insert("volume".into(), Value::Object(volume));
    }
    let mut tmpfs = Map::new();
    put(
        &mut tmpfs,
        "size",
        json!(m.tmpfs_size.map(|s| s.to_string())),
    );
    put(&mut tmpfs, "mode", json!(m.tmpfs_mode));
    put(&mut out, "tmpfs", Value::Object(tmpfs));
    Value::Object(out)
}

fn service(svc: &Service, project: &Project) -> Value {
    let mut m = Map::new();
    m.insert("image".into(), json!(svc.image));
    m.insert("command".into(), json!(svc.command));
    m.insert("entrypoint".into(), json!(svc.entrypoint));
    put(&mut m, "environment", json!(svc.environment.0));
    put(
        &mut m,
        "ports",
        json!(svc.ports.iter().map(port).collect::<Vec<_>>()),
    );
    put(&mut m, "expose", json!(svc.expose));
    // A tmpfs with options only Docker's `Tmpfs` takes, or none, is a `tmpfs:` entry.
    let short_tmpfs = |mt: &&MountSpec| {
        mt.kind == MountKind::Tmpfs
            && (mt.tmpfs_options.is_some() || (mt.tmpfs_size.is_none() && mt.tmpfs_mode.is_none()))
    };
    let mounts: Vec<Value> = svc
        .mounts
        .iter()
        .filter(|mt| !short_tmpfs(mt))
        .map(|mt| mount(mt, project))
        .collect();
    put(&mut m, "volumes", json!(mounts));
    let tmpfs: Vec<String> = svc
        .mounts
        .iter()
        .filter(short_tmpfs)
        .map(|mt| match &mt.tmpfs_options {
            Some(o) => format!("{}:{o}", mt.target),
            None => mt.target.clone(),
        })
        .collect();
    put(&mut m, "tmpfs", json!(tmpfs));
    let networks: Map<String, Value> = svc
        .networks
        .iter()
        .map(|(key, n)| {
            let mut o = Map::new();
            put(&mut o, "aliases", json!(n.aliases));
            put(&mut o, "ipv4_address", json!(n.ipv4_address));
            put(&mut o, "ipv6_address", json!(n.ipv6_address));
            put(&mut o, "link_local_ips", json!(n.link_local_ips));
            put(&mut o, "driver_opts", json!(n.driver_opts));
            let v = if o.is_empty() {
                Value::Null
            } else {
                Value::Object(o)
            };
            (key.clone(), v)
        })
        .collect();
    m.insert("networks".into(), Value::Object(networks));
    let depends_on: Map<String, Value> = svc
        .depends_on
        .iter()
        .map(|(name, d)| {
            let mut o = Map::new();
            o.insert("condition".into(), json!(d.condition.as_str()));
            o.insert("required".into(), json!(d.required));
            put(&mut o, "restart", json!(d.restart));
            (name.clone(), Value::Object(o))
        })
        .collect();
    put(&mut m, "depends_on", Value::Object(depends_on));
    if let Some(h) = &svc.healthcheck {
        let mut o = Map::new();
        if h.disabled {
            o.insert("disable".into(), json!(true));
        } else {
            put(&mut o, "test", json!(h.test));
        }
        for (key, ns) in [
            ("interval", h.interval_ns),
            ("timeout", h.timeout_ns),
            ("start_period", h.start_period_ns),
            ("start_interval", h.start_interval_ns),
        ] {
            put(&mut o, key, json!(ns.map(duration)));
        }
        put(&mut o, "retries", json!(h.retries));
        m.insert("healthcheck".into(), Value::Object(o));
    }
    if let Some((policy, max)) = &svc.restart {
        let text = match (policy.as_str(), max) {
            ("on-failure", n) if *n > 0 => format!("on-failure:{n}"),
            (p, _) => p.to_string(),
        };
        m.insert("restart".into(), json!(text));
    }
    let mut deploy = Map::new();
    if svc.replicas != 1 {
        deploy.insert("replicas".into(), json!(svc.replicas));
    }
    // `gpus:` entries too: a device request is one thing to Docker.
    let devices: Vec<Value> = svc
        .device_requests
        .iter()
        .map(|d| {
            let mut o = Map::new();
            put(&mut o, "driver", json!(d.driver));
            o.insert("count".into(), json!(d.count));
            put(&mut o, "device_ids", json!(d.device_ids));
            put(&mut o, "capabilities", json!(d.capabilities));
            put(&mut o, "options", json!(d.options));
            Value::Object(o)
        })
        .collect();
    if !devices.is_empty() {
        deploy.insert(
            "resources".into(),
            json!({"reservations": {"devices": devices}}),
        );
    }
    put(&mut m, "deploy", Value::Object(deploy));
    put(&mut m, "labels", json!(svc.labels));
    put(&mut m, "user", json!(svc.user));
    put(&mut m, "working_dir", json!(svc.working_dir));
    put(&mut m, "hostname", json!(svc.hostname));
    put(&mut m, "domainname", json!(svc.domainname));
    let hosts: Vec<String> = svc
        .extra_hosts
        .iter()
        .map(|h| h.replacen(':', "=", 1))
        .collect();
    put(&mut m, "extra_hosts", json!(hosts));
    put(&mut m, "dns", json!(svc.dns));
    put(&mut m, "dns_search", json!(svc.dns_search));
    put(&mut m, "init", json!(svc.init));
    put(&mut m, "stop_signal", json!(svc.stop_signal));
    put(
        &mut m,
        "stop_grace_period",
        json!(svc
            .stop_grace_period_secs
            .map(|s| duration(s * 1_000_000_000))),
    );
    let ulimits: Map<String, Value> = svc
        .ulimits
        .iter()
        .map(|(k, (soft, hard))| {
            let v = if soft == hard {
                json!(soft)
            } else {
                json!({"soft": soft, "hard": hard})
            };
            (k.clone(), v)
        })
        .collect();
    put(&mut m, "ulimits", Value::Object(ulimits));
    put(
        &mut m,
        "mem_limit",
        json!(svc.memory.map(|b| b.to_string())),
    );
    put(&mut m, "cpus", json!(svc.nano_cpus.map(|n| n as f64 / 1e9)));
    put(&mut m, "pids_limit", json!(svc.pids_limit));
    put(
        &mut m,
        "shm_size",
        json!(svc.shm_size.map(|b| b.to_string())),
    );
    put(
        &mut m,
        "mem_reservation",
        json!(svc.memory_reservation.map(|b| b.to_string())),
    );
    put(&mut m, "mac_address", json!(svc.mac_address));
    if let Some(l) = &svc.logging {
        let mut o = Map::new();
        put(&mut o, "driver", json!(l.driver));
        put(&mut o, "options", json!(l.options));
        m.insert("logging".into(), Value::Object(o));
    }
    for (key, list) in [
        ("cap_add", &svc.cap_add),
        ("cap_drop", &svc.cap_drop),
        ("security_opt", &svc.security_opt),
        ("group_add", &svc.group_add),
        ("profiles", &svc.profiles),
    ] {
        put(&mut m, key, json!(list));
    }
    for (key, flag) in [
        ("read_only", svc.read_only),
        ("privileged", svc.privileged),
        ("tty", svc.tty),
        ("stdin_open", svc.stdin_open),
    ] {
        put(&mut m, key, json!(flag));
    }
    put(&mut m, "sysctls", json!(svc.sysctls));
    put(&mut m, "container_name", json!(svc.container_name));
    if svc.pull_policy != super::model::PullPolicy::Missing {
        m.insert("pull_policy".into(), json!(svc.pull_policy));
    }
    for (key, kind) in [("secrets", FileKind::Secret), ("configs", FileKind::Config)] {
        let uses: Vec<Value> = svc
            .files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| {
                json!({"source": f.source, "target": f.target, "uid": f.uid.to_string(),
                       "gid": f.gid.to_string(), "mode": format!("{:04o}", f.mode)})
            })
            .collect();
        put(&mut m, key, json!(uses));
    }
    Value::Object(m)
}

fn network(n: &NetworkSpec) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(n.name));
    put(&mut o, "external", json!(n.external));
    put(&mut o, "driver", json!(n.driver));
    put(&mut o, "driver_opts", json!(n.driver_opts));
    put(&mut o, "internal", json!(n.internal));
    put(&mut o, "attachable", json!(n.attachable));
    put(&mut o, "enable_ipv6", json!(n.enable_ipv6));
    put(&mut o, "labels", json!(n.labels));
    Value::Object(o)
}

fn volume(v: &VolumeSpec) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), json!(v.name));
    put(&mut o, "external", json!(v.external));
    put(&mut o, "driver", json!(v.driver));
    put(&mut o, "driver_opts", json!(v.driver_opts));
    put(&mut o, "labels", json!(v.labels));
    Value::Object(o)
}

/// The project as `docker compose config --format json` shapes it.
pub fn compose_shape(project: &Project) -> Value {
    let services: Map<String, Value> = project
        .services
        .iter()
        .map(|(name, s)| (name.clone(), service(s, project)))
        .collect();
    let mut out = Map::new();
    out.insert("name".into(), json!(project.name));
    out.insert("services".into(), Value::Object(services));
    let networks: Map<String, Value> = project
        .networks
        .iter()
        .map(|(k, n)| (k.clone(), network(n)))
        .collect();
    put(&mut out, "networks", Value::Object(networks));
    let volumes: Map<String, Value> = project
        .volumes
        .iter()
        .map(|(k, v)| (k.clone(), volume(v)))
        .collect();
    put(&mut out, "volumes", Value::Object(volumes));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        assert_eq!(duration(90_000_000_000), "1m30s");
        assert_eq!(duration(1_500_000_000), "1.5s");
        assert_eq!(duration(250_000_000), "250ms");
        assert_eq!(duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(duration(5_000_000_000), "5s");
    }
}
