//! Which keys a file may hold: unknown ones are warned about, unsupported ones refused, so
//! that nothing berth cannot honour is skipped in silence.

use serde_norway::{Mapping, Value};

use super::{invalid, Ctx};
use crate::compose::schema::{
    DEPLOY_KEYS, SERVICE_KEYS, TOP_KEYS, UNSUPPORTED_SERVICE_KEYS, UNSUPPORTED_TOP_KEYS,
};
use crate::compose::ComposeError;

/// Checks the top-level keys; returns the warnings they give.
pub(super) fn check_top_keys(doc: &Mapping) -> Result<Vec<String>, ComposeError> {
    let mut warnings = Vec::new();
    for key in doc.keys().filter_map(Value::as_str) {
        if UNSUPPORTED_TOP_KEYS.contains(&key) {
            return Err(ComposeError::Unsupported {
                field: key.to_string(),
            });
        }
        if key == "version" {
            warnings.push("the top-level `version` key is obsolete and ignored".to_string());
        } else if !TOP_KEYS.contains(&key) && !key.starts_with("x-") {
            warnings.push(format!("unknown top-level key `{key}` ignored"));
        }
    }
    Ok(warnings)
}

/// A service must be a mapping, `build:` needs an `image:` beside it, and `deploy.mode` can only
/// be `replicated`.
pub(super) fn check_service_keys(
    ctx: &mut Ctx<'_>,
    name: &str,
    value: &Value,
) -> Result<(), ComposeError> {
    let Value::Mapping(m) = value else {
        return Err(invalid(format!("services.{name}"), "must be a mapping"));
    };
    for key in m.keys().filter_map(Value::as_str) {
        if key == "build" {
            if m.get("image").is_none() {
                return Err(ComposeError::Build {
                    service: name.to_string(),
                });
            }
            ctx.warnings.push(format!(
                "services.{name}.build is ignored: berth pulls `image` and never builds"
            ));
        } else if UNSUPPORTED_SERVICE_KEYS.contains(&key) {
            return Err(ComposeError::Unsupported {
                field: format!("services.{name}.{key}"),
            });
        } else if !SERVICE_KEYS.contains(&key) && !key.starts_with("x-") {
            ctx.warnings
                .push(format!("unknown key services.{name}.{key} ignored"));
        }
    }
    if let Some(Value::Mapping(deploy)) = m.get("deploy") {
        for key in deploy.keys().filter_map(Value::as_str) {
            if !DEPLOY_KEYS.contains(&key) && !key.starts_with("x-") {
                ctx.warnings
                    .push(format!("services.{name}.deploy.{key} is ignored by berth"));
            }
        }
        if let Some(mode) = deploy.get("mode").and_then(Value::as_str) {
            if mode != "replicated" {
                return Err(ComposeError::Unsupported {
                    field: format!("services.{name}.deploy.mode: {mode}"),
                });
            }
        }
    }
    Ok(())
}
