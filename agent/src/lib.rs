//! berth: an on-instance bootstrap and deploy agent. This crate holds the pipeline; `main.rs`
//! holds only the command line. One module per stage, in pipeline order:
//!
//! - [`compose`] reads compose files into a resolved, validated [`compose::Project`]
//!   (with [`interpolate`] and [`dotenv`] for compose's variable and env-file rules);
//! - [`plan`] turns a project into container specs and diffs them against Docker;
//! - [`converge`] carries a plan out through [`docker`] (with [`registry`] credentials),
//!   reporting through [`progress`];
//! - [`commands`] puts the stages together for each subcommand.

pub mod agent;
pub mod aws;
pub mod commands;
pub mod compose;
pub mod config;
pub mod converge;
pub mod daemon;
pub mod docker;
pub mod dotenv;
pub mod health;
pub mod identity;
pub mod interpolate;
pub mod lifecycle;
pub mod plan;
pub mod progress;
pub mod proxy;
pub mod registry;
pub mod release;
pub mod upgrade;
