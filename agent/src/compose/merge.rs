//! Folding several compose files into one, with compose's merge rules for the common fields:
//! mappings merge key by key, list-or-map fields (`environment`, `labels`, `depends_on`, ...)
//! merge by key, `ports` and friends append, `volumes` merge by mount target, and `command`,
//! `entrypoint` and `healthcheck.test` are replaced whole. A value tagged `!reset` removes what
//! the files before set; `!override` replaces it instead of merging. [`finish`] resolves the
//! tags the merge did not meet (in the first file).

use std::path::Path;

use serde_norway::{Mapping, Value};

use super::ComposeError;

/// Fields written as a list (`K=V`) or a mapping, normalized to a mapping before merging.
const KEYED: [&str; 3] = ["environment", "labels", "sysctls"];
/// Sequence fields whose items accumulate across files (duplicates dropped).
const APPENDED: [&str; 11] = [
    "ports",
    "expose",
    "env_file",
    "cap_add",
    "cap_drop",
    "security_opt",
    "extra_hosts",
    "dns",
    "dns_search",
    "tmpfs",
    "profiles",
];

pub(super) fn merge_documents(
    base: Value,
    over: Value,
    path: &Path,
) -> Result<Value, ComposeError> {
    let mut over = match over {
        Value::Mapping(m) => m,
        _ => return Err(structure(path, "top level must be a mapping")),
    };
    normalize_services(&mut over, path)?;
    normalize_resources(&mut over);
    let mut base = match base {
        Value::Mapping(m) => m,
        _ => return Ok(Value::Mapping(over)),
    };
    for (key, value) in over {
        let value = match overrides(&mut base, key.clone(), value) {
            Some(v) => v,
            None => continue,
        };
        let merged = match (key.as_str(), base.remove(&key)) {
            (Some("services"), Some(Value::Mapping(mut services))) => {
                if let Value::Mapping(over_services) = value {
                    for (name, svc) in over_services {
                        let Some(svc) = overrides(&mut services, name.clone(), svc) else {
                            continue;
                        };
                        let svc = match services.remove(&name) {
                            Some(existing) => merge_service(existing, svc),
                            None => svc,
                        };
                        services.insert(name, svc);
                    }
                }
                Value::Mapping(services)
            }
            (_, Some(existing)) => deep_merge(existing, value),
            (_, None) => value,
        };
        base.insert(key, merged);
    }
    Ok(Value::Mapping(base))
}

/// A tagged value's effect on `base[key]`: `!reset` removes it, `!override` puts the value in
/// its place; either way there is nothing left to merge (None). Any other value is handed back.
fn overrides(base: &mut Mapping, key: Value, value: Value) -> Option<Value> {
    match value {
        Value::Tagged(t) if t.tag == "reset" => {
            base.remove(&key);
            None
        }
        Value::Tagged(t) if t.tag == "override" => {
            base.insert(key, untagged(t.value));
            None
        }
        other => Some(other),
    }
}

/// `v` with the tags inside it resolved as if there were nothing before it: a `!reset` key
/// goes, an `!override` value stays.
fn untagged(v: Value) -> Value {
    match v {
        Value::Mapping(m) => Value::Mapping(
            m.into_iter()
                .filter_map(|(k, v)| match v {
                    Value::Tagged(t) if t.tag == "reset" => None,
                    other => Some((k, untagged(other))),
                })
                .collect(),
        ),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(untagged).collect()),
        Value::Tagged(t) => untagged(t.value),
        other => other,
    }
}

/// The merged document with the tags no later file met resolved, and any other tag refused
/// (compose knows only these two).
pub(super) fn finish(doc: Value, path: &Path) -> Result<Value, ComposeError> {
    fn unknown_tag(v: &Value) -> Option<String> {
        match v {
            Value::Tagged(t) if t.tag != "reset" && t.tag != "override" => Some(t.tag.to_string()),
            Value::Tagged(t) => unknown_tag(&t.value),
            Value::Mapping(m) => m.values().find_map(unknown_tag),
            Value::Sequence(items) => items.iter().find_map(unknown_tag),
            _ => None,
        }
    }
    if let Some(tag) = unknown_tag(&doc) {
        return Err(structure(
            path,
            &format!("unknown YAML tag {tag}: compose knows !reset and !override"),
        ));
    }
    Ok(untagged(doc))
}

