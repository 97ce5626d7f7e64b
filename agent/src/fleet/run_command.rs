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
    /// The last line berth printed on stderr (its error), for a failure; berth's output names
    /// releases, services and codes, never an environment value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    let invocations = ssm
        .list_command_invocations()
        .command_id(&id)
        .details(true)
        .send()
        .await
        .map_err(|e| FleetError::aws("SSM ListCommandInvocations", &id, &e))?;
    let mut by_instance: BTreeMap<String, Invocation> = BTreeMap::new();
    for inv in invocations.command_invocations() {
        let Some(instance) = inv.instance_id() else {
            continue;
        };
        let status = inv
            .status()
            .cloned()
            .unwrap_or(CommandInvocationStatus::Pending);
        let error = (status != CommandInvocationStatus::Success)
            .then(|| {
                inv.command_plugins()
                    .iter()
                    .filter_map(|p| p.output())
                    .flat_map(str::lines)
                    .rfind(|l| !l.trim().is_empty())
                    .map(|l| l.trim().to_string())
            })
            .flatten();
        by_instance.insert(
            instance.to_string(),
            Invocation {
                instance: instance.to_string(),
                status: status.as_str().to_string(),
                error,
            },
        );
    }
    Ok(send
        .instances
        .iter()
        .map(|i| {
            by_instance.remove(i).unwrap_or_else(|| Invocation {
                instance: i.clone(),
                status: "Cancelled".into(),
                error: None,
            })
        })
        .collect())
}
