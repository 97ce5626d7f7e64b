//! Test it before it takes traffic: `berth upgrade --preview` starts the new release beside the
//! serving one and stops before the switch. The proxy sends the requests that carry the
//! preview's token (its preview header or cookie, through the same load balancer) to it, and
//! everyone else to the serving one. The token is derived, not chosen: HMAC-SHA256 of the
//! release and the time it ends under the preview key ([`super::token`]), so that every
//! instance of a fleet derives the same one and the release id alone reaches nothing; until `berth promote` (the switch, then the usual watch and
//! analysis) or `berth rollback` (the new release goes), or `upgrade.preview_secs` passes (the
//! same as a rollback).
//!
//! The preview is the proxy's state, not the agent's: a restarted agent finds it in the proxy's
//! status ([`super::recover`] keeps a side in preview), and a restarted proxy has forgotten it,
//! so the next look removes the unswitched side as any upgrade that never switched.

use std::collections::BTreeMap;

use super::colors::{Routed, Side};
use super::{Deployed, How, UpgradeError, Upgrader};
use crate::proxy;

impl Upgrader<'_> {
    /// Routes the preview to `new`, which passed its health gate beside `serving`.
    pub(super) async fn start_preview(
        &self,
        new: Side,
        serving: Option<&Side>,
        release: Option<&str>,
        services: BTreeMap<String, String>,
    ) -> Result<Deployed, UpgradeError> {
        let Some(release) = release else {
            self.remove_side(&new).await;
            return Err(UpgradeError::PreviewUnnamed);
        };
        let Some((token, until)) = self.preview_token.clone() else {
            self.remove_side(&new).await;
            return Err(UpgradeError::PreviewUnnamed);
        };
        let by_token = Some((token.as_str(), until));
        if let Err(e) = proxy::client::preview(
            self.proxy_socket(),
            &new.backends,
            Some(release),
            0,
            by_token,
        )
        .await
        {
            self.remove_side(&new).await;
            return Err(e.into());
        }
        tracing::info!(release, color = %new.color, backends = ?new.backends, until, "in preview: requests carrying its token reach it; berth promote switches, berth rollback ends it");
        Ok(Deployed {
            preview_token: Some(token),
            release: Some(release.to_string()),
            previous: serving.and_then(|s| s.release.clone()),
            how: How::Previewing,
            color: Some(new.color),
            backends: new.backends,
            to_switch_secs: None,
            services,
            no_way_back: None,
            migration: None,
        })
    }

    /// The serving side and the side in preview (the one whose backends the proxy previews).
    async fn previewed(&self, routed: &Routed) -> Result<(Side, Side), UpgradeError> {
        let serving = self.recover(routed).await?;
        let route = self.proxy_route().await?;
        let mut sides = self.sides(routed).await?;
        let in_preview = sides
            .values()
            .find(|s| s.running && s.backends.iter().any(|b| route.preview.contains(b)))
            .map(|s| s.color);
        match (serving, in_preview.and_then(|c| sides.remove(&c))) {
            (Some(serving), Some(new)) if serving.color != new.color => Ok((serving, new)),
            _ => Err(UpgradeError::NoPreview {
                service: routed.service.clone(),
            }),
        }
    }

    /// Whether the proxy previews a release now (its name).
    pub async fn preview_on(&self) -> Result<Option<String>, UpgradeError> {
        let status = proxy::client::status(self.proxy_socket()).await?;
        Ok(status.preview.map(|p| p.release))
    }

    /// `berth promote`: the release in preview takes the traffic, is watched and judged as any
    /// upgrade, and the old one drains and stops (kept for `berth rollback`).
    pub async fn promote(&self, routed: &Routed) -> Result<Deployed, UpgradeError> {
        let (old, new) = self.previewed(routed).await?;
        let name = new.release.clone().unwrap_or_else(|| "(unnamed)".into());
        self.switch_and_settle(routed, &new, &old, &name).await?;
        Ok(Deployed {
            preview_token: None,
            release: new.release.clone(),
            previous: old.release.clone(),
            how: How::Switched,
            color: Some(new.color),
            backends: new.backends.clone(),
            to_switch_secs: None,
            services: BTreeMap::new(),
            no_way_back: None,
            migration: None,
        })
    }

    /// `berth rollback` during a preview (or its timeout): the preview ends and the release in
    /// it goes; the serving one never stopped serving.
    pub async fn end_preview(&self, routed: &Routed) -> Result<Deployed, UpgradeError> {
        let (serving, new) = self.previewed(routed).await?;
        proxy::client::preview(self.proxy_socket(), &[], None, 0, None).await?;
        // Requests already sent to it finish first.
        self.drain(&new.backends).await?;
        self.remove_side(&new).await;
        self.restore_rest(routed, serving.color).await;
        tracing::info!(release = ?new.release, serving = ?serving.release, "preview ended: its release removed");
        Ok(Deployed {
            preview_token: None,
            release: serving.release.clone(),
            previous: new.release.clone(),
            how: How::RolledBack,
            color: Some(serving.color),
            backends: serving.backends.clone(),
            to_switch_secs: None,
            services: BTreeMap::new(),
            no_way_back: None,
            migration: None,
        })
    }
}
