//! The Docker daemon restarted under a holding agent: berth reconnects, looks again, routes the
//! restarted replica's new port and starts what the daemon stopped, creating nothing twice.
//!
//! It restarts the host's dockerd, which every other test needs, so it is `#[ignore]`d in the
//! workspace's run and run on its own afterwards: `cargo test --workspace --test
//! daemon -- --ignored`, as tests/run.sh does.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::rig::*;
use common::traffic::Conn;
use common::*;

/// Restarts dockerd the way it runs here: through systemd when systemd has it, else as
/// tests/setup.sh starts it (`setsid dockerd`, logging to /var/log/berth-dockerd.log).
fn restart_dockerd() {
    let under_systemd = Command::new("systemctl")
        .args(["is-active", "--quiet", "docker"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if under_systemd {
        let status = Command::new("systemctl")
            .args(["restart", "docker"])
            .status()
            .unwrap();
        assert!(status.success(), "systemctl restart docker: {status}");
    } else {
        let out = Command::new("pgrep")
            .args(["-o", "-x", "dockerd"])
            .output()
            .unwrap();
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!pid.is_empty(), "no dockerd running");
        signal(&pid, "TERM");
        eventually("dockerd to exit", Duration::from_secs(60), || {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                Err("still running".to_string())
            } else {
                Ok(())
            }
        });
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open("/var/log/berth-dockerd.log")
            .unwrap();
        // --fork: setsid returns at once, dockerd goes on in a session of its own.
        let status = Command::new("setsid")
            .args(["--fork", "dockerd"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(status.success(), "setsid --fork dockerd: {status}");
    }
    eventually("dockerd to answer", Duration::from_secs(60), || {
        docker_try(&["info"])
            .code
            .eq(&0)
            .then_some(())
            .ok_or_else(|| "no answer".to_string())
    });
}

#[test]
#[ignore = "restarts the host's dockerd: run alone (tests/run.sh does)"]
fn after_a_daemon_restart_the_agent_reconnects_and_starts_what_was_stopped_creating_nothing() {
    let mut rig = Rig::new("daemon-restart");
    // The routed web service comes back by its policy (on a new port); the worker has none,
    // and the daemon's stop ends it with 0: berth starts it again.
    let yaml = web_compose(rig.traffic.port(), RELEASED, &[])
        + "    restart: unless-stopped\n  worker:\n    image: berth-test/web:1\n";
    rig.project.compose(&yaml);
    rig.pointer("1");
    rig.start_agent();
    let mut before = rig.project.container_ids();
    before.sort();
    assert_eq!(before.len(), 2);

    restart_dockerd();
    eventually("everything to serve again", Duration::from_secs(60), || {
        let (code, body) = Conn::open(rig.health).get("/healthz");
        let running = container_ids(&[
            format!("label={PROJECT_LABEL}={}", rig.project.name),
            "status=running".to_string(),
        ]);
        if code == 200 && running.len() == 2 {
            Ok(())
        } else {
            Err(format!("/healthz {code} {body}; running {running:?}"))
        }
    });
    let mut after = rig.project.container_ids();
    after.sort();
    assert_eq!(after, before, "the same containers, none created");
    assert_eq!(Conn::open(rig.traffic).get("/version"), (200, "1\n".into()));
    let log = rig.agent_log();
    assert!(log.contains("the Docker daemon answers again"), "{log}");
}
