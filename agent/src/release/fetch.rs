//! Reading one object of the release: a local file, an S3 object (its VersionId, or ETag when
//! unversioned) or an SSM parameter (decrypted; its version). Errors name the object and say
//! what the instance role lacks where that is the cause.

use std::path::Path;

use super::{Location, ReleaseError};
use crate::aws::{code_of, describe, Aws};

/// Reads one object: its bytes and version.
pub async fn fetch(
    aws: Option<&Aws>,
    location: &Location,
) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    match (location, aws) {
        (Location::Local(path), _) => local(path),
        (Location::S3 { bucket, key }, Some(aws)) => s3(aws, bucket, key).await,
        (Location::Ssm { name }, Some(aws)) => ssm(aws, name).await,
        (_, None) => Err(ReleaseError::RemoteInLocalRun {
            location: location.to_string(),
        }),
    }
}

fn local(path: &Path) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    let bytes = std::fs::read(path).map_err(|source| ReleaseError::Local {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((bytes, None))
}

async fn s3(aws: &Aws, bucket: &str, key: &str) -> Result<(Vec<u8>, Option<String>), ReleaseError> {
    let err = |message: String| ReleaseError::S3 {
        bucket: bucket.to_string(),
        key: key.to_string(),
        message,
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
    let version = out
        .version_id()
        .map(String::from)
        .or_else(|| out.e_tag().map(|t| t.trim_matches('"').to_string()));
    let body = out
        .body
        .collect()
        .await
        .map_err(|e| err(format!("reading the body: {}", crate::report::chain(&e))))?;
    Ok((body.into_bytes().to_vec(), version))
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
