//! The release: what to run. A compose file, the env files that go beside it, and a release id,
//! each at a location (`s3://bucket/key`, `ssm:/parameter/name`, or a local path). Remote files
//! are written under the run directory, 0700, each file 0600, never logged; each object's
//! version (S3 VersionId or ETag, SSM parameter version) goes into the deployment record.

mod fetch;
pub(crate) mod files;

use std::path::PathBuf;

use serde::Serialize;

use crate::aws::Aws;
use crate::config::AgentConfig;
pub use crate::config::Location;
pub use fetch::fetch;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("s3://{bucket}/{key}: {message}")]
    S3 {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("SSM parameter {name}: {message}")]
    Ssm { name: String, message: String },
    #[error("cannot read {path}: {source}")]
    Local {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{first} and {second} would both be written as {name} beside the compose file")]
    NameClash {
        first: String,
        second: String,
        name: String,
    },
    #[error("{location} is larger than max_object_bytes ({cap} bytes); nothing of it was used")]
    TooLarge { location: String, cap: u64 },
    #[error("release id at {location} is empty")]
    EmptyRelease { location: String },
    #[error("{location} is remote, and this is a local run: use local paths")]
    RemoteInLocalRun { location: String },
}

/// What was fetched, for the deployment record and `/status`. No contents.
#[derive(Debug, Clone, Serialize)]
pub struct ObjectRecord {
    pub location: String,
    /// S3 VersionId (or ETag when unversioned), SSM parameter version; None for local files.
    pub version: Option<String>,
    pub bytes: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub compose_file: PathBuf,
    pub release_id: Option<String>,
    pub objects: Vec<ObjectRecord>,
    /// The contents of the compose file's secrets and configs at berth locations: in memory
    /// only, never written under the run directory.
    #[serde(skip)]
    pub sources: crate::compose::RemoteSources,
}

/// Fetches the release: remote files into `run_dir/<project>/`, local ones used in place.
pub async fn fetch_release(
    aws: Option<&Aws>,
    config: &AgentConfig,
    release_override: Option<&str>,
) -> Result<Release, ReleaseError> {
    let mut objects = Vec::new();
    let release_id = match (release_override, &config.release) {
        (Some(r), _) => Some(r.to_string()),
        (None, Some(pointer)) => {
            Some(release_id(aws, pointer, config.max_object_bytes, &mut objects).await?)
        }
        (None, None) => None,
    };
    let compose_file = match &config.compose {
        Location::Local(path) => local_files(aws, config, path, &mut objects).await?,
        _ => remote_files(aws, config, &mut objects).await?,
    };
    let sources = remote_sources(aws, config, &compose_file, &mut objects).await?;
    Ok(Release {
        compose_file,
        release_id,
        objects,
        sources,
    })
}

/// The secrets' and configs' `file:` sources of the compose file that are berth locations
/// (`s3://...`, `ssm:/...`), fetched. A file that does not parse is left to the loader, which
/// says what is wrong with it.
async fn remote_sources(
    aws: Option<&Aws>,
    config: &AgentConfig,
    compose_file: &std::path::Path,
    objects: &mut Vec<ObjectRecord>,
) -> Result<crate::compose::RemoteSources, ReleaseError> {
    let mut sources = crate::compose::RemoteSources::default();
    let Ok(text) = std::fs::read_to_string(compose_file) else {
        return Ok(sources);
    };
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
        return Ok(sources);
    };
    let base = compose_file.parent().unwrap_or(std::path::Path::new("."));
    for section in ["secrets", "configs"] {
        let Some(serde_norway::Value::Mapping(entries)) = doc.get(section) else {
            continue;
        };
        for entry in entries.values() {
            let Some(file) = entry.get("file").and_then(serde_norway::Value::as_str) else {
                continue;
            };
            if !crate::compose::is_remote_source(file) || sources.0.contains_key(file) {
                continue;
            }
            let location = Location::parse(file, base).map_err(|message| ReleaseError::Local {
                path: compose_file.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{section}: {message}"),
                ),
            })?;
            let (bytes, version) = fetch(aws, &location, config.max_object_bytes).await?;
            tracing::info!(location = %location, version = ?version, bytes = bytes.len(), "fetched a secret or config");
            objects.push(record(&location, version, bytes.len()));
            sources.0.insert(file.to_string(), bytes);
        }
    }
    Ok(sources)
}

