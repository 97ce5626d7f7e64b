//! The drain strategy, without a proxy: pull while still in service, leave the load balancer,
//! converge in place (a failed recreate puts the old containers back), then come back in.
//! With a target group ARN, leaving is deregistering the target (once another is healthy) and
//! waiting for `unused`, and coming back is registering and waiting for `healthy`; without
//! one, `/healthz` turns 503 until the checker's failures take the instance out.

use super::{Deployed, How, UpgradeError, Upgrader};
use crate::compose::Project;
use crate::engine::converge;
use crate::engine::plan::Action;
use crate::instance::load_balancer::{self, Wait};
use crate::instance::target_group::TargetGroup;
use crate::serve::Phase;

impl Upgrader<'_> {
    pub(super) async fn deploy_drain(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        // At boot nothing is in the load balancer yet: a plain converge, one look at Docker.
        let Some(state) = self.state else {
            return self.converge_in_place(project, release, None).await;
        };
        // Pull while still in service: the instance is out of the load balancer only for the
        // recreate itself.
        let mut observed = converge::observe(self.engine, project).await?;
        converge::pull_images(
            self.engine,
            project,
            &mut observed,
            &self.up.registries,
            self.up.pull_concurrency,
            self.progress,
        )
        .await?;
        let plan = crate::engine::plan::compute(project, &observed, self.up.remove_orphans);
        let serving = plan
            .containers
            .iter()
            .any(|c| c.existing.is_some() && c.action != Action::Orphan);
        if !serving || plan.is_noop() {
            return self.converge_in_place(project, release, None).await;
        }
        let previous = state.snapshot().release;
        let group = self.target_group();
        if let Some(group) = &group {
            let timeout = std::time::Duration::from_secs(self.config.timeouts.lb_drain_secs);
            group.leave(timeout).await?;
            state.set_phase(Phase::Draining);
        } else {
            state.set_phase(Phase::Draining);
            if let Err(e) = self.wait_lb(Wait::Out, state).await {
                state.set_phase(Phase::Ready);
                return Err(e);
            }
        }
        let result = self.converge_in_place(project, release, previous).await;
        if let (Err(e), Some(back)) = (&result, self.way_back) {
            // What the failed converge changed goes back too: the release that serves again
            // runs whole.
            tracing::error!(release = ?release, error = %crate::report::chain(e), back = %back.release, "the new release failed; converging the previous one back");
            if let Err(back_err) = self
                .converge_in_place(&back.project, Some(&back.release), None)
                .await
            {
                tracing::error!(error = %crate::report::chain(&back_err), "could not converge the previous release back");
            }
        }
        // Either the new release or (restored by converge) the old one serves now.
        state.reset_lb_streak();
        state.set_phase(Phase::Ready);
        if let Some(group) = &group {
            let timeout = std::time::Duration::from_secs(self.config.timeouts.in_service_secs);
            let back = group.rejoin(timeout).await;
            let deployed = result.map_err(|e| self.new_release_failed(release, e))?;
            back?;
            return Ok(deployed);
        }
        let deployed = result.map_err(|e| self.new_release_failed(release, e))?;
        self.wait_lb(Wait::In, state).await?;
        Ok(deployed)
    }

    /// The target group the drain strategy deregisters from, when one is configured.
    fn target_group(&self) -> Option<TargetGroup<'_>> {
        let lb = &self.config.load_balancer;
        match (self.aws, &lb.target_group_arn) {
            (Some(aws), Some(arn)) => Some(TargetGroup::new(
                aws,
                arn,
                &self.instance_id,
                lb.port,
                &self.config.state_dir,
            )),
            _ => None,
        }
    }

    fn new_release_failed(&self, release: Option<&str>, e: UpgradeError) -> UpgradeError {
        match e {
            UpgradeError::Converge(source) => UpgradeError::NewRelease {
                release: release.unwrap_or("(unnamed)").into(),
                source,
            },
            other => other,
        }
    }

    pub(super) async fn converge_in_place(
        &self,
        project: &Project,
        release: Option<&str>,
        previous: Option<String>,
    ) -> Result<Deployed, UpgradeError> {
        let report = converge::up(self.engine, project, &self.up, self.progress).await?;
        Ok(Deployed {
            preview_token: None,
            release: release.map(String::from),
            previous,
            how: How::converged(&report.plan),
            color: None,
            backends: vec![],
            to_switch_secs: None,
            services: report.services,
            no_way_back: None,
            migration: None,
        })
    }

    /// Waits until the load balancer stops sending here, or sends again.
    pub async fn wait_lb(
        &self,
        way: Wait,
        state: &crate::serve::AgentState,
    ) -> Result<(), UpgradeError> {
        load_balancer::wait(self.config, self.aws, &self.instance_id, state, way).await?;
        Ok(())
    }
}
