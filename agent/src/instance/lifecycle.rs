//! Telling AutoScaling and the load balancer: complete the lifecycle hook (CONTINUE when ready,
//! ABANDON when the boot failed: the group replaces the instance), send heartbeats while a slow
//! step runs, and wait until the load balancer marks this target healthy.

use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use crate::aws::{describe, Aws};
use crate::serve::health::Health;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
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
    #[error("DescribeTargetHealth (target group {target_group}, instance {instance}): {message}")]
    TargetHealth {
        target_group: String,
        instance: String,
        message: String,
    },
    #[error("the load balancer did not mark instance {instance} healthy within {secs}s (last state: {last})")]
    NotInService {
        instance: String,
        secs: u64,
        last: String,
    },
    #[error(
        "the load balancer still sends to instance {instance} after {secs}s (last state: {last})"
    )]
    NotOut {
        instance: String,
        secs: u64,
        last: String,
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
    fn call_error(&self, action: &'static str, message: String) -> LifecycleError {
        LifecycleError::Call {
            action,
            group: self.group.clone(),
            hook: self.hook.clone(),
            instance: self.instance.clone(),
            message,
        }
    }

    pub async fn complete(&self, outcome: Outcome) -> Result<(), LifecycleError> {
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

    pub async fn heartbeat(&self) -> Result<(), LifecycleError> {
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

    /// Sends heartbeats every `every` until the returned guard is dropped.
    pub fn keep_alive(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let hook = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = hook.heartbeat().await {
                    tracing::warn!(error = %e, "lifecycle heartbeat failed");
                }
            }
        })
    }
}

/// Waits until DescribeTargetHealth says this instance is `healthy` in the target group.
pub async fn wait_target_healthy(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    let healthy = |s: &TargetHealthStateEnum| *s == TargetHealthStateEnum::Healthy;
    wait_target_state(aws, target_group, instance, port, timeout, healthy).await
}

/// Waits until the load balancer has stopped sending to this instance: DescribeTargetHealth
/// shows it `unhealthy`, `draining` or `unused`.
pub async fn wait_target_out(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    let out = |s: &TargetHealthStateEnum| {
        matches!(
            s,
            TargetHealthStateEnum::Unhealthy
                | TargetHealthStateEnum::Draining
                | TargetHealthStateEnum::Unused
        )
    };
    wait_target_state(aws, target_group, instance, port, timeout, out)
        .await
        .map_err(|e| match e {
            LifecycleError::NotInService {
                instance,
                secs,
                last,
            } => LifecycleError::NotOut {
                instance,
                secs,
                last,
            },
            other => other,
        })
}

async fn wait_target_state(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
    wanted: impl Fn(&TargetHealthStateEnum) -> bool,
) -> Result<(), LifecycleError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(500);
    loop {
        let mut target = TargetDescription::builder().id(instance);
        if let Some(p) = port {
            target = target.port(i32::from(p));
        }
        let target = target.build();
        let out = aws
            .elb
            .describe_target_health()
            .target_group_arn(target_group)
            .targets(target)
            .send()
            .await
            .map_err(|e| LifecycleError::TargetHealth {
                target_group: target_group.into(),
                instance: instance.into(),
                message: describe(&e),
            })?;
        let health = out
            .target_health_descriptions()
            .first()
            .and_then(|d| d.target_health());
        let state = health.and_then(|h| h.state()).cloned();
        let last = match (state.as_ref(), health.and_then(|h| h.reason())) {
            (Some(s), Some(r)) => format!("{} ({})", s.as_str(), r.as_str()),
            (Some(s), None) => s.as_str().to_string(),
            _ => "no description".to_string(),
        };
        if state.as_ref().is_some_and(&wanted) {
            return Ok(());
        }
        if Instant::now() + delay > deadline {
            return Err(LifecycleError::NotInService {
                instance: instance.into(),
                secs: timeout.as_secs(),
                last,
            });
        }
        tracing::debug!(state = %last, "waiting for the load balancer");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Without a target group ARN: waits until the ALB's checker has been answered 503
/// `threshold` times in a row (its unhealthy threshold), so it sends no more requests.
pub async fn wait_lb_out(
    health: &Health,
    threshold: u32,
    instance: &str,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    tokio::time::timeout(timeout, health.lb_fail_streak_reaches(threshold))
        .await
        .map_err(|_| LifecycleError::NotOut {
            instance: instance.to_string(),
            secs: timeout.as_secs(),
            last: format!(
                "fewer than {threshold} consecutive failed checks from ELB-HealthChecker"
            ),
        })
}

/// Without a target group ARN: waits for `threshold` consecutive 200s to the ALB's checker.
pub async fn wait_lb_checks(
    health: &Health,
    threshold: u32,
    instance: &str,
    timeout: Duration,
) -> Result<(), LifecycleError> {
    tokio::time::timeout(timeout, health.lb_streak_reaches(threshold))
        .await
        .map_err(|_| LifecycleError::NotInService {
            instance: instance.to_string(),
            secs: timeout.as_secs(),
            last: format!(
                "fewer than {threshold} consecutive passing checks from ELB-HealthChecker"
            ),
        })
}
