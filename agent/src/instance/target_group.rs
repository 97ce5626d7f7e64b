//! This instance as a target of its ALB target group, moved by the ELBv2 API: the drain
//! strategy's way out and back in when a target group ARN is configured. Failing `/healthz`
//! is not safe there: an ALB whose targets are all unhealthy sends to all of them (fail-open),
//! so a group of one, or several instances draining at once, would get requests while their
//! containers are recreated. A deregistered target gets no new requests whatever the others'
//! health, and the ALB ends its deregistration delay early once nothing is in flight.

use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use super::load_balancer::LoadBalancerError;
use crate::aws::{describe, Aws};

/// This instance's place in one target group.
#[derive(Debug)]
pub struct TargetGroup<'a> {
    aws: &'a Aws,
    arn: &'a str,
    instance: &'a str,
    port: Option<u16>,
}

/// One target's id and health state, as DescribeTargetHealth answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub state: TargetHealthStateEnum,
}

/// What leaving the group now would do, judged from the others' states (pure, so tested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leave {
    /// Another target is healthy: the load balancer has somewhere to send.
    Safe,
    /// No other target is healthy yet: wait for one.
    Wait,
    /// Out at the same moment as `other`, whose id sorts first: step back in and let it go.
    Yield { other: String },
}

/// Judges leaving for `me` among `targets` (which may include `me`). `already_out` says
/// whether `me` has deregistered: two instances that looked at the same moment both saw the
/// other healthy and both left; the one whose id sorts later goes back in, so the group is
/// never empty for longer than one look.
pub fn judge(me: &str, targets: &[Target], already_out: bool) -> Leave {
    let others = targets.iter().filter(|t| t.id != me);
    let mut leaving = Vec::new();
    for t in others {
        match t.state {
            TargetHealthStateEnum::Healthy => return Leave::Safe,
            TargetHealthStateEnum::Draining | TargetHealthStateEnum::Unused => {
                leaving.push(t.id.as_str())
            }
            _ => {}
        }
    }
    match leaving.into_iter().filter(|id| *id < me).min() {
        Some(other) if already_out => Leave::Yield {
            other: other.to_string(),
        },
        _ => Leave::Wait,
    }
}

impl<'a> TargetGroup<'a> {
    pub fn new(aws: &'a Aws, arn: &'a str, instance: &'a str, port: Option<u16>) -> Self {
        TargetGroup {
            aws,
            arn,
            instance,
            port,
        }
    }

    fn me(&self) -> TargetDescription {
        let mut target = TargetDescription::builder().id(self.instance);
        if let Some(p) = self.port {
            target = target.port(i32::from(p));
        }
        target.build()
    }

    fn failed(&self, call: &'static str, message: String) -> LoadBalancerError {
        LoadBalancerError::TargetGroupCall {
            call,
            target_group: self.arn.into(),
            instance: self.instance.into(),
            message,
        }
    }

