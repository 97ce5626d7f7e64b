//! A release manifest: one release, pinned. The compose file and its env files by object
//! version and sha256, the secrets' and configs' remote sources by version, each service's image
//! by digest, the id, when it was made and from what. `berth release create` writes it once
//! (never over another); every deploy of that id runs exactly what it names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::compose::Project;

/// The manifest format this berth reads and writes. A newer one is refused, not guessed at:
/// a field this berth does not know may be one that changes what runs.
pub const FORMAT: u32 = 1;

/// The label that keeps an image's tag for people once the container runs it by digest.
pub const IMAGE_LABEL: &str = "dev.berth.image";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub release: String,
    /// RFC 3339, UTC.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    pub compose: Pinned,
    #[serde(default)]
    pub env_files: Vec<Pinned>,
    /// The secrets' and configs' `s3://` and `ssm:/` sources, as the compose file writes them.
    #[serde(default)]
    pub sources: Vec<Pinned>,
    /// Service name -> its image.
    pub images: BTreeMap<String, ImagePin>,
    /// The release's migration (`dev.berth.migration` on a one-shot service), checked when
    /// the release was made: what `berth releases` and `berth rollout` say of it (the compose
    /// file, which the deploy reads, stays the authority). Absent without one, so that a
    /// manifest without a migration reads as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::migration::Migration>,
}

/// Where a release came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Who made it: `user@host`, or the CI's run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// One object at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// `s3://bucket/key`, `ssm:/name` or a path.
    pub location: String,
    /// The S3 VersionId or SSM parameter version; None for a file in a local store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Of the content; None for a secret's or config's source, which the version alone pins
    /// (S3 versions and SSM parameter versions never change), so that no digest of a secret
    /// is kept where the config bucket's readers see it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub bytes: u64,
}

/// An image as the compose file names it, and the digest it resolved to at the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePin {
    pub image: String,
    pub digest: String,
}

impl ImagePin {
    /// `repository@sha256:...`: what is pulled and run.
    pub fn reference(&self) -> String {
        format!("{}@{}", repository(&self.image), self.digest)
    }
}

/// The repository of an image reference: without its tag and digest.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(r, _)| r);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => &image[..last_slash + i],
        None => image,
    }
}

/// The hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(bytes))
}

/// Why a manifest cannot be used, or does not fit the project it pins.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest {location}: not a berth release manifest: {message}")]
    Parse { location: String, message: String },
    #[error("manifest {location}: format {format}, made by a newer berth (this one reads {FORMAT}); upgrade berth on this machine first")]
    Newer { location: String, format: u32 },
    #[error("manifest {location} is for release {found}, not {wanted}")]
    OtherRelease {
        location: String,
        wanted: String,
        found: String,
    },
    #[error("release {release}: service {service} is not in its manifest (made with other profiles, or another compose file?)")]
    Unpinned { release: String, service: String },
    #[error("release {release}: service {service} resolves to image {here} here, but the release pinned {pinned} (interpolated differently on this machine?)")]
    ImageDiffers {
        release: String,
        service: String,
        here: String,
        pinned: String,
    },
    #[error(
        "release {release}: image {image} of service {service}: {digest:?} is not a sha256 digest"
    )]
    BadDigest {
        release: String,
        service: String,
        image: String,
        digest: String,
    },
}

