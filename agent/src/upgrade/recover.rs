//! Putting things straight after a crash or a restart, from what Docker and the proxy say:
//! which color serves, whether the proxy must be switched to it, and what becomes of the other
//! color. The decision is a pure function of the observed state; [`Upgrader::recover`] looks
//! and then acts on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::colors::{Color, Routed, Side};
use super::{UpgradeError, Upgrader};

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
    /// Switch the proxy here first (it routes elsewhere, or nowhere).
    pub switch_to: Option<SocketAddr>,
    pub other: OtherSide,
}

/// The proxy routes to the healthy color if it can; a routed color that is sick gives way to a
/// healthy one, the older if both are (the newer is an upgrade that never finished). `route`
/// and `previous` are the proxy's; `healthy` lists the running colors that pass their checks
/// and publish a backend.
pub fn decide(
    sides: &BTreeMap<Color, Side>,
    healthy: &[Color],
    route: Option<SocketAddr>,
    previous: Option<SocketAddr>,
) -> Recovery {
    let routed_color = sides
        .values()
        .find(|s| s.running && s.backend.is_some() && s.backend == route)
        .map(|s| s.color);
    let active = match routed_color {
        Some(c) if healthy.contains(&c) => Some(c),
        _ => healthy
            .iter()
            .copied()
            .min_by_key(|c| sides[c].created)
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
    let switch_to = serving.backend.filter(|b| route != Some(*b));
    let other = match sides.get(&active.other()) {
        Some(other) if other.running => {
            // The color the proxy switched away from is the old release; any other running
            // color is an upgrade that never switched (or, with the proxy's memory lost, the
            // newer one).
            let switched_from = other.backend.is_some() && other.backend == previous;
            let never_switched =
                !switched_from && (route == serving.backend || other.created >= serving.created);
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
        let mut sides = self.sides(routed).await?;
        let (route, previous) = self.proxy_route().await?;
        let mut healthy = Vec::new();
        for s in sides.values().filter(|s| s.running) {
            let mut ok = true;
            for id in &s.ids {
                ok &= self.check(id, s.backend).await.is_ok();
            }
            if ok && s.backend.is_some() {
                healthy.push(s.color);
            }
        }
        let recovery = decide(&sides, &healthy, route, previous);
        let Some(active) = recovery.serving else {
            return Ok(None);
        };
        let serving = sides[&active].clone();
        if let Some(b) = recovery.switch_to {
            self.progress.warn(&format!(
                "proxy routed to {}; switching to the healthy {} release {} at {b}",
                route
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "nothing".into()),
                active,
                serving.release.as_deref().unwrap_or("?")
            ));
            self.switch(b).await?;
        }
        if let Some(other) = sides.remove(&active.other()) {
            let release = other.release.as_deref().unwrap_or("?");
            match recovery.other {
                OtherSide::Leave => {}
                OtherSide::Remove => {
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
                    if let Some(b) = other.backend {
                        self.drain(b).await?;
                    }
                    self.stop_side(&other).await;
                }
            }
        }
        Ok(Some(serving))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn side(color: Color, running: bool, port: Option<u16>, created: i64) -> Side {
        Side {
            color,
            ids: vec![format!("{color}-id")],
            running,
            release: Some(format!("{color}-release")),
            backend: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            created,
        }
    }

    fn addr(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn sides(list: Vec<Side>) -> BTreeMap<Color, Side> {
        list.into_iter().map(|s| (s.color, s)).collect()
    }

    use Color::{Blue, Green};

    #[test]
    fn killed_before_the_switch_keeps_the_routed_color_and_removes_the_new_one() {
        let s = sides(vec![
            side(Blue, true, Some(1001), 10),
            side(Green, true, Some(1002), 20),
        ]);
        let r = decide(&s, &[Blue, Green], addr(1001), None);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn killed_after_the_switch_keeps_the_new_color_and_stops_the_old_one() {
        let s = sides(vec![
            side(Blue, true, Some(1001), 10),
            side(Green, true, Some(1002), 20),
        ]);
        let r = decide(&s, &[Blue, Green], addr(1002), addr(1001));
        assert_eq!(r.serving, Some(Green));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Stop);
    }

    #[test]
    fn a_sick_routed_color_gives_way_to_a_healthy_one() {
        let s = sides(vec![
            side(Blue, true, Some(1001), 10),
            side(Green, true, Some(1002), 20),
        ]);
        let r = decide(&s, &[Blue], addr(1002), addr(1001));
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, addr(1001));
        // Green, the newer and sick, is not the color the proxy switched away from: it goes.
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn with_the_proxys_memory_lost_the_older_healthy_color_serves() {
        let s = sides(vec![
            side(Blue, true, Some(1001), 30),
            side(Green, true, Some(1002), 20),
        ]);
        let r = decide(&s, &[Blue, Green], None, None);
        assert_eq!(r.serving, Some(Green));
        assert_eq!(r.switch_to, addr(1002));
        assert_eq!(r.other, OtherSide::Remove);
    }

    #[test]
    fn a_routed_color_with_nothing_healthy_still_serves_and_a_stopped_one_is_left() {
        let s = sides(vec![
            side(Blue, true, Some(1001), 10),
            side(Green, false, None, 5),
        ]);
        let r = decide(&s, &[], addr(1001), None);
        assert_eq!(r.serving, Some(Blue));
        assert_eq!(r.switch_to, None);
        assert_eq!(r.other, OtherSide::Leave);
    }

    #[test]
    fn nothing_running_means_nothing_serves() {
        let s = sides(vec![side(Blue, false, None, 10)]);
        let r = decide(&s, &[], None, None);
        assert_eq!(r.serving, None);
        assert_eq!(r.other, OtherSide::Leave);
        assert_eq!(decide(&BTreeMap::new(), &[], None, None).serving, None);
    }
}