fn structure(path: &Path, message: &str) -> ComposeError {
    ComposeError::Structure {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Top-level networks' and volumes' `labels` may be a `K=V` list too.
fn normalize_resources(doc: &mut Mapping) {
    for section in ["networks", "volumes"] {
        let Some(Value::Mapping(resources)) = doc.get_mut(section) else {
            continue;
        };
        for (_, resource) in resources.iter_mut() {
            if let Some(labels) = resource.get_mut("labels") {
                list_to_map(labels);
            }
        }
    }
}

/// The value under a `!reset` or `!override` tag; any other value itself.
fn inner(v: &mut Value) -> &mut Value {
    match v {
        Value::Tagged(t) => &mut t.value,
        other => other,
    }
}

/// Puts every service of one file into the shape merging expects.
fn normalize_services(doc: &mut Mapping, path: &Path) -> Result<(), ComposeError> {
    let Some(services) = doc.get_mut("services") else {
        return Ok(());
    };
    let Value::Mapping(services) = services else {
        return Err(structure(path, "`services` must be a mapping"));
    };
    for (name, svc) in services.iter_mut() {
        let name = name.as_str().unwrap_or("?").to_string();
        let svc = inner(svc);
        if svc.is_null() {
            *svc = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(svc) = svc else {
            return Err(structure(
                path,
                &format!("services.{name} must be a mapping"),
            ));
        };
        for key in KEYED {
            if let Some(v) = svc.get_mut(key).map(inner) {
                list_to_map(v);
            }
        }
        if let Some(v) = svc.get_mut("depends_on").map(inner) {
            if let Value::Sequence(items) = v {
                let mut m = Mapping::new();
                for item in items.drain(..) {
                    let mut cond = Mapping::new();
                    cond.insert("condition".into(), "service_started".into());
                    m.insert(item, Value::Mapping(cond));
                }
                *v = Value::Mapping(m);
            }
        }
        if let Some(v) = svc.get_mut("networks").map(inner) {
            if let Value::Sequence(items) = v {
                let m: Mapping = items.drain(..).map(|i| (i, Value::Null)).collect();
                *v = Value::Mapping(m);
            }
        }
        for key in APPENDED {
            if let Some(v) = svc.get_mut(key).map(inner) {
                if let Value::String(_) | Value::Number(_) = v {
                    *v = Value::Sequence(vec![v.clone()]);
                }
            }
        }
    }
    Ok(())
}

/// `["A=1", "B"]` to `{A: "1", B: null}`; mappings are left alone.
fn list_to_map(v: &mut Value) {
    if let Value::Sequence(items) = v {
        let mut m = Mapping::new();
        for item in items.iter() {
            let text = match item {
                Value::String(s) => s.clone(),
                other => scalar_text(other),
            };
            match text.split_once('=') {
                Some((k, val)) => m.insert(k.trim().into(), val.into()),
                None => m.insert(text.trim().into(), Value::Null),
            };
        }
        *v = Value::Mapping(m);
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

pub(super) fn merge_service(base: Value, over: Value) -> Value {
    let (Value::Mapping(mut base), Value::Mapping(over)) = (base, over) else {
        return Value::Null;
    };
    for (key, value) in over {
        let Some(value) = overrides(&mut base, key.clone(), value) else {
            continue;
        };
        let merged = match (key.as_str().unwrap_or(""), base.remove(&key)) {
            (_, None) => value,
            (k, Some(Value::Sequence(mut existing))) if APPENDED.contains(&k) => {
                if let Value::Sequence(items) = value {
                    for item in items {
                        if !existing.contains(&item) {
                            existing.push(item);
                        }
                    }
                }
                Value::Sequence(existing)
            }
            ("volumes", Some(Value::Sequence(existing))) => merge_volumes(existing, value),
            ("command" | "entrypoint", Some(_)) => value,
            ("healthcheck", Some(existing)) => {
                let mut merged = deep_merge(existing, value.clone());
                if let (Value::Mapping(m), Some(test)) = (&mut merged, value.get("test")) {
                    m.insert("test".into(), test.clone());
                }
                merged
            }
            ("logging", Some(existing)) => {
                // A different driver makes the old driver's options meaningless.
                let same_driver =
                    existing.get("driver") == value.get("driver") || value.get("driver").is_none();
                if same_driver {
                    deep_merge(existing, value)
                } else {
                    value
                }
            }
            (_, Some(existing)) => deep_merge(existing, value),
        };
        base.insert(key, merged);
    }
    Value::Mapping(base)
}

/// Volumes with the same container path are replaced; others are appended.
fn merge_volumes(mut existing: Vec<Value>, over: Value) -> Value {
    let Value::Sequence(items) = over else {
        return over;
    };
    for item in items {
        let target = volume_target(&item);
        match existing
            .iter()
            .position(|e| target.is_some() && volume_target(e) == target)
        {
            Some(i) => existing[i] = item,
            None => existing.push(item),
        }
    }
    Value::Sequence(existing)
}

fn volume_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
        }
        Value::Mapping(m) => m.get("target").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

fn deep_merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let Some(v) = overrides(&mut b, k.clone(), v) else {
                    continue;
                };
                let merged = match b.remove(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, over) => over,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn doc(s: &str) -> Value {
        serde_norway::from_str(s).unwrap()
    }

    fn merged(a: &str, b: &str) -> Value {
        let p = Path::new("x.yaml");
        let first = merge_documents(Value::Null, doc(a), p).unwrap();
        merge_documents(first, doc(b), p).unwrap()
    }

    #[test]
    fn environment_merges_by_key_across_list_and_map_forms() {
        let m = merged(
            "services: {web: {environment: [A=1, B=2]}}",
            "services: {web: {environment: {B: '3', C: '4'}}}",
        );
        let env = &m["services"]["web"]["environment"];
        assert_eq!(env["A"], Value::from("1"));
        assert_eq!(env["B"], Value::from("3"));
        assert_eq!(env["C"], Value::from("4"));
    }

    #[test]
    fn ports_append_without_duplicates_and_command_replaces() {
        let m = merged(
            "services: {web: {ports: ['80:80'], command: [a, b]}}",
            "services: {web: {ports: ['80:80', '443:443'], command: [c]}}",
        );
        assert_eq!(m["services"]["web"]["ports"], doc("['80:80', '443:443']"));
        assert_eq!(m["services"]["web"]["command"], doc("[c]"));
    }

    #[test]
    fn volumes_merge_by_target() {
        let m = merged(
            "services: {web: {volumes: ['./a:/data', 'logs:/logs']}}",
            "services: {web: {volumes: ['./b:/data', {type: tmpfs, target: /tmp}]}}",
        );
        let v = m["services"]["web"]["volumes"].as_sequence().unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], Value::from("./b:/data"));
    }

    #[test]
    fn depends_on_list_becomes_map_and_merges() {
        let m = merged(
            "services: {web: {depends_on: [db]}}",
            "services: {web: {depends_on: {cache: {condition: service_healthy}}}}",
        );
        let d = &m["services"]["web"]["depends_on"];
        assert_eq!(d["db"]["condition"], Value::from("service_started"));
        assert_eq!(d["cache"]["condition"], Value::from("service_healthy"));
    }

    #[test]
    fn healthcheck_fields_merge_but_test_replaces() {
        let m = merged(
            "services: {web: {healthcheck: {test: [CMD, a, b], interval: 5s}}}",
            "services: {web: {healthcheck: {test: [CMD, c], retries: 3}}}",
        );
        let h = &m["services"]["web"]["healthcheck"];
        assert_eq!(h["test"], doc("[CMD, c]"));
        assert_eq!(h["interval"], Value::from("5s"));
        assert_eq!(h["retries"], Value::from(3));
    }

    #[test]
    fn logging_options_dropped_when_driver_changes() {
        let m = merged(
            "services: {web: {logging: {driver: json-file, options: {max-size: 1m}}}}",
            "services: {web: {logging: {driver: awslogs, options: {awslogs-group: g}}}}",
        );
        let l = &m["services"]["web"]["logging"];
        assert_eq!(l["driver"], Value::from("awslogs"));
        assert!(l["options"].get("max-size").is_none());
    }

    #[test]
    fn new_service_and_top_level_sections_are_added() {
        let m = merged(
            "services: {web: {image: a}}\nvolumes: {data: {}}",
            "services: {db: {image: b}}\nvolumes: {logs: {}}",
        );
        assert_eq!(m["services"]["db"]["image"], Value::from("b"));
        assert!(m["volumes"].get("data").is_some() && m["volumes"].get("logs").is_some());
    }

    #[test]
    fn non_mapping_top_level_is_an_error() {
        let e = merge_documents(Value::Null, doc("[1, 2]"), Path::new("bad.yaml")).unwrap_err();
        assert!(e.to_string().contains("bad.yaml"), "{e}");
    }

    #[test]
    fn reset_removes_and_override_replaces_what_earlier_files_set() {
        let m = merged(
            "services: {web: {ports: ['80:80'], environment: {A: '1'}, labels: {x: '1'}}}",
            "services: {web: {ports: !reset [], environment: !override {B: '2'}, labels: {y: '2'}}}",
        );
        let m = finish(m, Path::new("o.yaml")).unwrap();
        let web = &m["services"]["web"];
        assert!(web.get("ports").is_none(), "{web:?}");
        assert_eq!(web["environment"], doc("{B: '2'}"));
        assert_eq!(web["labels"], doc("{x: '1', y: '2'}"), "no tag: merged");
    }

    #[test]
    fn tags_in_the_first_file_resolve_and_unknown_tags_are_refused() {
        let first = merge_documents(
            Value::Null,
            doc("services: {web: {image: a, dns: !reset [1.1.1.1], cap_add: !override [X]}}"),
            Path::new("c.yaml"),
        )
        .unwrap();
        let m = finish(first, Path::new("c.yaml")).unwrap();
        assert!(m["services"]["web"].get("dns").is_none());
        assert_eq!(m["services"]["web"]["cap_add"], doc("[X]"));
        let odd = merge_documents(
            Value::Null,
            doc("services: {web: {image: !custom a}}"),
            Path::new("c.yaml"),
        )
        .unwrap();
        let e = finish(odd, Path::new("c.yaml")).unwrap_err();
        assert!(
            e.to_string().contains("c.yaml") && format!("{e:?}").contains("custom"),
            "{e:?}"
        );
    }
}
