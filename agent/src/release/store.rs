//! The release store: where manifests, the files they pin and what was said of each release
//! live. A prefix of a versioned S3 bucket (the config bucket), or a local directory:
//!
//! ```text
//! <store>/releases/<id>.json          the manifest, written once
//! <store>/releases/<id>/<file>        the files `berth release create` uploaded for it
//! <store>/reports/<id>/<time>-<by>.json   what an instance or a rollout said of it
//! ```

use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;

use super::ReleaseError;
use crate::aws::{code_of, describe, Aws};
use crate::config::Store;

/// The manifest's key (or path) under the store.
pub fn manifest_key(id: &str) -> String {
    format!("releases/{id}.json")
}

/// Where a key under the store is, for messages.
pub fn display(store: &Store, key: &str) -> String {
    match store {
        Store::S3 { bucket, prefix } => format!("s3://{bucket}/{prefix}{key}"),
        Store::Local(dir) => dir.join(key).display().to_string(),
    }
}

/// An object read from the store: its bytes and version.
#[derive(Debug)]
pub struct Read {
    pub bytes: Vec<u8>,
    pub version: Option<String>,
}

fn s3_err(bucket: &str, key: &str, message: String) -> ReleaseError {
    ReleaseError::S3 {
        bucket: bucket.to_string(),
        key: key.to_string(),
        message,
    }
}

fn need_aws<'a>(aws: Option<&'a Aws>, store: &Store) -> Result<&'a Aws, ReleaseError> {
    aws.ok_or_else(|| ReleaseError::RemoteInLocalRun {
        location: store.to_string(),
    })
}

/// Reads `key` (at most `cap` bytes); None when there is no such object.
pub async fn get(
    aws: Option<&Aws>,
    store: &Store,
    key: &str,
    cap: u64,
) -> Result<Option<Read>, ReleaseError> {
    let location = display(store, key);
    match store {
        Store::Local(dir) => {
            let path = dir.join(key);
            match std::fs::metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(source) => return Err(ReleaseError::Local { path, source }),
                Ok(m) if m.len() > cap => return Err(ReleaseError::TooLarge { location, cap }),
                Ok(_) => {}
            }
            let bytes =
                std::fs::read(&path).map_err(|source| ReleaseError::Local { path, source })?;
            Ok(Some(Read {
                bytes,
                version: None,
            }))
        }
        Store::S3 { bucket, prefix } => {
            let aws = need_aws(aws, store)?;
            let full = format!("{prefix}{key}");
            let out = aws.s3.get_object().bucket(bucket).key(&full).send().await;
            let out = match out {
                Ok(o) => o,
                Err(e) if code_of(&e).as_deref() == Some("NoSuchKey") => return Ok(None),
                Err(e) => {
                    let message = match code_of(&e).as_deref() {
                        Some("AccessDenied") => "access denied (AccessDenied): the role needs s3:GetObject on it, and s3:ListBucket on the prefix to tell a missing object from a denied one".to_string(),
                        _ => describe(&e),
                    };
                    return Err(s3_err(bucket, &full, message));
                }
            };
            if out
                .content_length()
                .is_some_and(|n| u64::try_from(n).unwrap_or(0) > cap)
            {
                return Err(ReleaseError::TooLarge { location, cap });
            }
            let version = out.version_id().map(String::from);
            let bytes = out
                .body
                .collect()
                .await
                .map_err(|e| s3_err(bucket, &full, format!("reading the body: {e}")))?
                .into_bytes()
                .to_vec();
            if bytes.len() as u64 > cap {
                return Err(ReleaseError::TooLarge { location, cap });
            }
            Ok(Some(Read { bytes, version }))
        }
    }
}

