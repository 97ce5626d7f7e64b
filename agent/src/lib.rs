//! berth: an on-instance bootstrap and deploy agent. This crate holds the pipeline; `main.rs`
//! holds only the command line.
pub mod agent;
pub mod aws;
pub mod commands;
pub mod compose;
pub mod config;
pub mod engine;
pub mod instance;
pub mod ipc;
pub mod proxy;
pub mod release;
pub mod report;
pub mod serve;
pub mod upgrade;
