//! One task per service, all at once: each waits for its dependencies' conditions (see
//! [`super::order`]), applies its container steps, waits until its containers are ready, and
//! only then retires the containers it replaced. Dependents follow its state through a watch
//! channel.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::future::join_all;
use tokio::sync::watch;

use super::checks::has_healthcheck;
use super::containers::{self, Applied};
use super::order::{self, Gate, ServiceState};
use super::wait::wait_ready;
use super::ConvergeError;
use crate::compose::{DependencyCondition, Project, Service};
use crate::engine::docker::Engine;
use crate::engine::plan::{self, Action, ContainerStep, Plan};
use crate::engine::progress::{first_line, Progress};

/// A dependency as a dependent sees it: its name, the condition, and its state as it changes.
type Watched = (String, DependencyCondition, watch::Receiver<ServiceState>);

/// Runs every service of the plan; returns, per service, its reported state or its error.
pub(super) async fn run_all(
    engine: &Engine,
    project: &Project,
    plan: &Plan,
    deadline: Instant,
    progress: &Progress,
) -> Vec<Result<(String, String), ConvergeError>> {
    let targets = plan::completion_targets(project);
    let mut senders = HashMap::new();
    let mut receivers = HashMap::new();
    for name in project.services.keys() {
        let (tx, rx) = watch::channel(ServiceState::Pending);
        senders.insert(name.clone(), tx);
        receivers.insert(name.clone(), rx);
    }
    let tasks = project.services.values().map(|svc| {
        let tx = senders
            .remove(&svc.name)
            .unwrap_or_else(|| watch::channel(ServiceState::Pending).0);
        let deps: Vec<Watched> = order::dependencies(svc, |d| receivers.contains_key(d))
            .into_iter()
            .filter_map(|(d, cond)| Some((d.to_string(), cond, receivers.get(d)?.clone())))
            .collect();
        let steps: Vec<ContainerStep> = plan.steps_for(&svc.name).cloned().collect();
        let run = ServiceRun {
            engine,
            svc,
            // A service with nothing to do is only checked, silently.
            unchanged: steps.iter().all(|s| s.action == Action::Keep),
            one_shot: targets.contains(&svc.name),
            deadline,
            progress,
        };
        async move {
            let result = run.run(steps, deps, &tx).await;
            if let Err(e) = &result {
                let _ = tx.send(ServiceState::Failed);
                let message = crate::report::chain(e);
                progress.finish(&svc.name, &format!("failed: {}", first_line(&message)));
            }
            result.map(|state| (svc.name.clone(), state.to_string()))
        }
    });
    join_all(tasks).await
}

/// One service's part of an `up`.
struct ServiceRun<'a> {
    engine: &'a Engine,
    svc: &'a Service,
    /// Every step is `keep`: nothing is shown while it is checked.
    unchanged: bool,
    /// Others wait for its completion: ready means exited 0.
    one_shot: bool,
    deadline: Instant,
    progress: &'a Progress,
}

impl ServiceRun<'_> {
    async fn run(
        &self,
        steps: Vec<ContainerStep>,
        deps: Vec<Watched>,
        tx: &watch::Sender<ServiceState>,
    ) -> Result<&'static str, ConvergeError> {
        self.await_dependencies(deps).await?;
        let applied = self.apply(&steps).await?;
        let _ = tx.send(ServiceState::Started);
        let final_state = self.wait_ready(&applied).await?;
        // Proven: the replaced containers can go, and the new ones take their names.
        containers::retire_replaced(self.engine, self.svc, &applied).await?;
        let _ = tx.send(final_state);
        let state = match final_state {
            ServiceState::Healthy => {
                let has = has_healthcheck(self.engine, self.svc)
                    .await
                    .unwrap_or(false);
                order::reported(final_state, || has)
            }
            other => order::reported(other, || false),
        };
        let shown = if self.unchanged { "up to date" } else { state };
        self.progress.finish(&self.svc.name, shown);
        Ok(state)
    }

    /// Waits, dependency by dependency, until each condition holds; fails when one cannot.
    async fn await_dependencies(&self, deps: Vec<Watched>) -> Result<(), ConvergeError> {
        for (dep, cond, mut rx) in deps {
            let now = *rx.borrow();
            if !self.unchanged && order::gate(cond, now) != Gate::Open {
                let waiting = format!("waiting for {dep} ({})", cond.as_str());
                self.progress.update(&self.svc.name, &waiting);
            }
            let state = rx
                .wait_for(|s| order::gate(cond, *s) != Gate::Wait)
                .await
                .map(|s| *s)
                .unwrap_or(ServiceState::Failed);
            if order::gate(cond, state) == Gate::Failed {
                return Err(ConvergeError::DependencyFailed {
                    service: self.svc.name.clone(),
                    dependency: dep,
                });
            }
        }
        Ok(())
    }

    /// Applies the steps in order; on a failure, undoes the recreates made so far.
    async fn apply(&self, steps: &[ContainerStep]) -> Result<Vec<Applied>, ConvergeError> {
        let mut applied = Vec::new();
        for step in steps {
            match containers::apply_step(self.engine, self.svc, step, self.progress).await {
                Ok(a) => applied.push(a),
                Err(e) => {
                    containers::restore(self.engine, self.svc, &applied, self.progress).await;
                    return Err(e);
                }
            }
        }
        Ok(applied)
    }

    /// Waits for every container the steps left serving; the last one's state is the
    /// service's. On a failure, undoes the recreates.
    async fn wait_ready(&self, applied: &[Applied]) -> Result<ServiceState, ConvergeError> {
        let mut final_state = ServiceState::Healthy;
        let shown = (!self.unchanged).then_some(self.progress);
        for a in applied {
            let name = &self.svc.name;
            match wait_ready(
                self.engine,
                name,
                &a.id,
                self.one_shot,
                self.deadline,
                shown,
            )
            .await
            {
                Ok(state) => final_state = state,
                Err(e) => {
                    containers::restore(self.engine, self.svc, applied, self.progress).await;
                    return Err(e);
                }
            }
        }
        Ok(final_state)
    }
}
