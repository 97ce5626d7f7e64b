#![allow(clippy::unwrap_used)]

use super::*;

/// Fixtures made once with packaging/sign.py: package.deb signed by trusted.pub's key,
/// by-other.deb (the same bytes) by other.pub's.
fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/signature/testdata")
        .join(name)
}

/// A key directory holding the named fixtures' keys.
fn keys(names: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for n in names {
        std::fs::copy(data(n), dir.path().join(n)).unwrap();
    }
    dir
}

#[test]
fn a_package_signed_by_a_trusted_key_verifies_and_names_the_key() {
    let dir = keys(&["other.pub", "trusted.pub"]);
    let ok = verify(
        &data("package.deb"),
        &data("package.deb.minisig"),
        &[dir.path().to_path_buf()],
    )
    .unwrap();
    assert_eq!(ok.key, dir.path().join("trusted.pub"));
    assert!(ok.trusted_comment.contains("file:package.deb"), "{ok:?}");
}

#[test]
fn another_key_a_changed_file_or_no_key_is_refused() {
    let trusted = keys(&["trusted.pub"]);
    let dirs = [trusted.path().to_path_buf()];
    // Signed, but by a key this host does not trust.
    let e = verify(&data("by-other.deb"), &data("by-other.deb.minisig"), &dirs).unwrap_err();
    assert!(
        matches!(e, SignatureError::Untrusted { keys: 1, .. }),
        "{e}"
    );
    // Changed after signing: one byte more.
    let changed = tempfile::NamedTempFile::new().unwrap();
    let mut bytes = std::fs::read(data("package.deb")).unwrap();
    bytes.push(b'!');
    std::fs::write(changed.path(), &bytes).unwrap();
    let e = verify(changed.path(), &data("package.deb.minisig"), &dirs).unwrap_err();
    assert!(
        e.to_string().contains("is not signed by a trusted key"),
        "{e}"
    );
    // No signature file, a signature that is not one, no keys at all.
    let e = verify(&data("package.deb"), &data("absent.minisig"), &dirs).unwrap_err();
    assert!(matches!(e, SignatureError::Read { .. }), "{e}");
    let e = verify(&data("package.deb"), &data("trusted.pub"), &dirs).unwrap_err();
    assert!(matches!(e, SignatureError::Malformed { .. }), "{e}");
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("junk.pub"), "not a key\n").unwrap();
    let e = verify(
        &data("package.deb"),
        &data("package.deb.minisig"),
        &[empty.path().to_path_buf(), PathBuf::from("/nonexistent")],
    )
    .unwrap_err();
    assert!(matches!(e, SignatureError::NoKeys { .. }), "{e}");
}
