//! The plan: the desired state of a project (networks, volumes, one container spec per replica,
//! each with a content hash) diffed against what Docker reports by label. It decides, per
//! container, keep / start / create / recreate (with the fields that changed) / restart, and per
//! stray container, orphan. Computing a plan changes nothing.

pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use serde::Serialize;

use crate::compose::{DependencyCondition, Project};
use crate::engine::docker::labels;
pub use spec::ContainerSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Exists, current, running (or a one-shot that completed).
    Keep,
    /// Exists and current, but stopped: only start it.
    Start,
    Create,
    Recreate,
    /// A dependency with `restart: true` is being recreated.
    Restart,
    /// Belongs to the project but to no enabled service.
    Orphan,
    RemoveOrphan,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Keep => "keep",
            Action::Start => "start",
            Action::Create => "create",
            Action::Recreate => "recreate",
            Action::Restart => "restart",
            Action::Orphan => "orphan",
            Action::RemoveOrphan => "remove-orphan",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStep {
    pub service: String,
    pub name: String,
    pub number: u32,
    pub action: Action,
    /// Why a container is recreated: the fields that changed, or `image changed`.
    pub reasons: Vec<String>,
    /// The existing container's id, if any.
    pub existing: Option<String>,
    #[serde(skip)]
    pub spec: Option<ContainerSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceStep {
    pub name: String,
    /// `create`, `keep`, or `external` (must exist, never created).
    pub action: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub networks: Vec<ResourceStep>,
    pub volumes: Vec<ResourceStep>,
    pub containers: Vec<ContainerStep>,
    /// Images to pull (not present locally, or `pull_policy: always`).
    pub pulls: Vec<String>,
}

impl Plan {
    /// The steps that make a service's wanted containers (orphans excluded).
    pub fn steps_for<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = &'a ContainerStep> + 'a {
        self.containers.iter().filter(move |s| {
            s.service == service && !matches!(s.action, Action::Orphan | Action::RemoveOrphan)
        })
    }

    /// True when carrying the plan out would change nothing.
    pub fn is_noop(&self) -> bool {
        self.pulls.is_empty()
            && self.networks.iter().all(|n| n.action != "create")
            && self.volumes.iter().all(|v| v.action != "create")
            && self
                .containers
                .iter()
                .all(|c| matches!(c.action, Action::Keep | Action::Orphan))
    }
}

/// What Docker says about the world, gathered before planning.
#[derive(Debug, Default)]
pub struct Observed {
    pub containers: Vec<ContainerSummary>,
    /// Local image id per image reference (None: not present locally).
    pub image_ids: HashMap<String, Option<String>>,
    pub networks: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    pub pulls: Vec<String>,
}

fn label<'a>(c: &'a ContainerSummary, key: &str) -> Option<&'a str> {
    c.labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn name_of(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .or_else(|| c.id.clone())
        .unwrap_or_default()
}

/// `Exited (3) 2 minutes ago` -> 3.
pub fn exit_code_of(status: &str) -> Option<i64> {
    let rest = status.strip_prefix("Exited (")?;
    rest.split(')').next()?.parse().ok()
}

