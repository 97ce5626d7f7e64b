//! Faults while holding, end to end: the real `berth agent` (local mode, proxy strategy) and the
//! real `berth proxy` in front of berth-test/web on the real Docker daemon, 4 keep-alive clients
//! on the traffic port, and then the app dies, is removed, turns unhealthy. Each test asserts
//! the outcome: traffic kept (only what was in flight in a killed container may fail), or the
//! instance honestly 503 with the reason, and nothing duplicated or left half-done.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::rig::*;
use common::traffic::{failures, Conn, Load};
use common::*;
use serde_json::Value;

/// The web service with `restart` (None: compose's default, no restart) and `replicas`.
fn web(rig: &Rig, restart: Option<&str>, replicas: u32, env: &[(&str, &str)]) {
    let mut yaml = web_compose(rig.traffic.port(), RELEASED, env);
    if let Some(r) = restart {
        yaml.push_str(&format!("    restart: {r}\n"));
    }
    yaml.push_str(&format!("    deploy:\n      replicas: {replicas}\n"));
    rig.project.compose(&yaml);
    rig.pointer("1");
}

/// The health endpoint's answer: code and JSON body.
fn health(rig: &Rig) -> (u16, Value) {
    let (code, body) = Conn::open(rig.health).get("/healthz");
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until the health endpoint answers `code`; its body.
#[track_caller]
fn wait_healthz(rig: &Rig, code: u16, secs: u64) -> Value {
    eventually(
        &format!("/healthz to answer {code}"),
        Duration::from_secs(secs),
        || match health(rig) {
            (c, body) if c == code => Ok(body),
            (c, body) => Err(format!("{c} {body}")),
        },
    )
}

fn agent_status(rig: &Rig) -> Value {
    let (code, body) = Conn::open(rig.health).get("/status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

/// The proxy's active backends, sorted.
fn route(rig: &Rig) -> Vec<String> {
    let mut r: Vec<String> = active_backends(rig.proxy())
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    r.sort();
    r
}

/// Waits until the proxy routes to `n` backends other than `old`'s, all of release 1.
fn rerouted(rig: &Rig, old: &[String], n: usize, secs: u64) -> Vec<String> {
    eventually(
        "the restarted replica to be routed",
        Duration::from_secs(secs),
        || {
            let now = route(rig);
            if now.len() == n && now != old {
                Ok(now)
            } else {
                Err(format!("route {now:?}, before {old:?}"))
            }
        },
    )
}

#[test]
fn a_killed_app_is_restarted_routed_again_and_loses_only_what_was_in_flight() {
    let mut rig = Rig::new("faults-kill");
    web(&rig, Some("unless-stopped"), 1, &[]);
    rig.start_agent();
    let before = running_of(&rig, "blue");
    assert_eq!(before.len(), 1);
    let old = route(&rig);

    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);
    // The app's process killed on the host, as the kernel's OOM killer or a crash would: Docker
    // restarts it by its policy, on a new port.
    let pid = inspect(&before[0])["State"]["Pid"].as_i64().unwrap();
    let killed = Instant::now();
    signal(pid, "KILL");
    let now = rerouted(&rig, &old, 1, 10);
    let serving_again = killed.elapsed();
    load_for(&load, 200);
    let samples = load.finish();
    let failed = failures(&samples);
    eprintln!(
        "figures: routed again {serving_again:?} after the kill; {} of {} requests failed",
        failed.len(),
        samples.len()
    );
    assert!(
        failed.len() <= 4,
        "only the 4 clients' requests in flight at the kill may fail: {failed:?}\n{}\nproxy:\n{}",
        rig.agent_log(),
        rig.proxy().log()
    );
    assert_ne!(now, old);
    assert_eq!(
        running_of(&rig, "blue"),
        before,
        "restarted in place, not recreated"
    );
    assert_eq!(rig.colors().len(), 1, "no duplicate: {:?}", rig.colors());
    let (code, body) = health(&rig);
    assert_eq!(code, 200, "{body}");
    assert_eq!(agent_status(&rig)["faults"], Value::Array(vec![]));
}

#[test]
fn one_of_three_replicas_killed_loses_nothing_and_comes_back_into_the_route() {
    let mut rig = Rig::new("faults-replica");
    web(&rig, Some("always"), 3, &[]);
    rig.start_agent();
    let old = route(&rig);
    assert_eq!(old.len(), 3);
    let serving = running_of(&rig, "blue");

    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);
    // `docker kill` is an operator's stop to Docker: its restart policy leaves the container
    // down, and berth starts it again.
    docker(&["kill", "-s", "KILL", &serving[1]]);
    let now = rerouted(&rig, &old, 3, 10);
    load_for(&load, 200);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    // Two backends stay, the restarted one has a new port.
    assert_eq!(
        now.iter().filter(|b| old.contains(b)).count(),
        2,
        "{now:?} {old:?}"
    );
    assert_eq!(running_of(&rig, "blue").len(), 3);
    assert_eq!(health(&rig).0, 200);
}

#[test]
fn an_app_that_stays_dead_turns_the_instance_503_at_once_and_failed_after_the_budget() {
    let mut rig = Rig::new_with("faults-dead", "[watchdog]\nrepair_secs = 3\n");
    let secret = "s3cr3t-watchdog-value";
    web(&rig, None, 1, &[("API_TOKEN", secret)]);
    rig.start_agent();
    let id = running_of(&rig, "blue").remove(0);

    let killed = Instant::now();
    docker(&["kill", "-s", "KILL", &id]);
    let body = wait_healthz(&rig, 503, 5);
    let to_503 = killed.elapsed();
    eprintln!("figures: /healthz 503 {to_503:?} after the kill");
    assert!(to_503 < Duration::from_secs(2), "{to_503:?}");
    assert_eq!(body["phase"], "repairing", "{body}");
    let faults = body["faults"].to_string();
    assert!(faults.contains("exited with code 137"), "{body}");

    // Its restart policy (none) keeps it down: after repair_secs the instance has failed.
    let status = eventually("the agent to give up", Duration::from_secs(15), || {
        let s = agent_status(&rig);
        if s["phase"] == "failed" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    });
    let error = status["last_error"].as_str().unwrap();
    assert!(error.contains("not repaired within 3s"), "{error}");
    assert!(error.contains("exited with code 137"), "{error}");
    assert_eq!(health(&rig).0, 503);
    let (_, healthz) = Conn::open(rig.health).get("/healthz");
    let shown = format!("{status}{healthz}{}", rig.agent_log());
    assert!(!shown.contains(secret), "a value leaked: {shown}");
    // Nothing was started or made meanwhile.
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), false)]);

    // An operator's deploy is a fresh start: the release serves again and so does /healthz.
    rig.berth("upgrade", &["--release", "1"]).ok();
    wait_healthz(&rig, 200, 10);
    assert_eq!(Conn::open(rig.traffic).get("/version"), (200, "1\n".into()));
}

