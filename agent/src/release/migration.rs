//! A release's migration: the one-shot service marked with the label `dev.berth.migration`
//! (`expand` or `contract`), which the routed service waits for (`service_completed_successfully`).
//!
//! A label rather than an `x-` extension field: Docker Compose (the peer) runs the same file
//! unchanged and shows it (`docker compose config`, `docker inspect` on the container), and
//! berth's compose model carries labels already, so that the mark cannot be lost between the
//! file and the deploy.
//!
//! With a release store, a migration runs once per release for the whole fleet: where it ran
//! (the rollout's canary, or the first instance to deploy the release) says so in the release's
//! history ([`Ran`] in a `migrated` report: its exit, duration and phase); every later deploy of
//! that release, on any instance, leaves it out ([`skip`]). Its output stays on the host that ran
//! it ([`keep_output`]: 0600 under the run directory), never in an error, a log line or a report:
//! a migration may print what it connects with. Without a store it runs as any one-shot does.
//!
//! The phase says whether the previous release still works once it ran: `expand` (yes) or
//! `contract` (no). Across a contract migration berth never moves traffic back by itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::history::{self, Report};
use super::{store, ReleaseError};
use crate::aws::Aws;
use crate::compose::{DependencyCondition, Project};
use crate::config::Store;
use crate::engine::docker::{label, labels, Engine};

/// The label that marks a release's migration service, with its phase as the value.
pub const LABEL: &str = "dev.berth.migration";

/// The history event of a migration that ran to completion, and of one that failed.
pub const MIGRATED: &str = "migrated";
pub const MIGRATION_FAILED: &str = "migration failed";

/// Whether the previous release still works with the schema a migration leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// It does: going back is safe.
    Expand,
    /// It does not: going back needs a human (`berth rollback --force`).
    Contract,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Expand => "expand",
            Phase::Contract => "contract",
        }
    }
}

/// A release's migration: which service, and its phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub service: String,
    pub phase: Phase,
}

/// What one run of a migration did (the history keeps it; no output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ran {
    pub service: String,
    pub phase: Phase,
    pub exit: i64,
    /// From its start to its exit, by Docker's clock.
    pub millis: u64,
    /// Where its last lines are kept beside the release (the store's location), if they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// The migration `project` declares, if any; an error says what is wrong with the mark.
pub fn declared(project: &Project) -> Result<Option<Migration>, String> {
    let marked: Vec<(&String, &String)> = project
        .services
        .iter()
        .filter_map(|(name, s)| s.labels.get(LABEL).map(|v| (name, v)))
        .collect();
    let (service, value) = match marked.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        [a, b, ..] => {
            return Err(format!(
                "services {} and {} are both labelled {LABEL}: a release has one migration",
                a.0, b.0
            ))
        }
    };
    let phase = match value.as_str() {
        "expand" => Phase::Expand,
        "contract" => Phase::Contract,
        other => {
            return Err(format!(
                "service {service}: label {LABEL} is {other:?}, not expand (the previous release works with the new schema) or contract (it does not)"
            ))
        }
    };
    let awaited = project.services.values().any(|s| {
        s.depends_on
            .get(service)
            .is_some_and(|d| d.condition == DependencyCondition::ServiceCompletedSuccessfully)
    });
    if !awaited {
        return Err(format!(
            "service {service} is labelled {LABEL} but no service waits for it (depends_on: {service}: condition: service_completed_successfully): a migration runs before what needs it"
        ));
    }
    Ok(Some(Migration {
        service: service.clone(),
        phase,
    }))
}

/// Leaves the migration out of `project` (it ran for the fleet): its service, and every
/// service's wait for it.
pub fn skip(project: &mut Project, service: &str) {
    project.services.shift_remove(service);
    for s in project.services.values_mut() {
        s.depends_on.shift_remove(service);
    }
    project.disabled_services.push(service.to_string());
}

/// The run of `release`'s migration the history records, if one succeeded.
pub async fn recorded(
    aws: Option<&Aws>,
    store: &Store,
    release: &str,
) -> Result<Option<(Report, Ran)>, ReleaseError> {
    let prefix = format!("reports/{release}/");
    let suffix = format!("-{MIGRATED}.json");
    for key in store::list(aws, store, &prefix).await? {
        if !key.ends_with(&suffix) {
            continue;
        }
        let Some(read) = store::get(aws, store, &key, 64 * 1024).await? else {
            continue;
        };
        if let Ok(report) = serde_json::from_slice::<Report>(&read.bytes) {
            if let Some(ran) = report.migration.clone().filter(|r| r.exit == 0) {
                return Ok(Some((report, ran)));
            }
        }
    }
    Ok(None)
}

/// How the migration's container of this deploy ended: None when it did not run in it (it
/// started before `since`, Unix seconds: a kept one-shot of the same release).
pub async fn observe(
    engine: &Engine,
    project: &str,
    migration: &Migration,
    since: i64,
) -> Option<(Ran, String)> {
    let containers = engine.project_containers(project).await.ok()?;
    let mut ours: Vec<_> = containers
        .iter()
        .filter(|c| label(c, labels::SERVICE) == Some(migration.service.as_str()))
        .collect();
    ours.sort_by_key(|c| std::cmp::Reverse(c.created.unwrap_or(0)));
    let id = ours.first()?.id.clone()?;
    let info = engine.inspect_present(&id).await.ok()??;
    let state = info.state?;
    let started = seconds(state.started_at.as_deref()?)?;
    if started + 1.0 < since as f64 {
        return None;
    }
    let finished = state.finished_at.as_deref().and_then(seconds);
    let exit = state.exit_code.unwrap_or(-1);
    let millis = finished.map_or(0, |f| ((f - started) * 1000.0).round().max(0.0) as u64);
    Some((
        Ran {
            service: migration.service.clone(),
            phase: migration.phase,
            exit,
            millis,
            output: None,
        },
        id,
    ))
}

