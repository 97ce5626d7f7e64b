//! The resolver: turns the merged compose document into a checked [`Project`]. This file holds
//! the project-level steps; each service field's rules live in the file named for its concern.

mod dependencies;
mod deploy;
mod environment;
mod healthcheck;
mod keys;
mod networks;
mod ports;
mod secrets;
mod service;
mod typed;
mod volumes;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use indexmap::IndexMap;
use serde_norway::{Mapping, Value};

use super::fields::parse_size;
use super::model::{FileKind, NetworkSpec, Project, Service, VolumeSpec};
use super::schema::{RawFileSource, RawNetwork, RawVolume, Scalar};
use super::ComposeError;
use typed::typed;

pub(super) struct BuildInput<'a> {
    pub document: Value,
    pub files: &'a [PathBuf],
    pub project_dir: &'a Path,
    pub name_flag: Option<String>,
    pub env: &'a BTreeMap<String, String>,
    pub profiles: &'a [String],
    pub remote_sources: &'a super::RemoteSources,
    pub read_gate: &'a super::ReadGate,
}

/// What resolving one service needs from the project, and where its warnings go.
struct Ctx<'a> {
    project: String,
    project_dir: &'a Path,
    env: &'a BTreeMap<String, String>,
    top_networks: &'a BTreeMap<String, NetworkSpec>,
    top_volumes: &'a BTreeMap<String, VolumeSpec>,
    /// The top-level secrets' and configs' contents, by name.
    secrets: &'a BTreeMap<String, Vec<u8>>,
    configs: &'a BTreeMap<String, Vec<u8>>,
    warnings: Vec<String>,
    /// Host files read (`env_file`s), by field: the host policy judges them.
    host_files: std::cell::RefCell<Vec<(String, PathBuf)>>,
    read_gate: &'a super::ReadGate,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A size (`512m`, a byte count) in bytes, when given; an error names `field`.
fn size(field: String, value: Option<Scalar>) -> Result<Option<i64>, ComposeError> {
    value
        .map(|v| parse_size(&v.text()).map_err(|e| invalid(field, e)))
        .transpose()
}

/// Mode bits: a YAML number as written (`0o1777` is octal there), or text read as octal, as
/// `chmod` takes it.
pub(super) fn file_mode(m: &Scalar) -> Result<u32, String> {
    let too_big = |n: i64| format!("{n:o} (octal) is not a file mode");
    match m {
        Scalar::Int(n) if (0..=0o7777).contains(n) => Ok(*n as u32),
        Scalar::Int(n) => Err(too_big(*n)),
        other => {
            let text = other.text();
            let digits = text.trim().trim_start_matches("0o");
            let n = i64::from_str_radix(digits, 8)
                .map_err(|_| format!("{text:?} is not an octal file mode"))?;
            if n > 0o7777 {
                return Err(too_big(n));
            }
            Ok(n as u32)
        }
    }
}

fn map_text(m: IndexMap<String, Option<Scalar>>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| (k, v.map(|s| s.text()).unwrap_or_default()))
        .collect()
}

pub(super) fn build_project(input: BuildInput<'_>) -> Result<Project, ComposeError> {
    let Value::Mapping(mut doc) = input.document else {
        return Err(ComposeError::Structure {
            path: input.files[0].clone(),
            message: "top level must be a mapping".into(),
        });
    };
    let warnings = keys::check_top_keys(&doc)?;
    let name = project_name(&doc, input.project_dir, input.name_flag, input.env)?;

    let raw_networks: IndexMap<String, Option<RawNetwork>> =
        typed(take_section(&mut doc, "networks"), "networks")?;
    let raw_volumes: IndexMap<String, Option<RawVolume>> =
        typed(take_section(&mut doc, "volumes"), "volumes")?;
    let top_networks = networks::resolve_networks(&name, raw_networks)?;
    let top_volumes = volumes::resolve_volumes(&name, input.project_dir, input.env, raw_volumes)?;
    let raw_secrets: IndexMap<String, Option<RawFileSource>> =
        typed(take_section(&mut doc, "secrets"), "secrets")?;
    let raw_configs: IndexMap<String, Option<RawFileSource>> =
        typed(take_section(&mut doc, "configs"), "configs")?;
    let sources = secrets::Where {
        project_dir: input.project_dir,
        env: input.env,
        remote: input.remote_sources,
        read_gate: input.read_gate,
        host_files: Default::default(),
        remote_files: Default::default(),
    };
    let secret_sources = secrets::resolve_sources(FileKind::Secret, raw_secrets, &sources)?;
    let config_sources = secrets::resolve_sources(FileKind::Config, raw_configs, &sources)?;

    let Value::Mapping(services_map) = take_section(&mut doc, "services") else {
        return Err(invalid("services", "must be a mapping"));
    };
    let mut ctx = Ctx {
        project: name.clone(),
        project_dir: input.project_dir,
        env: input.env,
        top_networks: &top_networks,
        top_volumes: &top_volumes,
        secrets: &secret_sources,
        configs: &config_sources,
        warnings,
        host_files: sources.host_files,
        read_gate: input.read_gate,
    };
    let (mut services, disabled) = resolve_services(&mut ctx, services_map, input.profiles)?;
    dependencies::check_dependencies(&mut services, &disabled, &mut ctx.warnings)?;
    dependencies::check_cycles(&services)?;

    let warnings = ctx.warnings;
    let host_files = ctx.host_files.into_inner();
    let remote_files = sources.remote_files.into_inner();
    let networks = networks::used_networks(&services, &top_networks, &name);
    let volumes = volumes::used_volumes(&services, top_volumes);
    Ok(Project {
        name,
        working_dir: input.project_dir.to_path_buf(),
        config_files: input.files.to_vec(),
        services,
        disabled_services: disabled,
        networks,
        volumes,
        warnings,
        env_file_values: vec![],
        host_files,
        remote_files,
    })
}

