//! `berth rollout`: the release pointer, one canary, the rest, and the way back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::ParameterType;
use serde::Serialize;

use super::run_command::{self, Invocation, Send};
use super::FleetError;
use crate::alarms::{Firing, Gate};
use crate::aws::{code_of, Aws};
use crate::config::Store;
use crate::release::history::{self, Report};
use crate::release::manifest::is_release_id;
use crate::release::migration::Phase;

/// What to release where.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub release: String,
    /// The AutoScaling group whose InService instances get the release.
    pub group: String,
    /// The SSM document (the stack's `UpgradeDocumentName`).
    pub document: String,
    /// The release parameter the instances boot from.
    pub parameter: String,
    /// For the instances after the canary, as SSM takes them.
    pub max_concurrency: String,
    pub max_errors: String,
    /// How long one command (the canary's, the rest's) may take.
    pub command_limit: Duration,
    pub poll: Duration,
    /// A shell command run against the release in preview on every instance, before any
    /// switches (`BERTH_PREVIEW_RELEASE` set to the release); None: no preview.
    pub smoke: Option<String>,
    /// The canary instance upgrades through its weighted canary (`berth upgrade --canary`:
    /// shares of its sessions, judged beside its serving release) before the switch.
    pub weighted: bool,
    /// The release store (the instances' `manifests`): the new release's manifest is looked
    /// for, the way back (the previous release) checked complete once for the fleet, and what
    /// the rollout did said of the release. None: releases float, nothing is checked.
    pub store: Option<Store>,
    /// Go on when the way back is not complete (and tell the instances so).
    pub allow_no_rollback: bool,
    /// The account that must own the store's bucket.
    pub bucket_owner: Option<String>,
    /// CloudWatch alarms gating the release (`--alarm`).
    pub alarms: Vec<String>,
    /// Start although one of them is in ALARM (it counts if it goes to ALARM again).
    pub ignore_alarm: bool,
    /// After the canary, how long to hold watching the alarms before the rest.
    pub bake: Duration,
}

/// The release's migration as the rollout saw it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationSummary {
    pub service: String,
    /// `expand` or `contract`.
    pub phase: &'static str,
    /// Where it ran (once for the fleet), with its exit and duration; None if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_on: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
}

/// What a rollout did, printed as JSON at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub release: String,
    pub previous: String,
    /// `released`, `rolled back` (a failure, everything back on `previous`), or `rollback
    /// incomplete` (see `reverted`).
    pub outcome: &'static str,
    pub instances: Vec<String>,
    pub canary: String,
    /// Every instance's verdict on the release (the canary first).
    pub upgrades: Vec<Invocation>,
    /// The instances that had the release in preview (with a smoke test).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previewed: Vec<String>,
    /// On a failure: the instances sent back to `previous`, with their verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reverted: Vec<Invocation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Instances that reached service while the rollout ran (booting when it listed the
    /// group) and were sent the release afterwards, with their verdicts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<Invocation>,
    /// Released without a way back (`--allow-no-rollback`): what of the previous release is
    /// gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_way_back: Option<String>,
    /// Seconds the way back's check took (its manifest, objects and images).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_secs: Option<f64>,
    /// The release's migration (from its manifest), and where it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationSummary>,
    /// The alarms that gated it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alarms: Vec<String>,
    /// Seconds from the start to the canary's verdict, and to the end.
    pub canary_secs: f64,
    /// Seconds the bake after the canary held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bake_secs: Option<f64>,
    pub seconds: f64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.outcome == "released"
    }

    /// Stopped without going back, across a contract migration: a human decides.
    pub fn stopped(&self) -> bool {
        self.outcome == STOPPED
    }
}

/// The outcome of a failed rollout that did not go back (a contract migration had run).
pub const STOPPED: &str = "stopped, not rolled back";

