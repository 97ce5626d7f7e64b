//! Volumes and mounts: the top-level volume declarations, and a service's `volumes` (short and
//! long syntax) and `tmpfs`, with bind sources made absolute and volume sources named.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{invalid, map_text, resolve_path, resource_name, Ctx};
use crate::compose::fields::{parse_size, parse_volume};
use crate::compose::model::{MountKind, MountSpec, VolumeSpec};
use crate::compose::schema::{LongVolume, RawVolume, VolumeEntry};
use crate::compose::ComposeError;

/// The top-level `volumes`, by key.
pub(super) fn resolve_volumes(
    project: &str,
    raw: IndexMap<String, Option<RawVolume>>,
) -> Result<BTreeMap<String, VolumeSpec>, ComposeError> {
    let mut out = BTreeMap::new();
    for (key, vol) in raw {
        let vol = vol.unwrap_or_default();
        let (name, external) = resource_name(project, &key, vol.name, &vol.external);
        out.insert(
            key,
            VolumeSpec {
                name,
                external,
                driver: vol.driver,
                driver_opts: map_text(vol.driver_opts),
                labels: map_text(vol.labels),
            },
        );
    }
    Ok(out)
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
            VolumeEntry::Long(l) => long_mount(&field, l)?,
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
    Ok(MountSpec {
        kind,
        source: sv.source,
        target: sv.target,
        read_only: sv.read_only,
        create_host_path: kind == MountKind::Bind,
        tmpfs_size: None,
        nocopy: false,
    })
}

/// `type:` bind, volume or tmpfs, with its options; a bind needs a `source`.
fn long_mount(field: &str, l: LongVolume) -> Result<MountSpec, ComposeError> {
    // Accepted as compose does: it only ever mattered on Docker for Mac.
    let _ = &l.consistency;
    let kind = match l.kind.as_str() {
        "bind" => MountKind::Bind,
        "volume" => MountKind::Volume,
        "tmpfs" => MountKind::Tmpfs,
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
    let size = l
        .tmpfs
        .and_then(|t| t.size)
        .map(|s| parse_size(&s.text()).map_err(|e| invalid(format!("{field}.tmpfs.size"), e)))
        .transpose()?;
    let create = l.bind.and_then(|b| b.create_host_path).unwrap_or(false);
    let nocopy = l.volume.and_then(|v| v.nocopy).unwrap_or(false);
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

/// `tmpfs`: `target[:options]`; only `size` is kept (`mode`, `uid` and `gid` are accepted).
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
        for opt in options.split(',').filter(|o| !o.is_empty()) {
            match opt.split_once('=') {
                Some(("size", v)) => {
                    let size = parse_size(v).map_err(|e| invalid(format!("{p}.tmpfs[{i}]"), e))?;
                    tmpfs_size = Some(size);
                }
                Some(("mode" | "uid" | "gid", _)) | None => {}
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
        });
    }
    Ok(out)
}
