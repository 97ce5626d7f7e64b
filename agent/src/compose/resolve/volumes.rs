//! Volumes and mounts: the top-level volume declarations, and a service's `volumes` (short and
//! long syntax) and `tmpfs`, with bind sources made absolute and volume sources named.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{file_mode, invalid, map_text, resolve_path, resource_name, Ctx};
use crate::compose::fields::{parse_size, parse_volume, PROPAGATIONS};
use crate::compose::model::{MountKind, MountSpec, VolumeSpec};
use crate::compose::schema::{LongVolume, RawVolume, Scalar, VolumeEntry};
use crate::compose::ComposeError;

/// The top-level `volumes`, by key. A local volume that binds a host directory
/// (`driver_opts: {type: none, o: bind, device: ./data}`) gets its `device` made absolute, as
/// compose does: the daemon would take a relative one from its own working directory.
pub(super) fn resolve_volumes(
    project: &str,
    project_dir: &std::path::Path,
    env: &BTreeMap<String, String>,
    raw: IndexMap<String, Option<RawVolume>>,
) -> Result<BTreeMap<String, VolumeSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    for (key, vol) in raw {
        let vol = vol.unwrap_or_default();
        if let Some(other) = vol.other.keys().find(|k| !k.starts_with("x-")) {
            return Err(ComposeError::Unsupported {
                field: format!("volumes.{key}.{other}"),
            });
        }
        let (name, external) = resource_name(project, &key, vol.name, &vol.external);
        let mut driver_opts = map_text(vol.driver_opts);
        let binds = driver_opts
            .get("o")
            .is_some_and(|o| o.split(',').any(|opt| opt == "bind"));
        if let (true, Some(device)) = (binds, driver_opts.get_mut("device")) {
            if device.starts_with('.') || device.starts_with('~') {
                *device = resolve_path(project_dir, env, device)
                    .to_string_lossy()
                    .to_string();
            }
        }
        out.insert(
            key,
            VolumeSpec {
                name,
                external,
                driver: vol.driver,
                driver_opts,
                labels: map_text(vol.labels),
            },
        );
    }
    Ok(out)
}

/// The top-level volumes some enabled service mounts, by key: compose creates only those, and
/// an unused external volume need not exist.
pub(super) fn used_volumes(
    services: &IndexMap<String, crate::compose::model::Service>,
    mut top: BTreeMap<String, VolumeSpec>,
) -> BTreeMap<String, VolumeSpec> {
    let mounted: std::collections::BTreeSet<&str> = services
        .values()
        .flat_map(|s| &s.mounts)
        .filter(|m| m.kind == MountKind::Volume)
        .filter_map(|m| m.source.as_deref())
        .collect();
    top.retain(|_, spec| mounted.contains(spec.name.as_str()));
    top
}

/// The service's `volumes`, in order, then its `tmpfs` mounts.
pub(super) fn resolve_mounts(
    ctx: &Ctx<'_>,
    p: &str,
    volumes: Vec<VolumeEntry>,
    tmpfs: &[String],
) -> Result<Vec<MountSpec>, ComposeError> {
    let mut out = Vec::new();
    for (i, entry) in volumes.into_iter().enumerate() {
        let field = format!("{p}.volumes[{i}]");
        let mut mount = match entry {
            VolumeEntry::Short(s) => short_mount(&field, &s)?,
            VolumeEntry::Long(l) => long_mount(&field, *l)?,
        };
        mount.source = mount_source(ctx, &field, mount.kind, mount.source)?;
        out.push(mount);
    }
    out.extend(tmpfs_mounts(p, tmpfs)?);
    Ok(out)
}

/// `[source:]target[:mode]`: a source that looks like a path is a bind (created when missing,
/// as compose does), any other a named volume; no source is an anonymous volume.
fn short_mount(field: &str, s: &str) -> Result<MountSpec, ComposeError> {
    let sv = parse_volume(s).map_err(|e| invalid(field, e))?;
    let is_path = |s: &str| s.starts_with('/') || s.starts_with('.') || s.starts_with('~');
    let kind = match &sv.source {
        Some(src) if is_path(src) => MountKind::Bind,
        _ => MountKind::Volume,
    };
    if kind != MountKind::Bind && (sv.selinux.is_some() || sv.propagation.is_some()) {
        return Err(invalid(
            field,
            format!("{s:?}: only a bind mount takes an SELinux label or a propagation mode"),
        ));
    }
    Ok(MountSpec {
        kind,
        source: sv.source,
        target: sv.target,
        read_only: sv.read_only,
        create_host_path: kind == MountKind::Bind,
        tmpfs_size: None,
        nocopy: sv.nocopy,
        propagation: sv.propagation,
        selinux: sv.selinux,
        tmpfs_mode: None,
        tmpfs_options: None,
    })
}

