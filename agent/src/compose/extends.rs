//! `extends` and `include`: compose files built from others.
//!
//! A service that `extends` another (in this file, or in another with `file:`) is that service
//! with its own fields merged over it, by the rules of an override file; recursively, a cycle
//! refused. `include` loads other compose files as projects of their own (their directory,
//! their `.env`) and adds their services, networks and volumes; a name both define is an
//! error, as in compose. Either way the relative paths of what comes from another directory
//! (bind sources, `env_file`s, a local volume's bind `device`, a secret's or config's `file`)
//! are made absolute from that directory first, since the resolver reads the rest from the
//! project's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::{files, interpolate, merge, ComposeError, LoadOptions};

fn structure(path: &Path, message: String) -> ComposeError {
    ComposeError::Structure {
        path: path.to_path_buf(),
        message,
    }
}

/// Resolves every `extends` of the merged document `doc`, which `file` stands for.
pub(super) fn resolve_extends(
    doc: &mut Value,
    file: &Path,
    lookup: interpolate::Lookup<'_>,
) -> Result<(), ComposeError> {
    let Some(Value::Mapping(services)) = doc.get("services").cloned() else {
        return Ok(());
    };
    let mut others = BTreeMap::new();
    let mut resolved = Mapping::new();
    for (name, svc) in &services {
        let name = name.as_str().unwrap_or_default();
        let svc = if svc.get("extends").is_some() {
            let mut stack = vec![];
            extended(&services, file, name, lookup, &mut stack, &mut others)?
        } else {
            svc.clone()
        };
        resolved.insert(name.into(), svc);
    }
    if let Value::Mapping(d) = doc {
        d.insert("services".into(), Value::Mapping(resolved));
    }
    Ok(())
}

/// Service `name` of `services` (from `file`) with its `extends` chain applied.
fn extended(
    services: &Mapping,
    file: &Path,
    name: &str,
    lookup: interpolate::Lookup<'_>,
    stack: &mut Vec<(PathBuf, String)>,
    others: &mut BTreeMap<PathBuf, Mapping>,
) -> Result<Value, ComposeError> {
    let here = (file.to_path_buf(), name.to_string());
    if stack.contains(&here) {
        let chain: Vec<String> = stack
            .iter()
            .chain(std::iter::once(&here))
            .map(|(f, s)| format!("{s} ({})", f.display()))
            .collect();
        return Err(structure(
            file,
            format!("extends goes round in a circle: {}", chain.join(" -> ")),
        ));
    }
    let Some(svc) = services.get(name) else {
        return Err(structure(
            file,
            format!("extends names service {name:?}, which this file does not define"),
        ));
    };
    let Some(ext) = svc.get("extends") else {
        return Ok(svc.clone());
    };
    let field = format!("services.{}.extends", stack.last().map_or(name, |(_, s)| s));
    let (base_name, base_file) = match ext {
        Value::String(s) => (s.clone(), None),
        Value::Mapping(m) => {
            let service = m
                .get("service")
                .and_then(Value::as_str)
                .ok_or_else(|| structure(file, format!("{field}.service is required")))?;
            let other = m.get("file").and_then(Value::as_str);
            (service.to_string(), other.map(|f| dir_of(file).join(f)))
        }
        _ => {
            return Err(structure(
                file,
                format!("{field} must be a name or a mapping"),
            ))
        }
    };
    stack.push(here);
    let base = match base_file {
        None => extended(services, file, &base_name, lookup, stack, others)?,
        Some(other) => {
            let other = std::path::absolute(&other).unwrap_or(other);
            if !others.contains_key(&other) {
                let doc = merge::merge_documents(
                    Value::Null,
                    files::read_document(&other, lookup)?,
                    &other,
                )?;
                let services = match doc.get("services") {
                    Some(Value::Mapping(m)) => m.clone(),
                    _ => Mapping::new(),
                };
                others.insert(other.clone(), services);
            }
            let other_services = others[&other].clone();
            let mut base = extended(&other_services, &other, &base_name, lookup, stack, others)?;
            relocate_service(&mut base, dir_of(&other));
            base
        }
    };
    stack.pop();
    let mut over = svc.clone();
    if let Value::Mapping(m) = &mut over {
        m.remove("extends");
    }
    Ok(merge::merge_service(base, over))
}

fn dir_of(file: &Path) -> &Path {
    file.parent().unwrap_or(Path::new("."))
}

/// A relative path (`./x`, `../x`, `x/y`) made absolute from `dir`; `~` and absolute paths stay.
fn absolute(dir: &Path, p: &str) -> String {
    if p.starts_with('/') || p.starts_with('~') {
        return p.to_string();
    }
    dir.join(p).to_string_lossy().to_string()
}

