//! Networks: the top-level declarations, each service's attachments to them, and the set the
//! enabled services use (with `default` implied when none is declared).

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use super::{invalid, map_text, resource_name, Ctx};
use crate::compose::model::{NetworkSpec, Service, ServiceNetwork};
use crate::compose::schema::{RawNetwork, RawServiceNetwork};
use crate::compose::ComposeError;

/// The top-level `networks`, by key; `ipam` is refused, not skipped.
pub(super) fn resolve_networks(
    project: &str,
    raw: IndexMap<String, Option<RawNetwork>>,
) -> Result<BTreeMap<String, NetworkSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    for (key, net) in raw {
        let net = net.unwrap_or_default();
        if let Some(other) = net.other.keys().find(|k| !k.starts_with("x-")) {
            return Err(ComposeError::Unsupported {
                field: format!("networks.{key}.{other}"),
            });
        }
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

/// The networks a service joins (none listed means `default`), and the MAC address one of
/// them asks for. berth creates a container on its first network (by key) and joins the others
/// after; Docker Engines before 25 (API 1.44) set a MAC address only at create, so only the
/// first network may have one.
pub(super) fn resolve_service_networks(
    ctx: &Ctx<'_>,
    p: &str,
    raw: IndexMap<String, Option<RawServiceNetwork>>,
) -> Result<(BTreeMap<String, ServiceNetwork>, Option<String>), ComposeError> {
    let raw = if raw.is_empty() {
        IndexMap::from([("default".to_string(), None)])
    } else {
        raw
    };
    let first = raw.keys().min().cloned();
    let mut mac = None;
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
        for (field, set, why) in [
            (
                "priority",
                opts.priority.is_some(),
                "berth joins a service's networks in the order of their names",
            ),
            (
                "gw_priority",
                opts.gw_priority.is_some(),
                "it needs Docker Engine API 1.48",
            ),
            (
                "interface_name",
                opts.interface_name.is_some(),
                "it needs Docker Engine API 1.49",
            ),
        ] {
            if set {
                return Err(ComposeError::UnsupportedBecause {
                    field: format!("{p}.networks.{key}.{field}"),
                    why,
                });
            }
        }
        if let Some(m) = opts.mac_address {
            if Some(&key) != first.as_ref() {
                return Err(invalid(
                    format!("{p}.networks.{key}.mac_address"),
                    format!(
                        "only the first network ({}) may set a MAC address: berth creates the container on it",
                        first.as_deref().unwrap_or_default()
                    ),
                ));
            }
            mac = Some(m);
        }
        out.insert(
            key,
            ServiceNetwork {
                name,
                aliases: opts.aliases,
                ipv4_address: opts.ipv4_address,
                ipv6_address: opts.ipv6_address,
                link_local_ips: opts.link_local_ips,
                driver_opts: map_text(opts.driver_opts),
            },
        );
    }
    Ok((out, mac))
}

/// The networks the enabled services join, by key; `default` is created unless declared.
pub(super) fn used_networks(
    services: &IndexMap<String, Service>,
    top_networks: &BTreeMap<String, NetworkSpec>,
    project: &str,
) -> BTreeMap<String, NetworkSpec> {
    let mut used = BTreeSet::new();
    for svc in services.values() {
        used.extend(svc.networks.keys().cloned());
    }
    used.into_iter()
        .map(|key| {
            let spec = top_networks
                .get(&key)
                .cloned()
                .unwrap_or_else(|| default_network(project));
            (key, spec)
        })
        .collect()
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
