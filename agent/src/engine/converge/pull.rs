//! Pulling images: in parallel up to a limit, each retried with backoff while the registry's
//! answer may still change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use super::ConvergeError;
use crate::compose::{Project, PullPolicy};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::Observed;
use crate::engine::progress::{Progress, Stage};
use crate::engine::registry::Registries;

/// Attempts per image before a transient pull failure fails `up`.
const PULL_ATTEMPTS: u32 = 3;

/// Registry answers that no retry will change.
fn is_permanent_pull_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unauthorized",
        "denied",
        "not found",
        "manifest unknown",
        "no basic auth",
        "authentication required",
        "does not exist",
        "invalid reference",
    ]
    .iter()
    .any(|p| m.contains(p))
}

/// Pulls the images that need it, in parallel (bounded), retrying transient failures with
/// backoff; records the local image id per reference.
pub async fn pull_images(
    engine: &Engine,
    project: &Project,
    observed: &mut Observed,
    registries: &Registries,
    concurrency: usize,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    for image in &observed.pulls {
        if let Some(svc) = project
            .services
            .values()
            .find(|s| &s.image == image && s.pull_policy == PullPolicy::Never)
        {
            return Err(ConvergeError::ImageMissing {
                service: svc.name.clone(),
                image: image.clone(),
            });
        }
    }
    if !observed.pulls.is_empty() {
        progress.stage(Stage::Pulling);
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let jobs = observed.pulls.iter().map(|image| {
        let service = project
            .services
            .values()
            .find(|s| &s.image == image)
            .map(|s| s.name.clone())
            .unwrap_or_default();
        let limit = limit.clone();
        async move {
            let _permit = limit.acquire().await;
            pull_with_retries(engine, image, service, registries, progress).await?;
            let id = engine.local_image(image).await?.and_then(|i| i.id);
            Ok::<_, ConvergeError>((image.clone(), id))
        }
    });
    for result in join_all(jobs).await {
        let (image, id) = result?;
        observed.image_ids.insert(image, id);
    }
    observed.pulls.clear();
    Ok(())
}

/// Pulls one image for `service`, retrying what may pass on a later attempt.
async fn pull_with_retries(
    engine: &Engine,
    image: &str,
    service: String,
    registries: &Registries,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    let subject = format!("image {image}");
    let mut attempt = 1;
    loop {
        // Fetched per attempt: an ECR token is renewed when it is about to expire.
        let credentials = registries.credentials_for(image).await?;
        progress.update(&subject, "pulling");
        let mut last = Instant::now();
        let result = engine
            .pull(image, credentials, |status| {
                if last.elapsed() > Duration::from_millis(500) {
                    last = Instant::now();
                    progress.update(&subject, &format!("pulling: {status}"));
                }
            })
            .await;
        match result {
            Ok(()) => {
                progress.finish(&subject, "pulled");
                return Ok(());
            }
            Err(DockerError::Pull { message, .. })
                if attempt < PULL_ATTEMPTS && !is_permanent_pull_error(&message) =>
            {
                let wait = Duration::from_secs(1 << (attempt - 1));
                tracing::warn!(%image, attempt, error = %message, "pull failed; retrying in {wait:?}");
                progress.update(
                    &subject,
                    &format!("retrying in {}s: {message}", wait.as_secs()),
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(source @ DockerError::Pull { .. }) => {
                progress.finish(&subject, "failed");
                return Err(ConvergeError::Pull {
                    service,
                    image: image.to_string(),
                    source,
                });
            }
            Err(other) => return Err(ConvergeError::Docker(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_permanent_pull_error;

    #[test]
    fn registry_refusals_are_not_retried() {
        assert!(is_permanent_pull_error(
            "unauthorized: authentication required"
        ));
        assert!(is_permanent_pull_error(
            "manifest unknown: manifest unknown"
        ));
        assert!(is_permanent_pull_error("pull access DENIED for x"));
        assert!(!is_permanent_pull_error("net/http: TLS handshake timeout"));
        assert!(!is_permanent_pull_error("connection reset by peer"));
    }
}
