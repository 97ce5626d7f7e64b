//! Parsers for compose's string shorthands: Go-style durations, byte sizes, the short port and
//! volume syntaxes. Hand-written because each is a small grammar of compose's own, and the errors
//! must name the field they came from.

/// A Go duration (`1m30s`, `500ms`, `2.5s`, `1h`) in nanoseconds. A bare number means seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i64);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 1m30s, 500ms"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            unit => return Err(format!("invalid duration {text:?}: unknown unit {unit:?}")),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(total as i64)
}

/// A byte size (`512m`, `1g`, `1gb`, `1024`), binary units as Docker reads them.
pub fn parse_size(text: &str) -> Result<i64, String> {
    let s = text.trim().to_ascii_lowercase();
    let digits = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let number: f64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 512m, 1g"))?;
    let scale: f64 = match s[digits..].trim() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" | "tib" => 1024.0f64.powi(4),
        unit => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    Ok((number * scale) as i64)
}

/// One port range `a` or `a-b`, as (first, last).
fn port_range(text: &str) -> Result<(u16, u16), String> {
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?}"))
    };
    match text.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (parse(a)?, parse(b)?);
            if b < a {
                return Err(format!("invalid port range {text:?}"));
            }
            Ok((a, b))
        }
        None => {
            let p = parse(text)?;
            Ok((p, p))
        }
    }
}

/// The parts of a short-syntax port: `[[host_ip:]published:]target[/protocol]`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ShortPort {
    pub host_ip: Option<String>,
    pub published: Option<(u16, u16)>,
    pub target: (u16, u16),
    pub protocol: String,
}

pub(super) fn parse_port(text: &str) -> Result<ShortPort, String> {
    let bad = |why: String| format!("invalid port {text:?}: {why}");
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((s, p)) if matches!(p, "tcp" | "udp" | "sctp") => (s, p.to_string()),
        Some((_, p)) => return Err(bad(format!("unknown protocol {p:?}"))),
        None => (text, "tcp".to_string()),
    };
    // An IPv6 host address comes in brackets: `[::1]:8080:80`.
    let (host_ip, rest) = if let Some(after) = spec.strip_prefix('[') {
        let (ip, rest) = after
            .split_once(']')
            .ok_or_else(|| bad("unclosed [".into()))?;
        let rest = rest
            .strip_prefix(':')
            .ok_or_else(|| bad("expected : after ]".into()))?;
        (Some(ip.to_string()), rest)
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.len() {
            1 | 2 => (None, spec),
            3 => (Some(parts[0].to_string()), &spec[parts[0].len() + 1..]),
            _ => {
                // Unbracketed IPv6: everything before the last two fields is the address.
                let cut = parts[..parts.len() - 2].join(":");
                (Some(cut.clone()), &spec[cut.len() + 1..])
            }
        }
    };
    let (published, target) = match rest.split_once(':') {
        Some(("", t)) => (None, t),
        Some((p, t)) => (Some(port_range(p).map_err(bad)?), t),
        None => (None, rest),
    };
    let target = port_range(target).map_err(bad)?;
    if let Some((a, b)) = published {
        let (ta, tb) = target;
        if tb > ta && b - a != tb - ta {
            return Err(bad("published and target ranges differ in length".into()));
        }
    }
    if let Some(ip) = &host_ip {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(bad(format!("invalid host IP {ip:?}")));
        }
    }
    Ok(ShortPort {
        host_ip,
        published,
        target,
        protocol,
    })
}

/// The parts of a short-syntax volume: `[source:]target[:mode]`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ShortVolume {
    pub source: Option<String>,
    pub target: String,
    pub read_only: bool,
    pub nocopy: bool,
    /// `z` or `Z`.
    pub selinux: Option<String>,
    pub propagation: Option<String>,
}

/// A bind's propagation modes, as the short syntax and `bind.propagation` spell them.
pub(super) const PROPAGATIONS: [&str; 6] = [
    "rprivate", "private", "rshared", "shared", "rslave", "slave",
];

