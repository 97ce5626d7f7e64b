//! What the watchdog needs from Docker: the project's container events as they happen, and one
//! look at a container (its state, exit, health and restart policy) in berth's own terms, so
//! that the judgement above the engine is a pure function of plain values.

use std::collections::HashMap;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum, RestartPolicyNameEnum,
};
use bollard::query_parameters::{EventsOptions, RestartContainerOptionsBuilder};
use futures_util::{Stream, StreamExt};

use super::docker::{api_message, labels, DockerError, Engine};

/// One container event of the project: what happened (`die`, `start`, `health_status:
/// unhealthy`, ...) to which container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerEvent {
    pub action: String,
    pub id: String,
}

impl ContainerEvent {
    /// Whether it can change what serves. Docker also reports every healthcheck's exec and
    /// every attach; those change nothing.
    pub fn matters(&self) -> bool {
        const ACTIONS: [&str; 10] = [
            "start",
            "die",
            "destroy",
            "oom",
            "stop",
            "kill",
            "pause",
            "unpause",
            "restart",
            "health_status",
        ];
        ACTIONS.iter().any(|a| self.action.starts_with(a))
    }
}

/// What a container is doing, as far as serving goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Running, and healthy (or without a healthcheck).
    Running,
    /// Running, its healthcheck not passed yet.
    Starting,
    /// Running, its healthcheck failing.
    Unhealthy,
    /// Docker's restart policy is bringing it back.
    Restarting,
    Paused,
    Exited {
        code: i64,
        oom: bool,
    },
    /// Created and never started.
    Created,
}

/// A container's restart policy, as Docker holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    No,
    Always,
    UnlessStopped,
    OnFailure { max_retries: i64 },
}

/// One look at a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Look {
    pub id: String,
    pub name: String,
    pub service: String,
    pub condition: Condition,
    pub policy: Policy,
    /// How often Docker has restarted it.
    pub restarts: i64,
}

impl Look {
    fn from_inspect(info: ContainerInspectResponse) -> Look {
        let state = info.state.unwrap_or_default();
        let code = state.exit_code.unwrap_or(-1);
        let condition = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => match state.health.and_then(|h| h.status) {
                Some(HealthStatusEnum::UNHEALTHY) => Condition::Unhealthy,
                Some(HealthStatusEnum::STARTING) => Condition::Starting,
                _ => Condition::Running,
            },
            Some(ContainerStateStatusEnum::RESTARTING) => Condition::Restarting,
            Some(ContainerStateStatusEnum::PAUSED) => Condition::Paused,
            Some(ContainerStateStatusEnum::CREATED) => Condition::Created,
            // Exited, dead, being removed.
            _ => Condition::Exited {
                code,
                oom: state.oom_killed == Some(true),
            },
        };
        let restart = info.host_config.and_then(|h| h.restart_policy);
        let policy = match restart.as_ref().and_then(|r| r.name) {
            Some(RestartPolicyNameEnum::ALWAYS) => Policy::Always,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED) => Policy::UnlessStopped,
            Some(RestartPolicyNameEnum::ON_FAILURE) => Policy::OnFailure {
                max_retries: restart
                    .as_ref()
                    .and_then(|r| r.maximum_retry_count)
                    .unwrap_or(0),
            },
            _ => Policy::No,
        };
        let service = info
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::SERVICE))
            .cloned()
            .unwrap_or_default();
        Look {
            id: info.id.unwrap_or_default(),
            name: info
                .name
                .as_deref()
                .map(super::docker::bare_name)
                .unwrap_or_default()
                .to_string(),
            service,
            condition,
            policy,
            restarts: info.restart_count.unwrap_or(0),
        }
    }
}

