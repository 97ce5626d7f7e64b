//! A service's environment: its `env_file`s, read in order, then `environment` over them.

use std::collections::BTreeMap;

use indexmap::IndexMap;

use super::{invalid, resolve_path, Ctx};
use crate::compose::dotenv;
use crate::compose::schema::{EnvFileEntry, Scalar};
use crate::compose::ComposeError;

/// `env_file`s in order, then `environment` over them; a bare name takes the process (and `.env`)
/// value or, when that is unset, removes the variable.
pub(super) fn resolve_environment(
    ctx: &Ctx<'_>,
    service: &str,
    env_files: Vec<EnvFileEntry>,
    environment: IndexMap<String, Option<Scalar>>,
) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    for entry in env_files {
        let Some(entries) = read_env_file(ctx, service, entry)? else {
            continue;
        };
        for (k, v) in entries {
            match v.or_else(|| ctx.env.get(&k).cloned()) {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
    }
    for (k, v) in environment {
        match v.map(|s| s.text()).or_else(|| ctx.env.get(&k).cloned()) {
            Some(v) => out.insert(k, v),
            None => out.remove(&k),
        };
    }
    Ok(out)
}

/// The entries of one `env_file`, or None when it is optional and missing.
fn read_env_file(
    ctx: &Ctx<'_>,
    service: &str,
    entry: EnvFileEntry,
) -> Result<Option<Vec<dotenv::Entry>>, ComposeError> {
    let (path, required, raw_format) = env_file_options(service, entry)?;
    let full = resolve_path(ctx.project_dir, ctx.env, &path);
    let field = format!("services.{service}.env_file");
    ctx.read_gate.check(&field, &full)?;
    ctx.host_files.borrow_mut().push((field, full.clone()));
    let content = match std::fs::read_to_string(&full) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ComposeError::EnvFileMissing {
                service: service.to_string(),
                path: full,
            })
        }
        Err(source) => return Err(ComposeError::Read { path: full, source }),
    };
    let entries = if raw_format {
        dotenv::parse_raw(&content)
    } else {
        let env = ctx.env;
        dotenv::parse(&content, &|n: &str| env.get(n).cloned())
    }
    .map_err(|source| ComposeError::EnvFile {
        path: full.clone(),
        source,
    })?;
    Ok(Some(entries))
}

/// An entry's path, whether it is required, and whether it is read raw (`format: raw`).
fn env_file_options(
    service: &str,
    entry: EnvFileEntry,
) -> Result<(String, bool, bool), ComposeError> {
    Ok(match entry {
        EnvFileEntry::Path(p) => (p, true, false),
        EnvFileEntry::Long {
            path,
            required,
            format,
        } => {
            let raw = match format.as_deref() {
                None => false,
                Some("raw") => true,
                Some(other) => {
                    return Err(invalid(
                        format!("services.{service}.env_file"),
                        format!("unknown format {other:?} (expected raw)"),
                    ))
                }
            };
            (path, required.unwrap_or(true), raw)
        }
    })
}
