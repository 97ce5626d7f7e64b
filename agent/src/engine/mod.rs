//! The engine: everything that talks to the Docker daemon. [`docker`] is the only user of
//! bollard; [`registry`] finds pull credentials; [`plan`] turns a project into container specs
//! and diffs them against what Docker reports; [`converge`] carries a plan out; [`progress`]
//! reports it; [`events`] is what the watchdog watches and looks at.

pub mod converge;
pub mod docker;
pub mod events;
pub mod plan;
pub mod progress;
pub mod registry;
