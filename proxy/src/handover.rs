//! A reload without a gap (`systemctl reload berth-proxy`: SIGHUP). The proxy starts its
//! successor, the binary now at its own path (so a package upgrade takes effect), with the
//! same command line and the same two sockets, passed as systemd passes them. Once the
//! successor answers on the control socket as itself, it is the one that accepts (and it told
//! systemd it is the service's main process: `MAINPID`, as nginx's and HAProxy's seamless
//! reloads do), and this one stops accepting and finishes what it has open: responses, SSE
//! streams and WebSockets, up to `--drain-secs`. Old and new overlap, so no connection waits
//! for an open stream to end; a restart (stop, then start) cannot overlap and waits for it.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::client;

/// How long a successor may take to answer on the control socket before it is given up (and
/// killed), and this proxy goes on serving.
pub(super) const READY_WITHIN: Duration = Duration::from_secs(10);

/// Moves fd 0 (the traffic socket) to 3 and fd 1 (the control socket) to 4, and execs the
/// binary with `LISTEN_FDS` for its own pid, as systemd starts a socket-activated service. By
/// shell: setting `LISTEN_PID` to the child's own pid needs code between fork and exec, which
/// std offers only unsafely.
const SCRIPT: &str =
    r#"exec 3<&0 4>&1 </dev/null >/dev/null; LISTEN_FDS=2 LISTEN_PID=$$ exec "$0" "$@""#;

/// The sockets a successor gets.
#[derive(Debug)]
pub(super) struct Sockets {
    pub(super) traffic: OwnedFd,
    pub(super) control: OwnedFd,
    pub(super) control_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum HandoverError {
    #[error("cannot start the successor {exe:?}")]
    Start {
        exe: OsString,
        source: std::io::Error,
    },
    #[error("the successor exited before it was ready ({status})")]
    Exited { status: std::process::ExitStatus },
    #[error("the successor did not answer on the control socket within {} s", READY_WITHIN.as_secs())]
    NotReady,
}

/// The error and its causes, on one line.
pub(super) fn described(e: &HandoverError) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Starts the successor and waits until it answers on the control socket; its pid.
pub(super) async fn hand_over(sockets: &Sockets) -> Result<u32, HandoverError> {
    let mut args = std::env::args_os();
    let exe = args
        .next()
        .filter(|a| !a.is_empty())
        .or_else(|| std::env::current_exe().ok().map(OsString::from))
        .unwrap_or_else(|| OsString::from("berth"));
    let start = |source| HandoverError::Start {
        exe: exe.clone(),
        source,
    };
    let traffic = sockets.traffic.try_clone().map_err(start)?;
    let control = sockets.control.try_clone().map_err(start)?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&exe)
        .args(args)
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::from(traffic))
        .stdout(Stdio::from(control))
        .spawn()
        .map_err(start)?;
    // `exec` keeps the pid: the shell's is the successor's.
    let pid = child.id();
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HandoverError::Exited { status });
        }
        let asked = tokio::time::timeout(
            Duration::from_secs(1),
            client::status(&sockets.control_path),
        );
        if let Ok(Ok(status)) = asked.await {
            if status.pid == Some(pid) {
                return Ok(pid);
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HandoverError::NotReady);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
