//! What compose lets both a service and its `deploy:` section set: the replica count, the
//! restart policy and resource limits. The service's own key wins over `deploy:`.

use super::{invalid, size, Ctx};
use crate::compose::model::DeviceRequest;
use crate::compose::schema::{RawDevice, RawGpus, RawResources, RawRestartPolicy, Scalar};
use crate::compose::ComposeError;

/// `scale`, else `deploy.replicas`, else 1; a fixed `container_name` allows only one.
pub(super) fn replicas(
    p: &str,
    scale: Option<u32>,
    deploy_replicas: Option<u32>,
    has_container_name: bool,
) -> Result<u32, ComposeError> {
    let replicas = scale.or(deploy_replicas).unwrap_or(1);
    if has_container_name && replicas > 1 {
        return Err(invalid(
            format!("{p}.container_name"),
            "cannot be set with more than one replica",
        ));
    }
    Ok(replicas)
}

/// `restart:` as Docker's policy name and retry count, else `deploy.restart_policy`'s.
pub(super) fn resolve_restart(
    ctx: &mut Ctx<'_>,
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
    for (field, set) in [
        ("delay", policy.delay.is_some()),
        ("window", policy.window.is_some()),
    ] {
        if set {
            ctx.warnings.push(format!(
                "{p}.deploy.restart_policy.{field} is Swarm's: Docker's restart policy has none (compose ignores it too)"
            ));
        }
    }
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

/// Memory in bytes, CPUs in billionths, the process count, the memory reservation, and the
/// devices reserved.
#[derive(Debug)]
pub(super) struct Limits {
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids: Option<i64>,
    pub memory_reservation: Option<i64>,
    pub devices: Vec<DeviceRequest>,
}

/// A device request as compose makes it: `count: all` is -1, and so is no count and no ids;
/// `gpus:` entries always ask for the `gpu` capability.
fn device_request(field: &str, d: RawDevice, gpu: bool) -> Result<DeviceRequest, ComposeError> {
    let count = match d.count.map(|c| c.text()) {
        Some(c) if c == "all" => -1,
        Some(c) => c.parse::<i64>().map_err(|_| {
            invalid(
                format!("{field}.count"),
                format!("{c:?} is not a number or all"),
            )
        })?,
        None if d.device_ids.is_empty() => -1,
        None => 0,
    };
    let mut capabilities = d.capabilities;
    if gpu && !capabilities.iter().any(|c| c == "gpu") {
        capabilities.push("gpu".into());
    }
    Ok(DeviceRequest {
        driver: d.driver,
        count,
        device_ids: d.device_ids,
        capabilities,
        options: super::map_text(d.options),
    })
}

/// `gpus:` (`all`, or a list) as device requests.
pub(super) fn gpus(p: &str, raw: Option<RawGpus>) -> Result<Vec<DeviceRequest>, ComposeError> {
    match raw {
        None => Ok(vec![]),
        Some(RawGpus::All(all)) if all == "all" => Ok(vec![DeviceRequest {
            driver: None,
            count: -1,
            device_ids: vec![],
            capabilities: vec!["gpu".into()],
            options: Default::default(),
        }]),
        Some(RawGpus::All(other)) => Err(invalid(
            format!("{p}.gpus"),
            format!("{other:?}: `all`, or a list of requests"),
        )),
        Some(RawGpus::List(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, d)| device_request(&format!("{p}.gpus[{i}]"), d, true))
            .collect(),
    }
}

/// `mem_limit`, `cpus`, `pids_limit` and `mem_reservation`, each over its
/// `deploy.resources.limits` or `.reservations` counterpart. A reservation Docker cannot make
/// for a container (CPUs, devices such as GPUs) is refused by name.
pub(super) fn limits(
    p: &str,
    mem_limit: Option<Scalar>,
    cpus: Option<Scalar>,
    pids_limit: Option<i64>,
    mem_reservation: Option<Scalar>,
    resources: Option<RawResources>,
) -> Result<Limits, ComposeError> {
    let resources = resources.unwrap_or_default();
    let limits = resources.limits.unwrap_or_default();
    let reservations = resources.reservations.unwrap_or_default();
    for (field, set) in [
        ("cpus", reservations.cpus.is_some()),
        (
            "generic_resources",
            reservations.generic_resources.is_some(),
        ),
    ] {
        if set {
            return Err(ComposeError::Unsupported {
                field: format!("{p}.deploy.resources.reservations.{field}"),
            });
        }
    }
    let memory_reservation = size(
        format!("{p}.mem_reservation"),
        mem_reservation.or(reservations.memory),
    )?;
    let devices = reservations
        .devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            device_request(
                &format!("{p}.deploy.resources.reservations.devices[{i}]"),
                d,
                false,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let memory = size(format!("{p}.mem_limit"), mem_limit.or(limits.memory))?;
    let nano_cpus = cpus
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
    Ok(Limits {
        memory,
        nano_cpus,
        pids: pids_limit.or(limits.pids),
        memory_reservation,
        devices,
    })
}
