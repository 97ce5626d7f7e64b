//! The fetched files' home: a 0700 directory per project under the run directory, each file
//! 0600 and written atomically, because env files hold secrets.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::ReleaseError;

/// Creates `dir` (and its parents) with mode 0700.
pub fn private_dir(dir: &Path) -> Result<(), ReleaseError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ReleaseError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` with mode 0600, atomically (a reader never sees half a file).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
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

/// Makes a rename or a removal in `path`'s directory durable (best effort).
pub fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}