fn record(location: &Location, version: Option<String>, bytes: usize) -> ObjectRecord {
    ObjectRecord {
        location: location.to_string(),
        version,
        bytes,
    }
}

/// The release id the pointer holds (never empty).
async fn release_id(
    aws: Option<&Aws>,
    pointer: &Location,
    cap: u64,
    objects: &mut Vec<ObjectRecord>,
) -> Result<String, ReleaseError> {
    let (bytes, version) = fetch(aws, pointer, cap).await?;
    let id = String::from_utf8_lossy(&bytes).trim().to_string();
    if id.is_empty() {
        return Err(ReleaseError::EmptyRelease {
            location: pointer.to_string(),
        });
    }
    objects.push(record(pointer, version, bytes.len()));
    Ok(id)
}

/// A local compose file is used where it is; its env files are read to check them.
async fn local_files(
    aws: Option<&Aws>,
    config: &AgentConfig,
    path: &std::path::Path,
    objects: &mut Vec<ObjectRecord>,
) -> Result<PathBuf, ReleaseError> {
    let len = std::fs::metadata(path)
        .map_err(|source| ReleaseError::Local {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    objects.push(record(&config.compose, None, len as usize));
    for env in &config.env_files {
        let (bytes, version) = fetch(aws, env, config.max_object_bytes).await?;
        objects.push(record(env, version, bytes.len()));
    }
    Ok(path.to_path_buf())
}

/// Remote files are written beside each other under `run_dir/<project>/`: the compose file's
/// path is returned.
async fn remote_files(
    aws: Option<&Aws>,
    config: &AgentConfig,
    objects: &mut Vec<ObjectRecord>,
) -> Result<PathBuf, ReleaseError> {
    let dir = config.run_dir.join(&config.project);
    files::private_dir(&dir)?;
    let mut names: Vec<(String, String)> = Vec::new();
    let mut wanted = vec![&config.compose];
    wanted.extend(config.env_files.iter());
    // Fetched together: a boot waits on the slowest object, not on their sum.
    let fetched = futures_util::future::join_all(
        wanted
            .iter()
            .map(|loc| fetch(aws, loc, config.max_object_bytes)),
    )
    .await;
    let mut compose_file = PathBuf::new();
    for (loc, result) in wanted.iter().zip(fetched) {
        let (bytes, version) = result?;
        let name = loc.file_name();
        if let Some((first, _)) = names.iter().find(|(_, n)| *n == name) {
            return Err(ReleaseError::NameClash {
                first: first.clone(),
                second: loc.to_string(),
                name,
            });
        }
        names.push((loc.to_string(), name.clone()));
        let path = dir.join(&name);
        files::write_private(&path, &bytes)?;
        if compose_file.as_os_str().is_empty() {
            compose_file = path;
        }
        objects.push(record(loc, version, bytes.len()));
    }
    Ok(compose_file)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::files::write_private;
    use super::*;
    use std::path::Path;

    #[test]
    fn locations_parse() {
        let base = Path::new("/etc/berth");
        assert_eq!(
            Location::parse("s3://cfg/api/compose.yaml", base).unwrap(),
            Location::S3 {
                bucket: "cfg".into(),
                key: "api/compose.yaml".into()
            }
        );
        assert_eq!(
            Location::parse("ssm:/api/release", base).unwrap(),
            Location::Ssm {
                name: "/api/release".into()
            }
        );
        assert_eq!(
            Location::parse("stack/compose.yaml", base).unwrap(),
            Location::Local("/etc/berth/stack/compose.yaml".into())
        );
        assert_eq!(
            Location::parse("/srv/c.yaml", base).unwrap(),
            Location::Local("/srv/c.yaml".into())
        );
        for bad in [
            "s3://bucket",
            "s3:///key",
            "s3://b/dir/",
            "ssm:name",
            "ssm:/",
            "https://x/y",
            "",
        ] {
            assert!(Location::parse(bad, base).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn file_names_come_from_the_last_component() {
        let base = Path::new("/");
        assert_eq!(
            Location::parse("s3://b/a/b/api.env", base)
                .unwrap()
                .file_name(),
            "api.env"
        );
        assert_eq!(
            Location::parse("ssm:/app/prod/api.env", base)
                .unwrap()
                .file_name(),
            "api.env"
        );
    }

    #[test]
    fn private_files_are_0600_and_replace_atomically() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api.env");
        write_private(&p, b"A=1\n").unwrap();
        write_private(&p, b"A=2\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"A=2\n");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!p.with_extension("berth-tmp").exists());
    }
}
