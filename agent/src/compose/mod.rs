//! The compose model: reads compose files the way `docker compose` does (YAML anchors and merge
//! keys, interpolation, several `-f` files merged, profiles, `env_file`) and yields a [`Project`]
//! whose services are fully resolved and validated. Nothing here talks to Docker.
//!
//! Stages, in order: [`files`] parses and interpolates each file (with [`interpolate`]'s
//! `${...}` rules), [`merge`] folds them into one document, [`extends`] brings in `include`d
//! files and `extends`, [`resolve`] reads it through the [`schema`] into the typed, checked
//! [`model`] ([`dotenv`] reads `env_file`s).

pub mod dotenv;
mod extends;
mod fields;
mod files;
pub mod interpolate;
mod merge;
mod model;
mod render;
mod resolve;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use fields::{parse_duration, parse_size};
pub use model::{
    Dependency, DependencyCondition, FileKind, Healthcheck, Logging, MountKind, MountSpec,
    NetworkSpec, PortMapping, Project, PullPolicy, Service, ServiceFile, ServiceNetwork,
    VolumeSpec,
};
pub use render::compose_shape;

/// Everything that can be wrong with a compose project. Each variant names the file and the path
/// inside it (`services.web.ports[0]`) that it is about; none carries an environment value.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("no compose file found in {dir}: looked for compose.yaml, compose.yml, docker-compose.yaml, docker-compose.yml")]
    NoFile { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid YAML{}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Yaml {
        path: PathBuf,
        line: Option<usize>,
        source: serde_norway::Error,
    },
    #[error("{path}: {message}")]
    Structure { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Interpolate {
        path: PathBuf,
        source: interpolate::PathError,
    },
    #[error("env file {path}: {source}")]
    EnvFile {
        path: PathBuf,
        source: dotenv::DotenvError,
    },
    #[error("env file {path} (services.{service}.env_file) not found")]
    EnvFileMissing { service: String, path: PathBuf },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The host policy refused a host file before it was read.
    #[error("{field}: {message}")]
    Refused { field: String, message: String },
    #[error("services.{service}.build: berth runs images from a registry and cannot build; push the image and set `image:` instead")]
    Build { service: String },
    #[error("{field}: not supported by berth")]
    Unsupported { field: String },
    /// Known and refused for a reason the user can act on.
    #[error("{field}: not supported by berth: {why}")]
    UnsupportedBecause { field: String, why: &'static str },
    #[error("service {service} depends on undefined service {dependency}")]
    UnknownDependency { service: String, dependency: String },
    #[error("service {service} depends on {dependency}, which is disabled by its profiles (enable it with --profile)")]
    DisabledDependency { service: String, dependency: String },
    #[error("dependency cycle: {}", cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
    #[error("invalid project name {name:?}: use lowercase letters, digits, dashes and underscores, starting with a letter or digit")]
    ProjectName { name: String },
}

/// How to find and read a project, from the command line and the process environment.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f` files; empty means the default names in `working_dir`.
    pub files: Vec<PathBuf>,
    /// `-p`; otherwise `COMPOSE_PROJECT_NAME`, the top-level `name:`, the directory name.
    pub project_name: Option<String>,
    /// `--env-file`s; empty means `.env` in the project directory when it exists.
    pub env_files: Vec<PathBuf>,
    /// `--profile`s; when empty, `COMPOSE_PROFILES`.
    pub profiles: Vec<String>,
    /// Where relative `-f` paths and the default file are looked up.
    pub working_dir: PathBuf,
    /// The process environment (passed in, so that callers decide what it holds).
    pub environment: BTreeMap<String, String>,
    /// Contents of the secrets' and configs' sources at berth locations (`s3://...`,
    /// `ssm:/...`), fetched by the agent; keyed by the location as the file writes it.
    pub remote_sources: RemoteSources,
    /// Asked before any host file is read (`env_file`, a secret's or config's `file`): the
    /// host policy refuses a path before its content is read, so that neither its content
    /// nor an error about it leaves the host file.
    pub read_gate: ReadGate,
}

/// A judge of host paths a project reads: given the field and the path, why it may not be
/// read, if it may not. The default lets every path be read.
#[derive(Clone, Default)]
pub struct ReadGate(Option<std::sync::Arc<ReadJudge>>);

type ReadJudge = dyn Fn(&str, &std::path::Path) -> Option<String> + Send + Sync;

impl ReadGate {
    pub fn new(
        judge: impl Fn(&str, &std::path::Path) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        ReadGate(Some(std::sync::Arc::new(judge)))
    }

    /// Ok when `path` may be read for `field`; else the refusal, as the field's error.
    pub(crate) fn check(&self, field: &str, path: &std::path::Path) -> Result<(), ComposeError> {
        match self.0.as_ref().and_then(|judge| judge(field, path)) {
            None => Ok(()),
            Some(message) => Err(ComposeError::Refused {
                field: field.to_string(),
                message,
            }),
        }
    }
}

impl std::fmt::Debug for ReadGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ReadGate(judged)"
        } else {
            "ReadGate(open)"
        })
    }
}