/// [`observe`], and the output of the container it found kept by [`keep_output`].
pub async fn observe_kept(
    engine: &Engine,
    project: &str,
    run_dir: &Path,
    migration: &Migration,
    release: &str,
    since: i64,
) -> Option<(Ran, Option<PathBuf>)> {
    let (ran, container) = observe(engine, project, migration, since).await?;
    let output = keep_output(engine, run_dir, release, &container).await;
    Some((ran, output))
}

/// Docker's RFC 3339 time (with nanoseconds) as Unix seconds.
fn seconds(text: &str) -> Option<f64> {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let t = DateTime::from_str(text, DateTimeFormat::DateTime).ok()?;
    // Docker writes 0001-01-01T00:00:00Z for "never".
    (t.secs() > 0).then(|| t.secs() as f64 + f64::from(t.subsec_nanos()) / 1e9)
}

/// Keeps the last lines of the migration's output on this host, where only root reads them:
/// `<run_dir>/migrations/<release>.log`, 0600.
pub async fn keep_output(
    engine: &Engine,
    run_dir: &Path,
    release: &str,
    container: &str,
) -> Option<PathBuf> {
    let text = engine.logs_tail(container, 40).await.ok()?;
    let dir = run_dir.join("migrations");
    let path = dir.join(format!("{release}.log"));
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(text.as_bytes())
    })();
    match written {
        Ok(()) => Some(path),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep the migration's output");
            None
        }
    }
}

/// Keeps the migration's last lines (the host's 0600 file at `path`) beside the release in
/// the store, under `reports/` where instances may add: an object of its own that `berth
/// releases` never prints (the store is as private as the env files it holds). Where it is.
pub async fn keep_in_store(
    aws: Option<&Aws>,
    store: &Store,
    release: &str,
    by: &str,
    path: &Path,
) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let key = format!(
        "reports/{release}/{nanos}-{}-migration-output.log",
        history::safe(by)
    );
    match store::put(aws, store, &key, bytes, true).await {
        Ok(_) => Some(store::display(store, &key)),
        Err(e) => {
            tracing::warn!(release, error = %crate::report::chain(&e), "cannot keep the migration's output beside the release");
            None
        }
    }
}

/// Says in `release`'s history that its migration ran here, and how.
pub async fn record(aws: Option<&Aws>, store: &Store, release: &str, by: &str, ran: &Ran) {
    let report = Report {
        release: release.to_string(),
        by: by.to_string(),
        event: if ran.exit == 0 {
            MIGRATED
        } else {
            MIGRATION_FAILED
        }
        .to_string(),
        at: history::now(),
        previous: None,
        detail: None,
        migration: Some(ran.clone()),
    };
    history::say(aws, store, &report).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.path().join("compose.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"));
        let opts = crate::compose::LoadOptions {
            working_dir: dir.path().to_path_buf(),
            project_name: Some("p".into()),
            ..Default::default()
        };
        crate::compose::load(&opts).unwrap_or_else(|e| panic!("{e}"))
    }

    const TWO: &str = "services:\n  web:\n    image: web\n    depends_on:\n      migrate:\n        condition: service_completed_successfully\n  migrate:\n    image: web\n    labels:\n      dev.berth.migration: expand\n";

    #[test]
    fn the_label_names_the_migration_and_its_phase() {
        let p = project(TWO);
        assert_eq!(
            declared(&p),
            Ok(Some(Migration {
                service: "migrate".into(),
                phase: Phase::Expand
            }))
        );
        let p = project(&TWO.replace("expand", "contract"));
        assert_eq!(declared(&p).unwrap().unwrap().phase, Phase::Contract);
        let p = project(&TWO.replace("expand", "later"));
        assert!(declared(&p).unwrap_err().contains("\"later\", not expand"));
        let p = project(&TWO.replace("service_completed_successfully", "service_started"));
        assert!(declared(&p)
            .unwrap_err()
            .contains("no service waits for it"));
        assert_eq!(
            declared(&project("services:\n  web:\n    image: web\n")),
            Ok(None)
        );
    }

    #[test]
    fn a_skipped_migration_is_waited_for_by_nothing() {
        let mut p = project(TWO);
        skip(&mut p, "migrate");
        assert!(!p.services.contains_key("migrate"));
        assert!(p.services["web"].depends_on.is_empty());
        assert_eq!(p.disabled_services, vec!["migrate".to_string()]);
    }

    #[test]
    fn dockers_times_read_to_the_nanosecond_and_never_is_none() {
        let a = seconds("2026-12-07T13:00:00.250000000Z").unwrap();
        let b = seconds("2026-12-07T13:00:02.750000000Z").unwrap();
        assert!((b - a - 2.5).abs() < 1e-6);
        assert_eq!(seconds("0001-01-01T00:00:00Z"), None);
    }
}
