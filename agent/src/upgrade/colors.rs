//! The two colors of the routed service: which service the proxy routes to, the project with
//! that service as its blue or green copy, and both copies as Docker's labels describe them.
//! The state of an upgrade lives here, in labels, not in a file of berth's.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::UpgradeError;
use crate::compose::Project;
use crate::config::AgentConfig;
use crate::engine::docker::{
    label, labels, summary_name, ContainerSummary, ContainerSummaryStateEnum, Engine,
};

/// Which copy of the routed service a container is.
pub const COLOR_LABEL: &str = "dev.berth.color";
/// The release id a routed container was made for.
pub const RELEASE_LABEL: &str = "dev.berth.release";
/// The routed service's name and container port: `web:80` (a rollback needs no compose file).
pub const ROUTED_LABEL: &str = "dev.berth.routed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Blue,
    Green,
}

impl Color {
    pub fn as_str(self) -> &'static str {
        match self {
            Color::Blue => "blue",
            Color::Green => "green",
        }
    }

    pub fn other(self) -> Color {
        match self {
            Color::Blue => Color::Green,
            Color::Green => Color::Blue,
        }
    }

    pub fn parse(s: &str) -> Option<Color> {
        match s {
            "blue" => Some(Color::Blue),
            "green" => Some(Color::Green),
            _ => None,
        }
    }
}

impl std::fmt::Display for Color {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The service the proxy sends traffic to, and the container port it listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub service: String,
    pub port: u16,
}

impl Routed {
    pub fn colored(&self, color: Color) -> String {
        format!("{}-{color}", self.service)
    }
}

/// Finds the routed service: the configured one, else the one publishing the traffic port.
pub fn routed(project: &Project, config: &AgentConfig) -> Result<Routed, UpgradeError> {
    let err = |message: String| UpgradeError::Routed {
        project: project.name.clone(),
        message,
    };
    let traffic = config.proxy.port.to_string();
    let publishes = |s: &crate::compose::Service| {
        s.ports
            .iter()
            .find(|p| p.protocol == "tcp" && p.published.as_deref() == Some(traffic.as_str()))
            .map(|p| p.target)
    };
    let (service, port) = match &config.proxy.service {
        Some(name) => {
            let svc = project.services.get(name).ok_or_else(|| {
                err(format!(
                    "proxy.service {name:?} is not a service of the project"
                ))
            })?;
            let port = publishes(svc)
                .or_else(|| (svc.ports.len() == 1).then(|| svc.ports[0].target))
                .ok_or_else(|| err(format!("service {name} must publish the traffic port {traffic} (proxy.port), e.g. \"{traffic}:80\"")))?;
            (name.clone(), port)
        }
        None => {
            let found: Vec<(&String, u16)> = project
                .services
                .iter()
                .filter_map(|(n, s)| publishes(s).map(|p| (n, p)))
                .collect();
            match found.as_slice() {
                [(name, port)] => ((*name).clone(), *port),
                [] => return Err(err(format!("no service publishes the traffic port {traffic} (proxy.port); publish it on the web service, or set proxy.service"))),
                _ => return Err(err(format!("several services publish port {traffic}; set proxy.service"))),
            }
        }
    };
    let svc = &project.services[&service];
    if svc.replicas == 0 {
        return Err(err(format!(
            "service {service} has 0 replicas; the proxy needs at least one to route to"
        )));
    }
    if svc.container_name.is_some() {
        return Err(err(format!(
            "service {service} sets container_name; two releases of it run side by side, so it cannot have a fixed name"
        )));
    }
    for color in [Color::Blue, Color::Green] {
        let name = format!("{service}-{color}");
        if project.services.contains_key(&name) {
            return Err(err(format!(
                "a service is named {name}, which berth needs for the {color} copy of {service}"
            )));
        }
    }
    Ok(Routed { service, port })
}

/// The routed service as the containers' labels name it (for a rollback, which has no
/// compose file at hand).
pub async fn routed_from_labels(
    engine: &Engine,
    project: &str,
) -> Result<Option<Routed>, UpgradeError> {
    let containers = engine.project_containers(project).await?;
    Ok(routed_in(&containers))
}

/// The routed service as the labels of some of `containers` name it.
pub fn routed_in(containers: &[ContainerSummary]) -> Option<Routed> {
    containers.iter().find_map(|c| {
        let (service, port) = label(c, ROUTED_LABEL)?.rsplit_once(':')?;
        Some(Routed {
            service: service.to_string(),
            port: port.parse().ok()?,
        })
    })
}

