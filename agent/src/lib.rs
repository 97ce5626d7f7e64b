//! berth: an on-instance bootstrap and deploy agent. This crate holds the pipeline; `main.rs`
//! holds only the command line. Modules, from the top of the pipeline down (each imports only
//! those below it):
//!
//! - [`commands`]: each subcommand put together from the stages; [`exit`]: every exit code.
//! - [`agent`]: boot -> hold -> leave, the deployer behind the control socket.
//! - [`upgrade`]: the strategies (proxy colors, drain), crash recovery, the one-at-a-time lock.
//! - [`serve`]: the agent's state and the health endpoint; [`instance`]: IMDSv2 identity, the
//!   lifecycle hook, the load balancer's view; [`release`]: fetching the release (S3, SSM,
//!   local) into 0600 files.
//! - [`compose`]: compose files into a resolved, validated project.
//! - [`engine`]: Docker (the only bollard user), registries, plan, converge, progress.
//! - [`proxy`]: `berth proxy`, its own process; stands alone.
//! - At the bottom: [`config`] (plain settings), [`aws`] (SDK clients), [`ipc`] (JSON lines
//!   over a 0600 socket), [`report`] (errors with their causes).

pub mod agent;
pub mod aws;
pub mod commands;
pub mod compose;
pub mod config;
pub mod engine;
pub mod exit;
pub mod instance;
pub mod ipc;
pub mod proxy;
pub mod release;
pub mod report;
pub mod serve;
pub mod upgrade;