/// A top-level section, removed from the document; absent or `null` reads as an empty mapping.
fn take_section(doc: &mut Mapping, key: &str) -> Value {
    match doc.remove(key) {
        None | Some(Value::Null) => Value::Mapping(Mapping::default()),
        Some(v) => v,
    }
}

/// `-p`, else a non-empty `COMPOSE_PROJECT_NAME`, both taken as given; else the top-level
/// `name:` or the directory's name, normalized as compose does.
fn project_name(
    doc: &Mapping,
    project_dir: &Path,
    name_flag: Option<String>,
    env: &BTreeMap<String, String>,
) -> Result<String, ComposeError> {
    let top_name = doc.get("name").and_then(Value::as_str).map(String::from);
    let dir_name = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string());
    let name = match name_flag.or_else(|| {
        let from_env = env.get("COMPOSE_PROJECT_NAME");
        from_env.filter(|n| !n.is_empty()).cloned()
    }) {
        Some(explicit) => explicit,
        None => top_name
            .or(dir_name)
            .map(|n| super::normalize_project_name(&n))
            .unwrap_or_default(),
    };
    super::validate_project_name(&name)?;
    Ok(name)
}

/// Resolves every service, in name order; those whose profiles are not enabled are returned
/// apart, by name (resolved all the same, so that their errors show).
fn resolve_services(
    ctx: &mut Ctx<'_>,
    services_map: Mapping,
    profiles: &[String],
) -> Result<(IndexMap<String, Service>, Vec<String>), ComposeError> {
    let all_profiles = profiles.iter().any(|p| p == "*");
    let mut services = IndexMap::new();
    let mut disabled = Vec::new();
    let mut entries: Vec<(String, Value)> = services_map
        .into_iter()
        .map(|(k, v)| (k.as_str().unwrap_or_default().to_string(), v))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (svc_name, value) in entries {
        let svc = service::resolve_service(ctx, &svc_name, value)?;
        let enabled = svc.profiles.is_empty()
            || all_profiles
            || svc.profiles.iter().any(|p| profiles.contains(p));
        if enabled {
            services.insert(svc_name, svc);
        } else {
            disabled.push(svc_name);
        }
    }
    Ok((services, disabled))
}

/// A network's or volume's Docker name, and whether it is external: `name:`, else the
/// deprecated `external: {name: x}`, else the key itself when external, else `<project>_<key>`.
fn resource_name(
    project: &str,
    key: &str,
    name: Option<String>,
    external: &Option<Value>,
) -> (String, bool) {
    let is_ext = is_external(external);
    let legacy = external
        .as_ref()
        .and_then(|e| e.get("name")?.as_str().map(String::from));
    let name = name.or(legacy).unwrap_or_else(|| {
        if is_ext {
            key.to_string()
        } else {
            format!("{project}_{key}")
        }
    });
    (name, is_ext)
}

fn is_external(v: &Option<Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Mapping(_)) => true,
        _ => false,
    }
}

/// A host path relative to the project directory, with `~` as the home directory.
fn resolve_path(project_dir: &Path, env: &BTreeMap<String, String>, p: &str) -> PathBuf {
    let joined = if let Some(rest) = p.strip_prefix("~/") {
        PathBuf::from(env.get("HOME").cloned().unwrap_or_else(|| "/root".into())).join(rest)
    } else if p == "~" {
        PathBuf::from(env.get("HOME").cloned().unwrap_or_else(|| "/root".into()))
    } else {
        project_dir.join(p)
    };
    // Lexical clean-up (`./a/../b`), as compose does; the path need not exist yet.
    let mut out = PathBuf::new();
    for comp in joined.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
