//! Start order, as pure decisions over observed states: where a service stands while `up` runs,
//! whether a dependency's state lets a dependent go on, and what `up` reports for a service.

use crate::compose::{DependencyCondition, Service};

/// Where a service stands while `up` runs; dependents watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServiceState {
    Pending,
    Started,
    Healthy,
    Completed,
    Failed,
}

impl ServiceState {
    pub(super) fn satisfies(self, cond: DependencyCondition) -> bool {
        match cond {
            DependencyCondition::ServiceStarted => {
                matches!(
                    self,
                    ServiceState::Started | ServiceState::Healthy | ServiceState::Completed
                )
            }
            DependencyCondition::ServiceHealthy => self == ServiceState::Healthy,
            DependencyCondition::ServiceCompletedSuccessfully => self == ServiceState::Completed,
        }
    }
}

/// What a dependency's state means for a dependent waiting on `condition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// The condition holds: go on (to the next dependency, or start).
    Open,
    /// Not yet: keep waiting.
    Wait,
    /// The dependency failed; it will not come back during this `up`.
    Failed,
}

pub(super) fn gate(condition: DependencyCondition, state: ServiceState) -> Gate {
    if state.satisfies(condition) {
        Gate::Open
    } else if state == ServiceState::Failed {
        Gate::Failed
    } else {
        Gate::Wait
    }
}

/// The dependencies a service waits on, in the file's order: those that are services of this
/// project (`is_service`); a dependency outside it gates nothing.
pub(super) fn dependencies(
    svc: &Service,
    is_service: impl Fn(&str) -> bool,
) -> Vec<(&str, DependencyCondition)> {
    svc.depends_on
        .iter()
        .filter(|(name, _)| is_service(name))
        .map(|(name, dep)| (name.as_str(), dep.condition))
        .collect()
}

/// What `up` reports for a service that ended in `state`; `has_healthcheck` is asked only for a
/// healthy one (a service without containers to wait on ends there too).
pub(super) fn reported(
    state: ServiceState,
    has_healthcheck: impl FnOnce() -> bool,
) -> &'static str {
    match state {
        ServiceState::Completed => "completed",
        ServiceState::Healthy if has_healthcheck() => "healthy",
        _ => "running",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DependencyCondition::*;
    use ServiceState::*;

    #[test]
    fn service_started_is_met_by_any_state_past_started() {
        assert_eq!(gate(ServiceStarted, Pending), Gate::Wait);
        assert_eq!(gate(ServiceStarted, Started), Gate::Open);
        assert_eq!(gate(ServiceStarted, Healthy), Gate::Open);
        assert_eq!(gate(ServiceStarted, Completed), Gate::Open);
        assert_eq!(gate(ServiceStarted, Failed), Gate::Failed);
    }

    #[test]
    fn service_healthy_waits_past_started() {
        assert_eq!(gate(ServiceHealthy, Pending), Gate::Wait);
        assert_eq!(gate(ServiceHealthy, Started), Gate::Wait);
        assert_eq!(gate(ServiceHealthy, Completed), Gate::Wait);
        assert_eq!(gate(ServiceHealthy, Healthy), Gate::Open);
        assert_eq!(gate(ServiceHealthy, Failed), Gate::Failed);
    }

    #[test]
    fn service_completed_successfully_needs_completion() {
        assert_eq!(gate(ServiceCompletedSuccessfully, Started), Gate::Wait);
        assert_eq!(gate(ServiceCompletedSuccessfully, Healthy), Gate::Wait);
        assert_eq!(gate(ServiceCompletedSuccessfully, Completed), Gate::Open);
        assert_eq!(gate(ServiceCompletedSuccessfully, Failed), Gate::Failed);
    }

    #[test]
    fn reported_state_names_health_only_with_a_healthcheck() {
        assert_eq!(reported(Completed, || panic!("not asked")), "completed");
        assert_eq!(reported(Healthy, || true), "healthy");
        assert_eq!(reported(Healthy, || false), "running");
        assert_eq!(reported(Started, || panic!("not asked")), "running");
    }
}
