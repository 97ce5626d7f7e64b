//! What the agent serves while it runs: its [`state`] (phase, release, services, timings), and
//! the [`http`] endpoint the load balancer checks (`/healthz`, with `/status` for people).

pub mod http;
pub mod state;

pub use state::{AgentState, Phase, ServiceStatus};
