//! berth's exit codes, every one named here once, and which failure gets which. Each stage's
//! errors are mapped in this file; the agent's and the commands' errors, which mostly wrap
//! those, pass their cause's code on (`Coded` beside them), so that this file needs nothing
//! above it.
//!
//! | code | meaning |
//! | ---- | ------- |
//! | 0 | done |
//! | 1 | a service failed to start, become healthy or complete; for `upgrade` and `rollback`, the new release failed and the previous one serves |
//! | 2 | bad command line (or a bad request on the control socket) |
//! | 3 | bad input: compose file, env file, interpolation, settings, a port already taken, a release manifest that cannot run or a way back that is gone; nothing was changed |
//! | 4 | the Docker daemon, `berth proxy` or the agent's control socket is unreachable or refused |
//! | 5 | an image is missing or cannot be pulled; nothing was changed |
//! | 6 | an AWS call failed: instance metadata, S3, SSM, the lifecycle hook, the load balancer |
//! | 7 | another upgrade is running on this host |
//! | 8 | the new release failed and was not rolled back: its migration is `contract` (the previous release cannot read the database); it keeps serving, and a human decides (`berth rollback --force`, or a fix) |

use crate::compose::ComposeError;
use crate::config::ConfigError;
use crate::engine::converge::ConvergeError;
use crate::engine::docker::DockerError;
use crate::engine::registry::RegistryError;
use crate::instance::hook::HookError;
use crate::instance::identity::IdentityError;
use crate::instance::load_balancer::LoadBalancerError;
use crate::ipc::IpcError;
use crate::proxy::ProxyError;
use crate::release::ReleaseError;
use crate::serve::http::HttpError;
use crate::upgrade::UpgradeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    Invalid = 3,
    Docker = 4,
    Image = 5,
    Aws = 6,
    Busy = 7,
    NotRolledBack = 8,
}

impl Exit {
    /// The code another berth process sent (the agent's answer over its control socket).
    pub fn from_code(code: u8) -> Exit {
        match code {
            0 => Exit::Ok,
            2 => Exit::Usage,
            3 => Exit::Invalid,
            4 => Exit::Docker,
            5 => Exit::Image,
            6 => Exit::Aws,
            7 => Exit::Busy,
            8 => Exit::NotRolledBack,
            _ => Exit::Failed,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e as u8)
    }
}

/// An error that knows its exit code.
pub trait Coded {
    fn exit(&self) -> Exit;
}

impl Coded for ConfigError {
    fn exit(&self) -> Exit {
        Exit::Invalid
    }
}

impl Coded for ComposeError {
    fn exit(&self) -> Exit {
        Exit::Invalid
    }
}

impl Coded for HttpError {
    fn exit(&self) -> Exit {
        // The health endpoint's port is taken.
        Exit::Invalid
    }
}

impl Coded for DockerError {
    fn exit(&self) -> Exit {
        match self {
            // The daemon answered; the registry has no such image (or refused us).
            DockerError::Registry { .. } => Exit::Image,
            _ => Exit::Docker,
        }
    }
}

impl Coded for RegistryError {
    fn exit(&self) -> Exit {
        Exit::Image
    }
}

impl Coded for ConvergeError {
    fn exit(&self) -> Exit {
        match self {
            ConvergeError::Docker(_) => Exit::Docker,
            ConvergeError::ImageMissing { .. }
            | ConvergeError::Pull { .. }
            | ConvergeError::Registry(_) => Exit::Image,
            ConvergeError::NoHealthcheck { .. }
            | ConvergeError::PortTaken { .. }
            | ConvergeError::ExternalNetworkMissing { .. }
            | ConvergeError::ExternalVolumeMissing { .. }
            | ConvergeError::EngineTooOld { .. } => Exit::Invalid,
            _ => Exit::Failed,
        }
    }
}

impl Coded for IdentityError {
    fn exit(&self) -> Exit {
        Exit::Aws
    }
}

impl Coded for ReleaseError {
    fn exit(&self) -> Exit {
        match self {
            // The settings or the files at hand are wrong (run_dir unwritable or full, an
            // object over max_object_bytes); no AWS call failed.
            ReleaseError::Local { .. }
            | ReleaseError::Write { .. }
            | ReleaseError::TooLarge { .. }
            | ReleaseError::NameClash { .. }
            | ReleaseError::RemoteInLocalRun { .. } => Exit::Invalid,
            // What the store holds is not a release that can run (or be made): nothing was
            // changed.
            ReleaseError::Manifest(_)
            | ReleaseError::Tampered { .. }
            | ReleaseError::Changed { .. }
            | ReleaseError::Exists { .. }
            | ReleaseError::Unversioned { .. }
            | ReleaseError::BadId(_)
            | ReleaseError::BadPointer { .. }
            | ReleaseError::Policy(_)
            | ReleaseError::NotReady { .. } => Exit::Invalid,
            ReleaseError::Create(e) => match e {
                crate::release::create::CreateError::Compose { .. }
                | crate::release::create::CreateError::Migration { .. } => Exit::Invalid,
                crate::release::create::CreateError::Images { .. } => Exit::Image,
                crate::release::create::CreateError::Docker { source, .. } => source.exit(),
            },
            ReleaseError::S3 { .. }
            | ReleaseError::Ssm { .. }
            | ReleaseError::EmptyRelease { .. } => Exit::Aws,
        }
    }
}

impl Coded for HookError {
    fn exit(&self) -> Exit {
        Exit::Aws
    }
}

