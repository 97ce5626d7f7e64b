//! `ports`: the short syntax (`"127.0.0.1:8000-8001:80-81/udp"`, a range expanded to one
//! mapping per port) and the long syntax, each checked.

use super::invalid;
use crate::compose::fields::parse_port;
use crate::compose::model::PortMapping;
use crate::compose::schema::{LongPort, PortEntry};
use crate::compose::ComposeError;

/// The service's `ports`, in order.
pub(super) fn resolve_ports(
    p: &str,
    ports: Vec<PortEntry>,
) -> Result<Vec<PortMapping>, ComposeError> {
    let mut out = Vec::new();
    for (i, entry) in ports.into_iter().enumerate() {
        let field = format!("{p}.ports[{i}]");
        match entry {
            PortEntry::Short(s) => out.extend(short_port(&field, &s.text())?),
            PortEntry::Long(l) => out.push(long_port(&field, l)?),
        }
    }
    Ok(out)
}

/// One mapping per target port; a single target with a published range lets Docker pick.
fn short_port(field: &str, text: &str) -> Result<Vec<PortMapping>, ComposeError> {
    let sp = parse_port(text).map_err(|e| invalid(field, e))?;
    let (ta, tb) = sp.target;
    let mut out = Vec::new();
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
    Ok(out)
}

/// `target`, `published`, `host_ip`, `protocol`; `mode` is checked, then unused.
fn long_port(field: &str, l: LongPort) -> Result<PortMapping, ComposeError> {
    // Descriptive only: accepted, with nothing to set in Docker.
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
    Ok(PortMapping {
        target: l.target,
        protocol,
        host_ip: l.host_ip,
        published,
    })
}
