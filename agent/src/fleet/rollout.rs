//! `berth rollout`: the release pointer, one canary, the rest, and the way back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::LifecycleState;
use aws_sdk_ssm::types::ParameterType;
use serde::Serialize;

use super::run_command::{self, Invocation, Send};
use super::FleetError;
use crate::aws::{code_of, Aws};

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
    result
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
        let upgraded: Vec<String> = instances
            .iter()
            .filter(|i| {
                summary.previewed.contains(*i)
                    || summary.upgrades.iter().any(|u| u.ok() && &u.instance == *i)
            })
            .cloned()
            .collect();
        if !upgraded.is_empty() {
            say(&format!(
                "{}: berth upgrade --release {previous}",
                upgraded.join(", ")
            ));
            match upgrade(
                aws,
                r,
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
        say(&format!("smoke test against the preview: {smoke}"));
        smoke_test(smoke, &r.release)
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
        return Ok(());
    }
    say(&format!(
        "the rest: {} (MaxConcurrency {}, MaxErrors {})",
        rest.join(", "),
        r.max_concurrency,
        r.max_errors
    ));
    let verdicts = upgrade(
        aws,
        r,
        rest,
        &r.release,
        "upgrade",
        &r.max_concurrency,
        &r.max_errors,
    )
    .await
    .map_err(|e| e.to_string())?;
    summary.upgrades.extend(verdicts.iter().cloned());
    match verdicts.iter().find(|i| !i.ok()) {
        Some(bad) => Err(verdict_error(bad, "instance")),
        None => Ok(()),
    }
}

/// What the SSM document's `release` parameter allows (its allowedPattern).
fn is_release_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
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
        parameters: BTreeMap::from([
            ("action", action.to_string()),
            ("release", release.to_string()),
        ]),
        instances,
        max_concurrency,
        max_errors,
        limit: r.command_limit,
    };
    run_command::run(&aws.ssm, &send, r.poll).await
}

/// Runs the smoke test with `BERTH_PREVIEW_RELEASE` set; its output goes to ours.
async fn smoke_test(command: &str, release: &str) -> Result<(), FleetError> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("BERTH_PREVIEW_RELEASE", release)
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
    let answer = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| FleetError::aws("AutoScaling DescribeAutoScalingGroups", group, &e))?;
    let Some(g) = answer.auto_scaling_groups().first() else {
        return Err(FleetError::Aws {
            step: "AutoScaling DescribeAutoScalingGroups",
            what: group.into(),
            message: "no such group".into(),
        });
    };
    let mut ids: Vec<String> = g
        .instances()
        .iter()
        .filter(|i| i.lifecycle_state() == Some(&LifecycleState::InService))
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    ids.sort();
    if ids.is_empty() {
        return Err(FleetError::NoInstances {
            group: group.into(),
        });
    }
    Ok(ids)
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
    fn release_ids_are_what_the_document_takes() {
        for ok in ["2", "v1.2.3", "abc_def+1-x", &"a".repeat(128)] {
            assert!(is_release_id(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a;rm", "a'b", &"a".repeat(129)] {
            assert!(!is_release_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_failed_instance_is_named_with_its_status_and_last_line() {
        let bad = Invocation {
            instance: "i-1".into(),
            status: "Failed".into(),
            error: Some("error: release 2 failed right after the switch".into()),
        };
        assert_eq!(
            verdict_error(&bad, "canary"),
            "canary i-1: Failed (error: release 2 failed right after the switch)"
        );
    }
}
