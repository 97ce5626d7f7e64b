//! A preview's token: what a request must carry (the preview header or cookie) to reach a
//! release in preview. Derived, never chosen: HMAC-SHA256 of the release and the Unix time
//! the preview ends, under the preview key (one per fleet: a key shared by two stacks would
//! give one token to both), so that every instance of a fleet that
//! shares the key derives the same token for the same preview (the load balancer sends a
//! request to any of them), and nobody without the key can make one. The release id alone, the
//! commit's prefix that anyone reads in a public repository, reaches nothing.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::UpgradeError;
use crate::aws::Aws;
use crate::config::AgentConfig;

/// The token: `<until>.<32 hex digits>` (128 bits of the MAC).
pub fn derive(key: &[u8], release: &str, until: u64) -> String {
    // HMAC takes a key of any length; the error case cannot happen.
    let mac = Hmac::<Sha256>::new_from_slice(key).map(|mut mac| {
        mac.update(format!("berth-preview\n{release}\n{until}").as_bytes());
        mac.finalize().into_bytes()
    });
    let tag: Vec<u8> = mac.map(|t| t.to_vec()).unwrap_or_default();
    let hex: String = tag.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{until}.{hex}")
}

/// The preview key: `upgrade.preview_key` (an `ssm:/` SecureString, `s3://` object or file
/// the fleet shares), else this host's own, `<state_dir>/preview.key`, made once (32 random
/// bytes, 0600): enough for one instance, while a fleet's smoke test needs the shared one.
pub async fn key(config: &AgentConfig, aws: Option<&Aws>) -> Result<Vec<u8>, UpgradeError> {
    let refused =
        |location: String, message: String| UpgradeError::PreviewKey { location, message };
    if let Some(text) = &config.upgrade.preview_key {
        let base = config.path.parent().unwrap_or(std::path::Path::new("/"));
        let location =
            crate::release::Location::parse(text, base).map_err(|m| refused(text.clone(), m))?;
        let (bytes, _) = crate::release::fetch(aws, &location, 4096)
            .await
            .map_err(|e| refused(location.to_string(), crate::report::chain(&e)))?;
        let key: Vec<u8> = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
        if key.len() < 16 {
            return Err(refused(
                location.to_string(),
                format!("holds {} bytes; a preview key needs at least 16 (32 random ones: openssl rand -hex 32)", key.len()),
            ));
        }
        return Ok(key);
    }
    let path = config.state_dir.join("preview.key");
    let shown = path.display().to_string();
    if let Ok(mut f) = std::fs::File::open(&path) {
        let mut key = Vec::new();
        f.read_to_end(&mut key)
            .map_err(|e| refused(shown.clone(), e.to_string()))?;
        if key.len() >= 16 {
            return Ok(key);
        }
    }
    let mut key = vec![0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut r| r.read_exact(&mut key))
        .map_err(|e| refused("/dev/urandom".into(), e.to_string()))?;
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| refused(shown.clone(), e.to_string()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(&key))
        .map_err(|e| refused(shown, e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_one_token_per_release_and_end() {
        let t = derive(b"0123456789abcdef", "v2", 1_800_000_000);
        assert_eq!(t.len(), "1800000000.".len() + 32, "{t}");
        assert!(t.starts_with("1800000000."), "{t}");
        assert_eq!(t, derive(b"0123456789abcdef", "v2", 1_800_000_000));
        for other in [
            derive(b"0123456789abcdeF", "v2", 1_800_000_000),
            derive(b"0123456789abcdef", "v3", 1_800_000_000),
            derive(b"0123456789abcdef", "v2", 1_800_000_001),
        ] {
            assert_ne!(t, other);
        }
        assert!(!t.contains("v2"), "the release is not in the token: {t}");
    }
}
