//! This instance as a target of its ALB target group, moved by the ELBv2 API: the drain
//! strategy's way out and back in when a target group ARN is configured. Failing `/healthz`
//! is not safe there: an ALB whose targets are all unhealthy sends to all of them (fail-open),
//! so a group of one, or several instances draining at once, would get requests while their
//! containers are recreated. A deregistered target gets no new requests whatever the others'
//! health, and the ALB ends its deregistration delay early once nothing is in flight.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};

use super::load_balancer::{wait_target_state, LoadBalancerError};
use crate::aws::{describe, Aws};

/// How long after deregistering the second look waits: an instance that left in the same
/// seconds shows by then (the ELBv2 API is eventually consistent).
const SETTLE: Duration = Duration::from_secs(2);

/// RegisterTargets attempts before an instance gives up on coming back in.
const REGISTER_TRIES: u32 = 4;

/// This instance's place in one target group.
#[derive(Debug)]
pub struct TargetGroup<'a> {
    aws: &'a Aws,
    arn: &'a str,
    instance: &'a str,
    port: Option<u16>,
    /// Written before DeregisterTargets and removed after RegisterTargets: an agent killed in
    /// between leaves it, and the next one registers the instance again ([`rejoin_if_left`]).
    marker: PathBuf,
}

/// The file that says this instance deregistered itself and has not registered again. In the
/// state directory, on disk: a reboot while deregistered must come back registered.
fn marker(state_dir: &Path) -> PathBuf {
    state_dir.join("deregistered")
}

/// After a restart: an instance a killed agent left deregistered registers again (once its
/// services are up: the caller converges first). Nothing to do without the marker.
pub async fn rejoin_if_left(
    aws: Option<&Aws>,
    arn: Option<&str>,
    instance: &str,
    port: Option<u16>,
    state_dir: &Path,
) -> Result<(), LoadBalancerError> {
    let (Some(aws), Some(arn)) = (aws, arn) else {
        return Ok(());
    };
    if !marker(state_dir).exists() {
        return Ok(());
    }
    tracing::warn!(
        target_group = arn,
        "an earlier agent stopped while this instance was deregistered: registering it again"
    );
    TargetGroup::new(aws, arn, instance, port, state_dir)
        .register_retrying()
        .await
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
/// whether `me` has deregistered: two instances that looked in the same seconds both saw the
/// other healthy and both left; the one whose id sorts later goes back in and waits for the
/// other. (Until the load balancer has checked it healthy again the group is short of both:
/// the drain strategy still wants one instance at a time; this keeps a slip from lasting.)
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
    pub fn new(
        aws: &'a Aws,
        arn: &'a str,
        instance: &'a str,
        port: Option<u16>,
        state_dir: &Path,
    ) -> Self {
        TargetGroup {
            aws,
            arn,
            instance,
            port,
            marker: marker(state_dir),
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
    /// Fails registered (the old release serving) when no other target is healthy within
    /// `timeout`, or when anything fails while out.
    pub async fn leave(&self, timeout: Duration) -> Result<(), LoadBalancerError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(500);
        loop {
            let before = self.targets().await?;
            if judge(self.instance, &before, false) == Leave::Safe {
                // A call that failed may still have taken effect: back in either way.
                if let Err(e) = self.deregister().await {
                    return Err(self.back_in(e).await);
                }
                match self.settled(&before).await {
                    Ok(Leave::Yield { other }) => {
                        tracing::info!(%other, "another target left at the same moment: back in until it returns");
                        self.register_retrying().await?;
                    }
                    Ok(_) => break,
                    Err(e) => return Err(self.back_in(e).await),
                }
            }
            if Instant::now() + delay > deadline {
                return Err(LoadBalancerError::Alone {
                    target_group: self.arn.into(),
                    instance: self.instance.into(),
                    secs: timeout.as_secs(),
                    others: summary(self.instance, &before),
                });
            }
            tracing::info!("no other healthy target yet: staying registered");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        // Its own time: waiting for another target may have used most of `timeout`.
        let unused = |s: &TargetHealthStateEnum| *s == TargetHealthStateEnum::Unused;
        if let Err(e) = self.wait_state("unused", timeout, unused).await {
            return Err(self.back_in(e).await);
        }
        Ok(())
    }

    /// The second look, after [`SETTLE`]: whether another instance left at the same moment.
    /// A target healthy at the first look and missing now has finished leaving (an ALB lists
    /// deregistered targets only while they drain).
    async fn settled(&self, before: &[Target]) -> Result<Leave, LoadBalancerError> {
        tokio::time::sleep(SETTLE).await;
        let mut now = self.targets().await?;
        for t in before {
            if !now.iter().any(|n| n.id == t.id) {
                now.push(Target {
                    id: t.id.clone(),
                    state: TargetHealthStateEnum::Unused,
                });
            }
        }
        Ok(judge(self.instance, &now, true))
    }

    /// After a failure while deregistered: registered again (the old release still serves),
    /// and the failure to report.
    async fn back_in(&self, failure: LoadBalancerError) -> LoadBalancerError {
        match self.register_retrying().await {
            Ok(()) => failure,
            Err(e) => {
                tracing::error!(error = %failure, "left the target group and failed");
                e
            }
        }
    }

    /// Registers again and waits until the target is `healthy`.
    pub async fn rejoin(&self, timeout: Duration) -> Result<(), LoadBalancerError> {
        self.register_retrying().await?;
        let healthy = |s: &TargetHealthStateEnum| *s == TargetHealthStateEnum::Healthy;
        self.wait_state("healthy", timeout, healthy).await
    }

    /// RegisterTargets, tried a few times: an instance left out of its group serves nobody.
    async fn register_retrying(&self) -> Result<(), LoadBalancerError> {
        let mut delay = Duration::from_secs(1);
        let mut tries = 1;
        loop {
            match self.register().await {
                Err(e) if tries < REGISTER_TRIES => {
                    tracing::warn!(error = %e, "registering again");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn deregister(&self) -> Result<(), LoadBalancerError> {
        tracing::info!(target_group = self.arn, "deregistering this instance");
        // Not fatal: without the marker only a crash or a reboot in the next seconds would go
        // unrepaired. Synced to disk before the call, directory included.
        let marked = self
            .marker
            .parent()
            .map_or(Ok(()), crate::release::files::private_dir)
            .and_then(|()| crate::release::files::write_private(&self.marker, self.arn.as_bytes()))
            .map(|()| crate::release::files::sync_dir(&self.marker));
        if let Err(e) = marked {
            tracing::warn!(path = %self.marker.display(), error = %crate::report::chain(&e), "cannot mark this instance deregistered");
        }
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
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.marker.display(), error = %e, "cannot remove the deregistered mark")
            }
        }
        Ok(())
    }

    /// Polls this target's state until `wanted` (named `what`), for `timeout` from now.
    async fn wait_state(
        &self,
        what: &'static str,
        timeout: Duration,
        wanted: impl Fn(&TargetHealthStateEnum) -> bool,
    ) -> Result<(), LoadBalancerError> {
        let waited = wait_target_state(
            self.aws,
            self.arn,
            self.instance,
            self.port,
            timeout,
            wanted,
        );
        waited.await.map_err(|e| match e {
            LoadBalancerError::NotInService { secs, last, .. } => LoadBalancerError::TargetState {
                target_group: self.arn.into(),
                instance: self.instance.into(),
                wanted: what,
                secs,
                last,
            },
            other => other,
        })
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
