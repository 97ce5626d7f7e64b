//! What the agent serves while it runs: its [`state`] (phase, release, services, timings), and
//! the [`http`] endpoint the load balancer checks (`/healthz`, with `/status` for people and
//! `/metrics` for Prometheus, [`metrics`]). With the proxy strategy, both of the latter also
//! show the proxy's [`traffic`]. Who may hold a connection to the port: [`admit`].

pub mod admit;
pub mod http;
pub mod metrics;
pub mod state;
pub mod traffic;

pub use state::{AgentState, Analysis, Berth, Figures, Phase, ServiceStatus, BERTH};