/// The project with the routed service as its `color` copy: renamed `<service>-<color>`
/// (other services still reach it as `<service>`), the traffic port published on an ephemeral
/// 127.0.0.1 port, labelled with the color and the release. The other color is left alone.
pub fn colorize(
    project: &Project,
    routed: &Routed,
    color: Color,
    release: Option<&str>,
    traffic_port: u16,
) -> Project {
    let mut out = project.clone();
    let name = routed.colored(color);
    let mut services = indexmap::IndexMap::new();
    for (key, svc) in &project.services {
        let mut svc = svc.clone();
        if let Some(dep) = svc.depends_on.shift_remove(&routed.service) {
            svc.depends_on.insert(name.clone(), dep);
        }
        if *key == routed.service {
            svc.name = name.clone();
            for net in svc.networks.values_mut() {
                net.aliases.push(routed.service.clone());
            }
            let traffic = traffic_port.to_string();
            for p in &mut svc.ports {
                if p.published.as_deref() == Some(traffic.as_str()) {
                    p.host_ip = Some("127.0.0.1".into());
                    p.published = None;
                }
            }
            svc.labels.insert(COLOR_LABEL.into(), color.as_str().into());
            svc.labels.insert(
                ROUTED_LABEL.into(),
                format!("{}:{}", routed.service, routed.port),
            );
            if let Some(r) = release {
                svc.labels.insert(RELEASE_LABEL.into(), r.into());
            }
            services.insert(name.clone(), svc);
        } else {
            services.insert(key.clone(), svc);
        }
    }
    out.services = services;
    // Left alone by this converge: never an orphan to remove.
    out.disabled_services.push(routed.colored(color.other()));
    out
}

/// One container (replica) of a color.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replica {
    pub id: String,
    pub name: String,
    pub running: bool,
    /// Its traffic port as published on 127.0.0.1, while it runs.
    pub backend: Option<SocketAddr>,
}

/// One color's containers as Docker reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub color: Color,
    /// Some replica runs.
    pub running: bool,
    pub release: Option<String>,
    /// The running replicas' backends, sorted: what the proxy routes to for this color.
    pub backends: Vec<SocketAddr>,
    /// Sorted by name.
    pub replicas: Vec<Replica>,
    /// Unix seconds, the latest replica's; the later side is the newer attempt.
    pub created: i64,
}

impl Side {
    /// A side from its replicas; `running` and `backends` are read from them.
    pub fn new(
        color: Color,
        release: Option<String>,
        created: i64,
        mut replicas: Vec<Replica>,
    ) -> Side {
        replicas.sort_by(|a, b| a.name.cmp(&b.name));
        let mut backends: Vec<SocketAddr> = replicas
            .iter()
            .filter(|r| r.running)
            .filter_map(|r| r.backend)
            .collect();
        backends.sort();
        Side {
            color,
            running: replicas.iter().any(|r| r.running),
            release,
            backends,
            replicas,
            created,
        }
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().map(|r| r.id.as_str())
    }
}

