//! `healthcheck`: the test command's forms and the durations, in nanoseconds.

use super::invalid;
use crate::compose::fields::parse_duration;
use crate::compose::model::Healthcheck;
use crate::compose::schema::{RawHealthcheck, StringOrList};
use crate::compose::ComposeError;

/// The service's healthcheck, when it sets one.
pub(super) fn resolve_healthcheck(
    p: &str,
    h: Option<RawHealthcheck>,
) -> Result<Option<Healthcheck>, ComposeError> {
    h.map(|h| healthcheck(p, h)).transpose()
}

/// A string test runs in a shell; `disable: true` or `test: [NONE]` turns the image's off.
fn healthcheck(p: &str, h: RawHealthcheck) -> Result<Healthcheck, ComposeError> {
    let dur = |v: Option<String>, key: &str| {
        v.map(|d| parse_duration(&d).map_err(|e| invalid(format!("{p}.healthcheck.{key}"), e)))
            .transpose()
    };
    let test =
        match h.test {
            None => None,
            Some(StringOrList::Str(s)) => Some(vec!["CMD-SHELL".to_string(), s]),
            Some(StringOrList::List(l)) => {
                match l.first().map(String::as_str) {
                    Some("CMD" | "CMD-SHELL") if l.len() >= 2 => {}
                    Some("NONE") => {}
                    _ => return Err(invalid(
                        format!("{p}.healthcheck.test"),
                        "a list must start with CMD, CMD-SHELL or NONE, followed by the command",
                    )),
                }
                Some(l)
            }
        };
    let disabled = h.disable.unwrap_or(false)
        || test
            .as_ref()
            .is_some_and(|t| t.first().map(String::as_str) == Some("NONE"));
    Ok(Healthcheck {
        test: if disabled {
            Some(vec!["NONE".to_string()])
        } else {
            test
        },
        interval_ns: dur(h.interval, "interval")?,
        timeout_ns: dur(h.timeout, "timeout")?,
        start_period_ns: dur(h.start_period, "start_period")?,
        start_interval_ns: dur(h.start_interval, "start_interval")?,
        retries: h.retries,
        disabled,
    })
}
