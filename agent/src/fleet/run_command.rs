//! SSM Run Command as the rollout uses it: send the stack's document to some instances, wait
//! until every invocation has ended, and read each instance's verdict.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::{CommandInvocationStatus, CommandStatus};
use serde::Serialize;

use super::FleetError;

/// One send of the document: what to run, where, how many at once.
#[derive(Debug, Clone)]
pub struct Send<'a> {
    pub document: &'a str,
    /// The document's parameters (`action`, `release`).
    pub parameters: BTreeMap<&'static str, String>,
    pub instances: &'a [String],
    /// As SSM takes them: a number or a percentage.
    pub max_concurrency: &'a str,
    pub max_errors: &'a str,
    /// How long the whole command may take (also each invocation's timeout on SSM's side).
    pub limit: Duration,
}

/// How one instance's invocation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invocation {
    pub instance: String,
    /// SSM's status: Success, Failed, TimedOut, Cancelled...
    pub status: String,
    /// The command's exit code (SSM's ResponseCode): berth's own, named in `exit.rs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Why it failed: berth's verdict line (see [`verdict`]); berth's output names releases,
    /// services and codes, never an environment value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A preview's token, from a successful `preview`'s answer (its first field, so that
    /// SSM's cut of the output keeps it). Not serialized: it is a credential for the preview.
    #[serde(skip)]
    pub preview_token: Option<String>,
}

impl Invocation {
    pub fn ok(&self) -> bool {
        self.status == "Success"
    }
}

/// Sends `send` and waits for it, polling every `poll`; every instance's invocation, in the
/// order sent (an instance SSM never got to, after MaxErrors stopped it, reads `Cancelled`).
pub async fn run(
    ssm: &aws_sdk_ssm::Client,
    send: &Send<'_>,
    poll: Duration,
) -> Result<Vec<Invocation>, FleetError> {
    let what = format!(
        "{} {} on {}",
        send.document,
        send.parameters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        send.instances.join(",")
    );
    let mut request = ssm
        .send_command()
        .document_name(send.document)
        .set_instance_ids(Some(send.instances.to_vec()))
        .max_concurrency(send.max_concurrency)
        .max_errors(send.max_errors)
        .timeout_seconds(
            i32::try_from(send.limit.as_secs())
                .unwrap_or(i32::MAX)
                .max(30),
        )
        .comment(format!(
            "berth rollout: {}",
            send.parameters.get("action").map_or("", |a| a.as_str())
        ));
    for (k, v) in &send.parameters {
        request = request.parameters(*k, vec![v.clone()]);
    }
    let sent = request
        .send()
        .await
        .map_err(|e| FleetError::aws("SSM SendCommand", &what, &e))?;
    let id = sent
        .command()
        .and_then(|c| c.command_id())
        .ok_or_else(|| FleetError::Aws {
            step: "SSM SendCommand",
            what: what.clone(),
            message: "the answer names no command".into(),
        })?
        .to_string();
    let deadline = Instant::now() + send.limit;
    loop {
        let listed = ssm
            .list_commands()
            .command_id(&id)
            .send()
            .await
            .map_err(|e| FleetError::aws("SSM ListCommands", &id, &e))?;
        let status = listed
            .commands()
            .first()
            .and_then(|c| c.status())
            .cloned()
            .unwrap_or(CommandStatus::Pending);
        if !matches!(
            status,
            CommandStatus::Pending | CommandStatus::InProgress | CommandStatus::Cancelling
        ) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(FleetError::Timeout {
                command: id,
                what,
                status: status.as_str().to_string(),
                secs: send.limit.as_secs(),
            });
        }
        tokio::time::sleep(poll).await;
    }
    // Every page: SSM answers at most 50 invocations at a time.
    let mut pages = ssm
        .list_command_invocations()
        .command_id(&id)
        .details(true)
        .into_paginator()
        .send();
    let mut by_instance: BTreeMap<String, Invocation> = BTreeMap::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| FleetError::aws("SSM ListCommandInvocations", &id, &e))?;
        for inv in page.command_invocations() {
            let Some(instance) = inv.instance_id() else {
                continue;
            };
            let status = inv
                .status()
                .cloned()
                .unwrap_or(CommandInvocationStatus::Pending);
            let plugin = inv.command_plugins().first();
            let code = plugin.map(|p| p.response_code()).filter(|c| *c >= 0);
            let output: String = inv
                .command_plugins()
                .iter()
                .filter_map(|p| p.output())
                .collect();
            let success = status == CommandInvocationStatus::Success;
            let error = (!success).then(|| verdict(&output)).flatten();
            let preview_token = success.then(|| preview_token(&output)).flatten();
            by_instance.insert(
                instance.to_string(),
                Invocation {
                    instance: instance.to_string(),
                    status: status.as_str().to_string(),
                    code,
                    error,
                    preview_token,
                },
            );
        }
    }
    Ok(send
        .instances
        .iter()
        .map(|i| {
            by_instance.remove(i).unwrap_or_else(|| Invocation {
                instance: i.clone(),
                status: "Cancelled".into(),
                code: None,
                error: None,
                preview_token: None,
            })
        })
        .collect())
}

