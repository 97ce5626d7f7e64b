//! The plan: the desired state of a project (networks, volumes, one container spec per replica,
//! each with a content hash) diffed against what Docker reports by label. It decides, per
//! container, keep / start / create / recreate (with the fields that changed) / restart, and per
//! stray container, orphan. Computing a plan changes nothing.

pub mod spec;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use serde::Serialize;

use crate::compose::{DependencyCondition, Project, Service};
use crate::engine::docker::{label, labels, summary_name};
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
    /// The engine's id, when a service has secrets or configs: the key their contents'
    /// digests are taken under.
    pub digest_key: String,
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

/// Diffs the project against what Docker reports: the step per network, volume, wanted
/// container and stray container.
pub fn compute(project: &Project, observed: &Observed, remove_orphans: bool) -> Plan {
    let mut containers = wanted_steps(project, observed);
    mark_restarts(project, &mut containers);
    let claimed: BTreeSet<&str> = containers
        .iter()
        .filter_map(|s| s.existing.as_deref())
        .collect();
    let strays = stray_steps(project, observed, &claimed, remove_orphans);
    containers.extend(strays);
    Plan {
        project: project.name.clone(),
        networks: network_steps(project, observed),
        volumes: volume_steps(project, observed),
        containers,
        pulls: observed.pulls.clone(),
    }
}

/// `external` (must exist, never created), else `keep` or `create`.
fn resource_action(external: bool, exists: bool) -> &'static str {
    if external {
        "external"
    } else if exists {
        "keep"
    } else {
        "create"
    }
}

fn network_steps(project: &Project, observed: &Observed) -> Vec<ResourceStep> {
    project
        .networks
        .values()
        .map(|n| ResourceStep {
            name: n.name.clone(),
            action: resource_action(n.external, observed.networks.contains(&n.name)),
        })
        .collect()
}

fn volume_steps(project: &Project, observed: &Observed) -> Vec<ResourceStep> {
    let mut volumes: Vec<ResourceStep> = project
        .volumes
        .values()
        .map(|v| ResourceStep {
            name: v.name.clone(),
            action: resource_action(v.external, observed.volumes.contains(&v.name)),
        })
        .collect();
    volumes.sort_by(|a, b| a.name.cmp(&b.name));
    volumes
}

/// One step per wanted replica of each service.
fn wanted_steps(project: &Project, observed: &Observed) -> Vec<ContainerStep> {
    let one_shots = completion_targets(project);
    let mut containers = Vec::new();
    for svc in project.services.values() {
        let image_id = observed.image_ids.get(&svc.image).cloned().flatten();
        let one_shot = one_shots.contains(&svc.name);
        for number in 1..=svc.replicas {
            let spec = spec::build(
                project,
                svc,
                number,
                image_id.as_deref(),
                &observed.digest_key,
            );
            let existing = existing_replica(observed, &svc.name, number, &spec.name);
            let action = match existing {
                None => (Action::Create, vec![]),
                Some(c) => {
                    let reasons =
                        recreate_reasons(c, svc, &spec, image_id.as_deref(), &observed.digest_key);
                    (existing_action(c, &reasons, one_shot), reasons)
                }
            };
            containers.push(ContainerStep {
                service: svc.name.clone(),
                name: spec.name.clone(),
                number,
                action: action.0,
                reasons: action.1,
                existing: existing.map(|c| c.id.clone().unwrap_or_default()),
                spec: Some(spec),
            });
        }
    }
    containers
}

/// The container that is replica `number` of `service`, by label. A duplicate (say, left by an
/// interrupted recreate) loses to the canonical name.
fn existing_replica<'a>(
    observed: &'a Observed,
    service: &str,
    number: u32,
    canonical: &str,
) -> Option<&'a ContainerSummary> {
    let number = number.to_string();
    let candidates: Vec<&ContainerSummary> = observed
        .containers
        .iter()
        .filter(|c| {
            label(c, labels::SERVICE) == Some(service)
                && label(c, labels::NUMBER) == Some(number.as_str())
        })
        .collect();
    candidates
        .iter()
        .find(|c| summary_name(c) == canonical)
        .or(candidates.first())
        .copied()
}

