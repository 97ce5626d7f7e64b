//! Reading a YAML value into a schema type: interpolated strings are cast back to the field's
//! type first, and a failure names its path in the file.

use serde_norway::Value;

use super::invalid;
use crate::compose::ComposeError;

const BOOL_KEYS: &[&str] = &[
    "read_only",
    "privileged",
    "init",
    "tty",
    "stdin_open",
    "disable",
    "required",
    "restart",
    "internal",
    "attachable",
    "enable_ipv6",
    "external",
    "create_host_path",
    "nocopy",
];
const INT_KEYS: &[&str] = &[
    "replicas",
    "scale",
    "retries",
    "pids_limit",
    "pids",
    "target",
    "max_attempts",
    "soft",
    "hard",
];
/// Maps whose keys are the user's (variable names, label keys): never coerced.
const FREE_MAPS: &[&str] = &[
    "environment",
    "labels",
    "sysctls",
    "options",
    "driver_opts",
    "extra_hosts",
    "annotations",
];

/// Interpolation yields strings; compose casts them back to the field's type
/// (`replicas: "${N}"` is a number). Only the typed fields are touched.
fn coerce_scalars(v: &mut Value) {
    let Value::Mapping(m) = v else {
        if let Value::Sequence(items) = v {
            items.iter_mut().for_each(coerce_scalars);
        }
        return;
    };
    // `x-` extensions are the user's, wherever compose allows them: never a field to check.
    m.retain(|k, _| !k.as_str().is_some_and(|k| k.starts_with("x-")));
    for (k, child) in m.iter_mut() {
        let key = k.as_str().unwrap_or_default();
        if FREE_MAPS.contains(&key) || key.starts_with("x-") {
            continue;
        }
        if key == "ulimits" {
            if let Value::Mapping(limits) = child {
                for (_, limit) in limits.iter_mut() {
                    if let Some(n) = limit.as_str().and_then(|t| t.trim().parse::<i64>().ok()) {
                        *limit = Value::from(n);
                    }
                    coerce_scalars(limit);
                }
            }
            continue;
        }
        if let Value::String(text) = child {
            let t = text.trim();
            if BOOL_KEYS.contains(&key) {
                match t {
                    "true" | "True" | "TRUE" | "1" | "t" | "T" => *child = Value::Bool(true),
                    "false" | "False" | "FALSE" | "0" | "f" | "F" => *child = Value::Bool(false),
                    _ => {}
                }
            } else if INT_KEYS.contains(&key) {
                if let Ok(n) = t.parse::<i64>() {
                    *child = Value::from(n);
                }
            }
        } else {
            coerce_scalars(child);
        }
    }
}

/// Deserializes `value` into `T`, reporting the failing path below `prefix`.
pub(super) fn typed<T: serde::de::DeserializeOwned>(
    mut value: Value,
    prefix: &str,
) -> Result<T, ComposeError> {
    coerce_scalars(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = if inner == "." || inner.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{inner}")
        };
        let message = e.inner().to_string();
        // serde's untagged message says nothing useful; say what shape was expected instead.
        let message = if message.starts_with("data did not match any variant") {
            "unexpected value: see the Compose Specification for this field's forms".to_string()
        } else {
            message
        };
        invalid(field, message)
    })
}