/// The `preview_token` of berth's answer in `output`: `<digits>.<32 hex digits>`, or None.
pub fn preview_token(output: &str) -> Option<String> {
    let key = "\"preview_token\": \"";
    let start = output.find(key)? + key.len();
    let token: String = output[start..].chars().take_while(|c| *c != '"').collect();
    let (until, mac) = token.split_once('.')?;
    let well_formed = !until.is_empty()
        && until.chars().all(|c| c.is_ascii_digit())
        && mac.len() == 32
        && mac.chars().all(|c| c.is_ascii_hexdigit());
    well_formed.then_some(token)
}

/// What SSM puts between a plugin's stdout and its stderr in its output.
const ERROR_TITLE: &str = "\n----------ERROR-------\n";

/// Why an invocation failed, from its plugin output as SSM keeps it: stdout, then (when there
/// is any) `----------ERROR-------` and stderr, each cut to fit 2,500 characters from its
/// start, and on a non-zero exit SSM's own `failed to run commands: exit status N` last. berth
/// prints a failed command's verdict on stdout as one line of JSON (`{"ok":false,"code":N,
/// "error":"..."}`), which comes first and so survives the cut; without one (an older berth,
/// the document's own checks), the last line of stderr that is not SSM's.
pub fn verdict(output: &str) -> Option<String> {
    let (stdout, stderr) = output.split_once(ERROR_TITLE).unwrap_or((output, ""));
    let from_berth = stdout.lines().rev().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        (v.get("ok")? == false).then(|| v.get("error")?.as_str().map(String::from))?
    });
    from_berth.or_else(|| {
        stdout
            .lines()
            .chain(stderr.lines())
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty()
                    && !l.starts_with("failed to run commands:")
                    && !l.starts_with("---Output truncated---")
                    && !l.starts_with("---Error truncated----")
            })
            .map(String::from)
    })
}

#[cfg(test)]
mod tests {
    use super::{preview_token, verdict};

    #[test]
    fn a_preview_token_is_read_from_berths_answer_and_nothing_else_is_taken_for_one() {
        let out = "{\n  \"preview_token\": \"1800000000.0123456789abcdef0123456789abcdef\",\n  \"release\": \"2\"\n}";
        assert_eq!(
            preview_token(out).as_deref(),
            Some("1800000000.0123456789abcdef0123456789abcdef")
        );
        for bad in [
            "{\"release\": \"2\"}",
            "\"preview_token\": \"2\"",
            "\"preview_token\": \"1800000000.0123\"",
            "\"preview_token\": \"x.0123456789abcdef0123456789abcdef\"",
        ] {
            assert_eq!(preview_token(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_verdict_comes_from_berths_line_on_stdout_before_ssms_cut() {
        let long_log = "INFO upgrading\n".repeat(400);
        let output = format!(
            "{{\"ok\":false,\"code\":1,\"error\":\"release 2 failed right after the switch\"}}\n\n----------ERROR-------\n{}\n---Error truncated----",
            &long_log[..2000]
        );
        assert_eq!(
            verdict(&output).as_deref(),
            Some("release 2 failed right after the switch")
        );
    }

    #[test]
    fn without_a_verdict_line_the_last_line_of_stderr_that_is_not_ssms() {
        let output = "\n----------ERROR-------\nself-upgrade needs a package\nfailed to run commands: exit status 2";
        assert_eq!(
            verdict(output).as_deref(),
            Some("self-upgrade needs a package")
        );
        assert_eq!(verdict(""), None);
        assert_eq!(
            verdict("{\"ok\":true}\nplain words").as_deref(),
            Some("plain words")
        );
    }
}
