//! Is a berth package one of ours: its detached minisign signature (Ed25519 over the file's
//! BLAKE2b-512, minisign's own format, so that `minisign -Vm` checks it too) made by a key
//! this host trusts. Trusted keys are files `*.pub` in `/usr/share/berth/keys` (installed with
//! berth: the key its builder signs with) and `/etc/berth/keys` (the operator's own). The SSM
//! operations document runs `berth verify-package` before it installs anything; a package
//! that is unsigned, signed by another key or changed after signing is refused.

use std::path::{Path, PathBuf};

#[cfg(test)]
mod tests;

/// Where trusted public keys are, in order.
pub const KEY_DIRS: [&str; 2] = ["/usr/share/berth/keys", "/etc/berth/keys"];

/// The package is signed by a trusted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key's file.
    pub key: PathBuf,
    /// What the signer put in the signed part of the signature (file name, time).
    pub trusted_comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a minisign signature: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error("no trusted key in {}: install the release key as a .pub file there", dirs.join(" or "))]
    NoKeys { dirs: Vec<String> },
    #[error("{file} is not signed by a trusted key ({keys} tried: {}); not installed", dirs.join(", "))]
    Untrusted {
        file: PathBuf,
        keys: usize,
        dirs: Vec<String>,
    },
}

/// Checks `file` against `signature` with every key in `key_dirs`; Ok names the key that
/// signed it. Keys that do not parse are passed over (said in the log), not trusted.
pub fn verify(
    file: &Path,
    signature: &Path,
    key_dirs: &[PathBuf],
) -> Result<Verified, SignatureError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| SignatureError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let sig_text = String::from_utf8_lossy(&read(signature)?).into_owned();
    let sig =
        minisign_verify::Signature::decode(&sig_text).map_err(|e| SignatureError::Malformed {
            path: signature.to_path_buf(),
            message: e.to_string(),
        })?;
    let dirs: Vec<String> = key_dirs.iter().map(|d| d.display().to_string()).collect();
    let keys = trusted_keys(key_dirs);
    if keys.is_empty() {
        return Err(SignatureError::NoKeys { dirs });
    }
    let data = read(file)?;
    for (path, key) in &keys {
        // Legacy (not prehashed) signatures are refused: minisign has made prehashed ones by
        // default for years, and one kind is less to trust.
        if key.verify(&data, &sig, false).is_ok() {
            return Ok(Verified {
                key: path.clone(),
                trusted_comment: sig.trusted_comment().to_string(),
            });
        }
    }
    Err(SignatureError::Untrusted {
        file: file.to_path_buf(),
        keys: keys.len(),
        dirs,
    })
}

/// The `*.pub` files of `dirs` that are minisign public keys, sorted by path.
fn trusted_keys(dirs: &[PathBuf]) -> Vec<(PathBuf, minisign_verify::PublicKey)> {
    let mut paths: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            match minisign_verify::PublicKey::decode(&text) {
                Ok(key) => Some((p, key)),
                Err(e) => {
                    tracing::warn!(key = %p.display(), error = %e, "not a minisign public key; not trusted");
                    None
                }
            }
        })
        .collect()
}
