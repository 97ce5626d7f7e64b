//! The release: what to run. A compose file, the env files that go beside it, and a release id,
//! each at a location (`s3://bucket/key`, `ssm:/parameter/name`, or a local path). Remote files
//! are written under the run directory, 0700, each file 0600, never logged; each object's
//! version (S3 VersionId or ETag, SSM parameter version) goes into the deployment record.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::aws::{code_of, describe, Aws};
pub use crate::config::Location;

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
}

/// Reads one object: its bytes and version.
pub async fn fetch(
    aws: Option<&Aws>,
    location: &Location,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    match location {
        Location::Local(path) => {
            let bytes = std::fs::read(path).map_err(|source| ReleaseError::Local {
                path: path.clone(),
                source,
            })?;
            Ok((bytes, None))
        }
        _ if aws.is_none() => Err(ReleaseError::RemoteInLocalRun {
            location: location.to_string(),
        }),
        Location::S3 { bucket, key } => {
            let s3 = &aws
                .map(|a| &a.s3)
                .ok_or_else(|| ReleaseError::RemoteInLocalRun {
                    location: location.to_string(),
                })?;
            let err = |message: String| ReleaseError::S3 {
                bucket: bucket.clone(),
                key: key.clone(),
                message,
            };
            let out = s3.get_object().bucket(bucket).key(key).send().await.map_err(|e| {
                let service = e.as_service_error().map(|se| (code_of(se), describe(se)));
                match service {
                    Some((Some(code), _)) if code == "NoSuchKey" => err("no such key (NoSuchKey)".into()),
                    Some((Some(code), _)) if code == "NoSuchBucket" => err("no such bucket (NoSuchBucket)".into()),
                    Some((Some(code), _)) if code == "AccessDenied" => {
                        err("access denied (AccessDenied): the instance role needs s3:GetObject on it".into())
                    }
                    Some((_, msg)) => err(msg),
                    None => err(describe(&e)),
                }
            })?;
            let version = out
                .version_id()
                .map(String::from)
                .or_else(|| out.e_tag().map(|t| t.trim_matches('"').to_string()));
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| err(format!("reading the body: {e}")))?;
            Ok((body.into_bytes().to_vec(), version))
        }
        Location::Ssm { name } => {
            let ssm = &aws
                .map(|a| &a.ssm)
                .ok_or_else(|| ReleaseError::RemoteInLocalRun {
                    location: location.to_string(),
                })?;
            let out = ssm
                .get_parameter()
                .name(name)
                .with_decryption(true)
                .send()
                .await
                .map_err(|e| {
                    let message = match e.as_service_error() {
                        Some(se) if se.is_parameter_not_found() => {
                            "parameter not found (ParameterNotFound)".to_string()
                        }
                        Some(se) => describe(se),
                        None => describe(&e),
                    };
                    ReleaseError::Ssm {
                        name: name.clone(),
                        message,
                    }
                })?;
            let p = out.parameter();
            let value = p.and_then(|p| p.value()).unwrap_or_default();
            let version = p.map(|p| p.version().to_string());
            Ok((value.as_bytes().to_vec(), version))
        }
    }
}

/// Writes `bytes` to `path` with mode 0600, atomically (a reader never sees half a file).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    let tmp = path.with_extension("berth-tmp");
    let werr = |source| ReleaseError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(bytes).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

/// Fetches the release: remote files into `run_dir/<project>/`, local ones used in place.
pub async fn fetch_release(
    aws: Option<&Aws>,
    config: &crate::config::AgentConfig,
    release_override: Option<&str>,
) -> Result<Release, ReleaseError> {
    let mut objects = Vec::new();
    let release_id = match (release_override, &config.release) {
        (Some(r), _) => Some(r.to_string()),
        (None, Some(loc)) => {
            let (bytes, version) = fetch(aws, loc).await?;
            let id = String::from_utf8_lossy(&bytes).trim().to_string();
            if id.is_empty() {
                return Err(ReleaseError::EmptyRelease {
                    location: loc.to_string(),
                });
            }
            objects.push(ObjectRecord {
                location: loc.to_string(),
                version,
                bytes: bytes.len(),
            });
            Some(id)
        }
        (None, None) => None,
    };
    if let Location::Local(path) = &config.compose {
        let len = std::fs::metadata(path)
            .map_err(|source| ReleaseError::Local {
                path: path.clone(),
                source,
            })?
            .len();
        objects.push(ObjectRecord {
            location: config.compose.to_string(),
            version: None,
            bytes: len as usize,
        });
        for env in &config.env_files {
            let (bytes, version) = fetch(aws, env).await?;
            objects.push(ObjectRecord {
                location: env.to_string(),
                version,
                bytes: bytes.len(),
            });
        }
        return Ok(Release {
            compose_file: path.clone(),
            release_id,
            objects,
        });
    }

    let dir = config.run_dir.join(&config.project);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|source| ReleaseError::Write {
            path: dir.clone(),
            source,
        })?;
    let mut names: Vec<(String, String)> = Vec::new();
    let mut wanted = vec![&config.compose];
    wanted.extend(config.env_files.iter());
    // Fetched together: a boot waits on the slowest object, not on their sum.
    let fetched = futures_util::future::join_all(wanted.iter().map(|loc| fetch(aws, loc))).await;
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
        write_private(&path, &bytes)?;
        if compose_file.as_os_str().is_empty() {
            compose_file = path;
        }
        objects.push(ObjectRecord {
            location: loc.to_string(),
            version,
            bytes: bytes.len(),
        });
    }
    Ok(Release {
        compose_file,
        release_id,
        objects,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
