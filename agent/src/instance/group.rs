//! The AutoScaling group's view of this instance's health: an instance the watchdog could not
//! repair says so itself, so that the group replaces it even when its health check type is
//! EC2 (with ELB it would follow the target group's failed checks, later).

use crate::aws::{describe, Aws};

#[derive(Debug, thiserror::Error)]
#[error("SetInstanceHealth Unhealthy for {instance}: {message}")]
pub struct GroupError {
    pub instance: String,
    pub message: String,
}

/// Marks this instance Unhealthy in its group, at once (no grace period).
pub async fn report_unhealthy(aws: &Aws, instance: &str) -> Result<(), GroupError> {
    aws.autoscaling
        .set_instance_health()
        .instance_id(instance)
        .health_status("Unhealthy")
        .should_respect_grace_period(false)
        .send()
        .await
        .map_err(|e| GroupError {
            instance: instance.to_string(),
            message: describe(&e),
        })?;
    tracing::warn!(instance = %instance, "reported Unhealthy to the AutoScaling group");
    Ok(())
}
