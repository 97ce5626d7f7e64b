//! The release: what to run. With a release store (`manifests` in berth.toml), a release id
//! names an immutable [`manifest`]: the compose file and env files at their object versions,
//! checked by sha256, the secrets' and configs' sources at theirs, every image by digest. Every
//! deploy of that id (a boot, a restarted agent, an upgrade, a rollback, a repair) runs exactly
//! that, so that every instance runs the same release and going back restores all of it.
//! Without a manifest, a release *floats*: its files are read as they are now, and each
//! deploy says so.
//!
//! The compose file goes into the project directory on disk, the env files onto the run
//! directory (tmpfs), 0600, never logged ([`layout`]); each object's version goes into the
//! deployment record. `berth release create` ([`create`]) makes a release;
//! [`history`] keeps what instances and rollouts said of each; [`ready`] tells whether a
//! release can still be deployed whole (the way back of an upgrade).

pub mod create;
mod fetch;
pub(crate) mod files;
pub mod history;
pub mod layout;
pub mod manifest;
pub mod migration;
pub mod ready;
pub mod store;

use std::path::PathBuf;

use futures_util::future::join_all;
use serde::Serialize;

use crate::aws::Aws;
pub use crate::config::Location;
use crate::config::{AgentConfig, Store};
pub use fetch::{exists_at, fetch, fetch_at};
pub use manifest::{Manifest, ManifestError};

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
    #[error("the release pointer {location} holds {value:?}, which is not a release id (a letter or digit, then letters, digits, . _ + -, 128 at most); write one there (a bad value would fail every boot the same way)")]
    BadPointer { location: String, value: String },
    #[error("{location} is remote, and this is a local run: use local paths")]
    RemoteInLocalRun { location: String },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("release {release}: {location} (version {version}) does not have the sha256 the release pinned: it is not the object that was released; nothing of it was used")]
    Tampered {
        release: String,
        location: String,
        version: String,
    },
    #[error("release {release}: its manifest {location} is not the one this instance deployed before ({cached}): a release never changes; make a new one with `berth release create`")]
    Changed {
        release: String,
        location: String,
        cached: String,
    },
    #[error("{location} exists: a release is written once and never replaced; choose another release id")]
    Exists { location: String },
    #[error("bucket {bucket} keeps no versions ({status}): a release pins its objects by VersionId, which only a versioned bucket gives; turn versioning on (aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled)")]
    Unversioned { bucket: String, status: String },
    #[error(
        "{0:?} is not a release id: a letter or digit, then letters, digits, . _ + - (128 at most)"
    )]
    BadId(String),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("release {release} cannot be restored whole, so it is no way back: {}; deploy it again or make a new release of what serves; --allow-no-rollback goes on without one", missing.join("; "))]
    NotReady {
        release: String,
        missing: Vec<String>,
    },
    #[error(transparent)]
    Create(#[from] create::CreateError),
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
    /// What the release pins; None when it floats.
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// Why the release floats (no store, or no manifest for its id); None when pinned.
    pub floating: Option<String>,
}

impl Release {
    /// The release's project, pinned: each image by its digest (a floating release's as they
    /// are), and judged by the host policy on `host` ([`layout::host`]; no bind into berth's
    /// own directories among it).
    pub fn pin(
        &self,
        project: &mut crate::compose::Project,
        config: &AgentConfig,
        host: &crate::policy::Host,
    ) -> Result<(), ReleaseError> {
        if let Some(m) = &self.manifest {
            m.pin(project)?;
        }
        for warning in crate::policy::check(project, &config.policy, host)? {
            tracing::warn!("{warning}");
        }
        Ok(())
    }
}

/// Fetches the release: the pointer's id (or `release_override`), then what its manifest
/// pins, or the files as they are now when it has none.
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
    let floating = match (&config.manifests, &release_id) {
        (Some(store), Some(id)) => match manifest_of(aws, config, store, id).await? {
            Some((manifest, record)) => {
                objects.push(record);
                return pinned(aws, config, manifest, objects).await;
            }
            None => format!(
                "release {id} has no manifest ({}): its compose file and env files float, read as they are now rather than as released; make releases with `berth release create`",
                store::display(store, &store::manifest_key(id))
            ),
        },
        (None, _) => "no `manifests` store in berth.toml: every release floats, its compose file and env files read as they are now; see `berth release create`".to_string(),
        (Some(_), None) => "no release id (no `release` pointer): the files float, read as they are now".to_string(),
    };
    tracing::warn!(release = ?release_id, "{floating}");
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
        manifest: None,
        floating: Some(floating),
    })
}

