//! `down`, `stop` and `ps`: they work from the containers' labels alone, so that no compose file
//! is needed. Stopping goes in waves, dependents before their dependencies.

use std::collections::{BTreeMap, BTreeSet};

use bollard::models::{ContainerInspectResponse, ContainerSummary};
use futures_util::future::join_all;
use serde::Serialize;

use super::ConvergeError;
use crate::engine::docker::{bare_name, label, labels, summary_name, Engine};
use crate::engine::progress::Progress;

/// `berth down`: stops dependents before their dependencies (from the containers' labels, so no
/// compose file is needed), removes containers and networks, and volumes with `-v`.
pub async fn down(
    engine: &Engine,
    project: &str,
    volumes: bool,
    progress: &Progress,
) -> Result<usize, ConvergeError> {
    let containers = engine.project_containers(project).await?;
    stop_in_order(engine, &containers, Some(volumes), progress).await?;
    for net in engine.project_networks(project).await? {
        engine.remove_network(&net).await?;
        progress.finish(&format!("network {net}"), "removed");
    }
    if volumes {
        for vol in engine.project_volumes(project).await? {
            engine.remove_volume(&vol).await?;
            progress.finish(&format!("volume {vol}"), "removed");
        }
    }
    Ok(containers.len())
}

/// Stops a project's containers, dependents first, each with its own stop timeout; keeps them.
pub async fn stop(
    engine: &Engine,
    project: &str,
    progress: &Progress,
) -> Result<usize, ConvergeError> {
    let containers = engine.project_containers(project).await?;
    stop_in_order(engine, &containers, None, progress).await?;
    Ok(containers.len())
}

/// Service -> the services it depends on, from the containers' compose labels.
fn dependencies_from_labels(containers: &[ContainerSummary]) -> BTreeMap<String, Vec<String>> {
    containers
        .iter()
        .map(|c| {
            let list = label(c, labels::DEPENDS_ON)
                .unwrap_or_default()
                .split(',')
                .filter_map(|d| d.split(':').next())
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            (
                label(c, labels::SERVICE).unwrap_or_default().to_string(),
                list,
            )
        })
        .collect()
}

/// Reverse dependency order, in waves: a service goes once nothing still running depends on it.
/// A cycle in stale labels must not hang `down`: what is left goes in one last wave.
fn stop_waves(deps: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut remaining: BTreeSet<String> = deps.keys().cloned().collect();
    let mut waves = Vec::new();
    while !remaining.is_empty() {
        let wave: Vec<String> = remaining
            .iter()
            .filter(|s| {
                !remaining
                    .iter()
                    .any(|o| deps.get(o).is_some_and(|d| d.contains(s)))
            })
            .cloned()
            .collect();
        let wave = if wave.is_empty() {
            remaining.iter().cloned().collect()
        } else {
            wave
        };
        for s in &wave {
            remaining.remove(s);
        }
        waves.push(wave);
    }
    waves
}

/// Stops containers in reverse dependency order (from their labels, so no compose file is
/// needed); with `remove: Some(volumes)`, removes them too.
async fn stop_in_order(
    engine: &Engine,
    containers: &[ContainerSummary],
    remove: Option<bool>,
    progress: &Progress,
) -> Result<(), ConvergeError> {
    for wave in stop_waves(&dependencies_from_labels(containers)) {
        let jobs = containers
            .iter()
            .filter(|c| {
                wave.iter()
                    .any(|s| label(c, labels::SERVICE).unwrap_or_default() == s)
            })
            .map(|c| async move {
                let id = c.id.clone().unwrap_or_default();
                let name = summary_name(c);
                progress.update(&name, "stopping");
                engine.stop(&id, None).await?;
                match remove {
                    Some(volumes) => {
                        engine.remove(&id, volumes).await?;
                        progress.finish(&name, "removed");
                    }
                    None => progress.finish(&name, "stopped"),
                }
                Ok::<_, ConvergeError>(())
            });
        for r in join_all(jobs).await {
            r?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct PsRow {
    pub name: String,
    pub service: String,
    pub state: String,
    pub health: Option<String>,
    pub exit_code: Option<i64>,
    pub image: String,
    pub ports: Vec<String>,
}

/// `berth ps`: the project's containers as Docker reports them.
pub async fn ps(engine: &Engine, project: &str) -> Result<Vec<PsRow>, ConvergeError> {
    let mut rows = Vec::new();
    for c in engine.project_containers(project).await? {
        let id = c.id.clone().unwrap_or_default();
        // One removed between the listing and this look (a release being stopped) is
        // gone, not an error.
        if let Some(info) = engine.inspect_present(&id).await? {
            rows.push(ps_row(&c, &info));
        }
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

fn ps_row(c: &ContainerSummary, info: &ContainerInspectResponse) -> PsRow {
    let state = info.state.clone().unwrap_or_default();
    PsRow {
        name: bare_name(info.name.as_deref().unwrap_or_default()).to_string(),
        service: label(c, labels::SERVICE).unwrap_or_default().to_string(),
        state: state.status.map(|s| s.to_string()).unwrap_or_default(),
        health: state
            .health
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        exit_code: state.exit_code,
        image: c.image.clone().unwrap_or_default(),
        ports: published_ports(info),
    }
}

/// `host_ip:host_port->port/proto`, sorted.
fn published_ports(info: &ContainerInspectResponse) -> Vec<String> {
    let mut ports = Vec::new();
    if let Some(map) = info
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref())
    {
        for (port, binds) in map {
            for b in binds.iter().flatten() {
                ports.push(format!(
                    "{}:{}->{port}",
                    b.host_ip.clone().unwrap_or_default(),
                    b.host_port.clone().unwrap_or_default()
                ));
            }
        }
    }
    ports.sort();
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(s, d)| (s.to_string(), d.iter().map(|x| x.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependents_stop_before_their_dependencies() {
        let waves = stop_waves(&deps(&[
            ("db", &[]),
            ("api", &["db"]),
            ("web", &["api", "db"]),
            ("cache", &[]),
        ]));
        assert_eq!(
            waves,
            vec![vec!["cache", "web"], vec!["api"], vec!["db"]]
                .into_iter()
                .map(|w| w.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_cycle_goes_in_one_last_wave() {
        let waves = stop_waves(&deps(&[("a", &["b"]), ("b", &["a"]), ("c", &["a"])]));
        assert_eq!(
            waves,
            vec![vec!["c".to_string()], vec!["a".into(), "b".into()]]
        );
    }

    #[test]
    fn dependencies_come_from_the_compose_label() {
        let c = ContainerSummary {
            labels: Some(
                [
                    (labels::SERVICE.to_string(), "web".to_string()),
                    (
                        labels::DEPENDS_ON.to_string(),
                        "db:service_healthy:false,cache:service_started:true".to_string(),
                    ),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let d = dependencies_from_labels(&[c]);
        assert_eq!(d["web"], vec!["db".to_string(), "cache".to_string()]);
    }
}
