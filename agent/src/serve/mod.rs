//! What the agent serves while it runs: the health endpoint the load balancer checks (with
//! `/status`), and the control socket that `berth upgrade`, `rollback` and `status` talk to.

pub mod control;
pub mod health;
