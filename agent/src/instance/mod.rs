//! The instance berth runs on: its identity from IMDSv2, the AutoScaling lifecycle hook, and
//! the load balancer's view of it.

pub mod identity;
pub mod lifecycle;
