//! Readiness: polling a container until it is what its service promises (healthy when it has a
//! healthcheck, exited 0 when it is a one-shot others wait for, running otherwise). What a look
//! at the container means is decided by [`readiness`], a pure function; the loop around it
//! polls, probes the healthcheck itself between Docker's runs, and times out.

use std::time::{Duration, Instant};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};

use super::order::ServiceState;
use super::ConvergeError;
use crate::engine::docker::{bare_name, Engine};
use crate::engine::progress::{Progress, Stage};

/// A healthcheck test that checks something: neither empty nor `["NONE"]` (which disables the
/// image's).
pub(super) fn is_health_test(test: Option<&[String]>) -> bool {
    test.is_some_and(|t| !t.is_empty() && t[0] != "NONE")
}

/// What one look at a container shows, as far as readiness goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Seen {
    pub(super) status: Option<ContainerStateStatusEnum>,
    pub(super) exit_code: Option<i64>,
    pub(super) has_health: bool,
    pub(super) health: Option<HealthStatusEnum>,
}

/// What a look means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Readiness {
    /// Done waiting: the state it reached.
    Ready(ServiceState),
    /// Exited in a way that fails the service.
    Exited(i64),
    /// Docker's healthcheck failed.
    Unhealthy,
    /// Running, its health not decided yet: worth probing.
    HealthPending,
    /// Nothing decided yet (created, restarting, or a one-shot still running).
    Pending,
}

pub(super) fn readiness(seen: &Seen, one_shot: bool) -> Readiness {
    match seen.status {
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            let code = seen.exit_code.unwrap_or(-1);
            if code == 0 && (one_shot || !seen.has_health) {
                Readiness::Ready(ServiceState::Completed)
            } else {
                Readiness::Exited(code)
            }
        }
        Some(ContainerStateStatusEnum::RUNNING) if !one_shot => {
            if !seen.has_health {
                return Readiness::Ready(ServiceState::Started);
            }
            match seen.health {
                Some(HealthStatusEnum::HEALTHY) => Readiness::Ready(ServiceState::Healthy),
                Some(HealthStatusEnum::UNHEALTHY) => Readiness::Unhealthy,
                _ => Readiness::HealthPending,
            }
        }
        _ => Readiness::Pending,
    }
}

/// What a timeout says the container did not become.
pub(super) fn wanted(one_shot: bool, has_health: bool) -> &'static str {
    if one_shot {
        "completed"
    } else if has_health {
        "healthy"
    } else {
        "running"
    }
}

/// The command that runs a healthcheck test (`["CMD", ...]` or `["CMD-SHELL", cmd]`) in the
/// container.
pub(super) fn probe_command(test: &[String]) -> Vec<String> {
    match test.first().map(String::as_str) {
        Some("CMD-SHELL") => vec!["/bin/sh".to_string(), "-c".to_string(), test[1..].join(" ")],
        Some(_) => test[1..].to_vec(),
        None => vec![],
    }
}

/// Waits until an existing container (say, a stopped previous release started again) is
/// healthy when it has a healthcheck, running otherwise.
pub async fn wait_running(
    engine: &Engine,
    service: &str,
    id: &str,
    deadline: Instant,
) -> Result<(), ConvergeError> {
    wait_ready(engine, service, id, false, deadline, None)
        .await
        .map(|_| ())
}

/// One inspect of the container, read for readiness.
struct Look {
    /// The container's name.
    name: String,
    seen: Seen,
    /// The healthcheck test, as configured.
    test: Option<Vec<String>>,
    /// The last output of Docker's own health runs.
    health_output: Option<String>,
    probe_timeout: Duration,
}