/// Releases `r.release` to the group: see the module's documentation. `say` gets one line per
/// step (stderr: a terminal and CI's log alike).
pub async fn rollout(aws: &Aws, r: &Rollout, say: &dyn Fn(&str)) -> Result<Summary, FleetError> {
    let started = Instant::now();
    if !is_release_id(&r.release) {
        return Err(FleetError::BadRelease {
            release: r.release.clone(),
        });
    }
    let instances = in_service(aws, &r.group).await?;
    let lock = Lock::take(aws, &r.parameter, &r.release).await?;
    let gate = match open_gate(aws, r, say).await {
        Ok(g) => g,
        Err(e) => {
            lock.give_back(aws).await;
            return Err(e);
        }
    };
    let result = release(aws, r, &instances, gate.as_ref(), started, say).await;
    lock.give_back(aws).await;
    if let (Ok(summary), Some(store)) = (&result, &r.store) {
        let report = Report {
            release: summary.release.clone(),
            by: "rollout".into(),
            event: summary.outcome.to_string(),
            at: history::now(),
            previous: Some(summary.previous.clone()),
            detail: summary.error.clone(),
            migration: None,
        };
        history::say(Some(aws), store, &report).await;
    }
    result
}

/// The alarms' gate, before anything moves: one in ALARM refuses the rollout unless
/// `--ignore-alarm`.
async fn open_gate(aws: &Aws, r: &Rollout, say: &dyn Fn(&str)) -> Result<Option<Gate>, FleetError> {
    if r.alarms.is_empty() {
        return Ok(None);
    }
    let (gate, excused) = Gate::open(&aws.cloudwatch, &r.alarms, r.ignore_alarm)
        .await
        .map_err(FleetError::Alarms)?;
    for f in excused {
        say(&format!(
            "warning: {f} (before the rollout; --ignore-alarm: it counts if it goes to ALARM again)"
        ));
    }
    say(&format!("gated by the alarms {}", r.alarms.join(", ")));
    Ok(Some(gate))
}

/// Runs `work` while looking at the gate every `poll`: the first alarm gone to ALARM is
/// returned beside the work's result (the work is not cut short: an SSM command in flight
/// finishes, so that what took the release is known and sent back).
async fn gated<T>(
    aws: &Aws,
    gate: Option<&Gate>,
    poll: Duration,
    work: impl std::future::Future<Output = T>,
) -> (T, Option<Firing>) {
    let Some(gate) = gate else {
        return (work.await, None);
    };
    let mut fired = None;
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => {
                if fired.is_none() {
                    fired = look(aws, gate).await;
                }
                return (out, fired);
            }
            _ = tokio::time::sleep(poll), if fired.is_none() => {
                fired = look(aws, gate).await;
            }
        }
    }
}

/// One look at the gate; CloudWatch not answering is said, and the next look judges.
async fn look(aws: &Aws, gate: &Gate) -> Option<Firing> {
    match gate.check(&aws.cloudwatch).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %crate::report::chain(&e), "cannot look at the alarms: the next look judges");
            None
        }
    }
}

/// Release `id`'s manifest in the store, with where it is (None: it has none, and floats).
async fn manifest(
    aws: &Aws,
    store: &crate::config::Store,
    id: &str,
) -> Result<(Option<crate::release::Manifest>, String), String> {
    let key = crate::release::store::manifest_key(id);
    let location = crate::release::store::display(store, &key);
    let read = crate::release::store::get_first(
        Some(aws),
        store,
        &key,
        crate::config::DEFAULT_MAX_OBJECT_BYTES,
    )
    .await
    .map_err(|e| crate::report::chain(&e))?;
    let Some(read) = read else {
        return Ok((None, location));
    };
    let parsed =
        crate::release::Manifest::parse(&read.bytes, &location, id).map_err(|e| e.to_string())?;
    Ok((Some(parsed), location))
}

/// The way back, once for the fleet: the previous release's manifest, its objects at their
/// versions and its images at their registries by digest. An error names what is gone; a
/// floating previous release pins nothing to check. The new release's manifest comes back
/// (None: it floats).
async fn way_back(
    aws: &Aws,
    r: &Rollout,
    previous: &str,
    say: &dyn Fn(&str),
) -> Result<Option<crate::release::Manifest>, String> {
    let Some(store) = &r.store else {
        return Ok(None);
    };
    let new = match manifest(aws, store, &r.release).await? {
        (Some(m), _) => Some(m),
        (None, location) => {
            say(&format!(
                "warning: release {} has no manifest ({location}): its files float",
                r.release
            ));
            None
        }
    };
    if previous == r.release || !is_release_id(previous) {
        return Ok(new);
    }
    let back = match manifest(aws, store, previous).await? {
        (Some(m), _) => m,
        (None, location) => {
            say(&format!("warning: the way back, release {previous}, has no manifest ({location}): it floats, and is not checked"));
            return Ok(new);
        }
    };
    let engine = crate::engine::docker::Engine::connect()
        .await
        .map_err(|e| {
            format!(
                "the way back's images are checked at their registries through a Docker daemon: {}",
                crate::report::chain(&e)
            )
        })?;
    let registries =
        crate::engine::registry::Registries::new(Default::default(), Some(aws.ecr.clone()));
    crate::release::ready::check(Some(aws), &engine, &registries, &back)
        .await
        .map_err(|e| crate::report::chain(&e))?;
    Ok(new)
}

