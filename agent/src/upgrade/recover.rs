//! Putting things straight after a crash or a restart, from what Docker and the proxy say:
//! which color serves, whether the proxy must be switched to it, and what becomes of the other
//! color. The decision is a pure function of the observed state; [`Upgrader::recover`] looks
//! and then acts on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use futures_util::future::join_all;

use super::colors::{Color, Routed, Side};
use super::{UpgradeError, Upgrader};
use crate::proxy;

/// What to do about the color that does not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherSide {
    /// Absent or stopped already (a kept previous release): nothing.
    Leave,
    /// An upgrade that never switched: remove it.
    Remove,
    /// The old release, still running after a switch: drain and stop it (kept for rollback).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The color that serves from now on; None: nothing healthy or routed runs.
    pub serving: Option<Color>,
    /// Route the proxy to these first (it routes elsewhere, nowhere, or also to replicas that
    /// are gone or sick).
    pub switch_to: Option<Vec<SocketAddr>>,
    pub other: OtherSide,
}

/// Whether two lists of backends share one.
fn overlap(a: &[SocketAddr], b: &[SocketAddr]) -> bool {
    a.iter().any(|x| b.contains(x))
}

/// The proxy routes to the healthy color if it can; a routed color with no healthy replica
/// gives way to a healthy one, the older if both are (the newer is an upgrade that never
/// finished). `route` and `previous` are the proxy's; `healthy` holds, per running color with
/// any, the backends of its replicas that pass their checks. A color is the routed one when
/// the route names any of its backends (a replica restarted by Docker gets a new port).
pub fn decide(
    sides: &BTreeMap<Color, Side>,
    healthy: &BTreeMap<Color, Vec<SocketAddr>>,
    route: &[SocketAddr],
    previous: &[SocketAddr],
) -> Recovery {
    let routed_color = sides
        .values()
        .find(|s| s.running && overlap(&s.backends, route))
        .map(|s| s.color);
    let is_healthy =
        |c: &Color| sides.contains_key(c) && healthy.get(c).is_some_and(|b| !b.is_empty());
    let active = match routed_color {
        Some(c) if is_healthy(&c) => Some(c),
        _ => healthy
            .keys()
            .filter(|c| is_healthy(c))
            .min_by_key(|c| sides[*c].created)
            .copied()
            .or(routed_color),
    };
    let Some(active) = active else {
        return Recovery {
            serving: None,
            switch_to: None,
            other: OtherSide::Leave,
        };
    };
    let serving = &sides[&active];
    let mut wanted = healthy.get(&active).cloned().unwrap_or_default();
    wanted.sort();
    let mut current = route.to_vec();
    current.sort();
    // Nothing healthy to route to: the route stays as it is rather than becoming empty.
    let switch_to = (!wanted.is_empty() && wanted != current).then_some(wanted);
    let other = match sides.get(&active.other()) {
        Some(other) if other.running => {
            // The color the proxy switched away from is the old release; any other running
            // color is an upgrade that never switched (or, with the proxy's memory lost, the
            // newer one).
            let switched_from = overlap(&other.backends, previous);
            let never_switched = !switched_from
                && (routed_color == Some(active) || other.created >= serving.created);
            if never_switched {
                OtherSide::Remove
            } else {
                OtherSide::Stop
            }
        }
        _ => OtherSide::Leave,
    };
    Recovery {
        serving: Some(active),
        switch_to,
        other,
    }
}

