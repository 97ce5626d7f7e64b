//! Reading one object of the release: a local file, an S3 object (its VersionId, or ETag when
//! unversioned) or an SSM parameter (decrypted; its version). Errors name the object and say
//! what the instance role lacks where that is the cause.

use std::path::Path;

use super::{Location, ReleaseError};
use crate::aws::{code_of, describe, Aws};

/// Reads one object of at most `cap` bytes: its bytes and version.
pub async fn fetch(
    aws: Option<&Aws>,
    location: &Location,
    cap: u64,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    let too_large = || ReleaseError::TooLarge {
        location: location.to_string(),
        cap,
    };
    let (bytes, version) = match (location, aws) {
        (Location::Local(path), _) => local(path, cap).map_err(|e| e.unwrap_or_else(too_large))?,
        (Location::S3 { bucket, key }, Some(aws)) => s3(aws, bucket, key, cap)
            .await
            .map_err(|e| e.unwrap_or_else(too_large))?,
        (Location::Ssm { name }, Some(aws)) => ssm(aws, name).await?,
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

async fn s3(aws: &Aws, bucket: &str, key: &str, cap: u64) -> Capped<(Vec<u8>, Option<String>)> {
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
        .send()
        .await
        .map_err(|e| {
            let service = e.as_service_error().map(|se| (code_of(se), describe(se)));
            match service {
                Some((Some(code), _)) if code == "NoSuchKey" => {
                    err("no such key (NoSuchKey)".into())
                }
                Some((Some(code), _)) if code == "NoSuchBucket" => {
                    err("no such bucket (NoSuchBucket)".into())
                }
                Some((Some(code), _)) if code == "AccessDenied" => err(
                    "access denied (AccessDenied): the instance role needs s3:GetObject on it"
                        .into(),
                ),
                Some((_, msg)) => err(msg),
                None => err(describe(&e)),
            }
        })?;
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

async fn ssm(aws: &Aws, name: &str) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    let out = aws
        .ssm
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
                name: name.to_string(),
                message,
            }
        })?;
    let p = out.parameter();
    let value = p.and_then(|p| p.value()).unwrap_or_default();
    let version = p.map(|p| p.version().to_string());
    Ok((value.as_bytes().to_vec(), version))
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