impl Coded for LoadBalancerError {
    fn exit(&self) -> Exit {
        match self {
            // A refusal, not an AWS fault: nothing else in the group could serve.
            LoadBalancerError::Alone { .. } => Exit::Failed,
            _ => Exit::Aws,
        }
    }
}

impl Coded for IpcError {
    fn exit(&self) -> Exit {
        Exit::Docker
    }
}

impl Coded for ProxyError {
    fn exit(&self) -> Exit {
        match self {
            // The traffic port or the control socket cannot be had, or the saved route is
            // unreadable: `berth proxy` cannot start.
            ProxyError::Listen { .. } | ProxyError::ControlSocket(_) => Exit::Invalid,
            _ => Exit::Docker,
        }
    }
}

impl Coded for crate::fleet::FleetError {
    fn exit(&self) -> Exit {
        use crate::fleet::FleetError;
        match self {
            FleetError::Busy { .. } => Exit::Busy,
            FleetError::Aws { .. } => Exit::Aws,
            FleetError::NoInstances { .. }
            | FleetError::BadRelease { .. }
            | FleetError::NoWayBack { .. } => Exit::Invalid,
            FleetError::Timeout { .. } | FleetError::Smoke { .. } => Exit::Failed,
            FleetError::Alarms(crate::alarms::GateError::Alarm(_)) => Exit::Aws,
            FleetError::Alarms(crate::alarms::GateError::Firing(_)) => Exit::Failed,
        }
    }
}

impl Coded for UpgradeError {
    fn exit(&self) -> Exit {
        match self {
            UpgradeError::Busy { .. } => Exit::Busy,
            UpgradeError::Routed { .. }
            | UpgradeError::NoPrevious { .. }
            | UpgradeError::PreviewOfNothing { .. }
            | UpgradeError::PreviewUnnamed
            | UpgradeError::PreviewKey { .. }
            | UpgradeError::NoPreview { .. }
            | UpgradeError::CanaryAcrossContract { .. } => Exit::Invalid,
            UpgradeError::NotRolledBack { .. } => Exit::NotRolledBack,
            UpgradeError::Proxy(_) | UpgradeError::Docker(_) => Exit::Docker,
            UpgradeError::Converge(c) | UpgradeError::NewRelease { source: c, .. } => c.exit(),
            UpgradeError::LoadBalancer(e) => e.exit(),
            UpgradeError::Lock { .. }
            | UpgradeError::Probe { .. }
            | UpgradeError::RolledBack { .. }
            | UpgradeError::Hook { .. }
            | UpgradeError::CanaryFailed { .. }
            | UpgradeError::Previous { .. }
            | UpgradeError::NoBackend { .. } => Exit::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_new_release_passes_its_cause_on_and_busy_is_seven() {
        let busy = UpgradeError::Busy {
            holder: "upgrade to release 2".into(),
        };
        assert_eq!(busy.exit() as u8, 7);
        let missing = ConvergeError::ImageMissing {
            service: "web".into(),
            image: "web:9".into(),
        };
        assert_eq!(missing.exit(), Exit::Image);
        let new = UpgradeError::NewRelease {
            release: "9".into(),
            source: missing,
        };
        assert_eq!(new.exit(), Exit::Image);
        let cfg = ConfigError::Invalid {
            path: "/etc/berth/berth.toml".into(),
            key: "project".into(),
            message: "bad".into(),
        };
        assert_eq!(cfg.exit() as u8, 3);
    }

    fn io() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::AddrInUse)
    }

    #[test]
    fn berth_proxy_that_cannot_start_is_bad_input_and_an_unreachable_proxy_is_four() {
        let listen = ProxyError::Listen {
            addr: "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!()),
            source: io(),
        };
        assert_eq!(listen.exit(), Exit::Invalid);
        let socket = ProxyError::ControlSocket(IpcError::InUse {
            path: "/run/berth-proxy.sock".into(),
        });
        assert_eq!(socket.exit(), Exit::Invalid);
        let absent = ProxyError::NotRunning {
            path: "/run/berth-proxy.sock".into(),
            source: io(),
        };
        assert_eq!(absent.exit(), Exit::Docker);
        assert_eq!(UpgradeError::Proxy(absent).exit(), Exit::Docker);
    }

    #[test]
    fn aws_failures_are_six_and_local_release_files_are_three() {
        let s3 = ReleaseError::S3 {
            bucket: "b".into(),
            key: "k".into(),
            message: "no such key (NoSuchKey)".into(),
        };
        assert_eq!(s3.exit(), Exit::Aws);
        let local = ReleaseError::RemoteInLocalRun {
            location: "s3://b/k".into(),
        };
        assert_eq!(local.exit(), Exit::Invalid);
        let hook = HookError::NoGroup {
            hook: "launch".into(),
        };
        assert_eq!(hook.exit(), Exit::Aws);
        let rolled = UpgradeError::RolledBack {
            release: "2".into(),
            previous: "1".into(),
            reason: crate::upgrade::ProbeError::Unhealthy.into(),
        };
        assert_eq!(rolled.exit(), Exit::Failed);
    }

    #[test]
    fn codes_another_berth_sent_come_back_as_themselves() {
        for exit in [
            Exit::Ok,
            Exit::Failed,
            Exit::Usage,
            Exit::Invalid,
            Exit::Docker,
            Exit::Image,
            Exit::Aws,
            Exit::Busy,
        ] {
            assert_eq!(Exit::from_code(exit as u8), exit);
        }
        assert_eq!(Exit::from_code(99), Exit::Failed);
    }
}
