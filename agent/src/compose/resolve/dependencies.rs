//! `depends_on`: each service's entries read, then checked across the project (an undefined or
//! disabled dependency, a cycle).

use std::collections::{BTreeMap, BTreeSet};

use indexmap::IndexMap;

use super::invalid;
use crate::compose::model::{Dependency, DependencyCondition, Service};
use crate::compose::schema::RawDependency;
use crate::compose::ComposeError;

/// A service's `depends_on` entries; the condition defaults to `service_started`, and an entry
/// is required unless it says otherwise.
pub(super) fn resolve_depends_on(
    p: &str,
    raw: IndexMap<String, RawDependency>,
) -> Result<IndexMap<String, Dependency>, ComposeError> {
    raw.into_iter()
        .map(|(dep, d)| {
            let condition = match d.condition.as_deref() {
                None | Some("service_started") => DependencyCondition::ServiceStarted,
                Some("service_healthy") => DependencyCondition::ServiceHealthy,
                Some("service_completed_successfully") => {
                    DependencyCondition::ServiceCompletedSuccessfully
                }
                Some(other) => {
                    return Err(invalid(
                        format!("{p}.depends_on.{dep}.condition"),
                        format!("unknown condition {other:?}"),
                    ))
                }
            };
            let dependency = Dependency {
                condition,
                required: d.required.unwrap_or(true),
                restart: d.restart.unwrap_or(false),
            };
            Ok((dep, dependency))
        })
        .collect()
}

/// A required dependency must be enabled; an optional one that is not is dropped, with a warning.
pub(super) fn check_dependencies(
    services: &mut IndexMap<String, Service>,
    disabled: &[String],
    warnings: &mut Vec<String>,
) -> Result<(), ComposeError> {
    let names: BTreeSet<String> = services.keys().cloned().collect();
    for svc in services.values_mut() {
        let mut dropped = Vec::new();
        for (dep, d) in &svc.depends_on {
            if names.contains(dep) {
                continue;
            }
            let is_disabled = disabled.contains(dep);
            if d.required {
                return Err(if is_disabled {
                    ComposeError::DisabledDependency {
                        service: svc.name.clone(),
                        dependency: dep.clone(),
                    }
                } else {
                    ComposeError::UnknownDependency {
                        service: svc.name.clone(),
                        dependency: dep.clone(),
                    }
                });
            }
            warnings.push(format!(
                "{}: optional dependency {dep} is not enabled; ignored",
                svc.name
            ));
            dropped.push(dep.clone());
        }
        for dep in dropped {
            svc.depends_on.shift_remove(&dep);
        }
    }
    Ok(())
}

/// The first dependency cycle found, as the path that closes it (`a -> b -> a`).
pub(super) fn check_cycles(services: &IndexMap<String, Service>) -> Result<(), ComposeError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        services: &IndexMap<String, Service>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Result<(), ComposeError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_string());
                return Err(ComposeError::Cycle { cycle });
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        stack.push(name.to_string());
        if let Some(svc) = services.get(name) {
            for dep in svc.depends_on.keys() {
                visit(dep, services, marks, stack)?;
            }
        }
        stack.pop();
        marks.insert(name.to_string(), Mark::Done);
        Ok(())
    }
    let mut marks = BTreeMap::new();
    for name in services.keys() {
        visit(name, services, &mut marks, &mut Vec::new())?;
    }
    Ok(())
}
