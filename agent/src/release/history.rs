//! What was said of each release: every instance's deploys of it (deployed, failed, rolled
//! back) and every rollout's outcome, each a small JSON object of its own under
//! `<store>/reports/<id>/` (written once, never rewritten, so that instances need no lock and
//! only a right to add under `reports/`). `berth releases` reads them beside the manifests.
//! A report that cannot be written is a warning: it never fails a deploy.

use serde::{Deserialize, Serialize};

use super::{store, Manifest, ReleaseError};
use crate::aws::Aws;
use crate::config::Store;

/// One thing said of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub release: String,
    /// The instance id, or `rollout`.
    pub by: String,
    /// `deployed`, `failed`, `rolled back` (an instance); `released`, `rolled back`,
    /// `rollback incomplete` (a rollout).
    pub event: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// The release the instance ran before, or the rollout went back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Why it failed: berth's error line (names releases, services, objects; never a value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `migrated`, `migration failed`: how the release's migration ran (no output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::migration::Ran>,
}

/// Now, as RFC 3339 UTC (`2026-12-07T01:02:03Z`).
pub fn now() -> String {
    use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    DateTime::from_secs(i64::try_from(secs).unwrap_or(0))
        .fmt(DateTimeFormat::DateTime)
        .unwrap_or_default()
}

/// A name safe in a key: what is not a letter, digit, `.` or `-` becomes `-`.
pub(super) fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Adds `report` under its release; a failure is logged, not returned.
pub async fn say(aws: Option<&Aws>, store: &Store, report: &Report) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let key = format!(
        "reports/{}/{nanos}-{}-{}.json",
        report.release,
        safe(&report.by),
        safe(&report.event)
    );
    let bytes = serde_json::to_vec(report).unwrap_or_default();
    if let Err(e) = store::put(aws, store, &key, bytes, true).await {
        tracing::warn!(release = %report.release, error = %crate::report::chain(&e), "cannot record what was said of the release");
    }
}

/// A release as `berth releases` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub release: String,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Service -> `image@digest`.
    pub images: std::collections::BTreeMap<String, String>,
    /// Its migration and phase, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::migration::Migration>,
    pub reports: Vec<Report>,
}

/// The `limit` most recent releases of the store (by their manifest's `created`), newest
/// first, each with what was said of it (oldest first).
pub async fn recent(
    aws: Option<&Aws>,
    store: &Store,
    limit: usize,
    cap: u64,
) -> Result<Vec<Listed>, ReleaseError> {
    let keys = store::list(aws, store, "releases/").await?;
    let mut manifests = Vec::new();
    for key in keys.iter().filter(|k| {
        k.strip_prefix("releases/")
            .is_some_and(|rest| rest.ends_with(".json") && !rest.contains('/'))
    }) {
        let id = key
            .trim_start_matches("releases/")
            .trim_end_matches(".json")
            .to_string();
        let Some(read) = store::get_first(aws, store, key, cap).await? else {
            continue;
        };
        match Manifest::parse(&read.bytes, &store::display(store, key), &id) {
            Ok(m) => manifests.push(m),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable manifest"),
        }
    }
    manifests.sort_by(|a, b| b.created.cmp(&a.created).then(b.release.cmp(&a.release)));
    manifests.truncate(limit);
    let mut out = Vec::with_capacity(manifests.len());
    for m in manifests {
        let mut reports = Vec::new();
        // Reports only: a migration's output is an object there too, never printed.
        for key in store::list(aws, store, &format!("reports/{}/", m.release))
            .await?
            .into_iter()
            .filter(|k| k.ends_with(".json"))
        {
            if let Some(read) = store::get(aws, store, &key, cap).await? {
                match serde_json::from_slice::<Report>(&read.bytes) {
                    Ok(r) => reports.push(r),
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "skipping an unreadable report")
                    }
                }
            }
        }
        reports.sort_by(|a, b| a.at.cmp(&b.at));
        out.push(Listed {
            release: m.release.clone(),
            created: m.created.clone(),
            commit: m.source.as_ref().and_then(|s| s.commit.clone()),
            images: m
                .images
                .iter()
                .map(|(s, p)| (s.clone(), p.reference()))
                .collect(),
            migration: m.migration.clone(),
            reports,
        });
    }
    Ok(out)
}

/// `berth releases` as text: a block per release, a line per report.
pub fn render(listed: &[Listed]) -> String {
    let mut out = String::new();
    for l in listed {
        out.push_str(&format!(
            "release {}  created {}{}\n",
            l.release,
            l.created,
            l.commit
                .as_deref()
                .map(|c| format!("  commit {c}"))
                .unwrap_or_default()
        ));
        for (service, image) in &l.images {
            out.push_str(&format!("  {service}: {image}\n"));
        }
        if let Some(m) = &l.migration {
            out.push_str(&format!(
                "  migration: {} ({}{})\n",
                m.service,
                m.phase.as_str(),
                if m.phase == super::migration::Phase::Contract {
                    ": no automatic rollback from it"
                } else {
                    ""
                }
            ));
        }
        if l.reports.is_empty() {
            out.push_str("  (nothing said of it yet)\n");
        }
        for r in &l.reports {
            out.push_str(&format!(
                "  {}  {}: {}{}{}{}\n",
                r.at,
                r.by,
                r.event,
                r.migration
                    .as_ref()
                    .map(|m| format!(
                        " ({}, exit {}, {:.1}s{})",
                        m.service,
                        m.exit,
                        m.millis as f64 / 1000.0,
                        m.output
                            .as_deref()
                            .map(|o| format!("; its output: {o}"))
                            .unwrap_or_default()
                    ))
                    .unwrap_or_default(),
                r.previous
                    .as_deref()
                    .map(|p| format!(" (previous {p})"))
                    .unwrap_or_default(),
                r.detail
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && t.contains('T'),
            "{t}"
        );
    }

    #[tokio::test]
    async fn reports_are_added_never_rewritten_and_listed_with_their_release() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Local(dir.path().to_path_buf());
        let manifest = |id: &str, created: &str| {
            serde_json::json!({
                "format": 1, "release": id, "created": created,
                "compose": {"location": "c.yaml", "bytes": 1},
                "images": {"web": {"image": "r/web:1", "digest": format!("sha256:{}", "a".repeat(64))}}
            })
            .to_string()
        };
        std::fs::create_dir_all(dir.path().join("releases")).unwrap();
        std::fs::write(
            dir.path().join("releases/1.json"),
            manifest("1", "2026-01-01T00:00:00Z"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("releases/2.json"),
            manifest("2", "2026-02-01T00:00:00Z"),
        )
        .unwrap();
        for (by, event) in [
            ("i-1", "deployed"),
            ("i-2", "failed"),
            ("rollout", "rolled back"),
        ] {
            say(
                None,
                &store,
                &Report {
                    release: "2".into(),
                    by: by.into(),
                    event: event.into(),
                    at: now(),
                    previous: Some("1".into()),
                    detail: None,
                    migration: None,
                },
            )
            .await;
        }
        let listed = recent(None, &store, 10, 1 << 20).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].release, "2", "newest first");
        let said: Vec<(&str, &str)> = listed[0]
            .reports
            .iter()
            .map(|r| (r.by.as_str(), r.event.as_str()))
            .collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said.contains(&("rollout", "rolled back")));
        assert!(listed[1].reports.is_empty());
        let text = render(&listed);
        assert!(text.contains("i-2: failed (previous 1)"), "{text}");
        assert_eq!(recent(None, &store, 1, 1 << 20).await.unwrap().len(), 1);
    }
}