impl Engine {
    /// The project's container events from now on. The stream ends (or yields an error) when
    /// the daemon goes away; the caller reconnects.
    pub fn events(
        &self,
        project: &str,
    ) -> impl Stream<Item = Result<ContainerEvent, DockerError>> + Send + 'static {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![format!("{}={project}", labels::PROJECT)],
            ),
        ]);
        let opts = EventsOptions {
            filters: Some(filters),
            ..EventsOptions::default()
        };
        let project = project.to_string();
        self.api.events(Some(opts)).map(move |item| {
            let event = item.map_err(|e| DockerError::Request {
                action: "watch the events of project",
                target: project.clone(),
                message: api_message(&e),
            })?;
            Ok(ContainerEvent {
                action: event.action.unwrap_or_default(),
                id: event.actor.and_then(|a| a.id).unwrap_or_default(),
            })
        })
    }

    /// Whether the daemon answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.api
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| DockerError::Connect {
                endpoint: self.endpoint.clone(),
                message: api_message(&e),
            })
    }

    /// One look at a container; None when it is gone.
    pub async fn look(&self, id: &str) -> Result<Option<Look>, DockerError> {
        Ok(self.inspect_present(id).await?.map(Look::from_inspect))
    }

    /// Restarts a container, giving it `grace_secs` to stop.
    pub async fn restart(&self, id: &str, grace_secs: i32) -> Result<(), DockerError> {
        let opts = RestartContainerOptionsBuilder::default()
            .t(grace_secs)
            .build();
        self.api
            .restart_container(id, Some(opts))
            .await
            .map_err(|e| DockerError::Request {
                action: "restart container",
                target: id.to_string(),
                message: api_message(&e),
            })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bollard::models::{ContainerState, Health, HostConfig, RestartPolicy};

    fn inspect(
        status: ContainerStateStatusEnum,
        health: Option<HealthStatusEnum>,
        restart: Option<(RestartPolicyNameEnum, i64)>,
    ) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("abc".into()),
            name: Some("/shop-web-blue-1".into()),
            state: Some(ContainerState {
                status: Some(status),
                exit_code: Some(137),
                oom_killed: Some(true),
                health: health.map(|s| Health {
                    status: Some(s),
                    ..Health::default()
                }),
                ..ContainerState::default()
            }),
            host_config: Some(HostConfig {
                restart_policy: restart.map(|(name, max)| RestartPolicy {
                    name: Some(name),
                    maximum_retry_count: Some(max),
                }),
                ..HostConfig::default()
            }),
            restart_count: Some(2),
            ..ContainerInspectResponse::default()
        }
    }

    #[test]
    fn a_look_reads_state_health_and_restart_policy() {
        use ContainerStateStatusEnum::*;
        let l = Look::from_inspect(inspect(RUNNING, None, None));
        assert_eq!(l.condition, Condition::Running);
        assert_eq!(l.policy, Policy::No);
        assert_eq!(l.name, "shop-web-blue-1");
        assert_eq!(l.restarts, 2);
        let l = Look::from_inspect(inspect(
            RUNNING,
            Some(HealthStatusEnum::UNHEALTHY),
            Some((RestartPolicyNameEnum::ON_FAILURE, 3)),
        ));
        assert_eq!(l.condition, Condition::Unhealthy);
        assert_eq!(l.policy, Policy::OnFailure { max_retries: 3 });
        let l = Look::from_inspect(inspect(
            RUNNING,
            Some(HealthStatusEnum::STARTING),
            Some((RestartPolicyNameEnum::UNLESS_STOPPED, 0)),
        ));
        assert_eq!(l.condition, Condition::Starting);
        assert_eq!(l.policy, Policy::UnlessStopped);
        let l = Look::from_inspect(inspect(
            EXITED,
            None,
            Some((RestartPolicyNameEnum::ALWAYS, 0)),
        ));
        assert_eq!(
            l.condition,
            Condition::Exited {
                code: 137,
                oom: true
            }
        );
        assert_eq!(l.policy, Policy::Always);
        assert_eq!(
            Look::from_inspect(inspect(RESTARTING, None, None)).condition,
            Condition::Restarting
        );
    }

    #[test]
    fn healthcheck_execs_do_not_matter_but_deaths_and_health_do() {
        let e = |a: &str| ContainerEvent {
            action: a.into(),
            id: "x".into(),
        };
        assert!(e("die").matters());
        assert!(e("health_status: unhealthy").matters());
        assert!(e("destroy").matters());
        assert!(!e("exec_start: /bin/sh -c wget").matters());
        assert!(!e("exec_create: wget").matters());
        assert!(!e("attach").matters());
    }
}