impl Upgrader<'_> {
    /// Looks at both colors and the proxy's route, decides ([`decide`]) and acts: returns the
    /// serving color's side, if any.
    pub async fn recover(&self, routed: &Routed) -> Result<Option<Side>, UpgradeError> {
        Ok(self.recover_serving(routed).await?.map(|(side, _)| side))
    }

    /// As [`Upgrader::recover`], with the serving side's backends that passed their checks
    /// (the watchdog judges its replicas by them, without checking again).
    pub async fn recover_serving(
        &self,
        routed: &Routed,
    ) -> Result<Option<(Side, Vec<SocketAddr>)>, UpgradeError> {
        let mut sides = self.sides(routed).await?;
        let route = self.proxy_route().await?;
        let (preview, canary) = (route.preview, route.canary);
        let (previous, route) = (route.previous, route.active);
        let mut healthy = BTreeMap::new();
        for s in sides.values().filter(|s| s.running) {
            let passing = self.healthy_backends(s).await;
            if !passing.is_empty() {
                healthy.insert(s.color, passing);
            }
        }
        let recovery = decide(&sides, &healthy, &route, &previous);
        let Some(active) = recovery.serving else {
            return Ok(None);
        };
        let serving = sides[&active].clone();
        if let Some(backends) = &recovery.switch_to {
            self.progress.warn(&format!(
                "proxy routed to {}; switching to the healthy {} release {} at {}",
                list(&route),
                active,
                serving.release.as_deref().unwrap_or("?"),
                list(backends),
            ));
            self.switch(backends, serving.release.as_deref()).await?;
        }
        if let Some(other) = sides.remove(&active.other()) {
            let release = other.release.as_deref().unwrap_or("?");
            // A release in preview (`berth upgrade --preview`) never switched either, and
            // waits for `berth promote` or `rollback`. A canary's has nobody left to step it
            // up or judge it: it goes, its sessions back on the serving release first.
            let previewed =
                recovery.other == OtherSide::Remove && overlap(&other.backends, &preview);
            match recovery.other {
                OtherSide::Leave => {}
                OtherSide::Remove if previewed && !canary => {}
                OtherSide::Remove => {
                    if previewed {
                        proxy::client::preview(self.proxy_socket(), &[], None, 0, None).await?;
                        self.drain(&other.backends).await?;
                    }
                    self.progress.warn(&format!(
                        "removing release {release} ({}): an upgrade that never switched",
                        other.color
                    ));
                    self.remove_side(&other).await;
                }
                OtherSide::Stop => {
                    self.progress.warn(&format!(
                        "stopping release {release} ({}): still running after the switch",
                        other.color
                    ));
                    self.drain(&other.backends).await?;
                    self.stop_side(&other).await;
                }
            }
        }
        let passing = healthy.remove(&active).unwrap_or_default();
        Ok(Some((serving, passing)))
    }

    /// The backends of a side's running replicas that pass their checks, looked at together.
    pub async fn healthy_backends(&self, side: &Side) -> Vec<SocketAddr> {
        let looks = side.replicas.iter().filter(|r| r.running).map(|r| async {
            let backend = r.backend?;
            self.check(&r.id, Some(backend))
                .await
                .ok()
                .map(|()| backend)
        });
        let mut passing: Vec<SocketAddr> = join_all(looks).await.into_iter().flatten().collect();
        passing.sort();
        passing
    }
}