/// The relative paths of a service read from `dir`'s file, made absolute from there.
fn relocate_service(svc: &mut Value, dir: &Path) {
    let Value::Mapping(svc) = svc else {
        return;
    };
    if let Some(Value::Sequence(volumes)) = svc.get_mut("volumes") {
        for v in volumes.iter_mut() {
            match v {
                // `source:target[:mode]`: a source starting with `.` is a path.
                Value::String(s) if s.starts_with('.') => {
                    if let Some((source, rest)) = s.split_once(':') {
                        *s = format!("{}:{rest}", absolute(dir, source));
                    }
                }
                Value::Mapping(m) if m.get("type").and_then(Value::as_str) == Some("bind") => {
                    if let Some(Value::String(source)) = m.get_mut("source") {
                        *source = absolute(dir, source);
                    }
                }
                _ => {}
            }
        }
    }
    match svc.get_mut("env_file") {
        Some(Value::String(f)) => *f = absolute(dir, f),
        Some(Value::Sequence(entries)) => {
            for e in entries.iter_mut() {
                match e {
                    Value::String(f) => *f = absolute(dir, f),
                    Value::Mapping(m) => {
                        if let Some(Value::String(f)) = m.get_mut("path") {
                            *f = absolute(dir, f);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// A secret's or config's `file:` read from `dir`'s file, made absolute from there (a berth
/// location stays as it is).
fn relocate_source(source: &mut Value, dir: &Path) {
    if let Some(Value::String(file)) = source.get_mut("file") {
        if !super::is_remote_source(file) {
            *file = absolute(dir, file);
        }
    }
}

/// A top-level volume's bind `device` read from `dir`'s file, made absolute from there.
fn relocate_volume(volume: &mut Value, dir: &Path) {
    if let Some(Value::String(device)) = volume
        .get_mut("driver_opts")
        .and_then(|o| o.get_mut("device"))
    {
        if device.starts_with('.') {
            *device = absolute(dir, device);
        }
    }
}

/// Adds what the top-level `include` of `doc` (from `file`) names, then removes the key.
/// `environment` is the process environment each included project starts from.
pub(super) fn resolve_include(
    doc: &mut Value,
    file: &Path,
    environment: &BTreeMap<String, String>,
    depth: usize,
) -> Result<(), ComposeError> {
    let Value::Mapping(top) = doc else {
        return Ok(());
    };
    let Some(include) = top.remove("include") else {
        return Ok(());
    };
    if depth > 8 {
        return Err(structure(file, "include nests deeper than 8 files".into()));
    }
    let entries = match include {
        Value::Sequence(items) => items,
        other => vec![other],
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let field = format!("include[{i}]");
        let (paths, project_directory, env_files) = match entry {
            Value::String(p) => (vec![p], None, vec![]),
            Value::Mapping(m) => {
                let strings = |key: &str| -> Vec<String> {
                    match m.get(key) {
                        Some(Value::String(s)) => vec![s.clone()],
                        Some(Value::Sequence(items)) => items
                            .iter()
                            .filter_map(Value::as_str)
                            .map(String::from)
                            .collect(),
                        _ => vec![],
                    }
                };
                let dir = m
                    .get("project_directory")
                    .and_then(Value::as_str)
                    .map(String::from);
                (strings("path"), dir, strings("env_file"))
            }
            _ => {
                return Err(structure(
                    file,
                    format!("{field} must be a path or a mapping"),
                ))
            }
        };
        if paths.is_empty() {
            return Err(structure(file, format!("{field}.path is required")));
        }
        let base = dir_of(file);
        let paths: Vec<PathBuf> = paths.iter().map(|p| base.join(p)).collect();
        let project_dir = project_directory
            .map(|d| base.join(d))
            .unwrap_or_else(|| dir_of(&paths[0]).to_path_buf());
        let opts = LoadOptions {
            files: paths.clone(),
            env_files: env_files.iter().map(|f| base.join(f)).collect(),
            working_dir: project_dir.clone(),
            environment: environment.clone(),
            ..LoadOptions::default()
        };
        let (env, _) = files::interpolation_env(&opts, &project_dir)?;
        let lookup = |name: &str| env.get(name).cloned();
        let mut included = Value::Null;
        for path in &paths {
            let doc = files::read_document(path, &lookup)?;
            included = merge::merge_documents(included, doc, path)?;
        }
        let last = &paths[paths.len() - 1];
        resolve_include(&mut included, last, environment, depth + 1)?;
        resolve_extends(&mut included, last, &lookup)?;
        let included = merge::finish(included, last)?;
        let Value::Mapping(mut included) = included else {
            continue;
        };
        for section in ["services", "networks", "volumes", "secrets", "configs"] {
            let Some(Value::Mapping(from)) = included.remove(section) else {
                continue;
            };
            let into = top
                .entry(section.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            if into.is_null() {
                *into = Value::Mapping(Mapping::new());
            }
            let Value::Mapping(into) = into else {
                continue;
            };
            for (key, mut value) in from {
                if into.contains_key(&key) {
                    return Err(structure(
                        file,
                        format!(
                            "{section}.{} is defined both here and in {}, which include brings in",
                            key.as_str().unwrap_or_default(),
                            last.display()
                        ),
                    ));
                }
                match section {
                    "services" => relocate_service(&mut value, &project_dir),
                    "volumes" => relocate_volume(&mut value, &project_dir),
                    "secrets" | "configs" => relocate_source(&mut value, &project_dir),
                    _ => {}
                }
                into.insert(key, value);
            }
        }
    }
    Ok(())
}
