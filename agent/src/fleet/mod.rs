//! The release across the fleet (`berth rollout`), run from CI or a laptop, not on an instance:
//! one instance first, judged there by its own agent (health, watch, analysis), then the rest,
//! and on any failure the previous release back everywhere it went.
//!
//! It drives AWS's own engines and nothing else: the release parameter (instances that boot
//! meanwhile read it), the AutoScaling group's InService instances, and SSM Run Command sending
//! the stack's document (MaxConcurrency / MaxErrors) to them. Each instance's verdict is its
//! command's: `berth upgrade` exits 1 when its agent rolled the release back.
//!
//! One rollout at a time per release parameter: `<parameter>.rollout` is created (never
//! overwritten) for the rollout's duration and names it; a second one is refused with that
//! name (exit 7). A rollout killed before it removes it leaves it behind: delete it by hand once
//! sure nothing runs (`aws ssm delete-parameter --name <parameter>.rollout`).
//!
//! Exit codes: 0 released; 1 failed and rolled back (or the rollback failed: the summary says
//! which instances run what); 3 not a release id, nothing to release to (no InService
//! instance), or no way back (the previous release is no longer complete); 6 an AWS call
//! failed; 7 another rollout runs.

pub mod rollout;
pub mod run_command;

pub use rollout::{rollout, Rollout, Summary};

/// Why a rollout stopped before it could finish or roll back.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("another rollout runs ({holder}; its lock is the parameter {lock})")]
    Busy { lock: String, holder: String },
    #[error("{step} ({what}): {message}")]
    Aws {
        step: &'static str,
        what: String,
        message: String,
    },
    #[error("{release:?} is not a release id: a letter or digit, then letters, digits, . _ + - (128 at most), as the SSM document takes it")]
    BadRelease { release: String },
    #[error("group {group} has no InService instance to release to")]
    NoInstances { group: String },
    #[error("SSM command {command} ({what}) still {status} after {secs}s")]
    Timeout {
        command: String,
        what: String,
        status: String,
        secs: u64,
    },
    #[error("the smoke test `{command}` failed ({status}); no instance switched")]
    Smoke { command: String, status: String },
    #[error("the way back, release {previous} (which serves now), is not known to be whole ({why}); nothing was changed (--allow-no-rollback goes on without one)")]
    NoWayBack { previous: String, why: String },
    #[error("the rollout's alarms: {0}; nothing was changed")]
    Alarms(#[source] crate::alarms::GateError),
}

impl FleetError {
    /// An SDK error in one step, acted on `what` (a parameter, a group, a command).
    pub(crate) fn aws<E>(step: &'static str, what: impl Into<String>, e: &E) -> FleetError
    where
        E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        FleetError::Aws {
            step,
            what: what.into(),
            message: crate::aws::describe(e),
        }
    }
}