fn parse_fields(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Services whose completion others wait for (`service_completed_successfully`).
pub fn completion_targets(project: &Project) -> BTreeSet<String> {
    project
        .services
        .values()
        .flat_map(|s| s.depends_on.iter())
        .filter(|(_, d)| d.condition == DependencyCondition::ServiceCompletedSuccessfully)
        .map(|(name, _)| name.clone())
        .collect()
}

pub fn compute(project: &Project, observed: &Observed, remove_orphans: bool) -> Plan {
    let networks = project
        .networks
        .values()
        .map(|n| ResourceStep {
            name: n.name.clone(),
            action: if n.external {
                "external"
            } else if observed.networks.contains(&n.name) {
                "keep"
            } else {
                "create"
            },
        })
        .collect();
    let mut volumes: Vec<ResourceStep> = project
        .volumes
        .values()
        .map(|v| ResourceStep {
            name: v.name.clone(),
            action: if v.external {
                "external"
            } else if observed.volumes.contains(&v.name) {
                "keep"
            } else {
                "create"
            },
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));

    let one_shots = completion_targets(project);
    let mut containers = Vec::new();
    let mut claimed: BTreeSet<String> = BTreeSet::new();
    for svc in project.services.values() {
        let image_id = observed.image_ids.get(&svc.image).cloned().flatten();
        for number in 1..=svc.replicas {
            let spec = spec::build(project, svc, number, image_id.as_deref());
            let candidates: Vec<&ContainerSummary> = observed
                .containers
                .iter()
                .filter(|c| {
                    label(c, labels::SERVICE) == Some(svc.name.as_str())
                        && label(c, labels::NUMBER) == Some(number.to_string().as_str())
                })
                .collect();
            // A duplicate (say, left by an interrupted recreate) loses to the canonical name.
            let existing = candidates
                .iter()
                .find(|c| name_of(c) == spec.name)
                .or(candidates.first())
                .copied();
            let step = match existing {
                None => ContainerStep {
                    service: svc.name.clone(),
                    name: spec.name.clone(),
                    number,
                    action: Action::Create,
                    reasons: vec![],
                    existing: None,
                    spec: Some(spec),
                },
                Some(c) => {
                    let id = c.id.clone().unwrap_or_default();
                    claimed.insert(id.clone());
                    let mut reasons = Vec::new();
                    if label(c, labels::CONFIG_HASH) != Some(spec.config_hash.as_str()) {
                        let before = parse_fields(label(c, labels::FIELDS).unwrap_or(""));
                        let after = svc.field_digests();
                        let changed: Vec<String> = after
                            .iter()
                            .filter(|(k, v)| before.get(*k) != Some(*v))
                            .map(|(k, _)| k.clone())
                            .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
                            .collect();
                        if changed.is_empty() {
                            reasons.push("config changed".to_string());
                        } else {
                            reasons.push(format!("{} changed", changed.join(", ")));
                        }
                    }
                    if let (Some(want), Some(have)) = (&image_id, label(c, labels::IMAGE)) {
                        if want != have {
                            reasons.push("image changed".to_string());
                        }
                    }
                    let running = matches!(
                        c.state,
                        Some(
                            ContainerSummaryStateEnum::RUNNING
                                | ContainerSummaryStateEnum::RESTARTING
                        )
                    );
                    let completed = one_shots.contains(&svc.name)
                        && c.state == Some(ContainerSummaryStateEnum::EXITED)
                        && c.status.as_deref().and_then(exit_code_of) == Some(0);
                    let action = if !reasons.is_empty() {
                        Action::Recreate
                    } else if running || completed {
                        Action::Keep
                    } else {
                        Action::Start
                    };
                    ContainerStep {
                        service: svc.name.clone(),
                        name: spec.name.clone(),
                        number,
                        action,
                        reasons,
                        existing: Some(id),
                        spec: Some(spec),
                    }
                }
            };
            containers.push(step);
        }
    }

    // A recreated dependency restarts the dependents that ask for it (`restart: true`).
    let recreated: BTreeSet<String> = containers
        .iter()
        .filter(|s| s.action == Action::Recreate)
        .map(|s| s.service.clone())
        .collect();
    for step in containers.iter_mut().filter(|s| s.action == Action::Keep) {
        let Some(svc) = project.services.get(&step.service) else {
            continue;
        };
        let because: Vec<&String> = svc
            .depends_on
            .iter()
            .filter(|(d, dep)| dep.restart && recreated.contains(*d))
            .map(|(d, _)| d)
            .collect();
        if !because.is_empty() {
            step.action = Action::Restart;
            step.reasons = because
                .iter()
                .map(|d| format!("dependency {d} recreated"))
                .collect();
        }
    }

    for c in &observed.containers {
        let id = c.id.clone().unwrap_or_default();
        if claimed.contains(&id) {
            continue;
        }
        let service = label(c, labels::SERVICE).unwrap_or("").to_string();
        // Containers of profile-disabled services are left alone, as compose does.
        if project.disabled_services.contains(&service) {
            continue;
        }
        let name = name_of(c);
        // Extra replicas after a scale-down, and duplicates, belong to a live service: they go
        // without --remove-orphans, as compose does.
        let (action, reasons) = if project.services.contains_key(&service) {
            let why = format!("not a wanted replica of service {service}");
            (Action::RemoveOrphan, vec![why])
        } else if remove_orphans {
            (Action::RemoveOrphan, vec![])
        } else {
            (Action::Orphan, vec![])
        };
        containers.push(ContainerStep {
            service,
            name,
            number: label(c, labels::NUMBER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            action,
            reasons,
            existing: Some(id),
            spec: None,
        });
    }

    Plan {
        project: project.name.clone(),
        networks,
        volumes,
        containers,
        pulls: observed.pulls.clone(),
    }
}

/// The plan for people: one line per resource and container.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for img in &plan.pulls {
        out.push_str(&format!("image      {img:<40} pull\n"));
    }
    for n in &plan.networks {
        out.push_str(&format!("network    {:<40} {}\n", n.name, n.action));
    }
    for v in &plan.volumes {
        out.push_str(&format!("volume     {:<40} {}\n", v.name, v.action));
    }
    for c in &plan.containers {
        let why = if c.reasons.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.reasons.join("; "))
        };
        out.push_str(&format!(
            "container  {:<40} {}{why}\n",
            c.name,
            c.action.as_str()
        ));
    }
    if plan.is_noop() {
        out.push_str("nothing to do\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::exit_code_of;

    #[test]
    fn exit_codes_from_status_text() {
        assert_eq!(exit_code_of("Exited (0) 3 seconds ago"), Some(0));
        assert_eq!(exit_code_of("Exited (137) About a minute ago"), Some(137));
        assert_eq!(exit_code_of("Up 5 seconds (healthy)"), None);
    }
}