/// The manifest of release `id` in `store`, checked against the copy this instance kept when
/// it first deployed it (a release never changes); None when the store has none.
pub async fn manifest_of(
    aws: Option<&Aws>,
    config: &AgentConfig,
    store: &Store,
    id: &str,
) -> Result<Option<(Manifest, ObjectRecord)>, ReleaseError> {
    if !manifest::is_release_id(id) {
        return Err(ReleaseError::BadId(id.to_string()));
    }
    let key = store::manifest_key(id);
    let location = store::display(store, &key);
    let kept = config.state_dir.join("releases").join(format!("{id}.json"));
    let Some(read) = store::get_first(aws, store, &key, config.max_object_bytes).await? else {
        // This instance ran the release pinned: its manifest gone is not a floating release.
        if kept.exists() {
            return Err(ReleaseError::Changed {
                release: id.to_string(),
                location: format!("{location} (gone from the store)"),
                cached: kept.display().to_string(),
            });
        }
        return Ok(None);
    };
    let manifest = Manifest::parse(&read.bytes, &location, id)?;
    match std::fs::read(&kept) {
        Ok(before) if before == read.bytes => {}
        Ok(_) => {
            return Err(ReleaseError::Changed {
                release: id.to_string(),
                location,
                cached: kept.display().to_string(),
            })
        }
        Err(_) => {
            if let Some(dir) = kept.parent() {
                files::private_dir(dir)?;
            }
            files::write_private(&kept, &read.bytes)?;
        }
    }
    let record = ObjectRecord {
        location,
        version: read.version,
        bytes: read.bytes.len(),
    };
    Ok(Some((manifest, record)))
}

/// Everything a manifest pins, fetched at its version and checked against its sha256, then
/// written where the release runs from.
async fn pinned(
    aws: Option<&Aws>,
    config: &AgentConfig,
    manifest: Manifest,
    mut objects: Vec<ObjectRecord>,
) -> Result<Release, ReleaseError> {
    let cap = config.max_object_bytes;
    for pin in &manifest.sources {
        source_allowed(config, &pin.location)?;
    }
    let wanted: Vec<&manifest::Pinned> = manifest.objects().collect();
    // Fetched together: a deploy waits on the slowest object, not on their sum.
    let fetched = join_all(
        wanted
            .iter()
            .map(|pin| fetch_pinned(aws, &manifest.release, pin, cap)),
    )
    .await;
    let mut contents = Vec::with_capacity(wanted.len());
    for (pin, result) in wanted.iter().zip(fetched) {
        let (location, bytes) = result?;
        objects.push(ObjectRecord {
            location: pin.location.clone(),
            version: pin.version.clone(),
            bytes: bytes.len(),
        });
        contents.push((location, bytes));
    }
    // In the order of `objects()`: the compose file, the env files, the sources.
    let sources_at = 1 + manifest.env_files.len();
    let source_contents = contents.split_off(sources_at.min(contents.len()));
    let mut files = contents.into_iter();
    let Some((compose_location, compose_bytes)) = files.next() else {
        return Err(ReleaseError::Manifest(ManifestError::Parse {
            location: format!("release {}", manifest.release),
            message: "no compose file".into(),
        }));
    };
    let mut names = Names::default();
    let compose_name = names.take(&compose_location)?;
    let mut env_files = Vec::new();
    for (location, bytes) in files {
        env_files.push((names.take(&location)?, bytes));
    }
    let mut sources = crate::compose::RemoteSources::default();
    for (pin, (_, bytes)) in manifest.sources.iter().zip(source_contents) {
        sources.0.insert(pin.location.clone(), bytes);
    }
    let compose_file = layout::materialize(config, (&compose_name, &compose_bytes), &env_files)?;
    tracing::info!(release = %manifest.release, objects = objects.len(), images = manifest.images.len(), "the release's manifest pins every object and image");
    Ok(Release {
        compose_file,
        release_id: Some(manifest.release.clone()),
        objects,
        sources,
        manifest: Some(manifest),
        floating: None,
    })
}

/// One pinned object: read at its version, its sha256 checked when the manifest has one.
async fn fetch_pinned(
    aws: Option<&Aws>,
    release: &str,
    pin: &manifest::Pinned,
    cap: u64,
) -> Result<(Location, Vec<u8>), ReleaseError> {
    let location =
        Location::parse(&pin.location, std::path::Path::new("/")).map_err(|message| {
            ReleaseError::Manifest(ManifestError::Parse {
                location: format!("release {release}"),
                message,
            })
        })?;
    let (bytes, _) = fetch_at(aws, &location, pin.version.as_deref(), cap).await?;
    if let Some(want) = &pin.sha256 {
        if manifest::sha256_hex(&bytes) != *want {
            return Err(ReleaseError::Tampered {
                release: release.to_string(),
                location: pin.location.clone(),
                version: pin.version.clone().unwrap_or_else(|| "local".into()),
            });
        }
    }
    Ok((location, bytes))
}

