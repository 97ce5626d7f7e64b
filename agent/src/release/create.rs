//! `berth release create`: makes a release, once. Local files (a compose file from the app's
//! repository, an env file) are uploaded under the store's `releases/<id>/`; files already in
//! S3 or SSM are pinned at the version they have now. The compose file is loaded as the agent
//! will load it (the release id in its variable) to learn each service's image, which the
//! registry resolves to a digest (through the Docker daemon, with the credentials a pull would
//! use). The manifest is then written where nothing was: a release id names one release for
//! good.

use std::collections::BTreeMap;

use futures_util::future::join_all;

use super::manifest::{self, ImagePin, Manifest, Pinned, Source};
use super::{fetch, fetch_at, store, Location, ReleaseError};
use crate::aws::Aws;
use crate::compose::{ComposeError, LoadOptions};
use crate::config::Store;
use crate::engine::docker::{DockerError, Engine};
use crate::engine::registry::Registries;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("release {release}: its compose file does not load as the agent would load it")]
    Compose {
        release: String,
        source: ComposeError,
    },
    #[error("release {release}: {message}")]
    Migration { release: String, message: String },
    #[error("release {release}: cannot pin every image by digest: {}", failures.join("; "))]
    Images {
        release: String,
        failures: Vec<String>,
    },
    #[error("release {release}: images are resolved to digests through a Docker daemon")]
    Docker {
        release: String,
        source: DockerError,
    },
}

/// What to make a release of.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub release: String,
    pub store: Store,
    pub compose: Location,
    pub env_files: Vec<Location>,
    pub commit: Option<String>,
    /// Who makes it; default `user@host`.
    pub by: Option<String>,
    /// The interpolation variable that carries the release id.
    pub release_var: String,
    pub max_object_bytes: u64,
}

/// Makes the release: its manifest, as written, and the manifest's own version in the store.
pub async fn create(
    aws: Option<&Aws>,
    registries: &Registries,
    opts: &CreateOptions,
) -> Result<(Manifest, Option<String>), ReleaseError> {
    let id = &opts.release;
    if !manifest::is_release_id(id) {
        return Err(ReleaseError::BadId(id.clone()));
    }
    let key = store::manifest_key(id);
    if store::get_first(aws, &opts.store, &key, opts.max_object_bytes)
        .await?
        .is_some()
    {
        return Err(ReleaseError::Exists {
            location: store::display(&opts.store, &key),
        });
    }

    // Before anything is uploaded: two files of one name would overwrite each other.
    let mut names = super::Names::default();
    for loc in std::iter::once(&opts.compose).chain(&opts.env_files) {
        names.take(loc)?;
    }
    let compose = pin_file(aws, opts, &opts.compose).await?;
    let env_files = join_all(opts.env_files.iter().map(|loc| pin_file(aws, opts, loc)))
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;

    // Loaded as the agent loads it: beside its env files, the release id in its variable.
    let dir = tempfile::tempdir().map_err(|source| ReleaseError::Write {
        path: std::env::temp_dir(),
        source,
    })?;
    let compose_path = dir.path().join(opts.compose.file_name());
    super::files::write_private(&compose_path, &compose.1)?;
    for (loc, (_, bytes)) in opts.env_files.iter().zip(&env_files) {
        super::files::write_private(&dir.path().join(loc.file_name()), bytes)?;
    }
    let mut sources = Vec::new();
    let mut placeholders = crate::compose::RemoteSources::default();
    for (file, location) in super::remote_source_locations(&compose_path)? {
        sources.push(pin_source(aws, &location, &file, opts).await?);
        // The loader needs a content for each; only the images are read from this load.
        placeholders.0.insert(file, Vec::new());
    }
    let mut environment: BTreeMap<String, String> = std::env::vars().collect();
    environment.insert(opts.release_var.clone(), id.clone());
    let project = crate::compose::load(&LoadOptions {
        files: vec![compose_path.clone()],
        working_dir: dir.path().to_path_buf(),
        environment,
        remote_sources: placeholders,
        ..LoadOptions::default()
    })
    .map_err(|source| CreateError::Compose {
        release: id.clone(),
        source,
    })?;

    let engine = Engine::connect()
        .await
        .map_err(|source| CreateError::Docker {
            release: id.clone(),
            source,
        })?;
    let images = pin_images(&engine, registries, id, &project).await?;
    let migration =
        super::migration::declared(&project).map_err(|message| CreateError::Migration {
            release: id.clone(),
            message,
        })?;

    let manifest = Manifest {
        format: manifest::FORMAT,
        release: id.clone(),
        created: super::history::now(),
        source: Some(Source {
            commit: opts.commit.clone(),
            by: Some(opts.by.clone().unwrap_or_else(who)),
        }),
        compose: compose.0,
        env_files: env_files.into_iter().map(|(p, _)| p).collect(),
        sources,
        images,
        migration,
    };
    let version = store::put(aws, &opts.store, &key, manifest.to_bytes(), true).await?;
    tracing::info!(release = %id, location = %store::display(&opts.store, &key), version = ?version, "release created");
    Ok((manifest, version))
}

