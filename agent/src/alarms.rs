//! CloudWatch alarms as release gates: the team's own signals (a queue backing up, a business
//! metric), which ECS's deployments and CodeDeploy honour. An alarm that goes to ALARM while a
//! release is watched (an instance's watch and bake, a rollout's canary, bake and rest) fails
//! it as a failed analysis does. An alarm already in ALARM when the gate opens says nothing
//! about the new release: a rollout refuses to start on one unless told (`--ignore-alarm`),
//! and then counts it only if it goes to ALARM again.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::StateValue;

/// An alarm in ALARM: its name, CloudWatch's reason, and since when (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub name: String,
    pub reason: String,
    pub since: i64,
}

impl std::fmt::Display for Firing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CloudWatch alarm {} is in ALARM: {}",
            self.name, self.reason
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AlarmError {
    #[error("CloudWatch DescribeAlarms ({names}): {message}")]
    Aws { names: String, message: String },
    /// A gate on an alarm that does not exist would never close: a typo must not pass.
    #[error("no CloudWatch alarm is named {}", names.join(", "))]
    Missing { names: Vec<String> },
}

/// The named alarms (metric and composite) in ALARM now; every one must exist.
pub async fn firing(
    cw: &aws_sdk_cloudwatch::Client,
    names: &[String],
) -> Result<Vec<Firing>, AlarmError> {
    let mut seen = BTreeMap::new();
    // DescribeAlarms takes at most 100 names a call.
    for chunk in names.chunks(100) {
        let mut pages = cw
            .describe_alarms()
            .set_alarm_names(Some(chunk.to_vec()))
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::MetricAlarm)
            .alarm_types(aws_sdk_cloudwatch::types::AlarmType::CompositeAlarm)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AlarmError::Aws {
                names: chunk.join(", "),
                message: crate::aws::describe(&e),
            })?;
            let metric = page.metric_alarms().iter().map(|a| {
                (
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason(),
                    a.state_updated_timestamp(),
                )
            });
            let composite = page.composite_alarms().iter().map(|a| {
                (
                    a.alarm_name(),
                    a.state_value(),
                    a.state_reason(),
                    a.state_updated_timestamp(),
                )
            });
            for (name, state, reason, at) in metric.chain(composite) {
                let Some(name) = name else { continue };
                let firing = (state == Some(&StateValue::Alarm)).then(|| Firing {
                    name: name.to_string(),
                    reason: reason.unwrap_or("(no reason given)").to_string(),
                    since: at.map_or(0, |t| t.secs()),
                });
                seen.insert(name.to_string(), firing);
            }
        }
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !seen.contains_key(*n))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(AlarmError::Missing { names: missing });
    }
    Ok(seen.into_values().flatten().collect())
}

/// A gate on some alarms, opened at one moment: what was in ALARM then (and allowed to be)
/// does not count unless it goes to ALARM again.
#[derive(Debug, Clone)]
pub struct Gate {
    pub names: Vec<String>,
    /// Already in ALARM when the gate opened, with since when.
    pub excused: BTreeMap<String, i64>,
}

impl Gate {
    /// Opens a gate on `names`. Alarms in ALARM now are an error unless `ignore` (then they
    /// are excused, and said in the answer's second half).
    pub async fn open(
        cw: &aws_sdk_cloudwatch::Client,
        names: &[String],
        ignore: bool,
    ) -> Result<(Gate, Vec<Firing>), GateError> {
        let now = firing(cw, names).await?;
        if !now.is_empty() && !ignore {
            return Err(GateError::Firing(now));
        }
        Ok((
            Gate {
                names: names.to_vec(),
                excused: now.iter().map(|f| (f.name.clone(), f.since)).collect(),
            },
            now,
        ))
    }

    /// The first alarm that went to ALARM since the gate opened, if any.
    pub async fn check(
        &self,
        cw: &aws_sdk_cloudwatch::Client,
    ) -> Result<Option<Firing>, AlarmError> {
        Ok(self.first_new(firing(cw, &self.names).await?))
    }

    fn first_new(&self, firing: Vec<Firing>) -> Option<Firing> {
        firing.into_iter().find(|f| {
            self.excused
                .get(&f.name)
                .is_none_or(|since| f.since > *since)
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Alarm(#[from] AlarmError),
    #[error("{} in ALARM before anything moved: {}", if .0.len() == 1 { "an alarm is" } else { "alarms are" }, .0.iter().map(|f| format!("{} ({})", f.name, f.reason)).collect::<Vec<_>>().join("; "))]
    Firing(Vec<Firing>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firing(name: &str, since: i64) -> Firing {
        Firing {
            name: name.into(),
            reason: "Threshold Crossed".into(),
            since,
        }
    }

    #[test]
    fn an_alarm_excused_at_the_start_counts_again_only_when_it_fires_again() {
        let gate = Gate {
            names: vec!["queue".into(), "orders".into()],
            excused: BTreeMap::from([("queue".to_string(), 100)]),
        };
        assert_eq!(gate.first_new(vec![firing("queue", 100)]), None);
        assert_eq!(
            gate.first_new(vec![firing("queue", 100), firing("orders", 150)]),
            Some(firing("orders", 150))
        );
        assert_eq!(
            gate.first_new(vec![firing("queue", 160)]),
            Some(firing("queue", 160))
        );
        assert_eq!(
            firing("orders", 1).to_string(),
            "CloudWatch alarm orders is in ALARM: Threshold Crossed"
        );
    }

    #[test]
    fn alarms_firing_before_anything_moved_are_named_with_their_reasons() {
        let e = GateError::Firing(vec![firing("queue", 1)]);
        assert_eq!(
            e.to_string(),
            "an alarm is in ALARM before anything moved: queue (Threshold Crossed)"
        );
    }
}