/// `type:` bind, volume or tmpfs, with its options; a bind needs a `source`.
fn long_mount(field: &str, l: LongVolume) -> Result<MountSpec, ComposeError> {
    // Accepted as compose does: it only ever mattered on Docker for Mac.
    let _ = &l.consistency;
    // Only its presence matters: the type is refused below.
    let _ = &l.image;
    let kind = match l.kind.as_str() {
        "bind" => MountKind::Bind,
        "volume" => MountKind::Volume,
        "tmpfs" => MountKind::Tmpfs,
        "image" => {
            return Err(ComposeError::UnsupportedBecause {
                field: format!("{field}.type: image"),
                why: "mounting an image needs Docker Engine 28 (API 1.48); use a volume filled from the image",
            })
        }
        other => {
            return Err(ComposeError::Unsupported {
                field: format!("{field}.type: {other}"),
            })
        }
    };
    if !l.target.starts_with('/') {
        return Err(invalid(
            format!("{field}.target"),
            "must be an absolute path",
        ));
    }
    let tmpfs = l.tmpfs.unwrap_or_default();
    let size = tmpfs
        .size
        .map(|s| parse_size(&s.text()).map_err(|e| invalid(format!("{field}.tmpfs.size"), e)))
        .transpose()?;
    let tmpfs_mode = tmpfs
        .mode
        .map(|m| file_mode(&m).map_err(|e| invalid(format!("{field}.tmpfs.mode"), e)))
        .transpose()?;
    let bind = l.bind.unwrap_or_default();
    let create = bind.create_host_path.unwrap_or(false);
    if let Some(p) = &bind.propagation {
        if !PROPAGATIONS.contains(&p.as_str()) {
            return Err(invalid(
                format!("{field}.bind.propagation"),
                format!("{p:?} is none of {}", PROPAGATIONS.join(", ")),
            ));
        }
    }
    if let Some(z) = &bind.selinux {
        if z != "z" && z != "Z" {
            return Err(invalid(
                format!("{field}.bind.selinux"),
                format!("{z:?}: z (shared) or Z (private)"),
            ));
        }
    }
    let volume = l.volume.unwrap_or_default();
    if volume.subpath.is_some() {
        // Docker Engine 26 (API 1.45) mounts a subpath; older engines ignore the field and
        // would mount the whole volume.
        return Err(ComposeError::Unsupported {
            field: format!("{field}.volume.subpath"),
        });
    }
    let nocopy = volume.nocopy.unwrap_or(false);
    if kind == MountKind::Bind && l.source.is_none() {
        return Err(invalid(
            format!("{field}.source"),
            "is required for a bind mount",
        ));
    }
    Ok(MountSpec {
        kind,
        source: l.source,
        target: l.target,
        read_only: l.read_only.unwrap_or(false),
        create_host_path: create,
        tmpfs_size: size,
        nocopy,
        propagation: bind.propagation,
        selinux: bind.selinux,
        tmpfs_mode,
        tmpfs_options: None,
    })
}

/// A bind's source as an absolute host path; a named volume's as its Docker name, which the
/// top-level `volumes` must declare.
fn mount_source(
    ctx: &Ctx<'_>,
    field: &str,
    kind: MountKind,
    source: Option<String>,
) -> Result<Option<String>, ComposeError> {
    Ok(match (kind, source) {
        (MountKind::Bind, Some(src)) => Some(
            resolve_path(ctx.project_dir, ctx.env, &src)
                .to_string_lossy()
                .to_string(),
        ),
        (MountKind::Volume, Some(src)) => match ctx.top_volumes.get(&src) {
            Some(spec) => Some(spec.name.clone()),
            None => {
                return Err(invalid(
                    field,
                    format!("named volume {src:?} is not declared in the top-level `volumes`"),
                ))
            }
        },
        (_, src) => src,
    })
}

/// `tmpfs`: `target[:options]`, with `size` and `mode` (octal), and flags (`noexec`, ...) and
/// `uid`/`gid`, which go to Docker as written.
fn tmpfs_mounts(p: &str, tmpfs: &[String]) -> Result<Vec<MountSpec>, ComposeError> {
    let mut out = Vec::new();
    for (i, t) in tmpfs.iter().enumerate() {
        let (target, options) = t.split_once(':').unwrap_or((t, ""));
        if !target.starts_with('/') {
            return Err(invalid(
                format!("{p}.tmpfs[{i}]"),
                format!("{t:?} must be an absolute path"),
            ));
        }
        let mut tmpfs_size = None;
        let mut tmpfs_mode = None;
        let mut verbatim = false;
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => {
                    let size = parse_size(v).map_err(|e| invalid(format!("{p}.tmpfs[{i}]"), e))?;
                    tmpfs_size = Some(size);
                }
                Some(("mode", v)) => {
                    let mode = file_mode(&Scalar::Str(v.to_string()))
                        .map_err(|e| invalid(format!("{p}.tmpfs[{i}]"), e))?;
                    tmpfs_mode = Some(mode);
                }
                // Passed as written (Docker's `Tmpfs`), which the Mount API before 1.46 cannot.
                Some(("uid" | "gid", _)) | None => verbatim = true,
                Some((k, _)) => {
                    let message = format!("unknown tmpfs option {k:?}");
                    return Err(invalid(format!("{p}.tmpfs[{i}]"), message));
                }
            }
        }
        out.push(MountSpec {
            kind: MountKind::Tmpfs,
            source: None,
            target: target.to_string(),
            read_only: false,
            create_host_path: false,
            tmpfs_size,
            nocopy: false,
            propagation: None,
            selinux: None,
            tmpfs_mode,
            tmpfs_options: verbatim.then(|| options.to_string()),
        });
    }
    Ok(out)
}