    /// Every target of the group and its state.
    async fn targets(&self) -> Result<Vec<Target>, LoadBalancerError> {
        let out = self
            .aws
            .elb
            .describe_target_health()
            .target_group_arn(self.arn)
            .send()
            .await
            .map_err(|e| self.failed("DescribeTargetHealth", describe(&e)))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let id = d.target()?.id()?.to_string();
                let state = d.target_health()?.state()?.clone();
                Some(Target { id, state })
            })
            .collect())
    }

    /// Waits until leaving would leave another healthy target, then deregisters; returns
    /// once the load balancer sends nothing here (`unused`: the requests in flight done).
    /// Fails, still registered, when no other target is healthy within `timeout`.
    pub async fn leave(&self, timeout: Duration) -> Result<(), LoadBalancerError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(500);
        let mut out = false;
        loop {
            let targets = self.targets().await?;
            match judge(self.instance, &targets, out) {
                Leave::Safe if out => break,
                Leave::Safe => {
                    self.deregister().await?;
                    out = true;
                    // Look once more: another instance may have left at the same moment.
                    continue;
                }
                Leave::Yield { other } => {
                    tracing::info!(%other, "another target left at the same moment: back in until it returns");
                    self.register().await?;
                    out = false;
                }
                Leave::Wait if out => break,
                Leave::Wait => {}
            }
            if Instant::now() + delay > deadline {
                if out {
                    self.register().await?;
                }
                return Err(LoadBalancerError::Alone {
                    target_group: self.arn.into(),
                    instance: self.instance.into(),
                    secs: timeout.as_secs(),
                    others: summary(self.instance, &targets),
                });
            }
            tracing::info!("no other healthy target yet: staying registered");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        let unused = self.wait_state(deadline, timeout, |s| *s == TargetHealthStateEnum::Unused);
        if let Err(e) = unused.await {
            // Still sending here after the drain's time: back in, the old release serving.
            self.register().await?;
            return Err(e);
        }
        Ok(())
    }

    /// Registers again and waits until the target is `healthy`.
    pub async fn rejoin(&self, timeout: Duration) -> Result<(), LoadBalancerError> {
        self.register().await?;
        let healthy = |s: &TargetHealthStateEnum| *s == TargetHealthStateEnum::Healthy;
        self.wait_state(Instant::now() + timeout, timeout, healthy)
            .await
    }

    async fn deregister(&self) -> Result<(), LoadBalancerError> {
        tracing::info!(target_group = self.arn, "deregistering this instance");
        self.aws
            .elb
            .deregister_targets()
            .target_group_arn(self.arn)
            .targets(self.me())
            .send()
            .await
            .map_err(|e| self.failed("DeregisterTargets", describe(&e)))?;
        Ok(())
    }

    async fn register(&self) -> Result<(), LoadBalancerError> {
        tracing::info!(target_group = self.arn, "registering this instance");
        self.aws
            .elb
            .register_targets()
            .target_group_arn(self.arn)
            .targets(self.me())
            .send()
            .await
            .map_err(|e| self.failed("RegisterTargets", describe(&e)))?;
        Ok(())
    }

    async fn wait_state(
        &self,
        deadline: Instant,
        timeout: Duration,
        wanted: impl Fn(&TargetHealthStateEnum) -> bool,
    ) -> Result<(), LoadBalancerError> {
        let mut delay = Duration::from_millis(250);
        loop {
            let targets = self.targets().await?;
            let mine = targets.iter().find(|t| t.id == self.instance);
            // A target the group no longer lists is as out as `unused`.
            let state = mine.map_or(TargetHealthStateEnum::Unused, |t| t.state.clone());
            if wanted(&state) {
                return Ok(());
            }
            if Instant::now() + delay > deadline {
                return Err(LoadBalancerError::TargetState {
                    target_group: self.arn.into(),
                    instance: self.instance.into(),
                    secs: timeout.as_secs(),
                    last: state.as_str().to_string(),
                });
            }
            tracing::debug!(state = state.as_str(), "waiting for the target group");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// The other targets' states, for an error: "i-1 draining, i-2 unhealthy".
fn summary(me: &str, targets: &[Target]) -> String {
    let others: Vec<String> = targets
        .iter()
        .filter(|t| t.id != me)
        .map(|t| format!("{} {}", t.id, t.state.as_str()))
        .collect();
    if others.is_empty() {
        "none".into()
    } else {
        others.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: &str, state: &str) -> Target {
        Target {
            id: id.into(),
            state: TargetHealthStateEnum::from(state),
        }
    }

    #[test]
    fn leaving_is_safe_only_with_another_healthy_target() {
        let me = "i-b";
        assert_eq!(judge(me, &[t("i-b", "healthy")], false), Leave::Wait);
        assert_eq!(judge(me, &[], false), Leave::Wait);
        let two = [t("i-a", "healthy"), t("i-b", "healthy")];
        assert_eq!(judge(me, &two, false), Leave::Safe);
        let sick = [t("i-a", "unhealthy"), t("i-b", "healthy")];
        assert_eq!(judge(me, &sick, false), Leave::Wait);
        let starting = [t("i-a", "initial"), t("i-c", "healthy")];
        assert_eq!(judge(me, &starting, false), Leave::Safe);
    }

    #[test]
    fn of_two_that_left_at_once_the_later_id_steps_back() {
        let both_out = [t("i-a", "draining"), t("i-b", "draining")];
        assert_eq!(
            judge("i-b", &both_out, true),
            Leave::Yield {
                other: "i-a".into()
            }
        );
        // The earlier id waits for nothing more: it goes on.
        assert_eq!(judge("i-a", &both_out, true), Leave::Wait);
        // Before leaving, another one out is a reason to wait, not to yield.
        assert_eq!(judge("i-b", &both_out, false), Leave::Wait);
        let unused = [
            t("i-a", "unused"),
            t("i-b", "draining"),
            t("i-c", "healthy"),
        ];
        assert_eq!(judge("i-b", &unused, true), Leave::Safe);
    }

    #[test]
    fn the_error_lists_the_other_targets() {
        let targets = [
            t("i-a", "draining"),
            t("i-b", "healthy"),
            t("i-c", "unhealthy"),
        ];
        assert_eq!(summary("i-b", &targets), "i-a draining, i-c unhealthy");
        assert_eq!(summary("i-b", &targets[1..2]), "none");
    }
}