/// The secrets' and configs' `file:` sources of the compose file that are berth locations
/// (`s3://...`, `ssm:/...`), as written, in the order the file has them. A file that does not
/// parse is left to the loader, which says what is wrong with it.
pub fn remote_source_locations(
    compose_file: &std::path::Path,
) -> Result<Vec<(String, Location)>, ReleaseError> {
    let mut out: Vec<(String, Location)> = Vec::new();
    let Ok(text) = std::fs::read_to_string(compose_file) else {
        return Ok(out);
    };
    let Ok(doc) = serde_norway::from_str::<serde_norway::Value>(&text) else {
        return Ok(out);
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
            if !crate::compose::is_remote_source(file) || out.iter().any(|(f, _)| f == file) {
                continue;
            }
            let location = Location::parse(file, base).map_err(|message| ReleaseError::Local {
                path: compose_file.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{section}: {message}"),
                ),
            })?;
            out.push((file.to_string(), location));
        }
    }
    Ok(out)
}

/// A floating release's remote sources, fetched as they are now.
async fn remote_sources(
    aws: Option<&Aws>,
    config: &AgentConfig,
    compose_file: &std::path::Path,
    objects: &mut Vec<ObjectRecord>,
) -> Result<crate::compose::RemoteSources, ReleaseError> {
    let mut sources = crate::compose::RemoteSources::default();
    for (file, location) in remote_source_locations(compose_file)? {
        source_allowed(config, &file)?;
        let (bytes, version) = fetch(aws, &location, config.max_object_bytes).await?;
        tracing::info!(location = %location, version = ?version, bytes = bytes.len(), "fetched a secret or config");
        objects.push(record(&location, version, bytes.len()));
        sources.0.insert(file, bytes);
    }
    Ok(sources)
}

/// A secret's or config's berth location, judged by the host policy before the instance role
/// reads it: a refused source is never fetched.
fn source_allowed(config: &AgentConfig, location: &str) -> Result<(), ReleaseError> {
    let compose = (!config.compose.is_local()).then(|| config.compose.to_string());
    match crate::policy::check_source(
        "secrets/configs file",
        location,
        &config.policy,
        compose.as_deref(),
        &config.project,
    ) {
        None => Ok(()),
        Some(refusal) => Err(ReleaseError::Policy(crate::policy::PolicyError {
            origin: layout::policy_origin(config),
            refusals: vec![refusal],
        })),
    }
}

/// The file names a release's files take beside each other: two of one name clash.
#[derive(Default)]
pub(crate) struct Names(Vec<(String, String)>);

