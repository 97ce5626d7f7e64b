//! One service: its keys checked, its mapping read into [`RawService`], then each field resolved
//! in the order its errors are reported.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use serde_norway::Value;

use super::{
    dependencies, deploy, environment, healthcheck, invalid, keys, map_text, networks, ports,
    secrets, size, typed, volumes, Ctx,
};
use crate::compose::fields::parse_duration;
use crate::compose::model::{FileKind, Logging, PullPolicy, Service};
use crate::compose::schema::{
    Addresses, ExtraHosts, RawLogging, RawService, RawUlimit, StringOrList,
};
use crate::compose::ComposeError;

/// The service `name` as its containers will run it.
pub(super) fn resolve_service(
    ctx: &mut Ctx<'_>,
    name: &str,
    value: Value,
) -> Result<Service, ComposeError> {
    let p = format!("services.{name}");
    let raw = read_service(ctx, name, &p, value)?;
    let image = raw
        .image
        .filter(|i| !i.trim().is_empty())
        .ok_or_else(|| invalid(format!("{p}.image"), "is required"))?;
    let pull_policy = pull_policy(&p, raw.pull_policy.as_deref())?;
    let deploy = raw.deploy.unwrap_or_default();
    let fixed_name = raw.container_name.is_some();
    let replicas = deploy::replicas(&p, raw.scale, deploy.replicas, fixed_name)?;
    let command = split_command(raw.command, &format!("{p}.command"))?;
    let entrypoint = split_command(raw.entrypoint, &format!("{p}.entrypoint"))?;
    let environment = environment::resolve_environment(ctx, name, raw.env_file, raw.environment)?;
    let ports = ports::resolve_ports(&p, raw.ports)?;
    let mounts = volumes::resolve_mounts(ctx, &p, raw.volumes, &raw.tmpfs)?;
    let (networks, network_mac) = networks::resolve_service_networks(ctx, &p, raw.networks)?;
    let mac_address = match (raw.mac_address, network_mac) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{p}.mac_address"),
                "is also set on a network: set it in one place",
            ))
        }
        (service, network) => service.or(network),
    };
    let depends_on = dependencies::resolve_depends_on(&p, raw.depends_on)?;
    let healthcheck = healthcheck::resolve_healthcheck(&p, raw.healthcheck)?;
    let restart = deploy::resolve_restart(ctx, &p, raw.restart, deploy.restart_policy)?;
    let limits = deploy::limits(
        &p,
        raw.mem_limit,
        raw.cpus,
        raw.pids_limit,
        raw.mem_reservation,
        deploy.resources,
    )?;
    let shm_size = size(format!("{p}.shm_size"), raw.shm_size)?;
    let mut device_requests = deploy::gpus(&p, raw.gpus)?;
    device_requests.extend(limits.devices);
    let mut files = secrets::resolve_uses(ctx, &p, FileKind::Secret, raw.secrets)?;
    files.extend(secrets::resolve_uses(
        ctx,
        &p,
        FileKind::Config,
        raw.configs,
    )?);
    if !files.is_empty() && raw.read_only == Some(true) {
        return Err(ComposeError::UnsupportedBecause {
            field: format!("{p}.read_only with secrets or configs"),
            why: "berth copies them into the container before it starts, which Docker refuses for a read-only root file system",
        });
    }
    let stop_grace_period_secs = grace_period_secs(&p, raw.stop_grace_period)?;

    Ok(Service {
        name: name.to_string(),
        image,
        pull_policy,
        replicas,
        command,
        entrypoint,
        environment: environment.into(),
        ports,
        expose: raw.expose.into_iter().map(|e| e.text()).collect(),
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
        extra_hosts: extra_hosts(raw.extra_hosts),
        // As compose: an empty entry (`dns: ${UNSET}`) is no nameserver.
        dns: raw.dns.into_iter().filter(|d| !d.is_empty()).collect(),
        dns_search: raw.dns_search,
        init: raw.init,
        stop_signal: raw.stop_signal,
        stop_grace_period_secs,
        ulimits: ulimits(raw.ulimits),
        memory: limits.memory,
        nano_cpus: limits.nano_cpus,
        pids_limit: limits.pids,
        shm_size,
        memory_reservation: limits.memory_reservation,
        mac_address,
        device_requests,
        files,
        logging: raw.logging.map(logging),
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

/// The service's mapping, its keys checked, typed; `build:` is dropped (berth never builds).
fn read_service(
    ctx: &mut Ctx<'_>,
    name: &str,
    p: &str,
    mut value: Value,
) -> Result<RawService, ComposeError> {
    keys::check_service_keys(ctx, name, &value)?;
    if let Value::Mapping(m) = &mut value {
        m.remove("build");
    }
    typed(value, p)
}

fn pull_policy(p: &str, policy: Option<&str>) -> Result<PullPolicy, ComposeError> {
    match policy {
        None | Some("missing") | Some("if_not_present") => Ok(PullPolicy::Missing),
        Some("always") => Ok(PullPolicy::Always),
        Some("never") => Ok(PullPolicy::Never),
        Some(other) => Err(invalid(
            format!("{p}.pull_policy"),
            format!("{other:?} is not one of missing, always, never"),
        )),
    }
}

/// A string command is split the way a POSIX shell splits words; a list is taken verbatim.
fn split_command(
    c: Option<StringOrList>,
    field: &str,
) -> Result<Option<Vec<String>>, ComposeError> {
    match c {
        None => Ok(None),
        Some(StringOrList::List(l)) => Ok(Some(l)),
        Some(StringOrList::Str(s)) => shell_words::split(&s)
            .map(Some)
            .map_err(|e| invalid(field, e.to_string())),
    }
}

/// `stop_grace_period` in whole seconds, as Docker's `StopTimeout` takes it.
fn grace_period_secs(p: &str, period: Option<String>) -> Result<Option<i64>, ComposeError> {
    period
        .map(|d| {
            parse_duration(&d)
                .map(|ns| ns.div_euclid(1_000_000_000))
                .map_err(|e| invalid(format!("{p}.stop_grace_period"), e))
        })
        .transpose()
}

/// Docker's `host:ip` entries, one per address. As compose-go: a list entry is `host=ips` or
/// `host:ips` (split at the first `=`, else the first `:`, so `host:::1` is IPv6), the map form
/// gives one address or a list, and `ips` may hold several, comma-separated.
fn extra_hosts(hosts: ExtraHosts) -> Vec<String> {
    fn add(out: &mut Vec<String>, host: &str, ips: &str) {
        for ip in ips.split(',').map(str::trim).filter(|ip| !ip.is_empty()) {
            out.push(format!("{host}:{ip}"));
        }
    }
    let mut out = vec![];
    match hosts {
        ExtraHosts::List(entries) => {
            for entry in entries {
                match entry.split_once('=').or_else(|| entry.split_once(':')) {
                    Some((host, ips)) => add(&mut out, host, ips),
                    // No address: Docker says what is wrong with it.
                    None => out.push(entry),
                }
            }
        }
        ExtraHosts::Map(hosts) => {
            for (host, addresses) in hosts {
                match addresses {
                    Addresses::One(ip) => add(&mut out, &host, &ip.text()),
                    Addresses::Many(ips) => {
                        for ip in ips {
                            add(&mut out, &host, &ip.text());
                        }
                    }
                }
            }
        }
    }
    out
}

/// Each limit as (soft, hard); a single number sets both.
fn ulimits(raw: IndexMap<String, RawUlimit>) -> BTreeMap<String, (i64, i64)> {
    raw.into_iter()
        .map(|(k, v)| match v {
            RawUlimit::Single(n) => (k, (n, n)),
            RawUlimit::Pair { soft, hard } => (k, (soft, hard)),
        })
        .collect()
}

/// `logging`: the driver and its options.
fn logging(l: RawLogging) -> Logging {
    Logging {
        driver: l.driver,
        options: map_text(l.options),
    }
}