/// Why an existing container must be recreated: the fields that changed, or its image; empty
/// when it is current.
fn recreate_reasons(
    c: &ContainerSummary,
    svc: &Service,
    spec: &ContainerSpec,
    image_id: Option<&str>,
    digest_key: &str,
) -> Vec<String> {
    let mut reasons = Vec::new();
    if label(c, labels::CONFIG_HASH) != Some(spec.config_hash.as_str()) {
        let before = parse_fields(label(c, labels::FIELDS).unwrap_or(""));
        let changed = changed_fields(&before, &svc.field_digests_keyed(digest_key));
        if changed.is_empty() {
            reasons.push("config changed".to_string());
        } else {
            reasons.push(format!("{} changed", changed.join(", ")));
        }
    }
    if let (Some(want), Some(have)) = (image_id, label(c, labels::IMAGE)) {
        if want != have {
            reasons.push("image changed".to_string());
        }
    }
    reasons
}

/// The fields whose digests differ, then those that are gone.
fn changed_fields(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Vec<String> {
    after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .collect()
}

/// What to do with an existing replica: recreate it when there are reasons, keep it when it
/// runs (or is a one-shot that completed), start it otherwise.
fn existing_action(c: &ContainerSummary, reasons: &[String], one_shot: bool) -> Action {
    let running = matches!(
        c.state,
        Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::RESTARTING)
    );
    let completed = one_shot
        && c.state == Some(ContainerSummaryStateEnum::EXITED)
        && c.status.as_deref().and_then(exit_code_of) == Some(0);
    if !reasons.is_empty() {
        Action::Recreate
    } else if running || completed {
        Action::Keep
    } else {
        Action::Start
    }
}

/// A recreated dependency restarts the dependents that ask for it (`restart: true`).
fn mark_restarts(project: &Project, containers: &mut [ContainerStep]) {
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
}

