//! The AutoScaling lifecycle hook: complete it (CONTINUE when ready, ABANDON when the boot
//! failed, so that the group replaces the instance), and send heartbeats while a slow step runs.

use std::time::Duration;

use crate::aws::{describe, Aws};
use crate::config::AgentConfig;
use crate::instance::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no AutoScaling group for lifecycle hook {hook}: set lifecycle.group, or enable instance metadata tags")]
    NoGroup { hook: String },
    #[error("{action} (group {group}, hook {hook}, instance {instance}): {message}")]
    Call {
        action: &'static str,
        group: String,
        hook: String,
        instance: String,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    Abandon,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Continue => "CONTINUE",
            Outcome::Abandon => "ABANDON",
        }
    }
}

/// One lifecycle hook of this instance in its group.
#[derive(Debug, Clone)]
pub struct Hook {
    pub aws: Aws,
    pub group: String,
    pub hook: String,
    pub instance: String,
}

impl Hook {
    /// The hook named `name` for this instance: its group is `lifecycle.group`, else the one
    /// IMDS names. None in a local run (no AWS) or when no hook is configured.
    pub fn for_instance(
        name: Option<&String>,
        config: &AgentConfig,
        identity: &Identity,
        aws: Option<&Aws>,
    ) -> Result<Option<Hook>, HookError> {
        let (Some(aws), Some(name)) = (aws, name) else {
            return Ok(None);
        };
        let group = config
            .lifecycle
            .group
            .clone()
            .or_else(|| identity.group.clone())
            .ok_or_else(|| HookError::NoGroup { hook: name.clone() })?;
        Ok(Some(Hook {
            aws: aws.clone(),
            group,
            hook: name.clone(),
            instance: identity.instance_id.clone(),
        }))
    }

    fn call_error(&self, action: &'static str, message: String) -> HookError {
        HookError::Call {
            action,
            group: self.group.clone(),
            hook: self.hook.clone(),
            instance: self.instance.clone(),
            message,
        }
    }

    pub async fn complete(&self, outcome: Outcome) -> Result<(), HookError> {
        self.aws
            .autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.hook)
            .instance_id(&self.instance)
            .lifecycle_action_result(outcome.as_str())
            .send()
            .await
            .map_err(|e| self.call_error("CompleteLifecycleAction", describe(&e)))?;
        tracing::info!(group = %self.group, hook = %self.hook, result = outcome.as_str(), "lifecycle action completed");
        Ok(())
    }

    pub async fn heartbeat(&self) -> Result<(), HookError> {
        self.aws
            .autoscaling
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&self.group)
            .lifecycle_hook_name(&self.hook)
            .instance_id(&self.instance)
            .send()
            .await
            .map_err(|e| self.call_error("RecordLifecycleActionHeartbeat", describe(&e)))?;
        tracing::debug!(hook = %self.hook, "lifecycle heartbeat");
        Ok(())
    }

    fn keep_alive(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let hook = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = hook.heartbeat().await {
                    tracing::warn!(error = %crate::report::chain(&e), "lifecycle heartbeat failed");
                }
            }
        })
    }
}

/// Heartbeats for a pending lifecycle action; they stop when it is completed or dropped.
#[derive(Debug)]
pub struct Heartbeat(Option<tokio::task::JoinHandle<()>>);

impl Heartbeat {
    pub fn start(hook: Option<&Hook>, every: Duration) -> Heartbeat {
        Heartbeat(hook.map(|h| h.keep_alive(every)))
    }

    /// Stops the heartbeats, then completes the action with CONTINUE.
    pub async fn complete(mut self, hook: Option<&Hook>) -> Result<(), HookError> {
        if let Some(h) = self.0.take() {
            h.abort();
        }
        if let Some(hook) = hook {
            hook.complete(Outcome::Continue).await?;
        }
        Ok(())
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}
