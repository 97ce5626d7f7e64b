//! Secrets and configs: where each top-level entry's content comes from (a file, an environment
//! variable, or inline `content`), and each service's use of them as files in its container
//! (`/run/secrets/<name>` and `/<name>` by default; uid, gid and mode as asked). The content is
//! read here, once; the model carries it only beside a digest, which is what reaches the config
//! hash and `berth config`.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

use super::{file_mode, invalid, resolve_path, Ctx};
use crate::compose::model::{hex, FileKind, ServiceFile};
use crate::compose::schema::{FileUse, RawFileSource, Scalar};
use crate::compose::ComposeError;

/// The largest secret or config berth reads: they are files of settings, not data.
const MAX_BYTES: u64 = 1 << 20;

impl FileKind {
    fn section(self) -> &'static str {
        match self {
            FileKind::Secret => "secrets",
            FileKind::Config => "configs",
        }
    }
}

/// Where sources are read from: files from the project directory, variables from the
/// environment, berth locations from what the agent fetched.
pub(super) struct Where<'a> {
    pub project_dir: &'a std::path::Path,
    pub env: &'a BTreeMap<String, String>,
    pub remote: &'a crate::compose::RemoteSources,
    pub read_gate: &'a crate::compose::ReadGate,
    /// What was read from the host, and from berth locations, by field (for the policy).
    pub host_files: std::cell::RefCell<Vec<(String, std::path::PathBuf)>>,
    pub remote_files: std::cell::RefCell<Vec<(String, String)>>,
}

/// The contents of the top-level `secrets` or `configs`, by name. Beyond compose, a `file:`
/// may be a berth location (`s3://bucket/key`, `ssm:/name`, a SecureString decrypted with
/// the instance role), which the agent fetches as it fetches env files.
pub(super) fn resolve_sources(
    kind: FileKind,
    raw: IndexMap<String, Option<RawFileSource>>,
    at: &Where<'_>,
) -> Result<BTreeMap<String, Vec<u8>>, ComposeError> {
    let (project_dir, env) = (at.project_dir, at.env);
    let section = kind.section();
    let mut out = BTreeMap::new();
    for (name, source) in raw {
        let field = format!("{section}.{name}");
        let source = source.unwrap_or_default();
        for (key, set) in [
            ("external", source.external.is_some()),
            ("driver", source.driver.is_some()),
            ("template_driver", source.template_driver.is_some()),
        ] {
            if set {
                return Err(ComposeError::UnsupportedBecause {
                    field: format!("{field}.{key}"),
                    why: "it is Swarm's; give berth a file, an environment variable or content",
                });
            }
        }
        // `name` and `labels` name and label Swarm's object: nothing to apply without Swarm.
        let _ = (&source.name, &source.labels);
        let content = match (source.file, source.environment, source.content) {
            (Some(file), None, None) if crate::compose::is_remote_source(&file) => {
                at.remote_files
                    .borrow_mut()
                    .push((format!("{field}.file"), file.clone()));
                match at.remote.0.get(&file) {
                    Some(bytes) => bytes.clone(),
                    None => {
                        return Err(ComposeError::UnsupportedBecause {
                            field: format!("{field}.file: {file}"),
                            why: "berth agent fetches s3:// and ssm: sources; berth up reads local files only",
                        })
                    }
                }
            }
            (Some(file), None, None) => {
                let path = resolve_path(project_dir, env, &file);
                at.read_gate.check(&format!("{field}.file"), &path)?;
                at.host_files
                    .borrow_mut()
                    .push((format!("{field}.file"), path.clone()));
                let read_err = |source| ComposeError::Read {
                    path: path.clone(),
                    source,
                };
                let size = std::fs::metadata(&path).map_err(read_err)?.len();
                if size > MAX_BYTES {
                    return Err(invalid(
                        format!("{field}.file"),
                        format!("{} is {size} bytes; at most {MAX_BYTES}", path.display()),
                    ));
                }
                std::fs::read(&path).map_err(read_err)?
            }
            (None, Some(var), None) => match env.get(&var) {
                Some(value) => value.clone().into_bytes(),
                None => {
                    return Err(invalid(
                        format!("{field}.environment"),
                        format!("the variable {var} is not set"),
                    ))
                }
            },
            (None, None, Some(content)) if kind == FileKind::Config => content.into_bytes(),
            (None, None, Some(_)) => return Err(invalid(
                format!("{field}.content"),
                "a secret comes from a file or an environment variable (content is for configs)",
            )),
            _ => {
                return Err(invalid(
                    field,
                    "needs exactly one of file, environment or content",
                ))
            }
        };
        out.insert(name, content);
    }
    Ok(out)
}

fn id(field: String, v: Option<Scalar>) -> Result<u32, ComposeError> {
    match v {
        None => Ok(0),
        Some(v) => v
            .text()
            .trim()
            .parse()
            .map_err(|_| invalid(field, format!("{:?} is not a numeric id", v.text()))),
    }
}

/// A service's `secrets` or `configs` as files, each from a declared entry.
pub(super) fn resolve_uses(
    ctx: &Ctx<'_>,
    p: &str,
    kind: FileKind,
    uses: Vec<FileUse>,
) -> Result<Vec<ServiceFile>, ComposeError> {
    let section = kind.section();
    let (sources, dir, default_mode) = match kind {
        FileKind::Secret => (ctx.secrets, "/run/secrets", 0o400),
        FileKind::Config => (ctx.configs, "", 0o444),
    };
    let mut out = Vec::new();
    for (i, u) in uses.into_iter().enumerate() {
        let field = format!("{p}.{section}[{i}]");
        let (source, target, uid, gid, mode) = match u {
            FileUse::Name(name) => (name, None, None, None, None),
            FileUse::Long(l) => (l.source, l.target, l.uid, l.gid, l.mode),
        };
        let Some(content) = sources.get(&source) else {
            return Err(invalid(
                field,
                format!("{source:?} is not declared in the top-level `{section}`"),
            ));
        };
        let target = match target {
            Some(t) if t.starts_with('/') => t,
            Some(t) => format!("{dir}/{t}"),
            None => format!("{dir}/{source}"),
        };
        let mode = mode
            .map(|m| file_mode(&m).map_err(|e| invalid(format!("{field}.mode"), e)))
            .transpose()?
            .unwrap_or(default_mode);
        out.push(ServiceFile {
            kind,
            uid: id(format!("{field}.uid"), uid)?,
            gid: id(format!("{field}.gid"), gid)?,
            mode,
            digest: hex(&Sha256::digest(content)),
            content: content.clone(),
            source,
            target,
        });
    }
    Ok(out)
}