impl Manifest {
    /// Reads a manifest and checks that it is the release `wanted` in a format this berth
    /// knows.
    pub fn parse(bytes: &[u8], location: &str, wanted: &str) -> Result<Manifest, ManifestError> {
        // The format first, so that a newer manifest says so rather than naming a field.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let parse_err = |message: String| ManifestError::Parse {
            location: location.to_string(),
            message,
        };
        let head: Head = serde_json::from_slice(bytes).map_err(|e| parse_err(e.to_string()))?;
        if head.format > FORMAT {
            return Err(ManifestError::Newer {
                location: location.to_string(),
                format: head.format,
            });
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| parse_err(e.to_string()))?;
        if manifest.release != wanted {
            return Err(ManifestError::OtherRelease {
                location: location.to_string(),
                wanted: wanted.to_string(),
                found: manifest.release,
            });
        }
        // A remote object without a version would be read as it is now: it pins nothing.
        if let Some(unpinned) = manifest.objects().find(|o| {
            o.version.is_none()
                && (o.location.starts_with("s3://") || o.location.starts_with("ssm:"))
        }) {
            return Err(ManifestError::Parse {
                location: location.to_string(),
                message: format!("{} has no version", unpinned.location),
            });
        }
        for (service, pin) in &manifest.images {
            if !is_digest(&pin.digest) {
                return Err(ManifestError::BadDigest {
                    release: manifest.release.clone(),
                    service: service.clone(),
                    image: pin.image.clone(),
                    digest: pin.digest.clone(),
                });
            }
        }
        Ok(manifest)
    }

    /// As written to the store: pretty, one trailing newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Every object the release needs, compose file first.
    pub fn objects(&self) -> impl Iterator<Item = &Pinned> {
        std::iter::once(&self.compose)
            .chain(self.env_files.iter())
            .chain(self.sources.iter())
    }

    /// Runs `project`'s images by the digests the release pinned: each service's image becomes
    /// `repository@sha256:...`, its tag kept in the [`IMAGE_LABEL`] label. A service the release
    /// does not pin, or one whose image resolves to another reference here than when the
    /// release was made, is an error: the release would not be what runs.
    pub fn pin(&self, project: &mut Project) -> Result<(), ManifestError> {
        for (name, svc) in project.services.iter_mut() {
            let pin = self
                .images
                .get(name)
                .ok_or_else(|| ManifestError::Unpinned {
                    release: self.release.clone(),
                    service: name.clone(),
                })?;
            if svc.image != pin.image && svc.image != pin.reference() {
                return Err(ManifestError::ImageDiffers {
                    release: self.release.clone(),
                    service: name.clone(),
                    here: svc.image.clone(),
                    pinned: pin.image.clone(),
                });
            }
            svc.image = pin.reference();
            svc.labels.insert(IMAGE_LABEL.into(), pin.image.clone());
        }
        Ok(())
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// What the `release` parameter of the SSM document allows (its allowedPattern), and so what a
/// release id may be: a letter or digit, then letters, digits, `.` `_` `+` `-`; 128 at most.
pub fn is_release_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            release: "7".into(),
            created: "2026-12-07T01:02:03Z".into(),
            source: Some(Source {
                commit: Some("abc".into()),
                by: None,
            }),
            compose: Pinned {
                location: "s3://b/api/releases/7/compose.yaml".into(),
                version: Some("v1".into()),
                sha256: Some(sha256_hex(b"x")),
                bytes: 1,
            },
            env_files: vec![],
            sources: vec![],
            images: BTreeMap::from([(
                "web".to_string(),
                ImagePin {
                    image: "127.0.0.1:5000/team/web:7".into(),
                    digest: DIGEST.into(),
                },
            )]),
            migration: None,
        }
    }

    #[test]
    fn a_manifest_reads_back_as_written_and_names_its_release() {
        let m = manifest();
        let bytes = m.to_bytes();
        assert_eq!(Manifest::parse(&bytes, "here", "7").unwrap(), m);
        // No migration: no key (a manifest older berths read); with one, it reads back.
        assert!(!String::from_utf8_lossy(&bytes).contains("migration"));
        let with = Manifest {
            migration: Some(super::super::migration::Migration {
                service: "migrate".into(),
                phase: super::super::migration::Phase::Contract,
            }),
            ..manifest()
        };
        assert_eq!(
            Manifest::parse(&with.to_bytes(), "here", "7").unwrap(),
            with
        );
        let e = Manifest::parse(&bytes, "here", "8")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "manifest here is for release 7, not 8");
    }

    #[test]
    fn a_newer_format_or_an_unknown_field_is_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&manifest().to_bytes()).unwrap();
        v["format"] = 2.into();
        let e = Manifest::parse(v.to_string().as_bytes(), "m", "7").unwrap_err();
        assert!(e.to_string().contains("newer berth"), "{e}");
        v["format"] = 1.into();
        v["preflight"] = "x".into();
        let e = Manifest::parse(v.to_string().as_bytes(), "m", "7").unwrap_err();
        assert!(e.to_string().contains("preflight"), "{e}");
        let e = Manifest::parse(b"{\"format\":1", "m", "7").unwrap_err();
        assert!(e.to_string().starts_with("manifest m: not a berth"), "{e}");
    }

    #[test]
    fn a_digest_that_is_not_one_is_refused() {
        let mut m = manifest();
        m.images.get_mut("web").unwrap().digest = "sha256:abc".into();
        let e = Manifest::parse(&m.to_bytes(), "m", "7").unwrap_err();
        assert!(e.to_string().contains("is not a sha256 digest"), "{e}");
        assert!(is_digest(DIGEST));
        assert!(!is_digest(&DIGEST.to_uppercase()));
    }

    #[test]
    fn repositories_lose_their_tag_and_digest_but_keep_a_registry_port() {
        assert_eq!(repository("web"), "web");
        assert_eq!(repository("web:1"), "web");
        assert_eq!(
            repository("127.0.0.1:5000/team/web:2"),
            "127.0.0.1:5000/team/web"
        );
        assert_eq!(repository("127.0.0.1:5000/web"), "127.0.0.1:5000/web");
        assert_eq!(repository("web:1@sha256:ab"), "web");
        assert_eq!(
            manifest().images["web"].reference(),
            format!("127.0.0.1:5000/team/web@{DIGEST}")
        );
    }

    #[test]
    fn release_ids_are_what_the_document_takes() {
        for ok in ["2", "v1.2.3", "abc_def+1-x", &"a".repeat(128)] {
            assert!(is_release_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a;rm",
            "a'b",
            "../x",
            &"a".repeat(129),
        ] {
            assert!(!is_release_id(bad), "{bad}");
        }
    }
}
