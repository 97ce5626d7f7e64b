//! Rollback readiness: whether a release can still be deployed whole. Before an instance
//! switches to a new release, the release it would go back to must still have every object at
//! its pinned version and every image at its registry by digest: an ECR lifecycle policy or a
//! cleanup may have deleted what a rollback needs, and a rollback is no time to find out. A
//! floating release (no manifest) pins nothing to check.

use futures_util::future::join_all;

use super::{exists_at, Location, Manifest, ReleaseError};
use crate::aws::Aws;
use crate::engine::docker::Engine;
use crate::engine::registry::Registries;

/// What of `manifest` is gone, one line each (empty: ready). `engine` asks the registries (the
/// daemon's distribution endpoint, with the same credentials as a pull).
pub async fn missing(
    aws: Option<&Aws>,
    engine: &Engine,
    registries: &Registries,
    manifest: &Manifest,
) -> Vec<String> {
    let objects = manifest.objects().map(|pin| async move {
        let location = match Location::parse(&pin.location, std::path::Path::new("/")) {
            Ok(l) => l,
            Err(e) => return Some(format!("{}: {e}", pin.location)),
        };
        match exists_at(aws, &location, pin.version.as_deref()).await {
            Ok(()) => None,
            Err(e) => Some(crate::report::chain(&e)),
        }
    });
    let images = manifest.images.iter().map(|(service, pin)| async move {
        let reference = pin.reference();
        let credentials = match registries.credentials_for(&reference).await {
            Ok(c) => c,
            Err(e) => return Some(format!("image {reference} (service {service}): {e}")),
        };
        match engine.registry_digest(&reference, credentials).await {
            Ok(_) => None,
            Err(e) => Some(format!(
                "image {} of service {service} ({}): {}",
                pin.image,
                pin.digest,
                crate::report::chain(&e)
            )),
        }
    });
    let (objects, images) = futures_util::join!(join_all(objects), join_all(images));
    objects.into_iter().chain(images).flatten().collect()
}

/// [`missing`], as an error naming every missing piece.
pub async fn check(
    aws: Option<&Aws>,
    engine: &Engine,
    registries: &Registries,
    manifest: &Manifest,
) -> Result<(), ReleaseError> {
    let missing = missing(aws, engine, registries, manifest).await;
    if missing.is_empty() {
        return Ok(());
    }
    Err(ReleaseError::NotReady {
        release: manifest.release.clone(),
        missing,
    })
}
