//! Reading one compose file: YAML with anchors and `<<` merge keys, then interpolation of every
//! string scalar. Also the environment interpolation draws on (process env over `.env`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_norway::Value;

use super::{dotenv, interpolate};
use super::{ComposeError, LoadOptions};

/// The variables interpolation sees: the `.env` file (or `--env-file`s) under the process
/// environment, which wins, as in compose. Also the values that came from those files (and
/// were not overridden): secrets, wherever they are interpolated.
pub(super) fn interpolation_env(
    opts: &LoadOptions,
    project_dir: &Path,
) -> Result<(BTreeMap<String, String>, Vec<String>), ComposeError> {
    let files: Vec<PathBuf> = if opts.env_files.is_empty() {
        let default = project_dir.join(".env");
        if default.is_file() {
            vec![default]
        } else {
            vec![]
        }
    } else {
        opts.env_files
            .iter()
            .map(|f| {
                if f.is_absolute() {
                    f.clone()
                } else {
                    opts.working_dir.join(f)
                }
            })
            .collect()
    };
    let mut from_files: BTreeMap<String, String> = BTreeMap::new();
    for path in files {
        let content = std::fs::read_to_string(&path).map_err(|source| ComposeError::Read {
            path: path.clone(),
            source,
        })?;
        let lookup = |name: &str| {
            opts.environment
                .get(name)
                .cloned()
                .or_else(|| from_files.get(name).cloned())
        };
        let entries = dotenv::parse(&content, &lookup).map_err(|source| ComposeError::EnvFile {
            path: path.clone(),
            source,
        })?;
        for (key, value) in entries {
            let value = value.or_else(|| opts.environment.get(&key).cloned());
            if let Some(v) = value {
                from_files.insert(key, v);
            }
        }
    }
    let from_files_only: Vec<String> = from_files
        .iter()
        .filter(|(k, _)| !opts.environment.contains_key(*k))
        .map(|(_, v)| v.clone())
        .collect();
    let mut env = from_files;
    env.extend(opts.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok((env, from_files_only))
}

/// The project's name before interpolation: `-p`, else a non-empty `COMPOSE_PROJECT_NAME`,
/// both as given; else the last file's top-level `name:` (itself interpolated) or the project
/// directory's name, normalized. The resolver settles on the same name from the merged files.
pub(super) fn project_name(
    opts: &LoadOptions,
    files: &[PathBuf],
    project_dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<String, ComposeError> {
    let explicit = opts.project_name.clone().or_else(|| {
        env.get("COMPOSE_PROJECT_NAME")
            .filter(|n| !n.is_empty())
            .cloned()
    });
    if let Some(name) = explicit {
        return Ok(name);
    }
    let lookup = |name: &str| env.get(name).cloned();
    let mut top = None;
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(name) = parse_yaml(path, &text)?.get("name").and_then(Value::as_str) {
            let name = interpolate::interpolate(name, &lookup).map_err(|source| {
                ComposeError::Interpolate {
                    path: path.to_path_buf(),
                    source: interpolate::PathError {
                        path: "name".into(),
                        source,
                    },
                }
            })?;
            top = Some(name);
        }
    }
    let dir = project_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string());
    Ok(top
        .or(dir)
        .map(|n| super::normalize_project_name(&n))
        .unwrap_or_default())
}

/// Parses a file into one interpolated YAML mapping.
pub(super) fn read_document(
    path: &Path,
    lookup: interpolate::Lookup<'_>,
) -> Result<Value, ComposeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ComposeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut doc = parse_yaml(path, &text)?;
    if doc.is_null() {
        doc = Value::Mapping(Default::default());
    }
    if !doc.is_mapping() {
        return Err(ComposeError::Structure {
            path: path.to_path_buf(),
            message: "top level must be a mapping".into(),
        });
    }
    interpolate::interpolate_yaml(&mut doc, lookup).map_err(|source| {
        ComposeError::Interpolate {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(doc)
}

pub(super) fn parse_yaml(path: &Path, text: &str) -> Result<Value, ComposeError> {
    let yaml_err = |e: serde_norway::Error| ComposeError::Yaml {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        source: e,
    };
    let mut doc: Value = serde_norway::from_str(text).map_err(yaml_err)?;
    // Recursive: merge keys inside services (`<<: *defaults`) are resolved too.
    doc.apply_merge().map_err(yaml_err)?;
    Ok(doc)
}
