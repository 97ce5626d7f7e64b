//! Upgrades: replace the running release without losing a request.
//!
//! - **proxy** ([`blue_green`]): `berth proxy` owns the traffic port. The routed service runs in
//!   two [`colors`], `<service>-blue` and `<service>-green`, each with the service's replicas,
//!   each replica published on an ephemeral 127.0.0.1 port. An upgrade converges the new
//!   release into the color that is not serving (pulls first, one-shots such as migrations
//!   before it, nothing old stops), waits for health on every replica ([`probe`]), switches the
//!   proxy to all of them at once, watches the new color for `verify_secs` and judges its
//!   traffic against the old one's through `bake_secs` ([`analysis`]; failing: switch
//!   back), drains the old color's backends together and stops it. The stopped old color is
//!   kept for `berth rollback` until the next upgrade. Before the switch, an upgrade may stop
//!   in [`preview`], or run a weighted [`canary`] (a growing share of sessions, judged).
//! - **drain** ([`drain`]): the instance leaves the load balancer (deregistered from its
//!   target group, or by failing `/healthz`), converges in place, waits for health and comes
//!   back in.
//!
//! The proxy strategy's state is in Docker's labels (color, release) and the proxy's route,
//! never in a file of our own: after a crash at any moment, [`recover`] finds both colors,
//! keeps the healthy serving one, and finishes or undoes what was under way. The drain
//! strategy's one fact no API keeps (this instance deregistered itself) is a mark in
//! `run_dir` (see `instance::target_group`). One upgrade runs at a time ([`lock`]).

pub mod analysis;
pub mod blue_green;
pub mod canary;
pub mod colors;
pub mod drain;
pub mod hooks;
pub mod lock;
pub mod preview;
pub mod probe;
pub mod recover;
pub mod sequential;
pub mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

use crate::aws::Aws;
use crate::compose::Project;
use crate::config::{AgentConfig, Strategy};
use crate::engine::converge::{ConvergeError, UpOptions};
use crate::engine::docker::{DockerError, Engine};
use crate::engine::plan::Plan;
use crate::engine::progress::Progress;
use crate::instance::load_balancer::LoadBalancerError;
use crate::proxy::ProxyError;
use crate::serve::AgentState;

pub use analysis::WatchFailure;
pub use colors::{colorize, routed, routed_from_labels, routed_in, sides_of, Color, Routed, Side};
pub use colors::{COLOR_LABEL, RELEASE_LABEL, ROUTED_LABEL};
pub use lock::UpgradeLock;
pub use probe::{probe, ProbeError};

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("another upgrade is running ({holder}); try again when it is done")]
    Busy { holder: String },
    #[error("upgrade lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("proxy strategy, project {project}: {message}")]
    Routed { project: String, message: String },
    #[error("release {release} did not come up, and the previous release keeps serving")]
    NewRelease {
        release: String,
        source: ConvergeError,
    },
    #[error("release {release}: GET {path} on {backend} never answered 2xx within {secs}s, so the previous release keeps serving; last try")]
    Probe {
        release: String,
        path: String,
        backend: SocketAddr,
        secs: u64,
        #[source]
        last: ProbeError,
    },
    #[error("release {release} failed its after_healthy hook before any traffic, so the previous release keeps serving")]
    Hook {
        release: String,
        #[source]
        source: hooks::HookFailed,
    },
    #[error("release {release} failed right after the switch, rolled back to {previous}, which serves again")]
    RolledBack {
        release: String,
        previous: String,
        #[source]
        reason: WatchFailure,
    },
    #[error("release {release} failed its canary at {percent} % of sessions, so {previous} serves them all again")]
    CanaryFailed {
        release: String,
        percent: u8,
        previous: String,
        #[source]
        reason: WatchFailure,
    },
    #[error("release {release} failed after the switch and was NOT rolled back: its migration ({service}) is a contract migration, so {previous} cannot read the database any more; {release} keeps serving. Decide: fix forward with a new release, or `berth rollback --force` (back to {previous} against the contracted schema)")]
    NotRolledBack {
        release: String,
        previous: String,
        service: String,
        #[source]
        reason: WatchFailure,
    },
    #[error("release {release} carries a contract migration ({service}): a weighted canary would send its sessions back to a release that cannot read the new schema if it failed; upgrade without --canary")]
    CanaryAcrossContract { release: String, service: String },
    #[error("nothing serves project {project} yet: a preview or a canary needs a serving release beside it (upgrade without --preview or --canary)")]
    PreviewOfNothing { project: String },
    #[error(
        "a preview needs a release id (--release, or the release pointer) for requests to name"
    )]
    PreviewUnnamed,
    #[error("the preview key {location}: {message}")]
    PreviewKey { location: String, message: String },
    #[error("no release of {service} is in preview (berth upgrade --preview starts one)")]
    NoPreview { service: String },
    #[error("nothing to roll back to: project {project} keeps no previous release")]
    NoPrevious { project: String },
    #[error("previous release {release} did not come back up, and {current} keeps serving")]
    Previous {
        release: String,
        current: String,
        source: ConvergeError,
    },
    #[error("{color} container {container} has no port published for {port}/tcp on 127.0.0.1")]
    NoBackend {
        color: Color,
        container: String,
        port: u16,
    },
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error(transparent)]
    Converge(#[from] ConvergeError),
    #[error("drain strategy")]
    LoadBalancer(#[from] LoadBalancerError),
}

/// How a deploy went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum How {
    /// The first start of the routed service (nothing served before).
    #[serde(rename = "started")]
    Started,
    /// The new release took the traffic at the proxy's switch.
    #[serde(rename = "switched")]
    Switched,
    /// Converged in place (drain strategy, or the routed service unchanged).
    #[serde(rename = "in place")]
    InPlace,
    #[serde(rename = "up to date")]
    UpToDate,
    #[serde(rename = "rolled back")]
    RolledBack,
    /// Started beside the serving release, reached only by requests that name it, until
    /// `berth promote` or `berth rollback`.
    #[serde(rename = "previewing")]
    Previewing,
}