impl Look {
    fn of(info: &ContainerInspectResponse) -> Look {
        let state = info.state.clone().unwrap_or_default();
        let healthcheck = info.config.as_ref().and_then(|c| c.healthcheck.as_ref());
        let test = healthcheck.and_then(|h| h.test.clone());
        let health = state.health.clone().unwrap_or_default();
        Look {
            name: bare_name(info.name.as_deref().unwrap_or_default()).to_string(),
            seen: Seen {
                status: state.status,
                exit_code: state.exit_code,
                has_health: is_health_test(test.as_deref()),
                health: health.status,
            },
            health_output: health
                .log
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|log| log.output.as_ref())
                .map(|o| o.trim().to_string()),
            probe_timeout: healthcheck
                .and_then(|h| h.timeout)
                .filter(|t| *t > 0)
                .map(|ns| Duration::from_nanos(ns as u64))
                .unwrap_or(Duration::from_secs(30)),
            test,
        }
    }
}

/// Waits until a container is ready: healthy when it has a healthcheck, exited 0 when it is a
/// one-shot others wait for, running otherwise.
pub(super) async fn wait_ready(
    engine: &Engine,
    service: &str,
    id: &str,
    one_shot: bool,
    deadline: Instant,
    progress: Option<&Progress>,
) -> Result<ServiceState, ConvergeError> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(25);
    let mut last_output = String::new();
    let mut announced = false;
    loop {
        let look = Look::of(&engine.inspect_container(id).await?);
        let readiness = readiness(&look.seen, one_shot);
        if let (Readiness::Unhealthy | Readiness::HealthPending, Some(o)) =
            (readiness, &look.health_output)
        {
            last_output = o.clone();
        }
        match readiness {
            Readiness::Ready(state) => return Ok(state),
            Readiness::Exited(code) => {
                // Its output stays with Docker: an app's output may carry secrets, and the
                // journal is shipped off the host. The log names where to read it.
                tracing::warn!(service, container = %look.name, code, "exited; its output: docker logs --tail 20 {}", look.name);
                return Err(ConvergeError::Exited {
                    service: service.to_string(),
                    container: look.name,
                    code,
                });
            }
            Readiness::Unhealthy => {
                tracing::warn!(service, container = %look.name, output_bytes = last_output.len(), "unhealthy; its healthcheck's last output: docker inspect --format '{{{{json .State.Health}}}}' {}", look.name);
                return Err(ConvergeError::Unhealthy {
                    service: service.to_string(),
                    container: look.name,
                });
            }
            Readiness::HealthPending => {
                if let (false, Some(progress)) = (announced, progress) {
                    progress.update(service, "waiting for health");
                    progress.stage(Stage::Waiting);
                    announced = true;
                }
                match probe(engine, id, &look).await {
                    Probe::Passed => return Ok(ServiceState::Healthy),
                    Probe::Failed(output) => last_output = output,
                    Probe::Unknown => {}
                }
            }
            Readiness::Pending => {}
        }
        if Instant::now() >= deadline {
            tracing::warn!(service, container = %look.name, output_bytes = last_output.len(), "not ready in time; its healthcheck's last output: docker inspect --format '{{{{json .State.Health}}}}' {}", look.name);
            return Err(ConvergeError::Timeout {
                service: service.to_string(),
                container: look.name,
                wanted: wanted(one_shot, look.seen.has_health),
                waited_secs: started.elapsed().as_secs(),
            });
        }
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

enum Probe {
    Passed,
    /// Failed, with what it said (or its exit code) or that it timed out.
    Failed(String),
    /// Could not run: the container may be between states.
    Unknown,
}

/// Runs the healthcheck test once, now. Docker checks only every `interval`; probing the same
/// test sooner (as `start_interval` does on newer engines) keeps `up` fast. One passing run is
/// what makes Docker call a container healthy, too.
async fn probe(engine: &Engine, id: &str, look: &Look) -> Probe {
    let Some(test) = &look.test else {
        return Probe::Unknown;
    };
    let timeout = look.probe_timeout;
    match tokio::time::timeout(timeout, engine.exec(id, probe_command(test))).await {
        Ok(Ok((0, _))) => Probe::Passed,
        Ok(Ok((code, out))) if out.is_empty() => Probe::Failed(format!("exit code {code}")),
        Ok(Ok((_, out))) => Probe::Failed(out),
        Ok(Err(_)) => Probe::Unknown,
        Err(_) => Probe::Failed(format!("health check timed out after {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerStateStatusEnum::{CREATED, DEAD, EXITED, RESTARTING, RUNNING};

    fn seen(status: ContainerStateStatusEnum) -> Seen {
        Seen {
            status: Some(status),
            ..Seen::default()
        }
    }

    fn exited(code: i64, has_health: bool) -> Seen {
        Seen {
            status: Some(EXITED),
            exit_code: Some(code),
            has_health,
            health: None,
        }
    }

    fn health(status: Option<HealthStatusEnum>) -> Seen {
        Seen {
            status: Some(RUNNING),
            has_health: true,
            health: status,
            ..Seen::default()
        }
    }

    #[test]
    fn running_without_healthcheck_is_started() {
        assert_eq!(
            readiness(&seen(RUNNING), false),
            Readiness::Ready(ServiceState::Started)
        );
    }

    #[test]
    fn running_with_healthcheck_follows_health() {
        use HealthStatusEnum::{HEALTHY, STARTING, UNHEALTHY};
        let ready = |h| readiness(&health(h), false);
        assert_eq!(
            ready(Some(HEALTHY)),
            Readiness::Ready(ServiceState::Healthy)
        );
        assert_eq!(ready(Some(UNHEALTHY)), Readiness::Unhealthy);
        assert_eq!(ready(Some(STARTING)), Readiness::HealthPending);
        assert_eq!(ready(None), Readiness::HealthPending);
    }

    #[test]
    fn a_running_one_shot_is_not_ready_yet() {
        assert_eq!(readiness(&seen(RUNNING), true), Readiness::Pending);
        let healthy = health(Some(HealthStatusEnum::HEALTHY));
        assert_eq!(readiness(&healthy, true), Readiness::Pending);
    }

    #[test]
    fn exit_zero_completes_a_one_shot_or_a_service_without_healthcheck() {
        let completed = Readiness::Ready(ServiceState::Completed);
        assert_eq!(readiness(&exited(0, false), true), completed);
        assert_eq!(readiness(&exited(0, true), true), completed);
        assert_eq!(readiness(&exited(0, false), false), completed);
        // A service with a healthcheck was meant to keep running.
        assert_eq!(readiness(&exited(0, true), false), Readiness::Exited(0));
    }

    #[test]
    fn exit_non_zero_or_dead_fails() {
        assert_eq!(readiness(&exited(3, false), true), Readiness::Exited(3));
        assert_eq!(readiness(&seen(DEAD), false), Readiness::Exited(-1));
    }

    #[test]
    fn created_and_restarting_are_pending() {
        assert_eq!(readiness(&seen(CREATED), false), Readiness::Pending);
        assert_eq!(readiness(&seen(RESTARTING), false), Readiness::Pending);
        assert_eq!(readiness(&Seen::default(), false), Readiness::Pending);
    }

    #[test]
    fn health_tests() {
        let t = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(is_health_test(Some(&t(&["CMD", "true"]))));
        assert!(!is_health_test(Some(&t(&["NONE"]))));
        assert!(!is_health_test(Some(&[])));
        assert!(!is_health_test(None));
        assert_eq!(
            probe_command(&t(&["CMD-SHELL", "wget -q", "x"])),
            t(&["/bin/sh", "-c", "wget -q x"])
        );
        assert_eq!(
            probe_command(&t(&["CMD", "pg_isready", "-q"])),
            t(&["pg_isready", "-q"])
        );
    }

    #[test]
    fn timeouts_name_what_was_wanted() {
        assert_eq!(wanted(true, true), "completed");
        assert_eq!(wanted(false, true), "healthy");
        assert_eq!(wanted(false, false), "running");
    }
}