/// Reads `key` as it was first written (at most `cap` bytes); None when there is no such
/// object. In a versioned bucket a manifest written over, or deleted, still reads as the
/// release was made: its oldest version is the one that counts.
pub async fn get_first(
    aws: Option<&Aws>,
    store: &Store,
    key: &str,
    cap: u64,
) -> Result<Option<Read>, ReleaseError> {
    let Store::S3 { bucket, prefix } = store else {
        return get(aws, store, key, cap).await;
    };
    let aws = need_aws(aws, store)?;
    let full = format!("{prefix}{key}");
    // Every page of the key's versions (ListObjectVersions pages by key and version markers).
    let mut first: Option<(aws_sdk_s3::primitives::DateTime, String)> = None;
    let (mut key_marker, mut version_marker) = (None, None);
    loop {
        let page = aws
            .s3
            .list_object_versions()
            .bucket(bucket)
            .prefix(&full)
            .set_key_marker(key_marker.take())
            .set_version_id_marker(version_marker.take())
            .send()
            .await
            .map_err(|e| s3_err(bucket, &full, describe(&e)))?;
        for v in page.versions() {
            if v.key() != Some(full.as_str()) {
                continue;
            }
            // S3 lists a key's versions newest first, and its times are in whole seconds: on a
            // tie the later one listed is the older.
            if let (Some(at), Some(id)) = (v.last_modified(), v.version_id()) {
                if first.as_ref().is_none_or(|(t, _)| at <= t) {
                    first = Some((*at, id.to_string()));
                }
            }
        }
        if page.is_truncated() != Some(true) {
            break;
        }
        key_marker = page.next_key_marker().map(String::from);
        version_marker = page.next_version_id_marker().map(String::from);
    }
    let Some((_, version)) = first else {
        return Ok(None);
    };
    let location = super::Location::S3 {
        bucket: bucket.clone(),
        key: full,
    };
    let (bytes, version) = super::fetch_at(Some(aws), &location, Some(&version), cap).await?;
    Ok(Some(Read { bytes, version }))
}

/// Writes `key`, and returns the version S3 gave it. `new_only`: refused with
/// [`ReleaseError::Exists`] when something is there already (S3's conditional write, or
/// `O_EXCL` locally), so that nothing written once is ever replaced.
pub async fn put(
    aws: Option<&Aws>,
    store: &Store,
    key: &str,
    bytes: Vec<u8>,
    new_only: bool,
) -> Result<Option<String>, ReleaseError> {
    match store {
        Store::Local(dir) => {
            let path = dir.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| ReleaseError::Write {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            write_local(&path, &bytes, new_only).map(|()| None)
        }
        Store::S3 { bucket, prefix } => {
            let aws = need_aws(aws, store)?;
            let full = format!("{prefix}{key}");
            let mut request = aws
                .s3
                .put_object()
                .bucket(bucket)
                .key(&full)
                .body(ByteStream::from(bytes));
            if new_only {
                request = request.if_none_match("*");
            }
            match request.send().await {
                Ok(out) => Ok(out.version_id().map(String::from)),
                Err(e) if new_only && code_of(&e).as_deref() == Some("PreconditionFailed") => {
                    Err(ReleaseError::Exists {
                        location: display(store, key),
                    })
                }
                Err(e) => Err(s3_err(bucket, &full, describe(&e))),
            }
        }
    }
}

fn write_local(path: &Path, bytes: &[u8], new_only: bool) -> Result<(), ReleaseError> {
    use std::io::Write;
    if !new_only {
        return super::files::write_private(path, bytes);
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ReleaseError::Exists {
                location: path.display().to_string(),
            })
        }
        Err(source) => {
            return Err(ReleaseError::Write {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| ReleaseError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The keys under `dir` (relative to the store, e.g. `releases/`), every page of them.
pub async fn list(
    aws: Option<&Aws>,
    store: &Store,
    dir: &str,
) -> Result<Vec<String>, ReleaseError> {
    match store {
        Store::Local(root) => {
            let mut out = vec![];
            walk(root, &root.join(dir), &mut out)?;
            out.sort();
            Ok(out)
        }
        Store::S3 { bucket, prefix } => {
            let aws = need_aws(aws, store)?;
            let full = format!("{prefix}{dir}");
            let mut pages = aws
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&full)
                .into_paginator()
                .send();
            let mut out = vec![];
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| s3_err(bucket, &full, describe(&e)))?;
                for object in page.contents() {
                    if let Some(key) = object.key().and_then(|k| k.strip_prefix(prefix.as_str())) {
                        out.push(key.to_string());
                    }
                }
            }
            Ok(out)
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ReleaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ReleaseError::Local {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for entry in entries.flatten() {
        let path: PathBuf = entry.path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}