impl Names {
    /// The name `location` takes, unless another file took it.
    pub(crate) fn take(&mut self, location: &Location) -> Result<String, ReleaseError> {
        let name = location.file_name();
        if let Some((first, _)) = self.0.iter().find(|(_, n)| *n == name) {
            return Err(ReleaseError::NameClash {
                first: first.clone(),
                second: location.to_string(),
                name,
            });
        }
        self.0.push((location.to_string(), name.clone()));
        Ok(name)
    }
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
    if !manifest::is_release_id(&id) {
        // What the pointer holds, shortened: it is a name, but need not be one.
        let value: String = id.chars().take(40).collect();
        return Err(ReleaseError::BadPointer {
            location: pointer.to_string(),
            value,
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

/// A floating release's remote files, as they are now, laid out as a pinned one's are: the
/// compose file's path is returned.
async fn remote_files(
    aws: Option<&Aws>,
    config: &AgentConfig,
    objects: &mut Vec<ObjectRecord>,
) -> Result<PathBuf, ReleaseError> {
    let mut names = Names::default();
    let mut wanted = vec![&config.compose];
    wanted.extend(config.env_files.iter());
    // Fetched together: a boot waits on the slowest object, not on their sum.
    let fetched = join_all(
        wanted
            .iter()
            .map(|loc| fetch(aws, loc, config.max_object_bytes)),
    )
    .await;
    let mut contents = Vec::new();
    for (loc, result) in wanted.iter().zip(fetched) {
        let (bytes, version) = result?;
        let name = names.take(loc)?;
        objects.push(record(loc, version, bytes.len()));
        contents.push((name, bytes));
    }
    let mut contents = contents.into_iter();
    let (compose_name, compose_bytes) = contents.next().unwrap_or_default();
    let env_files: Vec<(String, Vec<u8>)> = contents.collect();
    layout::materialize(config, (&compose_name, &compose_bytes), &env_files)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::files::write_private;
    use super::*;
    use std::path::Path;

    /// A local release store holding release `7` of a compose file and an env file, and a
    /// config that deploys from it; the directory, and the manifest as written.
    fn local_release() -> (tempfile::TempDir, AgentConfig, serde_json::Value) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("store/releases/7")).unwrap();
        let compose = b"services:\n  web:\n    image: r/web:7\n    env_file: [app.env]\n";
        std::fs::write(d.join("store/releases/7/compose.yaml"), compose).unwrap();
        std::fs::write(d.join("store/releases/7/app.env"), b"A=1\n").unwrap();
        let pin = |name: &str, bytes: &[u8]| {
            serde_json::json!({
                "location": d.join("store/releases/7").join(name).display().to_string(),
                "sha256": manifest::sha256_hex(bytes),
                "bytes": bytes.len(),
            })
        };
        let m = serde_json::json!({
            "format": 1, "release": "7", "created": "2026-12-07T00:00:00Z",
            "compose": pin("compose.yaml", compose),
            "env_files": [pin("app.env", b"A=1\n")],
            "images": {"web": {"image": "r/web:7", "digest": format!("sha256:{}", "b".repeat(64))}},
        });
        std::fs::write(d.join("store/releases/7.json"), m.to_string()).unwrap();
        std::fs::write(d.join("compose.yaml"), b"services: {}\n").unwrap();
        std::fs::write(d.join("release"), b"7\n").unwrap();
        let text = format!(
            "project = \"api\"\nlocal = true\ncompose = \"compose.yaml\"\nrelease = \"release\"\nmanifests = \"store\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\n",
            d.join("run").display(),
            d.join("state").display()
        );
        let config = AgentConfig::parse(&d.join("berth.toml"), &text).unwrap();
        (dir, config, m)
    }

    #[tokio::test]
    async fn a_pinned_release_is_what_its_manifest_says_laid_out_and_pinned_by_digest() {
        let (dir, config, _) = local_release();
        let release = fetch_release(None, &config, None).await.unwrap();
        assert_eq!(release.release_id.as_deref(), Some("7"));
        assert!(release.floating.is_none());
        let project_dir = dir.path().join("state/projects/api");
        assert_eq!(release.compose_file, project_dir.join("compose.yaml"));
        assert_eq!(
            std::fs::read(project_dir.join("app.env")).unwrap(),
            b"A=1\n",
            "through the link to the run directory"
        );
        let mut project = crate::compose::load(&crate::compose::LoadOptions {
            files: vec![release.compose_file.clone()],
            project_name: Some("api".into()),
            ..Default::default()
        })
        .unwrap();
        let host = layout::host(&config, &release.compose_file);
        release.pin(&mut project, &config, &host).unwrap();
        let web = &project.services["web"];
        assert_eq!(web.image, format!("r/web@sha256:{}", "b".repeat(64)));
        assert_eq!(web.labels[manifest::IMAGE_LABEL], "r/web:7");
        // Kept for later: the same release fetched again must be the same.
        assert!(dir.path().join("state/releases/7.json").exists());
    }

    #[tokio::test]
    async fn a_file_that_is_not_what_was_released_is_refused_and_so_is_a_changed_manifest() {
        let (dir, config, mut m) = local_release();
        fetch_release(None, &config, None).await.unwrap();
        std::fs::write(dir.path().join("store/releases/7/app.env"), b"A=2\n").unwrap();
        let e = fetch_release(None, &config, None).await.unwrap_err();
        assert!(matches!(e, ReleaseError::Tampered { .. }), "{e}");
        assert!(!e.to_string().contains("A=2"), "{e}");
        // The manifest rewritten (to match the new file): refused, it is not the one deployed.
        m["env_files"][0]["sha256"] = manifest::sha256_hex(b"A=2\n").into();
        std::fs::write(dir.path().join("store/releases/7.json"), m.to_string()).unwrap();
        let e = fetch_release(None, &config, None).await.unwrap_err();
        assert!(matches!(e, ReleaseError::Changed { .. }), "{e}");
        assert!(e.to_string().contains("a release never changes"), "{e}");
    }

    #[tokio::test]
    async fn an_id_without_a_manifest_floats_and_says_so() {
        let (dir, config, _) = local_release();
        std::fs::write(dir.path().join("release"), b"8\n").unwrap();
        let release = fetch_release(None, &config, None).await.unwrap();
        assert!(release.manifest.is_none());
        let why = release.floating.unwrap();
        assert!(why.contains("release 8 has no manifest"), "{why}");
        assert_eq!(release.compose_file, dir.path().join("compose.yaml"));
    }

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
