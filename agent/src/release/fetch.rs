//! Reading one object of the release: a local file, an S3 object (its VersionId, or ETag when
//! unversioned) or an SSM parameter (decrypted; its version), as it is now or at a pinned
//! version. Errors name the object and say what the instance role lacks where that is the
//! cause.

use std::path::Path;

use super::{Location, ReleaseError};
use crate::aws::{code_of, describe, Aws};

/// Reads one object of at most `cap` bytes as it is now: its bytes and version.
pub async fn fetch(
    aws: Option<&Aws>,
    location: &Location,
    cap: u64,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    fetch_at(aws, location, None, cap).await
}

/// Reads one object of at most `cap` bytes at `version` (the S3 VersionId, the SSM parameter
/// version; None: as it is now): its bytes and version.
pub async fn fetch_at(
    aws: Option<&Aws>,
    location: &Location,
    version: Option<&str>,
    cap: u64,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    let too_large = || ReleaseError::TooLarge {
        location: location.to_string(),
        cap,
    };
    let (bytes, version) = match (location, aws) {
        (Location::Local(path), _) => local(path, cap).map_err(|e| e.unwrap_or_else(too_large))?,
        (Location::S3 { bucket, key }, Some(aws)) => s3(aws, bucket, key, version, cap)
            .await
            .map_err(|e| e.unwrap_or_else(too_large))?,
        (Location::Ssm { name }, Some(aws)) => ssm(aws, name, version, true).await?,
        (_, None) => {
            return Err(ReleaseError::RemoteInLocalRun {
                location: location.to_string(),
            })
        }
    };
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok((bytes, version))
}

/// A read error, or None: larger than the cap.
type Capped<T> = Result<T, Option<ReleaseError>>;