impl How {
    /// As the answer spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            How::Started => "started",
            How::Switched => "switched",
            How::InPlace => "in place",
            How::UpToDate => "up to date",
            How::RolledBack => "rolled back",
            How::Previewing => "previewing",
        }
    }

    /// In place, or up to date when the plan changed nothing.
    pub fn converged(plan: &Plan) -> How {
        if plan.is_noop() {
            How::UpToDate
        } else {
            How::InPlace
        }
    }
}

/// Outcome of a deploy, for the log and for `berth upgrade`'s answer.
#[derive(Debug, Clone, Serialize)]
pub struct Deployed {
    /// A preview's token (first: SSM keeps the start of the output): what a request's
    /// preview header or cookie must carry to reach it. Only in this answer, never in /status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_token: Option<String>,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub how: How,
    pub color: Option<Color>,
    /// The serving color's replicas, as the proxy routes to them.
    pub backends: Vec<SocketAddr>,
    /// From the start of the upgrade to the proxy's switch.
    pub to_switch_secs: Option<f64>,
    /// Each service's state after the converge (`healthy`, `running`, `completed`).
    pub services: BTreeMap<String, String>,
    /// Deployed without a way back (`--allow-no-rollback`): what of the previous release is
    /// gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_way_back: Option<String>,
    /// The release's migration: run here, or left out (it ran for the fleet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationOutcome>,
}

/// What became of a release's migration in one deploy (no output: that stays in `output`, a
/// 0600 file on this host).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationOutcome {
    pub service: String,
    /// `expand` or `contract`.
    pub phase: &'static str,
    /// Ran in this deploy; false: left out (it ran for the fleet, by `by`) or kept from before.
    pub ran: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millis: Option<u64>,
    /// Where its last lines are kept on this host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// What an upgrade needs; built by the agent (and by in-process commands).
#[derive(Debug)]
pub struct Upgrader<'a> {
    pub engine: &'a Engine,
    pub config: &'a AgentConfig,
    pub up: UpOptions,
    pub progress: &'a Progress,
    /// The agent's state, when an agent serves the health endpoint (the drain strategy turns
    /// it 503); None in-process.
    pub state: Option<&'a AgentState>,
    pub aws: Option<&'a Aws>,
    pub instance_id: String,
    /// How the new release comes to take the traffic (proxy strategy).
    pub entry: Entry,
    /// The release that runs again when this one fails (or that a rollback goes to), whole:
    /// its services besides the routed one are converged back to it. None: the routed service
    /// alone goes back (a floating release, whose files cannot be had as they were).
    pub way_back: Option<&'a WayBack>,
    /// A preview's token and the Unix time it ends (`Entry::Preview`).
    pub preview_token: Option<(String, u64)>,
    /// The new release's contract migration (its service), if it has one: nothing moves the
    /// traffic back across it by itself.
    pub contract: Option<String>,
    /// The release's migration when this deploy runs it: seen as soon as the new release's
    /// converge ends (before a failure's cleanup removes its container).
    pub migration: Option<&'a MigrationRun>,
    /// `[upgrade.alarms]`, opened at the start of this deploy.
    pub alarms: Option<&'a crate::alarms::Gate>,
}