/// A compose or env file, pinned: a local one uploaded under `releases/<id>/`, a remote one at
/// the version it has now. With its content (to load the project from). An S3 object with no
/// VersionId (its bucket keeps no versions) is refused: the pin would not hold.
async fn pin_file(
    aws: Option<&Aws>,
    opts: &CreateOptions,
    location: &Location,
) -> Result<(Pinned, Vec<u8>), ReleaseError> {
    let cap = opts.max_object_bytes;
    let (bytes, version) = match location {
        // The version first, then the content at exactly that version.
        Location::S3 { .. } => {
            let (version, _) = super::fetch::version_now(aws, location).await?;
            fetch_at(aws, location, Some(&version), cap).await?
        }
        _ => fetch(aws, location, cap).await?,
    };
    let sha256 = manifest::sha256_hex(&bytes);
    let size = bytes.len() as u64;
    let (location, version, sha256) = match location {
        Location::Local(_) => {
            let key = format!("releases/{}/{}", opts.release, location.file_name());
            let version = store::put(aws, &opts.store, &key, bytes.clone(), false).await?;
            let version = version.filter(|v| v != "null");
            if let (Store::S3 { bucket, .. }, None) = (&opts.store, &version) {
                return Err(ReleaseError::Unversioned {
                    bucket: bucket.clone(),
                    status: format!(
                        "{} was written without a VersionId",
                        store::display(&opts.store, &key)
                    ),
                });
            }
            (store::display(&opts.store, &key), version, Some(sha256))
        }
        // A parameter's versions never change; its value stays out of the manifest, digest too.
        Location::Ssm { .. } => (location.to_string(), version, None),
        Location::S3 { .. } => (location.to_string(), version, Some(sha256)),
    };
    Ok((
        Pinned {
            location,
            version,
            sha256,
            bytes: size,
        },
        bytes,
    ))
}

/// A secret's or config's source, pinned at its version alone: neither its value nor a digest
/// of it is read into the manifest (an SSM SecureString is not even decrypted).
async fn pin_source(
    aws: Option<&Aws>,
    location: &Location,
    file: &str,
    opts: &CreateOptions,
) -> Result<Pinned, ReleaseError> {
    let version = super::fetch::version_now(aws, location).await?;
    Ok(Pinned {
        location: file.to_string(),
        version: Some(version.0),
        sha256: None,
        bytes: version.1.min(opts.max_object_bytes),
    })
}

/// Each service's image, resolved to its digest at its registry. Every failure is named.
async fn pin_images(
    engine: &Engine,
    registries: &Registries,
    release: &str,
    project: &crate::compose::Project,
) -> Result<BTreeMap<String, ImagePin>, ReleaseError> {
    let asks = project.services.values().map(|svc| async move {
        let credentials = registries
            .credentials_for(&svc.image)
            .await
            .map_err(|e| format!("service {}: {e}", svc.name))?;
        let digest = engine
            .registry_digest(&svc.image, credentials)
            .await
            .map_err(|e| format!("service {}: {}", svc.name, crate::report::chain(&e)))?;
        // A reference written with a digest must be the digest the registry holds it under.
        if let Some((_, written)) = svc.image.split_once('@') {
            if written != digest {
                return Err(format!(
                    "service {}: {} is {digest} at its registry",
                    svc.name, svc.image
                ));
            }
        }
        if !manifest::is_digest(&digest) {
            return Err(format!(
                "service {}: the registry answered {digest:?} for {}, not a sha256 digest",
                svc.name, svc.image
            ));
        }
        Ok((
            svc.name.clone(),
            ImagePin {
                image: svc.image.clone(),
                digest,
            },
        ))
    });
    let mut pins = BTreeMap::new();
    let mut failures = vec![];
    for result in join_all(asks).await {
        match result {
            Ok((name, pin)) => {
                pins.insert(name, pin);
            }
            Err(f) => failures.push(f),
        }
    }
    if !failures.is_empty() {
        return Err(CreateError::Images {
            release: release.to_string(),
            failures,
        }
        .into());
    }
    Ok(pins)
}

/// `user@host`, for the manifest's `source.by`.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "?".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    format!("{user}@{host}")
}