fn local(path: &Path, cap: u64) -> Capped<(Vec<u8>, Option<String>)> {
    use std::io::Read;
    let err = |source| {
        Some(ReleaseError::Local {
            path: path.to_path_buf(),
            source,
        })
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = Vec::new();
    // One byte past the cap tells a file at the cap from a larger one.
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > cap {
        return Err(None);
    }
    Ok((bytes, None))
}

/// What an S3 refusal means for a release object, in a sentence.
fn s3_message<E>(e: &aws_sdk_s3::error::SdkError<E>, version: Option<&str>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let service = e.as_service_error().map(|se| (code_of(se), describe(se)));
    match service {
        Some((Some(code), _)) if code == "NoSuchKey" => "no such key (NoSuchKey)".into(),
        Some((Some(code), _)) if code == "NoSuchVersion" => format!(
            "no version {} of it (NoSuchVersion): it was deleted",
            version.unwrap_or("?")
        ),
        Some((Some(code), _)) if code == "NoSuchBucket" => "no such bucket (NoSuchBucket)".into(),
        Some((Some(code), _)) if code == "AccessDenied" => {
            "access denied (AccessDenied): the role needs s3:GetObject (s3:GetObjectVersion for a pinned version) on it".into()
        }
        // HeadObject answers without a body, so without a code: its status says it.
        _ if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => match version {
            Some(v) => format!("no version {v} of it (404): it was deleted"),
            None => "no such key (404)".into(),
        },
        Some((_, msg)) => msg,
        None => describe(e),
    }
}

async fn s3(
    aws: &Aws,
    bucket: &str,
    key: &str,
    version: Option<&str>,
    cap: u64,
) -> Capped<(Vec<u8>, Option<String>)> {
    let err = |message: String| {
        Some(ReleaseError::S3 {
            bucket: bucket.to_string(),
            key: key.to_string(),
            message,
        })
    };
    let out = aws
        .s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_version_id(version.map(String::from))
        .send()
        .await
        .map_err(|e| err(s3_message(&e, version)))?;
    if out
        .content_length()
        .is_some_and(|n| u64::try_from(n).unwrap_or(0) > cap)
    {
        return Err(None);
    }
    let version = out
        .version_id()
        .map(String::from)
        .or_else(|| out.e_tag().map(|t| t.trim_matches('"').to_string()));
    // Read in chunks up to the cap, whatever the length said.
    let mut body = out.body;
    let mut bytes = Vec::new();
    while let Some(chunk) = body
        .try_next()
        .await
        .map_err(|e| err(format!("reading the body: {}", crate::report::chain(&e))))?
    {
        if (bytes.len() + chunk.len()) as u64 > cap {
            return Err(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, version))
}

/// A parameter's value (decrypted with `decrypt`) and version; `version` pins one.
async fn ssm(
    aws: &Aws,
    name: &str,
    version: Option<&str>,
    decrypt: bool,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    // SSM's selector: `name:version` reads that version, which never changes.
    let selector = match version {
        Some(v) => format!("{name}:{v}"),
        None => name.to_string(),
    };
    let out = aws
        .ssm
        .get_parameter()
        .name(&selector)
        .with_decryption(decrypt)
        .send()
        .await
        .map_err(|e| {
            let message = match e.as_service_error() {
                Some(se) if se.is_parameter_not_found() => {
                    "parameter not found (ParameterNotFound)".to_string()
                }
                Some(se) if se.is_parameter_version_not_found() => format!(
                    "no version {} of it (ParameterVersionNotFound): it was deleted",
                    version.unwrap_or("?")
                ),
                Some(se) => describe(se),
                None => describe(&e),
            };
            ReleaseError::Ssm {
                name: name.to_string(),
                message,
            }
        })?;
    let p = out.parameter();
    let value = p.and_then(|p| p.value()).unwrap_or_default();
    let version = p.map(|p| p.version().to_string());
    Ok((value.as_bytes().to_vec(), version))
}

/// The version an object has now and its size as stored, without reading it: S3's HeadObject
/// (a bucket without versioning has none to pin, an error), SSM's parameter not decrypted.
pub async fn version_now(
    aws: Option<&Aws>,
    location: &Location,
) -> Result<(String, u64), ReleaseError> {
    match (location, aws) {
        (Location::S3 { bucket, key }, Some(aws)) => {
            let head = aws
                .s3
                .head_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| ReleaseError::S3 {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    message: s3_message(&e, None),
                })?;
            let size = u64::try_from(head.content_length().unwrap_or(0)).unwrap_or(0);
            // "null": written while versioning was off (or suspended): a later write replaces it.
            match head.version_id().filter(|v| *v != "null") {
                Some(v) => Ok((v.to_string(), size)),
                None => Err(ReleaseError::Unversioned {
                    bucket: bucket.clone(),
                    status: format!("s3://{bucket}/{key} has no VersionId"),
                }),
            }
        }
        (Location::Ssm { name }, Some(aws)) => {
            let (value, version) = ssm(aws, name, None, false).await?;
            Ok((version.unwrap_or_default(), value.len() as u64))
        }
        (Location::Local(path), _) => Err(ReleaseError::Local {
            path: path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a local file has no version to pin",
            ),
        }),
        (_, None) => Err(ReleaseError::RemoteInLocalRun {
            location: location.to_string(),
        }),
    }
}

/// Whether the object is still there at `version` (rollback readiness): S3's HeadObject of
/// that version, SSM's parameter at that version (not decrypted), a local file's presence.
pub async fn exists_at(
    aws: Option<&Aws>,
    location: &Location,
    version: Option<&str>,
) -> Result<(), ReleaseError> {
    match (location, aws) {
        (Location::Local(path), _) => {
            std::fs::metadata(path)
                .map(|_| ())
                .map_err(|source| ReleaseError::Local {
                    path: path.clone(),
                    source,
                })
        }
        (Location::S3 { bucket, key }, Some(aws)) => aws
            .s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .set_version_id(version.map(String::from))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ReleaseError::S3 {
                bucket: bucket.clone(),
                key: key.clone(),
                message: s3_message(&e, version),
            }),
        (Location::Ssm { name }, Some(aws)) => ssm(aws, name, version, false).await.map(|_| ()),
        (_, None) => Err(ReleaseError::RemoteInLocalRun {
            location: location.to_string(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_object_over_the_cap_is_refused_naming_it_and_one_at_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.env");
        std::fs::write(&path, b"A=12345\n").unwrap();
        let location = Location::Local(path.clone());
        let (bytes, _) = fetch(None, &location, 8).await.unwrap();
        assert_eq!(bytes, b"A=12345\n");
        let e = fetch(None, &location, 7).await.unwrap_err();
        assert!(matches!(e, ReleaseError::TooLarge { cap: 7, .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("api.env") && text.contains("max_object_bytes (7 bytes)"),
            "{text}"
        );
        assert!(!text.contains("12345"), "{text}");
    }
}