pub(super) fn parse_volume(text: &str) -> Result<ShortVolume, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => {
            return Err(format!(
                "invalid volume {text:?}: expected [source:]target[:mode]"
            ))
        }
    };
    if !target.starts_with('/') {
        return Err(format!(
            "invalid volume {text:?}: container path {target:?} must be absolute"
        ));
    }
    if source == Some("") {
        // compose-go's words, for `${UNSET}:/x`.
        return Err(format!(
            "invalid volume {text:?}: empty section between colons"
        ));
    }
    let mut read_only = false;
    let mut nocopy = false;
    let mut selinux = None;
    let mut propagation = None;
    for opt in mode.unwrap_or("").split(',').filter(|o| !o.is_empty()) {
        match opt {
            "ro" => read_only = true,
            "nocopy" => nocopy = true,
            "z" | "Z" => selinux = Some(opt.to_string()),
            p if PROPAGATIONS.contains(&p) => propagation = Some(p.to_string()),
            // Docker Desktop's file sharing hints; nothing on Linux.
            "rw" | "cached" | "delegated" | "consistent" => {}
            other => return Err(format!("invalid volume {text:?}: unknown option {other:?}")),
        }
    }
    Ok(ShortVolume {
        source: source.map(String::from),
        target: target.to_string(),
        read_only,
        nocopy,
        selinux,
        propagation,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), 30_000_000_000);
        assert_eq!(parse_duration("1m30s").unwrap(), 90_000_000_000);
        assert_eq!(parse_duration("500ms").unwrap(), 500_000_000);
        assert_eq!(parse_duration("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_duration("1h").unwrap(), 3_600_000_000_000);
        assert_eq!(parse_duration("10").unwrap(), 10_000_000_000);
        assert_eq!(parse_duration("2us").unwrap(), 2_000);
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512m").unwrap(), 512 * 1024 * 1024);
        assert_eq!(parse_size("1g").unwrap(), 1024 * 1024 * 1024);
        assert_eq!(parse_size("1GB").unwrap(), 1024 * 1024 * 1024);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5q").is_err());
    }

    #[test]
    fn short_ports() {
        let p = parse_port("8080").unwrap();
        assert_eq!(
            (p.host_ip, p.published, p.target),
            (None, None, (8080, 8080))
        );
        let p = parse_port("127.0.0.1:8001:8000/udp").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(p.published, Some((8001, 8001)));
        assert_eq!(p.protocol, "udp");
        let p = parse_port("9090-9091:8080-8081").unwrap();
        assert_eq!((p.published, p.target), (Some((9090, 9091)), (8080, 8081)));
        let p = parse_port("[::1]:6001:6000").unwrap();
        assert_eq!(p.host_ip.as_deref(), Some("::1"));
        let p = parse_port("::1:6001:6000").unwrap();
        assert_eq!(
            (p.host_ip.as_deref(), p.published),
            (Some("::1"), Some((6001, 6001)))
        );
        let p = parse_port("127.0.0.1::80").unwrap();
        assert_eq!((p.published, p.target), (None, (80, 80)));
        let p = parse_port("3000-3005").unwrap();
        assert_eq!(p.target, (3000, 3005));
    }

    #[test]
    fn bad_ports() {
        for bad in [
            "80:http",
            "99999:80",
            "80/xtp",
            "1.2.3:80:80",
            "9000-9001:80-82",
            "5-3",
        ] {
            assert!(parse_port(bad).is_err(), "{bad} should fail");
        }
        assert!(parse_port("80:http").unwrap_err().contains("80:http"));
    }

    #[test]
    fn short_volumes() {
        let v = parse_volume("./data:/data:ro").unwrap();
        assert_eq!(
            (v.source.as_deref(), v.target.as_str(), v.read_only),
            (Some("./data"), "/data", true)
        );
        let v = parse_volume("/anon").unwrap();
        assert_eq!((v.source, v.read_only), (None, false));
        let v = parse_volume("named:/var/lib:rw").unwrap();
        assert_eq!(v.source.as_deref(), Some("named"));
        assert!(parse_volume("named:relative").is_err());
        assert!(parse_volume("a:/b:bogus").is_err());
        assert!(parse_volume("a:/b:ro:x").is_err());
    }
}
