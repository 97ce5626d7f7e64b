//! A deploy's migration (see `release::migration`): run here, or left out because it ran for
//! the fleet, and what it did said of the release.

use crate::compose::Project;
use crate::engine::docker::{label, labels, Engine};
use crate::release::migration::{self, Migration, Phase};
use crate::release::Release;
use crate::upgrade::{MigrationOutcome, MigrationRun};

use super::{AgentError, Deployer};

/// The release's migration and whether this deploy runs it.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    pub migration: Migration,
    /// False: it ran for the fleet (by `by`), and is left out of this deploy.
    pub runs: bool,
    pub by: Option<String>,
}

impl Planned {
    /// The service whose phase forbids an automatic rollback, if it does.
    pub fn contract(&self) -> Option<String> {
        (self.migration.phase == Phase::Contract).then(|| self.migration.service.clone())
    }
}

impl Deployer {
    /// The migration `project` declares, left out of it when the release's history says it
    /// ran (with a release store: once per release for the fleet). A history that cannot be
    /// read runs it (as without a store): a migration must be safe to run twice anyway.
    pub(super) async fn plan_migration(
        &self,
        release: &Release,
        project: &mut Project,
    ) -> Result<Option<Planned>, AgentError> {
        let migration = match migration::declared(project) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(None),
            Err(message) => return Err(AgentError::Migration { message }),
        };
        let (Some(store), Some(id)) = (&self.config.manifests, &release.release_id) else {
            return Ok(Some(Planned {
                migration,
                runs: true,
                by: None,
            }));
        };
        match migration::recorded(self.aws.as_ref(), store, id).await {
            Ok(Some((report, ran))) => {
                tracing::info!(release = %id, service = %migration.service, ran_by = %report.by, exit = ran.exit, millis = ran.millis, "the release's migration ran for the fleet: left out here");
                migration::skip(project, &migration.service);
                Ok(Some(Planned {
                    migration,
                    runs: false,
                    by: Some(report.by),
                }))
            }
            Ok(None) => Ok(Some(Planned {
                migration,
                runs: true,
                by: None,
            })),
            Err(e) => {
                tracing::warn!(release = %id, error = %crate::report::chain(&e), "cannot read whether the release's migration ran: it runs here");
                Ok(Some(Planned {
                    migration,
                    runs: true,
                    by: None,
                }))
            }
        }
    }

    /// After a deploy of `planned`: how its migration ended (seen by the upgrade in `run`, or
    /// now) into the release's history and the log, its output into a 0600 file here.
    pub(super) async fn note_migration(
        &self,
        engine: &Engine,
        release: &Release,
        planned: &Planned,
        run: Option<&MigrationRun>,
        deployed: bool,
    ) -> MigrationOutcome {
        let mut outcome = MigrationOutcome {
            service: planned.migration.service.clone(),
            phase: planned.migration.phase.as_str(),
            ran: planned.runs,
            by: planned.by.clone(),
            exit: None,
            millis: None,
            output: None,
        };
        let Some(run) = run.filter(|_| planned.runs) else {
            return outcome;
        };
        let seen = run.seen.lock().ok().and_then(|mut s| s.take());
        let seen = match seen {
            Some(s) => Some(s),
            // Not seen by the upgrade (the drain strategy) and the deploy failed: what runs
            // now may be the previous release's, put back.
            None if !deployed => None,
            None => run.observe(engine, &self.config).await,
        };
        let Some((mut ran, output)) = seen else {
            // Kept from an earlier deploy of this release, or never started (a pull failed).
            outcome.ran = false;
            return outcome;
        };
        tracing::info!(release = %run.release, service = %ran.service, phase = ran.phase.as_str(), exit = ran.exit, millis = ran.millis, output = ?output, "the release's migration ran");
        if let (Some(store), Some(id)) = (&self.config.manifests, &release.release_id) {
            if let Some(path) = &output {
                ran.output =
                    migration::keep_in_store(self.aws.as_ref(), store, id, &self.instance_id, path)
                        .await;
            }
            migration::record(self.aws.as_ref(), store, id, &self.instance_id, &ran).await;
        }
        outcome.exit = Some(ran.exit);
        outcome.millis = Some(ran.millis);
        outcome.output = output.map(|p| p.display().to_string());
        outcome
    }

    /// The contract migration of `release`, if it has one: as its manifest records it when the
    /// store pins it, else from the migration container Docker keeps (a floating release runs
    /// its migration on every deploy).
    pub(super) async fn contract_of(
        &self,
        engine: &Engine,
        release: Option<&str>,
    ) -> Option<String> {
        // The manifest says it (checked when the release was made), without fetching the
        // release's files; one made by an older berth says nothing, and the labels tell.
        if let (Some(store), Some(id)) = (&self.config.manifests, release) {
            if let Ok(Some((manifest, _))) =
                crate::release::manifest_of(self.aws.as_ref(), &self.config, store, id).await
            {
                if let Some(m) = manifest.migration {
                    return (m.phase == Phase::Contract).then_some(m.service);
                }
            }
        }
        let containers = engine.project_containers(&self.config.project).await.ok()?;
        containers.iter().find_map(|c| {
            let contract = label(c, migration::LABEL) == Some(Phase::Contract.as_str());
            let of_release = release.is_none()
                || label(c, crate::upgrade::RELEASE_LABEL).is_none_or(|r| Some(r) == release);
            (contract && of_release)
                .then(|| label(c, labels::SERVICE).unwrap_or("migration").to_string())
        })
    }

    /// The record of the migration a deploy of `release` runs, for the upgrade to fill.
    pub(super) fn migration_run(
        release: &Release,
        planned: Option<&Planned>,
    ) -> Option<MigrationRun> {
        let planned = planned.filter(|p| p.runs)?;
        Some(MigrationRun {
            migration: planned.migration.clone(),
            release: release
                .release_id
                .clone()
                .unwrap_or_else(|| "unnamed".into()),
            since: unix_now(),
            seen: std::sync::Mutex::new(None),
        })
    }
}

/// Now, in Unix seconds.
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}