#[test]
fn a_removed_container_is_recreated_and_routed_without_duplicates() {
    let mut rig = Rig::new("faults-removed");
    web(&rig, Some("unless-stopped"), 1, &[]);
    rig.start_agent();
    let before = running_of(&rig, "blue");
    docker(&["rm", "-f", &before[0]]);
    eventually(
        "a new container to serve",
        Duration::from_secs(30),
        || match (health(&rig).0, rig.colors().as_slice()) {
            (200, [(_, release, true)]) if release == "1" => Ok(()),
            (code, colors) => Err(format!("{code} {colors:?}")),
        },
    );
    let log = rig.agent_log();
    assert!(log.contains("deploying the release again"), "{log}");
    assert_eq!(Conn::open(rig.traffic).get("/version"), (200, "1\n".into()));
}

#[test]
fn an_unhealthy_app_is_restarted_in_place_and_serves_again() {
    let mut rig = Rig::new("faults-unhealthy");
    web(&rig, Some("unless-stopped"), 1, &[]);
    rig.start_agent();
    let id = running_of(&rig, "blue").remove(0);
    wait_health(&id, "healthy", 10);
    let started = started_at(&inspect(&id));
    // The healthcheck fails from now on, until the container starts again (web.sh writes
    // the file at start).
    exec(&id, &["rm", "/www/healthz"]);
    eventually("a restart", Duration::from_secs(20), || {
        let now = started_at(&inspect(&id));
        if now != started && health(&rig).0 == 200 {
            Ok(())
        } else {
            Err(format!(
                "started {now} (was {started}), /healthz {:?}\n{}",
                health(&rig),
                rig.agent_log()
            ))
        }
    });
    assert_eq!(running_of(&rig, "blue"), vec![id], "the same container");
    assert!(
        rig.agent_log().contains("watchdog: repaired"),
        "{}",
        rig.agent_log()
    );
    assert_eq!(Conn::open(rig.traffic).get("/version"), (200, "1\n".into()));
}

#[test]
fn after_a_reboot_the_stopped_release_is_started_again_not_recreated() {
    let mut rig = Rig::new("faults-reboot");
    web(&rig, Some("unless-stopped"), 2, &[]);
    rig.start_agent();
    let before = running_of(&rig, "blue");
    assert_eq!(before.len(), 2);
    // The shutdown of a reboot: the agent leaves (drains and stops the stack), as it does on
    // the SIGTERM of a system shutdown.
    rig.berth("leave", &[]).ok();
    let mut agent = rig.agent.take().unwrap();
    signal(agent.id(), "TERM");
    assert!(agent.wait().unwrap().success());
    assert_eq!(running_of(&rig, "blue"), Vec::<String>::new(), "stopped");
    rig.start_agent();
    assert_eq!(running_of(&rig, "blue"), before, "the same containers");
    assert_eq!(rig.colors().len(), 2, "{:?}", rig.colors());
    assert_eq!(Conn::open(rig.traffic).get("/version"), (200, "1\n".into()));
}

#[test]
fn an_app_killed_for_memory_is_named_so_and_the_instance_turns_503() {
    let mut rig = Rig::new_with("faults-oom", "[watchdog]\nrepair_secs = 60\n");
    // The app's main process (a shell serving through the web server in the background) grows
    // past its memory limit once told to.
    let mut yaml = web_compose(rig.traffic.port(), RELEASED, &[]);
    yaml.push_str(
        "    mem_limit: 24m\n    command: [\"sh\", \"-c\", \"web & while [ ! -f /tmp/grow ]; do sleep 0.1; done; x=$$(head -c 200000000 /dev/zero | tr '\\\\0' a); sleep 600\"]\n",
    );
    rig.project.compose(&yaml);
    rig.pointer("1");
    rig.start_agent();
    let id = running_of(&rig, "blue").remove(0);
    exec(&id, &["touch", "/tmp/grow"]);
    wait_healthz(&rig, 503, 30);
    // The fault as the watchdog named it, from its log: /healthz and Docker's OOMKilled show
    // the state now, and the watchdog may have restarted the container already (CI once saw
    // the restarted one "starting", with OOMKilled reset).
    eventually(
        "the watchdog to name the kill",
        Duration::from_secs(10),
        || {
            let log = rig.agent_log();
            log.lines()
                .find(|l| l.contains("killed for memory: out of its limit"))
                .map(str::to_string)
                .ok_or_else(|| format!("{}\n{}", log, inspect(&id)["State"]))
        },
    );
}
