//! `GET /metrics`: Prometheus' text format. The agent's own gauges (its phase, ready, in
//! service), and with the proxy strategy the proxy's per-backend series, asked over its
//! control socket. A proxy that cannot be asked is a `berth_proxy_up 0`, not a failed scrape:
//! that is when the agent's part matters most.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::state::{Phase, Status};
use super::traffic;
use crate::proxy::metrics::escape;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The agent's gauges, then (with `proxy`, the proxy's control socket) the proxy's series.
pub async fn render(status: &Status, proxy: Option<&Path>, timeout: Duration) -> String {
    let mut out = agent_part(status);
    let Some(socket) = proxy else {
        return out;
    };
    let asked = traffic::ask(socket, timeout).await;
    gauge(
        &mut out,
        "berth_proxy_up",
        "1 when berth proxy answered its status to this scrape.",
        &[("", u64::from(asked.is_ok()))],
    );
    match asked {
        Ok(s) => out.push_str(&crate::proxy::metrics::render(&s)),
        Err(e) => {
            tracing::debug!(error = %crate::report::chain(&e), "metrics: the proxy did not answer");
        }
    }
    out
}

/// What the agent itself knows: which phase it is in, whether it is ready and in service.
fn agent_part(status: &Status) -> String {
    let mut out = String::new();
    let info = format!(
        "{{project=\"{}\",release=\"{}\"}}",
        escape(&status.project),
        escape(status.release.as_deref().unwrap_or(""))
    );
    gauge(
        &mut out,
        "berth_agent_info",
        "The agent's project and the release it runs.",
        &[(&info, 1)],
    );
    let phases: Vec<(String, u64)> = Phase::ALL
        .iter()
        .map(|p| {
            (
                format!("{{phase=\"{}\"}}", p.as_str()),
                u64::from(*p == status.phase),
            )
        })
        .collect();
    let phases: Vec<(&str, u64)> = phases.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        &mut out,
        "berth_agent_phase",
        "1 for the phase the agent is in.",
        &phases,
    );
    gauge(
        &mut out,
        "berth_agent_ready",
        "1 when every service is up and healthy (the health path answers 200).",
        &[("", u64::from(status.phase == Phase::Ready))],
    );
    gauge(
        &mut out,
        "berth_agent_in_service",
        "1 once the load balancer has marked this instance healthy.",
        &[("", u64::from(status.in_service))],
    );
    out
}

/// One gauge family: its help, its type, one line per `(labels, value)`.
fn gauge(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, value) in series {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::serve::AgentState;
    use std::time::Instant;

    #[tokio::test]
    async fn the_agents_part_alone_without_a_proxy() {
        let state = AgentState::new("shop", Instant::now());
        state.update(|s| s.release = Some("v\"2".into()));
        state.set_phase(Phase::Ready);
        let text = render(&state.snapshot(), None, Duration::from_secs(1)).await;
        assert!(
            text.contains("berth_agent_info{project=\"shop\",release=\"v\\\"2\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("berth_agent_phase{phase=\"ready\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("berth_agent_phase{phase=\"identity\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("berth_agent_ready 1\n"), "{text}");
        assert!(text.contains("berth_agent_in_service 0\n"), "{text}");
        assert!(!text.contains("berth_proxy"), "{text}");
    }
}