/// The 127.0.0.1 host port a container publishes its `port` on.
fn published(c: &ContainerSummary, port: u16) -> Option<SocketAddr> {
    c.ports
        .as_ref()?
        .iter()
        .find(|p| {
            p.private_port == port
                && p.ip.as_deref() == Some("127.0.0.1")
                && p.public_port.is_some()
        })
        .and_then(|p| p.public_port)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Both colors of the routed service among a project's containers.
pub fn sides_of(containers: &[ContainerSummary], routed: &Routed) -> BTreeMap<Color, Side> {
    let mut found: BTreeMap<Color, (Vec<Replica>, Option<String>, i64)> = BTreeMap::new();
    for c in containers {
        let Some(color) = label(c, COLOR_LABEL).and_then(Color::parse) else {
            continue;
        };
        if label(c, labels::SERVICE) != Some(routed.colored(color).as_str()) {
            continue;
        }
        let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
        let (replicas, release, created) = found.entry(color).or_default();
        replicas.push(Replica {
            id: c.id.clone().unwrap_or_default(),
            name: summary_name(c),
            running,
            // A stopped container keeps no port: it gets a new one when started again.
            backend: published(c, routed.port).filter(|_| running),
        });
        if release.is_none() {
            *release = label(c, RELEASE_LABEL).map(String::from);
        }
        *created = (*created).max(c.created.unwrap_or(0));
    }
    found
        .into_iter()
        .map(|(color, (replicas, release, created))| {
            (color, Side::new(color, release, created, replicas))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compose::{self, LoadOptions};
    use crate::engine::docker::PortSummary as Port;
    use std::path::Path;

    fn project(yaml: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, yaml).unwrap();
        compose::load(&LoadOptions {
            files: vec![file],
            project_name: Some("shop".into()),
            working_dir: dir.path().to_path_buf(),
            ..LoadOptions::default()
        })
        .unwrap()
    }

    fn config(extra: &str) -> AgentConfig {
        let text = format!("project = \"shop\"\ncompose = \"/c.yaml\"\n{extra}");
        AgentConfig::parse(Path::new("/etc/berth/berth.toml"), &text).unwrap()
    }

    const STACK: &str = "
services:
  web:
    image: web:1
    ports: [\"8080:80\", \"9000:9000\"]
    depends_on: [migrate]
  migrate:
    image: tool:1
  worker:
    image: tool:1
    depends_on: [web]
";

    #[test]
    fn the_routed_service_is_the_one_publishing_the_traffic_port() {
        let p = project(STACK);
        let r = routed(&p, &config("")).unwrap();
        assert_eq!(
            r,
            Routed {
                service: "web".into(),
                port: 80
            }
        );
        let e = routed(&p, &config("[proxy]\nport = 8081\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("no service publishes the traffic port 8081"),
            "{e}"
        );
        let e = routed(&p, &config("[proxy]\nservice = \"api\"\n")).unwrap_err();
        assert!(e.to_string().contains("\"api\" is not a service"), "{e}");
    }

    #[test]
    fn replicas_are_routed_but_none_or_a_fixed_name_cannot_be() {
        let three = project(
            "services:\n  web:\n    image: w\n    ports: [\"8080:80\"]\n    deploy: {replicas: 3}\n",
        );
        let r = routed(&three, &config("")).unwrap();
        let c = colorize(&three, &r, Color::Blue, Some("v1"), 8080);
        assert_eq!(c.services["web-blue"].replicas, 3);
        let e = routed(
            &project("services:\n  web:\n    image: w\n    ports: [\"8080:80\"]\n    deploy: {replicas: 0}\n"),
            &config(""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("0 replicas"), "{e}");
        let e = routed(
            &project("services:\n  web:\n    image: w\n    container_name: w\n    ports: [\"8080:80\"]\n"),
            &config(""),
        )
        .unwrap_err();
        assert!(e.to_string().contains("container_name"), "{e}");
    }

    #[test]
    fn colorize_renames_republishes_and_keeps_the_other_color_out_of_reach() {
        let p = project(STACK);
        let r = routed(&p, &config("")).unwrap();
        let c = colorize(&p, &r, Color::Green, Some("v7"), 8080);
        let web = &c.services["web-green"];
        assert_eq!(web.name, "web-green");
        assert!(!c.services.contains_key("web"));
        let traffic = web.ports.iter().find(|p| p.target == 80).unwrap();
        assert_eq!(traffic.published, None);
        assert_eq!(traffic.host_ip.as_deref(), Some("127.0.0.1"));
        // Other published ports stay as they are.
        let other = web.ports.iter().find(|p| p.target == 9000).unwrap();
        assert_eq!(other.published.as_deref(), Some("9000"));
        assert_eq!(web.labels[COLOR_LABEL], "green");
        assert_eq!(web.labels[RELEASE_LABEL], "v7");
        assert!(web
            .networks
            .values()
            .all(|n| n.aliases.contains(&"web".to_string())));
        assert!(c.services["worker"].depends_on.contains_key("web-green"));
        assert!(!c.services["worker"].depends_on.contains_key("web"));
        assert!(c.disabled_services.contains(&"web-blue".to_string()));
        // A different release is a different container.
        let c8 = colorize(&p, &r, Color::Green, Some("v8"), 8080);
        assert_ne!(
            c.services["web-green"].config_hash(),
            c8.services["web-green"].config_hash()
        );
    }

    fn container(
        service: &str,
        number: u32,
        color: &str,
        running: bool,
        port: Option<u16>,
    ) -> ContainerSummary {
        ContainerSummary {
            id: Some(format!("{service}-{number}-id")),
            names: Some(vec![format!("/shop-{service}-{number}")]),
            labels: Some(
                [
                    (labels::SERVICE.to_string(), service.to_string()),
                    (COLOR_LABEL.to_string(), color.to_string()),
                    (RELEASE_LABEL.to_string(), format!("{color}-release")),
                ]
                .into(),
            ),
            state: Some(if running {
                ContainerSummaryStateEnum::RUNNING
            } else {
                ContainerSummaryStateEnum::EXITED
            }),
            ports: port.map(|p| {
                vec![Port {
                    ip: Some("127.0.0.1".into()),
                    private_port: 80,
                    public_port: Some(p),
                    ..Port::default()
                }]
            }),
            created: Some(i64::from(number)),
            ..ContainerSummary::default()
        }
    }

    #[test]
    fn sides_come_from_labels_and_only_running_replicas_are_backends() {
        let routed = Routed {
            service: "web".into(),
            port: 80,
        };
        let containers = [
            container("web-blue", 2, "blue", true, Some(32771)),
            container("web-blue", 1, "blue", true, Some(32768)),
            // Killed: still a replica of blue, but no backend.
            container("web-blue", 3, "blue", false, Some(32772)),
            container("web-green", 1, "green", false, Some(32769)),
            // Labelled green, but another service's container: not a side.
            container("worker", 1, "green", true, Some(32770)),
        ];
        let sides = sides_of(&containers, &routed);
        assert_eq!(sides.len(), 2);
        let blue = &sides[&Color::Blue];
        assert!(blue.running);
        assert_eq!(
            blue.backends,
            vec![
                "127.0.0.1:32768".parse().unwrap(),
                "127.0.0.1:32771".parse().unwrap()
            ]
        );
        assert_eq!(blue.release.as_deref(), Some("blue-release"));
        assert_eq!(
            blue.ids().collect::<Vec<_>>(),
            ["web-blue-1-id", "web-blue-2-id", "web-blue-3-id"]
        );
        assert_eq!(blue.replicas[2].backend, None);
        assert_eq!(blue.created, 3);
        let green = &sides[&Color::Green];
        assert!(!green.running);
        assert!(green.backends.is_empty());
    }
}
