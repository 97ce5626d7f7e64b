//! `berth rollout`: the release pointer, one canary, the rest, and the way back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::ParameterType;
use serde::Serialize;

use super::run_command::{self, Invocation, Send};
use super::FleetError;
use crate::aws::{code_of, Aws};
use crate::config::Store;
use crate::release::history::{self, Report};
use crate::release::manifest::is_release_id;

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
    /// Seconds from the start to the canary's verdict, and to the end.
    pub canary_secs: f64,
    pub seconds: f64,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.outcome == "released"
    }
}

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
    let result = release(aws, r, &instances, started, say).await;
    lock.give_back(aws).await;
    if let (Ok(summary), Some(store)) = (&result, &r.store) {
        let report = Report {
            release: summary.release.clone(),
            by: "rollout".into(),
            event: summary.outcome.to_string(),
            at: history::now(),
            previous: Some(summary.previous.clone()),
            detail: summary.error.clone(),
        };
        history::say(Some(aws), store, &report).await;
    }
    result
}

/// The way back, once for the fleet: the previous release's manifest, its objects at their
/// versions and its images at their registries by digest. An error names what is gone; a
/// floating previous release pins nothing to check.
async fn way_back(
    aws: &Aws,
    r: &Rollout,
    previous: &str,
    say: &dyn Fn(&str),
) -> Result<(), String> {
    let Some(store) = &r.store else {
        return Ok(());
    };
    let key = crate::release::store::manifest_key(&r.release);
    match crate::release::store::get_first(
        Some(aws),
        store,
        &key,
        crate::config::DEFAULT_MAX_OBJECT_BYTES,
    )
    .await
    {
        Ok(Some(_)) => {}
        Ok(None) => say(&format!(
            "warning: release {} has no manifest ({}): its files float",
            r.release,
            crate::release::store::display(store, &key)
        )),
        Err(e) => return Err(crate::report::chain(&e)),
    }
    if previous == r.release || !is_release_id(previous) {
        return Ok(());
    }
    let key = crate::release::store::manifest_key(previous);
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
        say(&format!("warning: the way back, release {previous}, has no manifest ({location}): it floats, and is not checked"));
        return Ok(());
    };
    let manifest = crate::release::Manifest::parse(&read.bytes, &location, previous)
        .map_err(|e| e.to_string())?;
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
    crate::release::ready::check(Some(aws), &engine, &registries, &manifest)
        .await
        .map_err(|e| crate::report::chain(&e))
}

async fn release(
    aws: &Aws,
    r: &Rollout,
    instances: &[String],
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
    if let Err(why) = way_back(aws, r, &previous, say).await {
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
    }
    let readiness_secs = r.store.as_ref().map(|_| checked.elapsed().as_secs_f64());
    if let Some(secs) = readiness_secs {
        say(&format!("the way back to {previous} checked in {secs:.2}s"));
    }
    put_parameter(aws, &r.parameter, &r.release).await?;
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
        canary_secs: 0.0,
        seconds: 0.0,
    };
    let failure = steps(aws, r, instances, &mut summary, started, say)
        .await
        .err();
    if let Some(error) = failure {
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
        let previews = upgrade(aws, r, instances, &r.release, "preview", "100%", "0")
            .await
            .map_err(|e| e.to_string())?;
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
    let verdict = upgrade(aws, r, canary, &r.release, canary_action, "1", "0")
        .await
        .map_err(|e| e.to_string())?;
    summary.canary_secs = started.elapsed().as_secs_f64();
    summary.upgrades.extend(verdict.iter().cloned());
    if let Some(bad) = verdict.iter().find(|i| !i.ok()) {
        return Err(verdict_error(bad, "canary"));
    }
    say(&format!(
        "canary {} serves {} ({:.1}s)",
        canary[0], r.release, summary.canary_secs
    ));
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
    let verdicts = upgrade_rest(aws, r, rest).await?;
    summary.upgrades.extend(verdicts.iter().cloned());
    if let Some(bad) = verdicts.iter().find(|i| !i.ok()) {
        return Err(verdict_error(bad, "instance"));
    }
    late(aws, r, instances, summary, say).await
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