/// Containers of the project that no wanted step claimed: orphans, extra replicas, duplicates.
fn stray_steps(
    project: &Project,
    observed: &Observed,
    claimed: &BTreeSet<&str>,
    remove_orphans: bool,
) -> Vec<ContainerStep> {
    let mut steps = Vec::new();
    for c in &observed.containers {
        let id = c.id.clone().unwrap_or_default();
        if claimed.contains(id.as_str()) {
            continue;
        }
        let service = label(c, labels::SERVICE).unwrap_or("").to_string();
        // Containers of profile-disabled services are left alone, as compose does.
        if project.disabled_services.contains(&service) {
            continue;
        }
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
        steps.push(ContainerStep {
            service,
            name: summary_name(c),
            number: label(c, labels::NUMBER)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
            action,
            reasons,
            existing: Some(id),
            spec: None,
        });
    }
    steps
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::compose::LoadOptions;
    use ContainerSummaryStateEnum::{EXITED, RUNNING};

    const IMAGE_ID: &str = "sha256:current";

    #[test]
    fn exit_codes_from_status_text() {
        assert_eq!(exit_code_of("Exited (0) 3 seconds ago"), Some(0));
        assert_eq!(exit_code_of("Exited (137) About a minute ago"), Some(137));
        assert_eq!(exit_code_of("Up 5 seconds (healthy)"), None);
    }

    /// The project a `compose.yaml` of `yaml` makes, in a directory named `proj`.
    fn project(yaml: &str) -> Project {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("proj");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("compose.yaml"), yaml).unwrap();
        let opts = LoadOptions {
            working_dir: dir,
            ..LoadOptions::default()
        };
        crate::compose::load(&opts).unwrap()
    }

    /// The container berth would have made for the replica, as Docker lists it.
    fn made(
        p: &Project,
        service: &str,
        number: u32,
        state: ContainerSummaryStateEnum,
    ) -> ContainerSummary {
        let spec = spec::build(p, &p.services[service], number, Some(IMAGE_ID), "");
        ContainerSummary {
            id: Some(format!("id-{}", spec.name)),
            names: Some(vec![format!("/{}", spec.name)]),
            labels: spec.body.labels,
            state: Some(state),
            status: Some(match state {
                EXITED => "Exited (0) 1 second ago".to_string(),
                _ => "Up 1 second".to_string(),
            }),
            ..Default::default()
        }
    }

    /// Docker holding `containers`, the images and the project's networks and volumes.
    fn observed(p: &Project, containers: Vec<ContainerSummary>) -> Observed {
        Observed {
            containers,
            image_ids: p
                .services
                .values()
                .map(|s| (s.image.clone(), Some(IMAGE_ID.to_string())))
                .collect(),
            networks: p.networks.values().map(|n| n.name.clone()).collect(),
            volumes: p.volumes.values().map(|v| v.name.clone()).collect(),
            pulls: vec![],
            digest_key: String::new(),
        }
    }

    fn actions(plan: &Plan) -> Vec<(&str, Action)> {
        plan.containers
            .iter()
            .map(|c| (c.name.as_str(), c.action))
            .collect()
    }

    const WEB_DB: &str = "services:\n  web:\n    image: web:1\n    depends_on:\n      db:\n        condition: service_started\n        restart: true\n  db:\n    image: db:1\n";

    #[test]
    fn an_empty_daemon_gets_everything_created() {
        let p = project(WEB_DB);
        let empty = Observed {
            image_ids: observed(&p, vec![]).image_ids,
            ..Observed::default()
        };
        let plan = compute(&p, &empty, false);
        assert_eq!(
            actions(&plan),
            vec![
                ("proj-db-1", Action::Create),
                ("proj-web-1", Action::Create)
            ]
        );
        assert!(plan.networks.iter().all(|n| n.action == "create"));
        assert!(!plan.is_noop());
    }

    #[test]
    fn current_running_containers_are_kept() {
        let p = project(WEB_DB);
        let have = vec![made(&p, "web", 1, RUNNING), made(&p, "db", 1, RUNNING)];
        let plan = compute(&p, &observed(&p, have), false);
        assert!(plan.containers.iter().all(|c| c.action == Action::Keep));
        assert!(plan.is_noop());
        assert!(render(&plan).ends_with("nothing to do\n"));
    }

    #[test]
    fn a_stopped_current_container_is_only_started() {
        let p = project(WEB_DB);
        let have = vec![made(&p, "web", 1, EXITED), made(&p, "db", 1, RUNNING)];
        let plan = compute(&p, &observed(&p, have), false);
        assert_eq!(
            actions(&plan),
            vec![("proj-db-1", Action::Keep), ("proj-web-1", Action::Start)]
        );
    }

    #[test]
    fn a_changed_field_recreates_and_restarts_dependents_that_ask() {
        let before = project(WEB_DB);
        let have = vec![
            made(&before, "web", 1, RUNNING),
            made(&before, "db", 1, RUNNING),
        ];
        let after = project(&format!("{WEB_DB}    environment:\n      A: b\n"));
        let plan = compute(&after, &observed(&after, have), false);
        assert_eq!(
            actions(&plan),
            vec![
                ("proj-db-1", Action::Recreate),
                ("proj-web-1", Action::Restart)
            ]
        );
        assert_eq!(plan.containers[0].reasons, vec!["environment changed"]);
        assert_eq!(plan.containers[1].reasons, vec!["dependency db recreated"]);
        assert_eq!(plan.containers[0].existing.as_deref(), Some("id-proj-db-1"));
    }

    #[test]
    fn a_new_image_recreates() {
        let p = project(WEB_DB);
        let have = vec![made(&p, "web", 1, RUNNING), made(&p, "db", 1, RUNNING)];
        let mut seen = observed(&p, have);
        seen.image_ids
            .insert("web:1".into(), Some("sha256:newer".into()));
        let plan = compute(&p, &seen, false);
        // Services come in dependency order: db, then web.
        assert_eq!(plan.containers[1].action, Action::Recreate);
        assert_eq!(plan.containers[1].reasons, vec!["image changed"]);
    }

    #[test]
    fn a_completed_one_shot_is_kept() {
        let p = project(
            "services:\n  app:\n    image: app:1\n    depends_on:\n      migrate:\n        condition: service_completed_successfully\n  migrate:\n    image: app:1\n",
        );
        let have = vec![made(&p, "app", 1, RUNNING), made(&p, "migrate", 1, EXITED)];
        let plan = compute(&p, &observed(&p, have), false);
        assert!(plan.containers.iter().all(|c| c.action == Action::Keep));
    }

    #[test]
    fn strays_are_extra_replicas_or_orphans() {
        let p = project(WEB_DB);
        let mut have = vec![
            made(&p, "web", 1, RUNNING),
            made(&p, "web", 2, RUNNING),
            made(&p, "db", 1, RUNNING),
        ];
        let mut gone = made(&p, "db", 1, RUNNING);
        gone.id = Some("id-old".into());
        gone.names = Some(vec!["/proj-old-1".into()]);
        gone.labels
            .as_mut()
            .unwrap()
            .insert(labels::SERVICE.into(), "old".into());
        have.push(gone);
        let plan = compute(&p, &observed(&p, have.clone()), false);
        let strays = &plan.containers[2..];
        assert_eq!(strays[0].name, "proj-web-2");
        assert_eq!(strays[0].action, Action::RemoveOrphan);
        assert_eq!(
            strays[0].reasons,
            vec!["not a wanted replica of service web"]
        );
        assert_eq!(
            (strays[1].name.as_str(), strays[1].action),
            ("proj-old-1", Action::Orphan)
        );
        let plan = compute(&p, &observed(&p, have), true);
        assert_eq!(plan.containers[3].action, Action::RemoveOrphan);
    }
}