/// Fetched contents by location. Its `Debug` shows the locations only.
#[derive(Clone, Default)]
pub struct RemoteSources(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for RemoteSources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// Whether a secret's or config's `file:` is a berth location rather than a path.
pub fn is_remote_source(file: &str) -> bool {
    file.starts_with("s3://") || file.starts_with("ssm:")
}

impl LoadOptions {
    pub fn from_process(files: Vec<PathBuf>, project_name: Option<String>) -> Self {
        LoadOptions {
            files,
            project_name,
            working_dir: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            environment: std::env::vars().collect(),
            ..LoadOptions::default()
        }
    }
}

/// compose-go's search order; the first found wins, and an override file beside it joins it.
const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];
const OVERRIDE_FILES: [&str; 4] = [
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yml",
    "docker-compose.override.yaml",
];

/// Loads, merges, interpolates and validates a project.
pub fn load(opts: &LoadOptions) -> Result<Project, ComposeError> {
    let files = resolve_files(opts)?;
    let project_dir = files[0]
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let (mut env, file_values) = files::interpolation_env(opts, &project_dir)?;
    // As compose: interpolation sees COMPOSE_PROJECT_NAME as the name the project ends up with,
    // whether it came from -p, the environment, a file's `name:` or the directory.
    let name = files::project_name(opts, &files, &project_dir, &env)?;
    env.insert("COMPOSE_PROJECT_NAME".to_string(), name);
    let lookup = |name: &str| env.get(name).cloned();

    let mut merged = serde_norway::Value::Null;
    for path in &files {
        let doc = files::read_document(path, &lookup)?;
        merged = merge::merge_documents(merged, doc, path)?;
    }
    // `extends` without `file:` and relative `include` paths are read from the main file's
    // directory, the project's.
    extends::resolve_include(&mut merged, &files[0], &opts.environment, 0)?;
    extends::resolve_extends(&mut merged, &files[0], &lookup)?;
    let merged = merge::finish(merged, &files[files.len() - 1])?;
    // As compose: COMPOSE_PROFILES applies only when no --profile is given.
    let mut profiles: Vec<String> = opts.profiles.clone();
    if profiles.is_empty() {
        if let Some(p) = env.get("COMPOSE_PROFILES") {
            let listed = p.split(',').map(str::trim).filter(|s| !s.is_empty());
            profiles.extend(listed.map(String::from));
        }
    }
    let mut project = resolve::build_project(resolve::BuildInput {
        document: merged,
        files: &files,
        project_dir: &project_dir,
        name_flag: opts.project_name.clone(),
        env: &env,
        profiles: &profiles,
        remote_sources: &opts.remote_sources,
        read_gate: &opts.read_gate,
    })?;
    project.env_file_values = file_values;
    Ok(project)
}

fn resolve_files(opts: &LoadOptions) -> Result<Vec<PathBuf>, ComposeError> {
    if opts.files.is_empty() {
        let find = |names: &[&str]| {
            let mut candidates = names.iter().map(|n| opts.working_dir.join(n));
            candidates.find(|p| p.is_file()).map(|p| absolute(&p))
        };
        let main = find(&DEFAULT_FILES).ok_or_else(|| ComposeError::NoFile {
            dir: opts.working_dir.clone(),
        })?;
        return Ok(std::iter::once(main).chain(find(&OVERRIDE_FILES)).collect());
    }
    Ok(opts
        .files
        .iter()
        .map(|f| {
            absolute(&if f.is_absolute() {
                f.clone()
            } else {
                opts.working_dir.join(f)
            })
        })
        .collect())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Compose's project-name normalization: lowercase, only `[a-z0-9_-]`, no leading `_` or `-`.
pub fn normalize_project_name(raw: &str) -> String {
    let kept: String = raw
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    kept.trim_start_matches(['_', '-']).to_string()
}

pub fn validate_project_name(name: &str) -> Result<(), ComposeError> {
    if crate::config::is_project_name(name) {
        Ok(())
    } else {
        Err(ComposeError::ProjectName {
            name: name.to_string(),
        })
    }
}

#[cfg(test)]
mod tests;
