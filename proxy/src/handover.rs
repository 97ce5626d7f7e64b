//! A reload without a gap (`systemctl reload berth-proxy`: SIGHUP). The proxy starts its
//! successor, the binary now at its own path (so a package upgrade takes effect), with the
//! same command line and the same two sockets, passed as systemd passes them. Once the
//! successor is ready (it listens, serves the control socket, and told systemd it is the
//! service's main process: `MAINPID`, as nginx's and HAProxy's seamless reloads do), it says so
//! with SIGUSR2 to this process, which then stops accepting and finishes what it has open:
//! responses, SSE streams and WebSockets, up to `--drain-secs`. A signal rather than a call on
//! the control socket: that socket is root's (0600), and the proxy's own user cannot connect.
//! Old and new overlap, so no connection waits for an open stream to end. A restart (stop,
//! then start) cannot overlap: it parks its connections for the next proxy instead (park.rs).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long a successor may take to be ready before it is given up (and killed), and this
/// proxy goes on serving.
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
    #[error("the successor was not ready within {} s", READY_WITHIN.as_secs())]
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

/// The environment variable that tells a successor whom to signal once it is ready.
const PREDECESSOR: &str = "BERTH_PROXY_PREDECESSOR";

/// In a successor, once it is ready: tells the proxy that started it (SIGUSR2).
pub(super) fn tell_predecessor() {
    let Some(pid) = std::env::var(PREDECESSOR)
        .ok()
        .and_then(|p| p.parse().ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, rustix::process::Signal::USR2) {
        tracing::warn!(predecessor = pid.as_raw_nonzero().get(), error = %e, "cannot tell the predecessor this proxy is ready");
    }
}

/// Starts the successor and waits until it says it is ready; its pid.
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
    // Listening before the successor can send it.
    let mut ready = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())
        .map_err(start)?;
    let traffic = sockets.traffic.try_clone().map_err(start)?;
    let control = sockets.control.try_clone().map_err(start)?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg(&exe)
        .args(args)
        .env_remove("LISTEN_FDNAMES")
        .env(PREDECESSOR, std::process::id().to_string())
        .stdin(Stdio::from(traffic))
        .stdout(Stdio::from(control))
        .spawn()
        .map_err(start)?;
    // `exec` keeps the pid: the shell's is the successor's.
    let pid = child.id();
    let deadline = tokio::time::Instant::now() + READY_WITHIN;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HandoverError::Exited { status });
        }
        tokio::select! {
            _ = ready.recv() => return Ok(pid),
            () = tokio::time::sleep_until(deadline) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HandoverError::NotReady);
            }
            // Looks again whether it exited.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}
