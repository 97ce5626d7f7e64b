//! The proxy strategy: the new release starts in the idle color beside the serving one (as
//! many replicas as the routed service has), passes its health gate on every replica, takes
//! the traffic at the proxy's switch (one route to all of its backends), is watched for
//! `verify_secs` and judged by its traffic through `bake_secs` ([`super::analysis`]; failing:
//! switched back), and the old color's backends drain together and it
//! stops, kept for `berth rollback`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};

use super::analysis::Before;
use super::colors::{colorize, routed, sides_of, Color, Routed, Side};
use super::{Deployed, Entry, How, UpgradeError, Upgrader};
use crate::compose::Project;
use crate::engine::converge::{self, ConvergeError};
use crate::engine::plan::Action;
use crate::proxy::{self, ProxyError};

impl Upgrader<'_> {
    pub(super) async fn deploy_proxy(
        &self,
        project: &Project,
        release: Option<&str>,
    ) -> Result<Deployed, UpgradeError> {
        let started = Instant::now();
        let routed = routed(project, self.config)?;
        let serving = self.recover(&routed).await?;
        if let Some(serving) = &serving {
            if let Some(kept) = self.unchanged(project, &routed, serving, release).await? {
                // "Serve this release" ends a preview of another one (a rollout going back).
                if self.entry != Entry::Preview && self.preview_on().await?.is_some() {
                    self.end_preview(&routed).await?;
                }
                return Ok(kept);
            }
        }
        let next = match &serving {
            Some(s) => s.color.other(),
            // Nothing serves (a boot): the stopped color of this very release, if any (after a
            // reboot, the agent stopped it on the way down), is started rather than recreated.
            None => self
                .sides(&routed)
                .await?
                .into_values()
                .find(|s| release.is_some() && s.release.as_deref() == release)
                .map_or(Color::Blue, |s| s.color),
        };
        let release_name = release.unwrap_or("(unnamed)").to_string();
        let had_previous = serving.is_some();
        // The previous release's traffic is counted from here when the agent has no samples
        // of it (in-process); a boot has nothing to count.
        let early = match (&serving, self.state) {
            (Some(_), None) => self.traffic_now().await,
            _ => None,
        };
        if matches!(self.entry, Entry::Preview | Entry::Canary(_)) && !had_previous {
            return Err(UpgradeError::PreviewOfNothing {
                project: project.name.clone(),
            });
        }
        if let (Entry::Canary(_), Some(service)) = (&self.entry, &self.contract) {
            return Err(UpgradeError::CanaryAcrossContract {
                release: release_name,
                service: service.clone(),
            });
        }
        let (new, services) = self
            .start_color(project, &routed, next, release, had_previous)
            .await?;
        if self.entry == Entry::Preview {
            return self
                .start_preview(new, serving.as_ref(), release, services)
                .await;
        }
        if let (Entry::Canary(steps), Some(old)) = (&self.entry, &serving) {
            if let Err(e) = self.canary(&new, old, &release_name, steps).await {
                self.restore_rest(&routed, old.color).await;
                return Err(e);
            }
        }
        let before = match &serving {
            Some(old) => self.before_switch(&new, old, early.as_ref()).await,
            None => None,
        };
        self.switch(&new.backends, release).await?;
        let to_switch = started.elapsed().as_secs_f64();
        tracing::info!(release = %release_name, color = %next, backends = ?new.backends, seconds = to_switch, "switched");
        let deployed = Deployed {
            preview_token: None,
            release: release.map(String::from),
            previous: None,
            how: How::Started,
            color: Some(next),
            backends: new.backends.clone(),
            to_switch_secs: Some(to_switch),
            services,
            no_way_back: None,
            migration: None,
        };
        let Some(old) = serving else {
            return Ok(deployed);
        };
        self.settle(&routed, &new, &old, &release_name, before.as_ref())
            .await?;
        Ok(Deployed {
            preview_token: None,
            previous: old.release.clone(),
            how: How::Switched,
            ..deployed
        })
    }

    /// With the routed service unchanged, the rest converges in place: `Some` outcome. `None`:
    /// the routed service changed (a replica more or less included), and a new color is
    /// needed.
    async fn unchanged(
        &self,
        project: &Project,
        routed: &Routed,
        serving: &Side,
        release: Option<&str>,
    ) -> Result<Option<Deployed>, UpgradeError> {
        let traffic = self.config.proxy.port;
        let same = colorize(project, routed, serving.color, release, traffic);
        let plan = converge::plan(self.engine, &same, self.up.remove_orphans).await?;
        let colored = routed.colored(serving.color);
        // Extra replicas (a scale-down) count too: removing one in place would pull a backend
        // from under the route.
        let keep = plan
            .containers
            .iter()
            .filter(|s| s.service == colored)
            .all(|s| s.action == Action::Keep);
        if !keep {
            return Ok(None);
        }
        let report = match converge::up(self.engine, &same, &self.up, self.progress).await {
            Ok(r) => r,
            Err(e) => {
                // What the failed converge changed goes back too.
                self.restore_rest(routed, serving.color).await;
                return Err(e.into());
            }
        };
        Ok(Some(Deployed {
            preview_token: None,
            release: release.map(String::from),
            previous: serving.release.clone(),
            how: How::converged(&report.plan),
            color: Some(serving.color),
            backends: serving.backends.clone(),
            to_switch_secs: None,
            services: report.services,
            no_way_back: None,
            migration: None,
        }))
    }

    /// Converges the release into color `next` beside the serving one and waits until every
    /// replica passes its health gate: the new side, and each service's state. Failing, nothing
    /// of it is left behind.
    async fn start_color(
        &self,
        project: &Project,
        routed: &Routed,
        next: Color,
        release: Option<&str>,
        had_previous: bool,
    ) -> Result<(Side, BTreeMap<String, String>), UpgradeError> {
        let release_name = release.unwrap_or("(unnamed)").to_string();
        // A kept previous release in the color we need goes now; the same release stays, for
        // the converge to start (or recreate, if its configuration changed).
        if let Some(stale) = self.sides(routed).await?.remove(&next) {
            if release.is_none() || stale.release.as_deref() != release {
                self.remove_side(&stale).await;
            }
        }
        let colored = colorize(project, routed, next, release, self.config.proxy.port);
        tracing::info!(release = %release_name, color = %next, "starting the new release beside the serving one");
        let converged = converge::up(self.engine, &colored, &self.up, self.progress).await;
        self.observe_migration(&converged).await;
        let report = match converged {
            Ok(r) => r,
            Err(source) => {
                if let Some(new) = self.sides(routed).await?.remove(&next) {
                    self.remove_side(&new).await;
                }
                if had_previous {
                    self.restore_rest(routed, next.other()).await;
                }
                if !had_previous {
                    // A first start: there is no previous release to speak of.
                    return Err(UpgradeError::Converge(source));
                }
                return Err(UpgradeError::NewRelease {
                    release: release_name,
                    source,
                });
            }
        };
        let new = self.side(routed, next).await?;
        let ready = match every_replica_published(&new, routed) {
            Ok(()) => self.gate(&release_name, &new.backends).await,
            Err(e) => Err(e),
        };
        // Healthy, and reached by nothing but the hook yet.
        let ready = match ready {
            Ok(()) => {
                let previous = self.way_back.map(|w| w.release.as_str());
                self.hook("after_healthy", &release_name, previous, &new.backends)
                    .await
                    .map_err(|source| UpgradeError::Hook {
                        release: release_name.clone(),
                        source,
                    })
            }
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            self.remove_side(&new).await;
            if had_previous {
                self.restore_rest(routed, next.other()).await;
            }
            return Err(e);
        }
        Ok((new, report.services))
    }

    /// Color `color` as Docker reports it now, or `NoBackend` when it has no replica.
    async fn side(&self, routed: &Routed, color: Color) -> Result<Side, UpgradeError> {
        self.sides(routed)
            .await?
            .remove(&color)
            .ok_or_else(|| UpgradeError::NoBackend {
                color,
                container: routed.colored(color),
                port: routed.port,
            })
    }

    /// Switches to `new` (from `old`, which keeps serving until then) and watches it: the
    /// second half of an upgrade, and all of `berth promote`.
    pub(super) async fn switch_and_settle(
        &self,
        routed: &Routed,
        new: &Side,
        old: &Side,
        release_name: &str,
    ) -> Result<(), UpgradeError> {
        let before = self.before_switch(new, old, None).await;
        self.switch(&new.backends, new.release.as_deref()).await?;
        tracing::info!(release = %release_name, color = %new.color, backends = ?new.backends, "switched");
        self.settle(routed, new, old, release_name, before.as_ref())
            .await
    }

    /// After the switch: the new side must stay healthy for `verify_secs` and pass its
    /// analysis through the bake ([`Upgrader::watch`]), else the old one (which never stopped)
    /// takes the traffic back. Then the old side drains and stops.
    pub(super) async fn settle(
        &self,
        routed: &Routed,
        new: &Side,
        old: &Side,
        release_name: &str,
        before: Option<&Before>,
    ) -> Result<(), UpgradeError> {
        let watched = match self
            .hook(
                "after_switch",
                release_name,
                old.release.as_deref(),
                &new.backends,
            )
            .await
        {
            Ok(()) => self.watch(new, release_name, before).await,
            Err(e) => Err(e.into()),
        };
        if let Err(reason) = watched {
            let previous = old.release.clone().unwrap_or_else(|| old.color.to_string());
            if let Some(service) = &self.contract {
                // Across a contract migration the previous release cannot read the database:
                // the new one keeps serving what it can, and a human decides.
                self.drain(&old.backends).await?;
                self.stop_side(old).await;
                tracing::error!(release = %release_name, reason = %crate::report::chain(&reason), previous = %previous, migration = %service, "NOT rolled back: the release's migration is a contract migration");
                return Err(UpgradeError::NotRolledBack {
                    release: release_name.to_string(),
                    previous,
                    service: service.clone(),
                    reason,
                });
            }
            if !old.backends.is_empty() {
                self.switch(&old.backends, old.release.as_deref()).await?;
            }
            self.drain(&new.backends).await?;
            self.remove_side(new).await;
            self.restore_rest(routed, old.color).await;
            tracing::error!(release = %release_name, reason = %crate::report::chain(&reason), previous = %previous, "rolled back");
            self.after_rollback(&previous, release_name, &old.backends)
                .await;
            return Err(UpgradeError::RolledBack {
                release: release_name.to_string(),
                previous,
                reason,
            });
        }
        self.drain(&old.backends).await?;
        self.stop_side(old).await;
        Ok(())
    }

    /// `berth rollback`: the kept previous release serves again.
    pub async fn rollback(&self, project: &str, routed: &Routed) -> Result<Deployed, UpgradeError> {
        if self.preview_on().await?.is_some() {
            return self.end_preview(routed).await;
        }
        let serving = self.recover(routed).await?;
        let mut sides = self.sides(routed).await?;
        let prev_color = serving
            .as_ref()
            .map(|s| s.color.other())
            .unwrap_or(Color::Blue);
        let Some(prev) = sides.remove(&prev_color) else {
            return Err(UpgradeError::NoPrevious {
                project: project.into(),
            });
        };
        let prev_name = prev
            .release
            .clone()
            .unwrap_or_else(|| prev.color.to_string());
        let current = serving
            .as_ref()
            .and_then(|s| s.release.clone())
            .unwrap_or_else(|| "nothing".into());
        let deadline = Instant::now() + Duration::from_secs(self.config.timeouts.ready_secs);
        let service = routed.colored(prev_color);
        let started = try_join_all(prev.ids().map(|id| async {
            self.engine.start(id).await.map_err(ConvergeError::Docker)?;
            converge::wait_running(self.engine, &service, id, deadline).await
        }))
        .await;
        if let Err(source) = started {
            self.stop_side(&prev).await;
            return Err(UpgradeError::Previous {
                release: prev_name,
                current,
                source,
            });
        }
        // A restarted container gets a new ephemeral port.
        let prev = self.side(routed, prev_color).await?;
        let ready = match every_replica_published(&prev, routed) {
            Ok(()) => self.gate(&prev_name, &prev.backends).await,
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            // Stopped again, it is still there for another try.
            self.stop_side(&prev).await;
            return Err(e);
        }
        self.switch(&prev.backends, prev.release.as_deref()).await?;
        // The other services as the release that serves again had them.
        self.restore_rest(routed, prev_color).await;
        if let Some(old) = &serving {
            self.drain(&old.backends).await?;
            self.stop_side(old).await;
        }
        self.after_rollback(&prev_name, &current, &prev.backends)
            .await;
        Ok(Deployed {
            preview_token: None,
            release: prev.release.clone(),
            previous: serving.and_then(|s| s.release),
            how: How::RolledBack,
            color: Some(prev_color),
            backends: prev.backends,
            to_switch_secs: None,
            services: BTreeMap::new(),
            no_way_back: None,
            migration: None,
        })
    }

    /// Removes the stopped previous release once it has been seen stopped for `keep`
    /// (`upgrade.keep_previous_secs`). `seen` remembers since when, per container; after an
    /// agent restart the count starts again, which only keeps it longer.
    pub async fn expire_previous(
        &self,
        routed: &Routed,
        seen: &mut BTreeMap<String, Instant>,
        keep: Duration,
    ) -> Result<(), UpgradeError> {
        let sides = self.sides(routed).await?;
        let stopped: Vec<&Side> = sides.values().filter(|s| !s.running).collect();
        seen.retain(|id, _| stopped.iter().any(|s| s.ids().any(|i| i == id)));
        for side in stopped {
            let since = side
                .ids()
                .map(|id| *seen.entry(id.to_string()).or_insert_with(Instant::now))
                .min()
                .unwrap_or_else(Instant::now);
            if since.elapsed() >= keep {
                self.remove_side(side).await;
                tracing::info!(release = ?side.release, color = %side.color, kept_secs = keep.as_secs(), "removed the previous release");
            }
        }
        Ok(())
    }

    /// The services besides the routed one, converged back to [`Upgrader::way_back`]'s
    /// release, which serves (again) in `color`: so that after a failed upgrade, an ended
    /// preview or a rollback, the release that serves runs whole (its env files, secrets and
    /// images), not its routed service alone. The routed service is left out: its color serves
    /// already. A failure here is logged: the routed service serves either way.
    pub(super) async fn restore_rest(&self, routed: &Routed, color: Color) {
        let Some(back) = self.way_back else {
            return;
        };
        // Its migration ran when it was deployed: going back does not run it again.
        let migration = crate::release::migration::declared(&back.project);
        let mut project = colorize(
            &back.project,
            routed,
            color,
            Some(&back.release),
            self.config.proxy.port,
        );
        let colored = routed.colored(color);
        project.services.shift_remove(&colored);
        project.disabled_services.push(colored);
        if let Ok(Some(m)) = migration {
            crate::release::migration::skip(&mut project, &m.service);
        }
        match converge::up(self.engine, &project, &self.up, self.progress).await {
            Ok(report) if report.plan.is_noop() => {}
            Ok(_) => {
                tracing::info!(release = %back.release, "the other services are back on the release that serves")
            }
            Err(e) => {
                tracing::error!(release = %back.release, error = %crate::report::chain(&e), "could not bring the other services back to the release that serves")
            }
        }
    }

    /// Before the services stop for good: the proxy lets requests in flight to every serving
    /// backend finish (up to `drain_secs`).
    pub async fn drain_serving(&self, routed: &Routed) {
        let drained = match self.proxy_route().await {
            Ok(route) => self.drain(&route.active).await,
            Err(e) => Err(e),
        };
        if let Err(e) = drained {
            tracing::warn!(error = %crate::report::chain(&e), service = %routed.service, "drain before stopping");
        }
    }

    /// Both colors of the routed service, as Docker reports them.
    pub async fn sides(&self, routed: &Routed) -> Result<BTreeMap<Color, Side>, UpgradeError> {
        let containers = self.engine.project_containers(&self.config.project).await?;
        Ok(sides_of(&containers, routed))
    }

    pub(super) fn proxy_socket(&self) -> &Path {
        &self.config.proxy.control
    }

    /// The proxy's route: the backends it sends to now, the ones before them, and those of a
    /// preview.
    pub(super) async fn proxy_route(&self) -> Result<ProxyRoute, UpgradeError> {
        let status = proxy::client::status(self.proxy_socket()).await?;
        Ok(ProxyRoute {
            active: status.active,
            previous: status.previous,
            canary: status.preview.as_ref().is_some_and(|p| p.percent > 0),
            preview: status.preview.map(|p| p.backends).unwrap_or_default(),
        })
    }

    /// Routes new requests to `backends`, the replicas of `release` (the label the proxy's
    /// metrics carry), in one step.
    pub(super) async fn switch(
        &self,
        backends: &[SocketAddr],
        release: Option<&str>,
    ) -> Result<(), UpgradeError> {
        proxy::client::route(self.proxy_socket(), backends, release).await?;
        Ok(())
    }

    /// Waits until nothing is in flight to any of `backends`, each up to `drain_secs`, all at
    /// once. Not finishing is not fatal: the old release is past its drain time and stops
    /// anyway (gracefully).
    pub(super) async fn drain(&self, backends: &[SocketAddr]) -> Result<(), UpgradeError> {
        let drains = join_all(backends.iter().map(|b| self.drain_one(*b))).await;
        drains.into_iter().collect()
    }

    async fn drain_one(&self, backend: SocketAddr) -> Result<(), UpgradeError> {
        let timeout = Duration::from_secs(self.config.upgrade.drain_secs);
        match proxy::client::drain(self.proxy_socket(), backend, timeout).await {
            Ok(d) if d.ok => {}
            Ok(d) => self.progress.warn(&format!(
                "drain of {backend}: incomplete, {} in flight",
                d.inflight
            )),
            // A refusal (not an unreadable answer) only means the drain did not finish.
            Err(e @ ProxyError::Answer { source: None, .. }) => self
                .progress
                .warn(&format!("drain of {backend}: {}", crate::report::chain(&e))),
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Stops every replica of `side`, together.
    pub(super) async fn stop_side(&self, side: &Side) {
        join_all(side.ids().map(|id| async move {
            // The container's own stop_grace_period (set at create) applies.
            if let Err(e) = self.engine.stop(id, None).await {
                tracing::warn!(color = %side.color, error = %crate::report::chain(&e), "stopping the old release");
            }
        }))
        .await;
    }

    pub(super) async fn remove_side(&self, side: &Side) {
        join_all(side.ids().map(|id| async move {
            if let Err(e) = self.engine.remove(id, true).await {
                tracing::warn!(color = %side.color, error = %crate::report::chain(&e), "removing containers");
            }
        }))
        .await;
    }
}

/// The proxy's backends, as its status names them.
#[derive(Debug, Clone, Default)]
pub(super) struct ProxyRoute {
    pub(super) active: Vec<SocketAddr>,
    pub(super) previous: Vec<SocketAddr>,
    pub(super) preview: Vec<SocketAddr>,
    /// The preview is a weighted canary's (sessions go there by share, not by name).
    pub(super) canary: bool,
}

/// Every replica of a side that runs publishes the traffic port: the proxy can reach them all.
fn every_replica_published(side: &Side, routed: &Routed) -> Result<(), UpgradeError> {
    let missing = side.replicas.iter().find(|r| r.backend.is_none());
    if side.backends.is_empty() || missing.is_some() {
        return Err(UpgradeError::NoBackend {
            color: side.color,
            container: missing.map_or_else(|| routed.colored(side.color), |r| r.name.clone()),
            port: routed.port,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::colors::Replica;

    fn replica(n: u16, running: bool, port: Option<u16>) -> Replica {
        Replica {
            id: format!("id-{n}"),
            name: format!("shop-web-green-{n}"),
            running,
            backend: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        }
    }

    #[test]
    fn a_side_is_switched_to_only_when_every_replica_publishes_a_backend() {
        let routed = Routed {
            service: "web".into(),
            port: 80,
        };
        let side = |replicas| Side::new(Color::Green, Some("2".into()), 1, replicas);
        let all = side(vec![
            replica(1, true, Some(1001)),
            replica(2, true, Some(1002)),
        ]);
        assert!(every_replica_published(&all, &routed).is_ok());
        let one_missing = side(vec![replica(1, true, Some(1001)), replica(2, false, None)]);
        let e = every_replica_published(&one_missing, &routed).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err(
                "green container shop-web-green-2 has no port published for 80/tcp on 127.0.0.1"
                    .into()
            )
        );
        let e = every_replica_published(&side(vec![]), &routed).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.contains("container web-green ")),
            "{e:?}"
        );
    }
}