/// Backends for a message: `a, b`, or `nothing`.
fn list(backends: &[SocketAddr]) -> String {
    if backends.is_empty() {
        return "nothing".into();
    }
    backends
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::upgrade::colors::Replica;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A side whose replicas publish `ports` (None: that replica is stopped).
    fn side(color: Color, ports: &[Option<u16>], created: i64) -> Side {
        let replicas = ports
            .iter()
            .enumerate()
            .map(|(i, port)| Replica {
                id: format!("{color}-{i}-id"),
                name: format!("web-{color}-{}", i + 1),
                running: port.is_some(),
                backend: port.map(addr),
            })
            .collect();
        Side::new(color, Some(format!("{color}-release")), created, replicas)
    }

    /// One running replica.
    fn one(color: Color, port: u16, created: i64) -> Side {
        side(color, &[Some(port)], created)
    }

    fn stopped(color: Color, created: i64) -> Side {
        side(color, &[None], created)
    }

    fn sides(list: Vec<Side>) -> BTreeMap<Color, Side> {
        list.into_iter().map(|s| (s.color, s)).collect()
    }

    /// Every running replica of `colors` healthy.
    fn all_healthy(
        s: &BTreeMap<Color, Side>,
        colors: &[Color],
    ) -> BTreeMap<Color, Vec<SocketAddr>> {
        colors.iter().map(|c| (*c, s[c].backends.clone())).collect()
    }

    fn addrs(ports: &[u16]) -> Vec<SocketAddr> {
        ports.iter().copied().map(addr).collect()
    }

    use Color::{Blue, Green};

    #[test]
    fn killed_before_the_switch_keeps_the_routed_color_and_removes_the_new_one() {
        let s = sides(vec![one(Blue, 1001, 10), one(Green, 1002, 20)]);
        let r = decide(&s, &all_healthy(&s, &[Blue, Green]), &addrs(&[1001]), &[]);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn killed_after_the_switch_keeps_the_new_color_and_stops_the_old_one() {
        let s = sides(vec![one(Blue, 1001, 10), one(Green, 1002, 20)]);
        let h = all_healthy(&s, &[Blue, Green]);
        let r = decide(&s, &h, &addrs(&[1002]), &addrs(&[1001]));
        assert_eq!(r.serving, Some(Green));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Stop);
    }

    #[test]
    fn a_sick_routed_color_gives_way_to_a_healthy_one() {
        let s = sides(vec![one(Blue, 1001, 10), one(Green, 1002, 20)]);
        let r = decide(
            &s,
            &all_healthy(&s, &[Blue]),
            &addrs(&[1002]),
            &addrs(&[1001]),
        );
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, Some(addrs(&[1001])));
        // Green, the newer and sick, is not the color the proxy switched away from: it goes.
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn with_the_proxys_memory_lost_the_older_healthy_color_serves() {
        let s = sides(vec![one(Blue, 1001, 30), one(Green, 1002, 20)]);
        let r = decide(&s, &all_healthy(&s, &[Blue, Green]), &[], &[]);
        assert_eq!(r.serving, Some(Green));
        assert_eq!(r.switch_to, Some(addrs(&[1002])));
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn a_routed_color_with_nothing_healthy_still_serves_and_a_stopped_one_is_left() {
        let s = sides(vec![one(Blue, 1001, 10), stopped(Green, 5)]);
        let r = decide(&s, &BTreeMap::new(), &addrs(&[1001]), &[]);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Leave);
    }

    #[test]
    fn nothing_running_means_nothing_serves() {
        let s = sides(vec![stopped(Blue, 10)]);
        let r = decide(&s, &BTreeMap::new(), &[], &[]);
        assert_eq!(r.serving, None);
        assert_eq!(r.other, OtherSide::Leave);
        assert_eq!(
            decide(&BTreeMap::new(), &BTreeMap::new(), &[], &[]).serving,
            None
        );
    }

    fn three(color: Color, base: u16, created: i64) -> Side {
        side(
            color,
            &[Some(base), Some(base + 1), Some(base + 2)],
            created,
        )
    }

    #[test]
    fn three_replicas_killed_before_the_switch_keep_the_routed_three() {
        let s = sides(vec![three(Blue, 1001, 10), three(Green, 2001, 20)]);
        let h = all_healthy(&s, &[Blue, Green]);
        // The proxy lists them in its own order.
        let r = decide(&s, &h, &addrs(&[1003, 1001, 1002]), &[]);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn three_replicas_killed_after_the_switch_keep_the_new_three_and_stop_the_old() {
        let s = sides(vec![three(Blue, 1001, 10), three(Green, 2001, 20)]);
        let h = all_healthy(&s, &[Blue, Green]);
        let r = decide(
            &s,
            &h,
            &addrs(&[2001, 2002, 2003]),
            &addrs(&[1001, 1002, 1003]),
        );
        assert_eq!(r.serving, Some(Green));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Stop);
    }

    #[test]
    fn a_dead_or_sick_replica_leaves_the_route_and_its_color_keeps_serving() {
        // Green's second replica was killed; its third fails its checks.
        let s = sides(vec![
            side(Green, &[Some(2001), None, Some(2003)], 20),
            three(Blue, 1001, 10),
        ]);
        let mut h = all_healthy(&s, &[Blue]);
        h.insert(Green, addrs(&[2001]));
        let r = decide(
            &s,
            &h,
            &addrs(&[2001, 2002, 2003]),
            &addrs(&[1001, 1002, 1003]),
        );
        assert_eq!(
            r.serving,
            Some(Green),
            "one healthy replica is enough to stay"
        );
        assert_eq!(r.switch_to, Some(addrs(&[2001])));
        assert_eq!(r.other, OtherSide::Stop);
    }

    #[test]
    fn a_route_naming_some_of_a_colors_backends_is_still_that_color() {
        // Docker restarted one replica on a new port: the route names the old one.
        let s = sides(vec![three(Blue, 1001, 10)]);
        let h = all_healthy(&s, &[Blue]);
        let r = decide(&s, &h, &addrs(&[1001, 1002, 1999]), &[]);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, Some(addrs(&[1001, 1002, 1003])));
        assert_eq!(r.other, OtherSide::Leave);
    }

    #[test]
    fn three_replicas_all_sick_give_way_to_the_healthy_previous_three() {
        let s = sides(vec![three(Blue, 1001, 10), three(Green, 2001, 20)]);
        let h = all_healthy(&s, &[Blue]);
        let r = decide(
            &s,
            &h,
            &addrs(&[2001, 2002, 2003]),
            &addrs(&[1001, 1002, 1003]),
        );
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, Some(addrs(&[1001, 1002, 1003])));
        assert_eq!(r.other, OtherSide::Remove);
    }
}
