//! The AutoScaling group's view of this instance's health: an instance the watchdog could not
//! repair says so itself, so that the group replaces it even when its health check type is
//! EC2 (with ELB it would follow the target group's failed checks, later). With a brake: one
//! outage every instance sees at once (a database down, a bad config value) must not have
//! the whole group replace itself together, so an instance reports itself only while few of
//! its group are already unhealthy or on their way in or out; the others only log, and ask
//! again later.

use crate::aws::{describe, Aws};

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("SetInstanceHealth Unhealthy for {instance}: {message}")]
    Report { instance: String, message: String },
    #[error("DescribeAutoScalingGroups {group}: {message}")]
    Describe { group: String, message: String },
}

/// What became of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The group marks this instance Unhealthy and replaces it.
    Reported,
    /// Held back: `busy` others of the group's `size` are already unhealthy or being
    /// replaced, and at most `allowed` may be at once.
    Braked {
        busy: usize,
        size: usize,
        allowed: usize,
    },
}

/// How many of a group of `size` may be unhealthy (or being replaced) at once: `percent` of
/// it, at least one (a group of one replaces its instance).
pub fn allowed(size: usize, percent: u8) -> usize {
    (size * usize::from(percent) / 100).max(1)
}

/// Whether one more may go, with `busy` others already unhealthy or being replaced.
pub fn may_report(busy: usize, size: usize, percent: u8) -> bool {
    busy < allowed(size, percent)
}

/// Marks this instance Unhealthy in its group, at once (no grace period), unless the brake
/// holds it back (`group` known: at most `max_percent` of it at once).
pub async fn report_unhealthy(
    aws: &Aws,
    instance: &str,
    group: Option<&str>,
    max_percent: u8,
) -> Result<Reported, GroupError> {
    if let Some(group) = group {
        let (busy, size) = busy_in(aws, group, instance).await?;
        if !may_report(busy, size, max_percent) {
            return Ok(Reported::Braked {
                busy,
                size,
                allowed: allowed(size, max_percent),
            });
        }
    }
    aws.autoscaling
        .set_instance_health()
        .instance_id(instance)
        .health_status("Unhealthy")
        .should_respect_grace_period(false)
        .send()
        .await
        .map_err(|e| GroupError::Report {
            instance: instance.to_string(),
            message: describe(&e),
        })?;
    tracing::warn!(instance = %instance, "reported Unhealthy to the AutoScaling group");
    Ok(Reported::Reported)
}

/// The other instances of `group` that are unhealthy or on their way in or out (a
/// replacement not yet in service counts: the window is as long as a replacement takes), and
/// the group's size.
async fn busy_in(aws: &Aws, group: &str, me: &str) -> Result<(usize, usize), GroupError> {
    let out = aws
        .autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(|e| GroupError::Describe {
            group: group.to_string(),
            message: describe(&e),
        })?;
    let Some(g) = out.auto_scaling_groups().first() else {
        return Err(GroupError::Describe {
            group: group.to_string(),
            message: "no such group".into(),
        });
    };
    let instances = g.instances();
    let busy = instances
        .iter()
        .filter(|i| i.instance_id() != Some(me))
        .filter(|i| {
            let state = i.lifecycle_state().map(|s| s.as_str()).unwrap_or_default();
            i.health_status() == Some("Unhealthy")
                || !matches!(
                    state,
                    "InService"
                        | "Standby"
                        | "Warmed:Running"
                        | "Warmed:Stopped"
                        | "Warmed:Hibernated"
                )
        })
        .count();
    let size = usize::try_from(g.desired_capacity().unwrap_or(0))
        .unwrap_or(0)
        .max(instances.len());
    Ok((busy, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_of_the_group_at_once_and_never_none() {
        // 30 %: a group of 10 lets 3 go at once, one of 3 lets 1, one of 1 lets its own.
        assert_eq!(allowed(10, 30), 3);
        assert_eq!(allowed(3, 30), 1);
        assert_eq!(allowed(1, 30), 1);
        assert_eq!(allowed(0, 30), 1);
        assert!(may_report(2, 10, 30));
        assert!(!may_report(3, 10, 30));
        assert!(may_report(0, 3, 30));
        assert!(!may_report(1, 3, 30));
        assert!(may_report(0, 1, 30));
        // 100: every instance may go; 0: still one at a time.
        assert!(may_report(9, 10, 100));
        assert!(!may_report(1, 10, 0));
    }
}