/// A migration this deploy runs, and what became of it.
#[derive(Debug)]
pub struct MigrationRun {
    pub migration: crate::release::migration::Migration,
    pub release: String,
    /// The deploy's start (Unix seconds): a container started before it did not run now.
    pub since: i64,
    /// How it ended, and where its output is kept on this host.
    pub seen: std::sync::Mutex<Option<(crate::release::migration::Ran, Option<PathBuf>)>>,
}

impl MigrationRun {
    /// Its container as Docker has it now, if it ran in this deploy (its output kept).
    pub async fn observe(
        &self,
        engine: &Engine,
        config: &AgentConfig,
    ) -> Option<(crate::release::migration::Ran, Option<PathBuf>)> {
        crate::release::migration::observe_kept(
            engine,
            &config.project,
            &config.run_dir,
            &self.migration,
            &self.release,
            self.since,
        )
        .await
    }
}

impl Upgrader<'_> {
    /// Runs the hook of `stage` (`[upgrade.hooks]`), if one is set, for `release` on
    /// `backends`.
    pub async fn hook(
        &self,
        stage: &'static str,
        release: &str,
        previous: Option<&str>,
        backends: &[SocketAddr],
    ) -> Result<(), hooks::HookFailed> {
        let hooks = &self.config.upgrade.hooks;
        let settings = match stage {
            "after_healthy" => hooks.after_healthy.as_ref(),
            "after_switch" => hooks.after_switch.as_ref(),
            _ => hooks.after_rollback.as_ref(),
        };
        let Some(settings) = settings else {
            return Ok(());
        };
        let ctx = hooks::Context {
            stage,
            release,
            previous,
            project: &self.config.project,
            backends,
        };
        hooks::run(settings, &ctx, &self.config.run_dir)
            .await
            .map(|_| ())
    }

    /// The after_rollback hook: its failure is logged (the rollback is done).
    pub async fn after_rollback(&self, release: &str, left: &str, backends: &[SocketAddr]) {
        if let Err(e) = self
            .hook("after_rollback", release, Some(left), backends)
            .await
        {
            tracing::error!(error = %crate::report::chain(&e), "the after_rollback hook failed");
        }
    }

    /// Sees how this deploy's migration ended (`converged`: the new release's converge), if it
    /// runs one: before a failure's cleanup puts the previous release's services back.
    pub async fn observe_migration(
        &self,
        converged: &Result<crate::engine::converge::UpReport, ConvergeError>,
    ) {
        use crate::release::migration::{self, Ran};
        let Some(run) = self.migration else {
            return;
        };
        let seen = match converged {
            // Docker may have removed the failed container already: the error says it all.
            Err(ConvergeError::Exited {
                service,
                container,
                code,
            }) if *service == run.migration.service => {
                let output = migration::keep_output(
                    self.engine,
                    &self.config.run_dir,
                    &run.release,
                    container,
                )
                .await;
                Some((
                    Ran {
                        service: service.clone(),
                        phase: run.migration.phase,
                        exit: *code,
                        millis: 0,
                        output: None,
                    },
                    output,
                ))
            }
            _ => run.observe(self.engine, self.config).await,
        };
        if let (Some(seen), Ok(mut slot)) = (seen, run.seen.lock()) {
            *slot = Some(seen);
        }
    }
}

/// A release to go back to, loaded as its manifest pins it.
#[derive(Debug, Clone)]
pub struct WayBack {
    pub release: String,
    pub project: Project,
    /// Its objects as fetched (for `/status` once it serves again).
    pub objects: Vec<crate::release::ObjectRecord>,
}

/// How a new release comes to take the traffic under the proxy strategy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Entry {
    /// At once, at the switch (then watched and judged).
    #[default]
    Switch,
    /// Not yet: in preview, for the requests that name it, until `berth promote`.
    Preview,
    /// Through a weighted canary: these shares of sessions (percent, rising), each held for
    /// `upgrade.canary.step_secs` while the analysis stays green, then the switch.
    Canary(Vec<u8>),
}

impl Upgrader<'_> {
    /// Makes the host run `project` (boot, upgrade, or an agent restart), by the configured
    /// strategy.
    pub async fn deploy(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        match self.config.upgrade.strategy {
            Strategy::Proxy => self.deploy_proxy(project, release).await,
            Strategy::Drain if self.entry != Entry::Switch => Err(UpgradeError::Routed {
                project: project.name.clone(),
                message: "a preview or a canary needs the proxy strategy ([upgrade] strategy = \"proxy\")"
                    .into(),
            }),
            Strategy::Drain => self.deploy_drain(project, release).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_reads_the_same_in_answers_and_logs() {
        for how in [
            How::Started,
            How::Switched,
            How::InPlace,
            How::UpToDate,
            How::RolledBack,
            How::Previewing,
        ] {
            let json = serde_json::to_value(how).unwrap_or_default();
            assert_eq!(json, how.as_str());
        }
    }
}
