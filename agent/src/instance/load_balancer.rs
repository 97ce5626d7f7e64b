//! The load balancer's view of this instance: wait until it marks the target healthy, or until
//! it stops sending here (a drain). With a target group ARN, DescribeTargetHealth says so;
//! without one, the ALB checker's consecutive answers on the health endpoint do.

use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};
use futures_util::future::Either;

use crate::aws::{describe, Aws};
use crate::config::AgentConfig;
use crate::serve::AgentState;

#[derive(Debug, thiserror::Error)]
pub enum LoadBalancerError {
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
    #[error("{call} (target group {target_group}, instance {instance}): {message}")]
    TargetGroupCall {
        call: &'static str,
        target_group: String,
        instance: String,
        message: String,
    },
    #[error("no other target of target group {target_group} became healthy within {secs}s (others: {others}), so instance {instance} stays registered and keeps serving: leaving would give the load balancer nothing to send to (a group of one upgrades without a gap with upgrade.strategy = \"proxy\")")]
    Alone {
        target_group: String,
        instance: String,
        secs: u64,
        others: String,
    },
    #[error("target group {target_group}: instance {instance} was not {wanted} within {secs}s (last state: {last})")]
    TargetState {
        target_group: String,
        instance: String,
        wanted: &'static str,
        secs: u64,
        last: String,
    },
}

/// Whether [`wait`] has anything to wait for when the load balancer should send here.
pub fn watches_in(config: &AgentConfig, aws: Option<&Aws>) -> bool {
    let lb = &config.load_balancer;
    (aws.is_some() && lb.target_group_arn.is_some()) || lb.healthy_threshold.is_some()
}

/// Which way a wait goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Until the load balancer sends here (the target is healthy).
    In,
    /// Until it stops sending here.
    Out,
}

/// Waits until the load balancer sends here again (`Wait::In`) or no more (`Wait::Out`), by
/// the configured means; with no load balancer configured there is nothing to wait for.
/// Counting the checker's answers needs no AWS, so a local run behind HAProxy waits too.
pub async fn wait(
    config: &AgentConfig,
    aws: Option<&Aws>,
    instance: &str,
    state: &AgentState,
    way: Wait,
) -> Result<(), LoadBalancerError> {
    let lb = &config.load_balancer;
    let timeout = Duration::from_secs(match way {
        Wait::In => config.timeouts.in_service_secs,
        Wait::Out => config.timeouts.lb_drain_secs,
    });
    match (aws, &lb.target_group_arn, way) {
        (Some(aws), Some(arn), Wait::In) => {
            wait_target_healthy(aws, arn, instance, lb.port, timeout).await
        }
        (Some(aws), Some(arn), Wait::Out) => {
            wait_target_out(aws, arn, instance, lb.port, timeout).await
        }
        (_, _, Wait::In) => match lb.healthy_threshold {
            Some(n) => wait_checks(state, n, Wait::In, instance, timeout).await,
            None => Ok(()),
        },
        (_, _, Wait::Out) if lb.healthy_threshold.is_none() && lb.unhealthy_threshold.is_none() => {
            tracing::info!("no load balancer configured: not waiting for it to drain");
            Ok(())
        }
        (_, _, Wait::Out) => {
            let n = lb.unhealthy_threshold.unwrap_or(2);
            tracing::info!(
                checks = n,
                "draining: waiting for the load balancer's failed checks"
            );
            wait_checks(state, n, Wait::Out, instance, timeout).await
        }
    }
}

/// Waits until DescribeTargetHealth says this instance is `healthy` in the target group.
async fn wait_target_healthy(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
) -> Result<(), LoadBalancerError> {
    let healthy = |s: &TargetHealthStateEnum| *s == TargetHealthStateEnum::Healthy;
    wait_target_state(aws, target_group, instance, port, timeout, healthy).await
}

/// Waits until the load balancer has stopped sending to this instance: DescribeTargetHealth
/// shows it `unhealthy`, `draining` or `unused`.
async fn wait_target_out(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
) -> Result<(), LoadBalancerError> {
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
            LoadBalancerError::NotInService {
                instance,
                secs,
                last,
            } => LoadBalancerError::NotOut {
                instance,
                secs,
                last,
            },
            other => other,
        })
}

/// Polls DescribeTargetHealth for this target until its state is `wanted`, for `timeout`.
pub(super) async fn wait_target_state(
    aws: &Aws,
    target_group: &str,
    instance: &str,
    port: Option<u16>,
    timeout: Duration,
    wanted: impl Fn(&TargetHealthStateEnum) -> bool,
) -> Result<(), LoadBalancerError> {
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
            .map_err(|e| LoadBalancerError::TargetHealth {
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
            return Err(LoadBalancerError::NotInService {
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

/// Without a target group ARN: waits until the ALB's checker has been answered `threshold`
/// times in a row with 200 (`Wait::In`: its healthy threshold) or 503 (`Wait::Out`: its
/// unhealthy threshold, after which it sends no more requests).
async fn wait_checks(
    state: &AgentState,
    threshold: u32,
    way: Wait,
    instance: &str,
    timeout: Duration,
) -> Result<(), LoadBalancerError> {
    let (streak, what) = match way {
        Wait::In => (Either::Left(state.lb_streak_reaches(threshold)), "passing"),
        Wait::Out => (
            Either::Right(state.lb_fail_streak_reaches(threshold)),
            "failed",
        ),
    };
    if tokio::time::timeout(timeout, streak).await.is_ok() {
        return Ok(());
    }
    let (instance, secs) = (instance.to_string(), timeout.as_secs());
    let last = format!("fewer than {threshold} consecutive {what} checks from ELB-HealthChecker");
    Err(match way {
        Wait::In => LoadBalancerError::NotInService {
            instance,
            secs,
            last,
        },
        Wait::Out => LoadBalancerError::NotOut {
            instance,
            secs,
            last,
        },
    })
}