async fn release(
    aws: &Aws,
    r: &Rollout,
    instances: &[String],
    gate: Option<&Gate>,
    started: Instant,
    say: &dyn Fn(&str),
) -> Result<Summary, FleetError> {
    let previous = get_parameter(aws, &r.parameter).await?;
    say(&format!(
        "group {}: release {previous} -> {} on {}",
        r.group,
        r.release,
        instances.join(", ")
    ));
    // Before anything moves: the way back must be whole.
    let checked = Instant::now();
    let mut no_way_back = None;
    let new_manifest = match way_back(aws, r, &previous, say).await {
        Ok(m) => m,
        Err(why) => {
            if !r.allow_no_rollback {
                return Err(FleetError::NoWayBack {
                    previous: previous.clone(),
                    why,
                });
            }
            say(&format!(
                "WARNING: NO WAY BACK to {previous} ({why}); going on (--allow-no-rollback)"
            ));
            no_way_back = Some(why);
            match &r.store {
                Some(store) => manifest(aws, store, &r.release)
                    .await
                    .ok()
                    .and_then(|(m, _)| m),
                None => None,
            }
        }
    };
    let migration = new_manifest.and_then(|m| m.migration);
    if let Some(m) = &migration {
        say(&format!(
            "its migration {} ({}) runs once, on the canary, before it takes traffic{}",
            m.service,
            m.phase.as_str(),
            if m.phase == Phase::Contract {
                "; a contract migration: once it ran, a failure stops the rollout without going back"
            } else {
                ""
            }
        ));
    }
    let readiness_secs = r.store.as_ref().map(|_| checked.elapsed().as_secs_f64());
    if let Some(secs) = readiness_secs {
        say(&format!("the way back to {previous} checked in {secs:.2}s"));
    }
    // A release with a migration: the parameter moves once its canary ran it, so that no
    // instance booting meanwhile runs it as well (they boot the serving release, and are sent
    // the new one once it is in).
    if migration.is_none() {
        put_parameter(aws, &r.parameter, &r.release).await?;
    }
    let canary = instances[0].clone();
    let mut summary = Summary {
        release: r.release.clone(),
        previous: previous.clone(),
        outcome: "released",
        instances: instances.to_vec(),
        canary: canary.clone(),
        upgrades: vec![],
        previewed: vec![],
        reverted: vec![],
        error: None,
        late: vec![],
        no_way_back,
        readiness_secs,
        migration: migration.as_ref().map(|m| MigrationSummary {
            service: m.service.clone(),
            phase: m.phase.as_str(),
            ran_on: None,
            exit: None,
            millis: None,
        }),
        alarms: r.alarms.clone(),
        canary_secs: 0.0,
        bake_secs: None,
        seconds: 0.0,
    };
    let failure = steps(aws, r, instances, gate, &mut summary, started, say)
        .await
        .err();
    // Across a contract migration that ran (an instance took the release, or kept it failing
    // rather than go back), going back would run the previous release against a schema it
    // cannot read: stop, and say so.
    let contract = migration
        .as_ref()
        .filter(|m| m.phase == Phase::Contract)
        .filter(|_| {
            // A preview ran it too (the canary's, first).
            !summary.previewed.is_empty()
                || summary
                    .upgrades
                    .iter()
                    .chain(&summary.late)
                    .any(|u| u.ok() || u.code == Some(NOT_ROLLED_BACK))
        });
    if let (Some(error), Some(m)) = (&failure, contract) {
        say(&format!(
            "FAILED: {error}; NOT going back to {previous}: release {}'s migration {} is a contract migration and has run, so {previous} cannot read the database. Each instance keeps what it serves and the release parameter stays {}; decide: fix forward with a new release, or berth rollback --force on each instance that took it",
            r.release, m.service, r.release
        ));
        summary.error = Some(format!(
            "{error}; not rolled back: the contract migration {} has run",
            m.service
        ));
        summary.outcome = STOPPED;
        // An instance booting now must not boot a release that cannot read the database.
        if let Err(e) = put_parameter(aws, &r.parameter, &r.release).await {
            say(&format!("the release parameter is still {previous}: {e}"));
        }
    } else if let Some(error) = failure {
        say(&format!("FAILED: {error}; back to {previous}"));
        summary.error = Some(error);
        summary.outcome = "rolled back";
        if let Err(e) = put_parameter(aws, &r.parameter, &previous).await {
            say(&format!(
                "the release parameter is still {}: {e}",
                r.release
            ));
            summary.outcome = "rollback incomplete";
        }
        // The canary rolls itself back when it fails there; the ones that took the release
        // go back, and so do those with it in preview (upgrading to the serving release ends
        // a preview). Every one of them even if some cannot (MaxErrors 100%).
        // And those that reached service meanwhile: they may have booted the new release.
        let joined: Vec<String> = match in_service(aws, &r.group).await {
            Ok(now) => now.into_iter().filter(|i| !instances.contains(i)).collect(),
            Err(e) => {
                say(&format!("listing the group again: {e}"));
                vec![]
            }
        };
        let upgraded: Vec<String> = instances
            .iter()
            .filter(|i| {
                summary.previewed.contains(*i)
                    || summary.upgrades.iter().any(|u| u.ok() && &u.instance == *i)
                    || summary.late.iter().any(|u| &u.instance == *i)
            })
            .chain(joined.iter())
            .cloned()
            .collect();
        if !upgraded.is_empty() {
            say(&format!(
                "{}: berth upgrade --release {previous}",
                upgraded.join(", ")
            ));
            // Going back: the release being left is no way back to check.
            let back = Rollout {
                allow_no_rollback: true,
                ..r.clone()
            };
            match upgrade(
                aws,
                &back,
                &upgraded,
                &previous,
                "upgrade",
                &r.max_concurrency,
                "100%",
            )
            .await
            {
                Ok(back) => {
                    if !back.iter().all(Invocation::ok) {
                        summary.outcome = "rollback incomplete";
                    }
                    summary.reverted = back;
                }
                Err(e) => {
                    say(&format!("sending {previous} back: {e}"));
                    summary.outcome = "rollback incomplete";
                }
            }
        }
    } else {
        say(&format!("every instance of {} runs {}", r.group, r.release));
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Preview and smoke test (when asked), the canary, the rest. An error is a failure to roll
/// back from; verdicts so far are in `summary.upgrades`.
async fn steps(
    aws: &Aws,
    r: &Rollout,
    instances: &[String],
    gate: Option<&Gate>,
    summary: &mut Summary,
    started: Instant,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let canary = &instances[..1];
    let mut canary_action = if r.weighted { "canary" } else { "upgrade" };
    if let Some(smoke) = &r.smoke {
        say(&format!(
            "every instance: {} in preview (ordinary requests stay on {})",
            r.release, summary.previous
        ));
        // A migration runs once: on the canary's preview, before the others'.
        let previews = if summary.migration.is_some() && instances.len() > 1 {
            let mut first = upgrade(aws, r, canary, &r.release, "preview", "1", "0")
                .await
                .map_err(|e| e.to_string())?;
            if first.iter().all(Invocation::ok) {
                first.extend(
                    upgrade(aws, r, &instances[1..], &r.release, "preview", "100%", "0")
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            first
        } else {
            upgrade(aws, r, instances, &r.release, "preview", "100%", "0")
                .await
                .map_err(|e| e.to_string())?
        };
        summary.previewed = previews
            .iter()
            .filter(|i| i.ok())
            .map(|i| i.instance.clone())
            .collect();
        if let Some(bad) = previews.iter().find(|i| !i.ok()) {
            return Err(verdict_error(bad, "preview"));
        }
        // One token for the fleet: the load balancer sends the smoke test's requests to any
        // instance, and each must take the same token (one preview key, one end time).
        let mut tokens: Vec<&str> = previews
            .iter()
            .map(|i| i.preview_token.as_deref().unwrap_or(""))
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        let token = match tokens.as_slice() {
            [t] if !t.is_empty() => t.to_string(),
            _ => {
                // Their ends (not secret) say whether the time or the key differed.
                let ends: Vec<&str> = tokens
                    .iter()
                    .map(|t| t.split_once('.').map_or("none", |(u, _)| u))
                    .collect();
                return Err(format!(
                    "the instances answered {} preview tokens for one preview (ending {}): upgrade.preview_key must name one key every instance reads (an ssm:/ SecureString), or the smoke test reaches the preview on some instances only",
                    tokens.len(),
                    ends.join(", ")
                ));
            }
        };
        say(&format!("smoke test against the preview: {smoke}"));
        smoke_test(smoke, &r.release, &token)
            .await
            .map_err(|e| e.to_string())?;
        canary_action = "promote";
    }
    let command = match canary_action {
        "canary" => "upgrade --canary",
        other => other,
    };
    say(&format!(
        "canary {}: berth {command} ({})",
        canary[0], r.release
    ));
    let (verdict, fired) = gated(
        aws,
        gate,
        r.poll,
        upgrade(aws, r, canary, &r.release, canary_action, "1", "0"),
    )
    .await;
    let verdict = verdict.map_err(|e| e.to_string())?;
    summary.canary_secs = started.elapsed().as_secs_f64();
    summary.upgrades.extend(verdict.iter().cloned());
    note_migration(aws, r, summary, say).await;
    if let Some(bad) = verdict.iter().find(|i| !i.ok()) {
        return Err(verdict_error(bad, "canary"));
    }
    if let Some(f) = fired {
        return Err(format!("during the canary: {f}"));
    }
    say(&format!(
        "canary {} serves {} ({:.1}s)",
        canary[0], r.release, summary.canary_secs
    ));
    if summary.migration.is_some() {
        put_parameter(aws, &r.parameter, &r.release)
            .await
            .map_err(|e| e.to_string())?;
        say(&format!(
            "the release parameter names {} now (its migration ran)",
            r.release
        ));
    }
    if let (Some(gate), false) = (gate, r.bake.is_zero()) {
        say(&format!(
            "bake: {}s watching the alarms before the rest",
            r.bake.as_secs()
        ));
        let baked = Instant::now();
        while baked.elapsed() < r.bake {
            if let Some(f) = look(aws, gate).await {
                summary.bake_secs = Some(baked.elapsed().as_secs_f64());
                return Err(format!("during the bake: {f}"));
            }
            tokio::time::sleep(r.poll.min(r.bake.saturating_sub(baked.elapsed()))).await;
        }
        summary.bake_secs = Some(baked.elapsed().as_secs_f64());
    }
    let rest = &instances[1..];
    if rest.is_empty() {
        return late(aws, r, instances, summary, say).await;
    }
    say(&format!(
        "the rest: {} (MaxConcurrency {}, MaxErrors {})",
        rest.join(", "),
        r.max_concurrency,
        r.max_errors
    ));
    let (verdicts, fired) = gated(aws, gate, r.poll, upgrade_rest(aws, r, rest)).await;
    let verdicts = verdicts?;
    summary.upgrades.extend(verdicts.iter().cloned());
    if let Some(bad) = verdicts.iter().find(|i| !i.ok()) {
        return Err(verdict_error(bad, "instance"));
    }
    if let Some(f) = fired {
        return Err(format!("during the rest: {f}"));
    }
    late(aws, r, instances, summary, say).await
}

/// What the release's history says of its migration, once the canary is done with it.
async fn note_migration(aws: &Aws, r: &Rollout, summary: &mut Summary, say: &dyn Fn(&str)) {
    let (Some(m), Some(store)) = (summary.migration.as_mut(), &r.store) else {
        return;
    };
    match crate::release::migration::recorded(Some(aws), store, &r.release).await {
        Ok(Some((report, ran))) => {
            say(&format!(
                "migration {} ran on {}: exit {} in {:.1}s",
                ran.service,
                report.by,
                ran.exit,
                ran.millis as f64 / 1000.0
            ));
            m.ran_on = Some(report.by);
            m.exit = Some(ran.exit);
            m.millis = Some(ran.millis);
        }
        Ok(None) => say(&format!(
            "migration {}: no successful run recorded (the canary's verdict says why)",
            m.service
        )),
        Err(e) => say(&format!(
            "migration {}: its record cannot be read: {}",
            m.service,
            crate::report::chain(&e)
        )),
    }
}

/// The release to `instances` after the canary: MaxConcurrency and MaxErrors as asked.
async fn upgrade_rest(
    aws: &Aws,
    r: &Rollout,
    instances: &[String],
) -> Result<Vec<Invocation>, String> {
    upgrade(
        aws,
        r,
        instances,
        &r.release,
        "upgrade",
        &r.max_concurrency,
        &r.max_errors,
    )
    .await
    .map_err(|e| e.to_string())
}

/// After the rest: instances that were booting when the rollout listed the group (or
/// launched since) may have read the pointer before it moved. Looks again until every
/// InService instance was sent the release (an instance on it already answers `up to date`;
/// one whose agent is busy upgrading, to the pointer it read once more, is asked again) and
/// none is still on its way in, for at most the command limit. One still on its way in then
/// is only said: it reads the pointer, which names the release, when it gets there.
async fn late(
    aws: &Aws,
    r: &Rollout,
    listed: &[String],
    summary: &mut Summary,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let deadline = Instant::now() + r.command_limit;
    loop {
        let group = group_instances(aws, &r.group)
            .await
            .map_err(|e| e.to_string())?;
        let sent = |i: &String| listed.contains(i) || summary.late.iter().any(|l| &l.instance == i);
        let new: Vec<String> = group
            .iter()
            .filter(|(i, state)| state == "InService" && !sent(i))
            .map(|(i, _)| i.clone())
            .collect();
        let coming: Vec<&String> = group
            .iter()
            .filter(|(_, state)| state.starts_with("Pending"))
            .map(|(i, _)| i)
            .collect();
        if Instant::now() >= deadline {
            if !new.is_empty() || !coming.is_empty() {
                say(&format!(
                    "warning: after {}s still not sent the release: {} (they read the pointer once in service)",
                    r.command_limit.as_secs(),
                    new.iter().chain(coming).cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            return Ok(());
        }
        if !new.is_empty() {
            say(&format!(
                "reached service meanwhile: {}: berth upgrade ({})",
                new.join(", "),
                r.release
            ));
            let verdicts = upgrade_rest(aws, r, &new).await?;
            // Busy (7): its agent is upgrading already; asked again on the next look.
            let (busy, done): (Vec<Invocation>, Vec<Invocation>) =
                verdicts.into_iter().partition(|v| v.code == Some(7));
            summary.late.extend(done.iter().cloned());
            if let Some(bad) = done.iter().find(|i| !i.ok()) {
                return Err(verdict_error(bad, "instance"));
            }
            if busy.is_empty() {
                continue;
            }
        } else if coming.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(r.poll).await;
    }
}

fn verdict_error(bad: &Invocation, role: &str) -> String {
    format!(
        "{role} {}: {}{}",
        bad.instance,
        bad.status,
        bad.error
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default()
    )
}

/// The document's `action` (upgrade, preview, promote) with `release`, on `instances`.
async fn upgrade(
    aws: &Aws,
    r: &Rollout,
    instances: &[String],
    release: &str,
    action: &str,
    max_concurrency: &str,
    max_errors: &str,
) -> Result<Vec<Invocation>, FleetError> {
    let send = Send {
        document: &r.document,
        parameters: {
            let mut p = BTreeMap::from([
                ("action", action.to_string()),
                ("release", release.to_string()),
            ]);
            // Every instance's preview ends at one time, so that they derive one token.
            if action == "preview" {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                p.insert("previewUntil", (now + PREVIEW_SECS).to_string());
            }
            // Only when asked: a document older than this parameter still takes the rest.
            if r.allow_no_rollback {
                p.insert("allowNoRollback", "true".to_string());
            }
            p
        },
        instances,
        max_concurrency,
        max_errors,
        limit: r.command_limit,
    };
    run_command::run(&aws.ssm, &send, r.poll).await
}

/// The instance's exit code for a release that failed and was not rolled back (`exit.rs`'s
/// NotRolledBack): its contract migration had run.
const NOT_ROLLED_BACK: i32 = 8;

/// How long a rollout's preview lasts at most (its token's end): the smoke test and the
/// promotion fit well within it, and the agents end it sooner by `upgrade.preview_secs`.
const PREVIEW_SECS: u64 = 3600;

/// Runs the smoke test with `BERTH_PREVIEW_TOKEN` (what its requests carry in the preview
/// header or cookie) and `BERTH_PREVIEW_RELEASE` set; its output goes to ours.
async fn smoke_test(command: &str, release: &str, token: &str) -> Result<(), FleetError> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BERTH_PREVIEW_RELEASE", release)
        .env("BERTH_PREVIEW_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .status()
        .await;
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(FleetError::Smoke {
            command: command.into(),
            status: s.to_string(),
        }),
        Err(e) => Err(FleetError::Smoke {
            command: command.into(),
            status: e.to_string(),
        }),
    }
}

/// The group's InService instances, sorted (the first is the canary).
async fn in_service(aws: &Aws, group: &str) -> Result<Vec<String>, FleetError> {
    let mut ids: Vec<String> = group_instances(aws, group)
        .await?
        .into_iter()
        .filter(|(_, state)| state == "InService")
        .map(|(id, _)| id)
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(FleetError::NoInstances {
            group: group.into(),
        });
    }
    Ok(ids)
}

/// Every instance of the group with its lifecycle state, every page.
async fn group_instances(aws: &Aws, group: &str) -> Result<Vec<(String, String)>, FleetError> {
    let mut pages = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .into_paginator()
        .send();
    let mut found = false;
    let mut out = vec![];
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| FleetError::aws("AutoScaling DescribeAutoScalingGroups", group, &e))?;
        for g in page.auto_scaling_groups() {
            found = true;
            for i in g.instances() {
                if let (Some(id), Some(state)) = (i.instance_id(), i.lifecycle_state()) {
                    out.push((id.to_string(), state.as_str().to_string()));
                }
            }
        }
    }
    if !found {
        return Err(FleetError::Aws {
            step: "AutoScaling DescribeAutoScalingGroups",
            what: group.into(),
            message: "no such group".into(),
        });
    }
    Ok(out)
}

async fn get_parameter(aws: &Aws, name: &str) -> Result<String, FleetError> {
    let answer = aws
        .ssm
        .get_parameter()
        .name(name)
        .send()
        .await
        .map_err(|e| FleetError::aws("SSM GetParameter", name, &e))?;
    Ok(answer
        .parameter()
        .and_then(|p| p.value())
        .unwrap_or_default()
        .trim()
        .to_string())
}

async fn put_parameter(aws: &Aws, name: &str, value: &str) -> Result<(), FleetError> {
    aws.ssm
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::String)
        .overwrite(true)
        .send()
        .await
        .map_err(|e| FleetError::aws("SSM PutParameter", name, &e))?;
    Ok(())
}

/// `<parameter>.rollout`, created for one rollout: SSM refuses to create it twice.
struct Lock {
    name: String,
}

impl Lock {
    async fn take(aws: &Aws, parameter: &str, release: &str) -> Result<Lock, FleetError> {
        let name = format!("{parameter}.rollout");
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let holder = format!(
            "the rollout of {release} from {host} (pid {}) since {since} (unix time)",
            std::process::id()
        );
        let taken = aws
            .ssm
            .put_parameter()
            .name(&name)
            .value(&holder)
            .r#type(ParameterType::String)
            .overwrite(false)
            .send()
            .await;
        match taken {
            Ok(_) => Ok(Lock { name }),
            Err(e) if code_of(&e).as_deref() == Some("ParameterAlreadyExists") => {
                let holder = get_parameter(aws, &name)
                    .await
                    .unwrap_or_else(|e| format!("unknown: {e}"));
                Err(FleetError::Busy { lock: name, holder })
            }
            Err(e) => Err(FleetError::aws("SSM PutParameter", &name, &e)),
        }
    }

    async fn give_back(self, aws: &Aws) {
        if let Err(e) = aws.ssm.delete_parameter().name(&self.name).send().await {
            tracing::warn!(lock = %self.name, error = %crate::aws::describe(&e), "cannot remove the rollout's lock: delete it by hand");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_instance_is_named_with_its_status_and_last_line() {
        let bad = Invocation {
            instance: "i-1".into(),
            status: "Failed".into(),
            code: Some(1),
            error: Some("error: release 2 failed right after the switch".into()),
            preview_token: None,
        };
        assert_eq!(
            verdict_error(&bad, "canary"),
            "canary i-1: Failed (error: release 2 failed right after the switch)"
        );
    }
}
