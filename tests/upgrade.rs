//! Zero-downtime upgrades end to end, under continuous load: the real `berth proxy` process on
//! the traffic port, the real `berth agent` (local mode) holding its control socket, `berth
//! upgrade` / `rollback` / `status` as an operator (or SSM) runs them, and the real Docker
//! daemon running berth-test/web. The load client records every request; a test fails on any
//! failed or non-2xx request, and checks which release answered each one.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::rig::*;
use common::traffic::{failures, Conn, Load};
use common::*;
use serde_json::Value;

/// The routed containers after an upgrade 1 -> 2: green serves 2, blue keeps 1, stopped.
fn serving_2_keeping_1() -> Vec<(String, String, bool)> {
    vec![
        ("blue".into(), "1".into(), false),
        ("green".into(), "2".into(), true),
    ]
}

/// `berth upgrade` (to the release pointer's release) in a thread, as SSM would run it.
fn upgrade_in_background(rig: &Rig) -> std::thread::JoinHandle<Output> {
    upgrade_in_background_with(rig, &[])
}

/// `berth upgrade` with `args` in a thread.
fn upgrade_in_background_with(rig: &Rig, args: &[&str]) -> std::thread::JoinHandle<Output> {
    let config = rig.config.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["upgrade", "--config"]).arg(config).args(args);
        run_with_limit(cmd, Duration::from_secs(90))
    })
}

/// SIGKILLs the agent; the upgrade it was running is cut short.
fn kill_agent(rig: &mut Rig, client: std::thread::JoinHandle<Output>) {
    let mut agent = rig.agent.take().unwrap();
    agent.kill().unwrap();
    agent.wait().unwrap();
    assert_ne!(client.join().unwrap().code, 0, "the upgrade was cut short");
    assert_eq!(
        rig.colors(),
        vec![
            ("blue".into(), "1".into(), true),
            ("green".into(), "2".into(), true)
        ],
        "both colors run when the agent dies"
    );
}

/// After a restart: the load lost nothing, release 2 serves, release 1 is stopped and kept,
/// and the agent's log says what it found (`recovered`).
fn assert_recovered(rig: &Rig, load: Load, recovered: &str) {
    load_for(&load, 100);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    all_after_first(&samples, "2").unwrap();
    assert_eq!(
        rig.colors(),
        serving_2_keeping_1(),
        "one container per color, no duplicates:\n{}",
        rig.agent_log()
    );
    assert!(rig.agent_log().contains(recovered), "{}", rig.agent_log());
}

#[test]
fn proxy_upgrade_and_rollback_under_load_lose_no_request() {
    let rig = Rig::booted("upgrade-proxy", "1");
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);

    // v1 -> v2 while 4 keep-alive clients hammer the traffic port.
    let (out, samples) = under_load(rig.traffic, 200, || {
        rig.berth("upgrade", &["--release", "2"])
    });
    out.ok();
    let done: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(done["how"], "switched", "{done}");
    assert_eq!(done["release"], "2");
    assert_eq!(done["previous"], "1");
    assert!(done["to_switch_secs"].as_f64().unwrap() > 0.0, "{done}");
    assert!(answered(&samples, "1") > 0, "v1 served before the switch");
    let after = all_after_first(&samples, "2").unwrap();
    assert!(after >= 200, "only {after} requests after the switch");
    // The old release is stopped, not removed: it is what a rollback starts.
    assert_eq!(rig.colors(), serving_2_keeping_1());
    let status = rig.status();
    assert_eq!(status["release"], "2", "{status}");
    assert_eq!(status["phase"], "ready", "{status}");

    // A second upgrade while one runs is refused, and says so.
    rig.compose(RELEASED, &[("SLOW_START", "4")]);
    let agent_config = rig.config.clone();
    let slow = std::thread::spawn(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(["upgrade", "--release", "1", "--config"])
            .arg(agent_config);
        run_with_limit(cmd, Duration::from_secs(90))
    });
    eventually(
        "the first upgrade to start",
        Duration::from_secs(20),
        || {
            if rig.colors().len() > 2 || rig.colors().iter().any(|c| c.1 == "1" && c.2) {
                Ok(())
            } else {
                Err(format!("{:?}", rig.colors()))
            }
        },
    );
    let busy = rig.berth("upgrade", &["--release", "2"]);
    busy.expect_code(7);
    assert!(
        busy.stderr
            .contains("another upgrade is running (upgrade to release 1"),
        "{}",
        busy.stderr
    );
    slow.join().unwrap().ok();
    rig.compose(RELEASED, &[]);

    // Rollback: v2 serves again, under load, losing nothing.
    let (out, samples) = under_load(rig.traffic, 100, || rig.berth("rollback", &[]));
    out.ok();
    let back: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(back["how"], "rolled back", "{back}");
    assert_eq!(back["release"], "2", "{back}");
    all_after_first(&samples, "2").unwrap();
    assert_eq!(rig.colors(), serving_2_keeping_1());
}

#[test]
fn a_release_that_never_gets_healthy_is_rolled_back_and_nothing_is_lost() {
    let rig = Rig::booted("upgrade-broken", "2");

    // Release 3's health never passes.
    rig.compose("berth-test/web:2", &[("HEALTHY", "0")]);
    let (out, samples) = under_load(rig.traffic, 200, || {
        rig.berth("upgrade", &["--release", "3"])
    });
    out.expect_code(1);
    let msg = out.error_message();
    assert!(
        msg.contains("release 3 did not come up, and the previous release keeps serving"),
        "{msg}"
    );
    assert_eq!(
        answered(&samples, "2"),
        samples.len(),
        "release 2 answered everything"
    );
    // Nothing of release 3 is left behind.
    assert_eq!(rig.colors(), vec![("blue".into(), "2".into(), true)]);
    assert!(rig.agent_log().contains("release 3"), "{}", rig.agent_log());
}

#[test]
fn a_release_the_host_policy_refuses_changes_nothing_and_the_previous_one_keeps_serving() {
    let rig = Rig::booted("upgrade-policy", "2");
    // Release 3 asks for the Docker socket: refused before anything of it is created.
    let mut yaml = web_compose(rig.traffic.port(), "berth-test/web:3", &[]);
    yaml.push_str("    volumes: [\"/run/docker.sock:/var/run/docker.sock\"]\n");
    rig.project.compose(&yaml);
    let (out, samples) = under_load(rig.traffic, 200, || {
        rig.berth("upgrade", &["--release", "3"])
    });
    out.expect_code(3);
    let msg = out.error_message();
    for part in [
        "the host policy ([policy] of ",
        "services.web.volumes: the bind of /run/docker.sock",
        "no policy allows it",
    ] {
        assert!(msg.contains(part), "{part:?}: {msg}");
    }
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert_eq!(
        answered(&samples, "2"),
        samples.len(),
        "release 2 answered everything"
    );
    assert_eq!(rig.colors(), vec![("blue".into(), "2".into(), true)]);
}

#[test]
fn a_release_failing_right_after_the_switch_goes_back_to_the_previous_one() {
    let rig = Rig::booted("upgrade-verify", "1");

    // Release 2 passes its health, then loses /healthz 2 s later (inside verify_secs = 3).
    let yaml = web_compose(rig.traffic.port(), RELEASED, &[]).replace(
        "    healthcheck:",
        "    command: [\"sh\", \"-c\", \"(sleep 2; rm -f /www/healthz) & exec /bin/web\"]\n    healthcheck:",
    );
    rig.project.compose(&yaml);
    let (out, samples) = under_load(rig.traffic, 200, || {
        rig.berth("upgrade", &["--release", "2"])
    });
    out.expect_code(1);
    let msg = out.error_message();
    assert!(
        msg.contains("release 2 failed right after the switch") && msg.contains("rolled back to 1"),
        "{msg}"
    );
    let failed = failures(&samples);
    let by_v2 = answered(&samples, "2");
    eprintln!(
        "after-switch failure: {} requests, {} answered by release 2 before the rollback, {} failed",
        samples.len(),
        by_v2,
        failed.len()
    );
    // Release 2 still answered /version while its health failed: nothing is lost either way.
    assert_eq!(failed, Vec::<String>::new(), "failed requests");
    assert!(
        by_v2 > 0,
        "release 2 served between the switch and the rollback"
    );
    all_after_first(&samples[samples.len() - 100..], "1").unwrap();
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);
}

#[test]
fn an_agent_killed_mid_upgrade_finishes_it_when_it_comes_back() {
    let mut rig = Rig::booted("upgrade-kill", "1");
    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);

    // Release 2 takes 3 s to start serving: time to kill the agent between create and switch.
    rig.compose(RELEASED, &[("SLOW_START", "3")]);
    rig.pointer("2");
    let client = upgrade_in_background(&rig);
    eventually("release 2 to be started", Duration::from_secs(20), || {
        if rig.colors().iter().any(|c| c.0 == "green" && c.2) {
            Ok(())
        } else {
            Err(format!("{:?}", rig.colors()))
        }
    });
    kill_agent(&mut rig, client);

    // Back: it keeps release 1 serving, drops the half-made release 2, upgrades again.
    let restarted = Instant::now();
    rig.start_agent();
    eventually(
        "release 2 to serve",
        Duration::from_secs(60),
        || match Conn::open(rig.traffic).try_get("/version") {
            Ok((200, body)) if body.trim() == "2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    eprintln!(
        "restart to release 2 serving: {:.1}s",
        restarted.elapsed().as_secs_f64()
    );
    assert_recovered(
        &rig,
        load,
        "removing release 2 (green): an upgrade that never switched",
    );
}

#[test]
fn drain_strategy_behind_haproxy_upgrades_two_instances_losing_nothing() {
    let mut a = Rig::drain("upgrade-drain-a");
    let mut b = Rig::drain("upgrade-drain-b");
    for rig in [&mut a, &mut b] {
        rig.compose(RELEASED, &[]);
        rig.pointer("1");
        rig.start_agent();
    }
    let lb = Haproxy::start(&[&a, &b]);
    // Both instances in: the load balancer answers from each.
    eventually("both instances in service", Duration::from_secs(20), || {
        let both = (0..4).all(|_| status_of(lb.addr, "/version") == Some(200));
        if both {
            Ok(())
        } else {
            Err("a request failed".to_string())
        }
    });

    // In service: each agent has counted the checker's passes (and holds its control socket).
    for rig in [&a, &b] {
        eventually("the agent in service", Duration::from_secs(20), || {
            let mut c = Conn::open(rig.health);
            match c.try_get("/status") {
                Ok((200, body)) if body.contains("\"in_service\": true") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    let load = Load::start(lb.addr, "/version", 4);
    load_for(&load, 200);
    // One instance at a time, as SSM's MaxConcurrency 1 runs it.
    for rig in [&a, &b] {
        let started = Instant::now();
        let out = rig.berth("upgrade", &["--release", "2"]);
        out.ok();
        let done: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(done["how"], "in place", "{done}");
        eprintln!(
            "drain upgrade of {}: {:.1}s",
            rig.project.name,
            started.elapsed().as_secs_f64()
        );
        let log = rig.agent_log();
        assert!(log.contains("phase=\"draining\""), "{log}");
    }
    load_for(&load, 200);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert!(answered(&samples, "1") > 0);
    // Once both are upgraded, only release 2 answers.
    let tail = &samples[samples.len() - 100..];
    assert_eq!(answered(tail, "2"), 100, "{:?}", &tail[..5]);
    for rig in [&a, &b] {
        assert_eq!(rig.status()["release"], "2");
    }
}

#[test]
fn watch_mode_upgrades_when_the_pointer_moves_and_the_previous_release_expires() {
    let mut rig = Rig::new_with("upgrade-watch", "watch_secs = 1\nkeep_previous_secs = 2\n");
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();

    let (_, samples) = under_load(rig.traffic, 100, || {
        rig.pointer("2");
        eventually(
            "the agent to upgrade by itself",
            Duration::from_secs(60),
            || match Conn::open(rig.traffic).try_get("/version") {
                Ok((200, body)) if body.trim() == "2" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    });
    all_after_first(&samples, "2").unwrap();
    assert!(
        rig.agent_log().contains("watch: the release pointer moved"),
        "{}",
        rig.agent_log()
    );
    // Kept stopped for keep_previous_secs, then gone: nothing left to roll back to. The
    // watch may go on past verify_secs while its sequential test cannot decide (a few hundred
    // requests tell a good release; the load stopped after 100), up to max_secs (60 s).
    eventually(
        "the previous release to expire",
        Duration::from_secs(90),
        || {
            let colors = rig.colors();
            if colors == vec![("green".to_string(), "2".to_string(), true)] {
                Ok(())
            } else {
                Err(format!("{colors:?}"))
            }
        },
    );
    let out = rig.berth("rollback", &[]);
    out.expect_code(3);
    assert!(
        out.error_message().contains("keeps no previous release"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_agent_killed_after_the_switch_finishes_by_stopping_the_old_release() {
    let mut rig = Rig::booted("upgrade-kill-late", "1");
    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);

    rig.pointer("2");
    let client = upgrade_in_background(&rig);
    // Killed inside the verify window: the proxy already sends to release 2, release 1 still
    // runs.
    eventually(
        "the switch to release 2",
        Duration::from_secs(30),
        || match Conn::open(rig.traffic).try_get("/version") {
            Ok((200, body)) if body.trim() == "2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    kill_agent(&mut rig, client);

    // Back: release 2 keeps serving, release 1 is drained and stopped (kept for a rollback).
    rig.start_agent();
    assert_recovered(
        &rig,
        load,
        "stopping release 1 (blue): still running after the switch",
    );
}

#[test]
fn three_replicas_upgrade_survive_a_killed_one_and_roll_back_under_load() {
    let mut rig = Rig::new("upgrade-replicas");
    let yaml = web_compose(rig.traffic.port(), RELEASED, &[]) + "    deploy:\n      replicas: 3\n";
    rig.project.compose(&yaml);
    rig.pointer("1");
    rig.start_agent();

    // Boot: three replicas of release 1 behind the proxy, all in its route.
    let blue = |release: &str, running: bool| ("blue".to_string(), release.to_string(), running);
    let green = |release: &str, running: bool| ("green".to_string(), release.to_string(), running);
    assert_eq!(rig.colors(), vec![blue("1", true); 3]);
    let active = active_backends(rig.proxy());
    assert_eq!(active.len(), 3, "{active:?}");
    assert!(active.iter().all(|(_, r)| r == "1"), "{active:?}");
    let (_, samples) = under_load(rig.traffic, 100, || ());
    assert_eq!(answered(&samples, "1"), samples.len());

    // 1 -> 2 under 4 keep-alive clients: nothing fails, three new backends take over.
    let (out, samples) = under_load(rig.traffic, 200, || {
        rig.berth("upgrade", &["--release", "2"])
    });
    out.ok();
    let done: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(done["how"], "switched", "{done}");
    assert_eq!(done["backends"].as_array().unwrap().len(), 3, "{done}");
    all_after_first(&samples, "2").unwrap();
    let now = active_backends(rig.proxy());
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|(_, r)| r == "2"), "{now:?}");
    assert!(
        now.iter()
            .all(|b| !active.contains(&(b.0.clone(), "1".into()))),
        "new backends: {now:?}, old: {active:?}"
    );
    let mut want = vec![blue("1", false); 3];
    want.extend(vec![green("2", true); 3]);
    assert_eq!(rig.colors(), want, "the old three are stopped, kept");

    // `berth status` and the agent's /status and /metrics show the traffic per release.
    let status = rig.status();
    let traffic = status["traffic"].as_array().unwrap();
    assert_eq!(traffic[0]["release"], "2", "{status}");
    assert_eq!(traffic[0]["active"], true, "{status}");
    assert_eq!(traffic[0]["backends"].as_array().unwrap().len(), 3);
    assert!(traffic[0]["requests"].as_u64().unwrap() > 0, "{status}");
    assert_eq!(traffic[0]["errors_5xx"], 0, "{status}");
    let (code, body) = Conn::open(rig.health).get("/status");
    assert_eq!(code, 200);
    let agent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(agent["traffic"][0]["release"], "2", "{agent}");
    let (code, metrics) = Conn::open(rig.health).get("/metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("berth_proxy_up 1\n"), "{metrics}");
    assert!(metrics.contains("berth_agent_ready 1\n"), "{metrics}");
    for (addr, _) in &now {
        let series = format!("berth_proxy_requests_in_flight{{backend=\"{addr}\",release=\"2\"}}");
        assert!(metrics.contains(&series), "{metrics}");
    }

    // One of the three serving containers is SIGKILLed: its GETs go to the other two.
    let serving = running_of(&rig, "green");
    assert_eq!(serving.len(), 3);
    let (_, samples) = under_load(rig.traffic, 300, || {
        docker(&["kill", "-s", "KILL", &serving[1]]);
    });
    assert_eq!(answered(&samples, "2"), samples.len());
    assert_eq!(running_of(&rig, "green").len(), 2);

    // Rollback: the dead replica leaves the route first, then release 1's three replicas
    // start again and take the traffic in one switch; release 2's stop.
    let (out, samples) = under_load(rig.traffic, 200, || rig.berth("rollback", &[]));
    out.ok();
    let back: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(back["how"], "rolled back", "{back}");
    assert_eq!(back["release"], "1", "{back}");
    assert_eq!(back["backends"].as_array().unwrap().len(), 3, "{back}");
    all_after_first(&samples, "1").unwrap();
    let now = active_backends(rig.proxy());
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(now.iter().all(|(_, r)| r == "1"), "{now:?}");
    let mut want = vec![blue("1", true); 3];
    want.extend(vec![green("2", false); 3]);
    assert_eq!(rig.colors(), want);
    assert!(
        rig.agent_log()
            .contains("switching to the healthy green release 2"),
        "{}",
        rig.agent_log()
    );

    // Scaling down, same release: not in place (that would pull a backend from under the
    // route) but a new color with two replicas.
    let two = web_compose(rig.traffic.port(), RELEASED, &[]) + "    deploy:\n      replicas: 2\n";
    rig.project.compose(&two);
    let (out, samples) = under_load(rig.traffic, 100, || {
        rig.berth("upgrade", &["--release", "1"])
    });
    out.ok();
    let done: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(done["how"], "switched", "{done}");
    assert_eq!(answered(&samples, "1"), samples.len());
    assert_eq!(active_backends(rig.proxy()).len(), 2);
    let mut want = vec![blue("1", false); 3];
    want.extend(vec![green("1", true); 2]);
    assert_eq!(rig.colors(), want);
}

/// A release answering every 20th request with 500 passes every health check: the analysis
/// (its 5xx ratio since the switch against release 1's) catches it on this instance, rolls it
/// back, and says so with the figures. Only its own 500s fail, and only while it was watched.
#[test]
fn a_release_answering_5xx_passes_its_health_but_not_its_numbers_and_is_rolled_back() {
    let mut rig = Rig::new_analysed("upgrade-numbers", "", "bake_secs = 20\nmin_requests = 60\n");
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    let load = Load::start(rig.traffic, "/cgi-bin/api", 4);
    // Release 1's baseline: enough requests to compare with.
    load.run_for(200);

    rig.compose(RELEASED, &[("ERROR_EVERY", "20")]);
    let started = Instant::now();
    let out = rig.berth("upgrade", &["--release", "2"]);
    let took = started.elapsed();
    load.run_for(100);
    let samples = load.finish();
    out.expect_code(1);
    let msg = out.error_message();
    assert!(
        msg.contains("release 2 failed right after the switch, rolled back to 1")
            && msg.contains("judged by its traffic: 5xx on")
            && msg.contains("over the limit of 1.0 % (the previous release: 0.0 % of"),
        "{msg}"
    );
    // Caught well inside the 3 s verify + 20 s bake: the analysis stops at the first failure.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let failed = failures(&samples);
    let bad: Vec<&String> = failed.iter().filter(|f| *f != "500 error 2").collect();
    assert_eq!(
        bad,
        Vec::<&String>::new(),
        "failures other than release 2's 500s"
    );
    assert!(
        !failed.is_empty(),
        "release 2 served (and failed) before the rollback"
    );
    let by_2 = answered(&samples, "api 2");
    eprintln!(
        "numbers: upgrade to rollback {:.2} s; {} requests, {} answered by release 2, {} of its 500s",
        took.as_secs_f64(),
        samples.len(),
        by_2,
        failed.len()
    );
    all_after_first(&samples[samples.len() - 100..], "api 1").unwrap();
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);
    let analysis = &rig.status()["analysis"];
    assert_eq!(analysis["release"], "2", "{analysis}");
    assert_eq!(analysis["previous"], "1", "{analysis}");
    assert!(
        analysis["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("failed: 5xx on")),
        "{analysis}"
    );
    assert!(
        analysis["candidate"]["errors_5xx"].as_u64() > Some(0),
        "{analysis}"
    );
    assert!(
        analysis["baseline"]["requests"].as_u64() >= Some(60),
        "{analysis}"
    );
    assert_eq!(analysis["baseline"]["errors_5xx"], 0, "{analysis}");
}

/// A good release under the same load passes its analysis and serves; `berth status` shows both
/// releases' figures side by side, and the bake holds the old release until it has passed.
#[test]
fn a_good_release_passes_its_numbers_through_the_bake() {
    let mut rig = Rig::new_analysed("upgrade-bake", "", "bake_secs = 2\nmin_requests = 30\n");
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    let load = Load::start(rig.traffic, "/cgi-bin/api", 4);
    load.run_for(100);
    let started = Instant::now();
    let out = rig.berth("upgrade", &["--release", "2"]);
    let took = started.elapsed();
    load.run_for(50);
    let samples = load.finish();
    out.ok();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    // verify_secs 3 + bake_secs 2.
    assert!(took >= Duration::from_secs(5), "took {took:?}");
    all_after_first(&samples, "api 2").unwrap();
    assert_eq!(rig.colors(), serving_2_keeping_1());
    let analysis = &rig.status()["analysis"];
    assert_eq!(analysis["verdict"], "passed", "{analysis}");
    assert!(
        analysis["candidate"]["requests"].as_u64() >= Some(30),
        "{analysis}"
    );
    assert_eq!(analysis["candidate"]["errors_5xx"], 0, "{analysis}");
    assert!(
        analysis["baseline"]["requests"].as_u64() >= Some(100),
        "{analysis}"
    );
}

/// `berth upgrade --preview`: release 2 starts beside release 1, and only requests naming it
/// (the preview header or cookie) reach it, through the same port, while everyone else stays on
/// 1 and the watchdog leaves it be; `berth promote` switches to it with nothing lost. A second
/// preview ends with `berth rollback`, and its release goes.
#[test]
fn a_preview_reaches_only_the_requests_that_carry_its_token_until_promoted() {
    let mut rig = Rig::new_with("upgrade-preview", "[watchdog]\nobserve_secs = 1\n");
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    let load = Load::start(rig.traffic, "/version", 4);
    load.run_for(100);

    let out = rig.berth("upgrade", &["--release", "2", "--preview"]);
    out.ok();
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["how"], "previewing", "{answer}");
    // The token, in the answer only: never in /status, never the release id.
    let token = answer["preview_token"].as_str().unwrap().to_string();
    assert!(token.len() > 30 && token != "2", "{token}");
    assert!(
        !rig.status().to_string().contains(&token),
        "the token is in /status"
    );
    let mut conn = Conn::open(rig.traffic);
    let mut get = |headers: &[(&str, &str)]| conn.try_request("/version", headers).unwrap();
    assert_eq!(get(&[("X-Berth-Preview", &token)]), (200, "2\n".into()));
    let cookie = format!("session=a; berth-preview={token}");
    assert_eq!(get(&[("Cookie", &cookie)]), (200, "2\n".into()));
    // The release id alone (the commit's prefix, public) reaches nothing; nor does a token
    // one digit off.
    assert_eq!(
        get(&[("X-Berth-Preview", "2")]),
        (200, "1\n".into()),
        "the release id alone"
    );
    let mut off = token.clone();
    let last = off.pop().unwrap();
    off.push(if last == '0' { '1' } else { '0' });
    assert_eq!(
        get(&[("X-Berth-Preview", &off)]),
        (200, "1\n".into()),
        "a forged token"
    );
    assert_eq!(get(&[]), (200, "1\n".into()));
    // Two of the watchdog's looks (observe_secs = 1): an unswitched release it must keep. What
    // is asserted is that nothing happens, so there is nothing to poll for.
    std::thread::sleep(Duration::from_secs(2));
    load.run_for(100);
    assert_eq!(
        rig.colors(),
        vec![
            ("blue".into(), "1".into(), true),
            ("green".into(), "2".into(), true)
        ]
    );
    assert_eq!(rig.status()["proxy"]["preview"]["release"], "2");
    let before_promote = load.count();

    rig.berth("promote", &[]).ok();
    load.run_for(100);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert_eq!(
        answered(&samples[..before_promote], "2"),
        0,
        "ordinary requests reached the preview"
    );
    all_after_first(&samples, "2").unwrap();
    assert_eq!(rig.colors(), serving_2_keeping_1());
    assert_eq!(rig.status()["proxy"].get("preview"), None);

    // A preview of release 1 again, ended by a rollback: 2 keeps serving, 1 is gone. Its end
    // is given (as a rollout gives it to every instance): the token says so, and derived
    // again from the same key it is the same.
    let out = rig.berth(
        "upgrade",
        &[
            "--release",
            "1",
            "--preview",
            "--preview-until",
            "4102444800",
        ],
    );
    out.ok();
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    let token = answer["preview_token"].as_str().unwrap().to_string();
    assert!(token.starts_with("4102444800."), "{token}");
    assert_eq!(
        Conn::open(rig.traffic)
            .try_request("/version", &[("X-Berth-Preview", &token)])
            .unwrap(),
        (200, "1\n".into())
    );
    let out = rig.berth("rollback", &[]);
    out.ok();
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["how"], "rolled back", "{answer}");
    assert_eq!(rig.colors(), vec![("green".into(), "2".into(), true)]);
    assert_eq!(
        Conn::open(rig.traffic)
            .try_request("/version", &[("X-Berth-Preview", &token)])
            .unwrap(),
        (200, "2\n".into())
    );
    // Upgrading to the serving release ends a preview too (a fleet rollout going back).
    rig.berth("upgrade", &["--release", "1", "--preview"]).ok();
    assert_eq!(rig.colors().len(), 2);
    rig.berth("upgrade", &["--release", "2"]).ok();
    assert_eq!(rig.colors(), vec![("green".into(), "2".into(), true)]);
    assert_eq!(rig.status()["proxy"].get("preview"), None);
    let out = rig.berth("promote", &[]);
    out.expect_code(3);
    assert!(
        out.error_message()
            .contains("no release of web is in preview"),
        "promote without a preview"
    );
}

/// A preview neither promoted nor rolled back ends by itself after `upgrade.preview_secs`.
#[test]
fn a_forgotten_preview_ends_by_itself() {
    let mut rig = Rig::new_with("upgrade-preview-expires", "preview_secs = 2\n");
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    rig.berth("upgrade", &["--release", "2", "--preview"]).ok();
    eventually(
        "the preview to end",
        Duration::from_secs(20),
        || match rig.colors().as_slice() {
            [(c, r, true)] if c == "blue" && r == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Said once the rollback is done, a moment after its containers are gone.
    eventually("the agent to say why", Duration::from_secs(10), || {
        let log = rig.agent_log();
        match log.contains("neither promoted nor rolled back in time") {
            true => Ok(()),
            false => Err(log),
        }
    });
}

/// A proxy-strategy rig with `[upgrade.canary]` and `[upgrade.analysis]` keys, serving release 1.
fn canary_rig(test: &str, canary_keys: &str, analysis_keys: &str) -> Rig {
    let upgrade_keys = format!("[upgrade.canary]\n{canary_keys}");
    let mut rig = Rig::new_analysed(test, &upgrade_keys, analysis_keys);
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    rig
}

/// `berth upgrade --canary`: before the switch, 20 % and then 50 % of new sessions reach
/// release 2, each session kept on its side by the proxy's cookie, while the analysis compares
/// both releases over the same seconds; then the switch. Nothing is lost.
#[test]
fn a_weighted_canary_steps_up_sticky_sessions_then_switches() {
    // Steps long enough for the 40 sessions' checks to fit in the first one on a busy machine.
    let rig = canary_rig("upgrade-canary", "step_secs = 8\n", "min_requests = 30\n");
    let load = Load::start(rig.traffic, "/cgi-bin/api", 4);
    load.run_for(100);
    let started = Instant::now();
    let upgrade = upgrade_in_background_with(&rig, &["--release", "2", "--canary", "20,50"]);
    let at = |percent: u64| {
        eventually(
            &format!("the canary at {percent} %"),
            Duration::from_secs(60),
            || {
                let analysis = rig.status()["analysis"].clone();
                match analysis["canary_percent"].as_u64() {
                    Some(p) if p == percent => Ok(()),
                    _ => Err(format!("{analysis}")),
                }
            },
        )
    };
    at(20);
    // 40 new sessions: each given a bucket by cookie; about a fifth on release 2.
    let mut sessions = Vec::new();
    for _ in 0..40 {
        let mut c = Conn::open(rig.traffic);
        let (code, body) = c.try_request("/version", &[]).unwrap();
        assert_eq!(code, 200);
        let cookie = c.header("set-cookie").expect("a new session's cookie");
        assert!(
            cookie.starts_with("berth-canary=") && cookie.contains("HttpOnly"),
            "{cookie}"
        );
        let cookie = cookie.split(';').next().unwrap().to_string();
        sessions.push((cookie, body));
    }
    assert_eq!(
        rig.status()["analysis"]["canary_percent"],
        20,
        "the sessions were made within the 20 % step"
    );
    let to_2 = sessions.iter().filter(|(_, body)| body == "2\n").count();
    assert!(
        (1..=20).contains(&to_2),
        "{to_2} of 40 new sessions on the 20 % canary"
    );
    // Each session stays where it was sent, and is given no new cookie.
    for (cookie, body) in &sessions {
        let mut c = Conn::open(rig.traffic);
        for _ in 0..3 {
            let answer = c.try_request("/version", &[("Cookie", cookie)]).unwrap();
            assert_eq!(&answer, &(200, body.clone()), "{cookie}");
            assert_eq!(c.header("set-cookie"), None);
        }
    }
    assert_eq!(
        rig.status()["analysis"]["canary_percent"],
        20,
        "checked within the step"
    );
    at(50);
    let grown = sessions
        .iter()
        .filter(|(cookie, _)| {
            let mut c = Conn::open(rig.traffic);
            c.try_request("/version", &[("Cookie", cookie)]).unwrap().1 == "2\n"
        })
        .count();
    assert!(
        grown >= to_2,
        "stepping up moved sessions back: {grown} < {to_2}"
    );
    let out = upgrade.join().unwrap();
    let took = started.elapsed();
    load.run_for(100);
    let samples = load.finish();
    out.ok();
    let answer: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(answer["how"], "switched", "{answer}");
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    // Two 8 s steps, then the 3 s verify.
    assert!(took >= Duration::from_secs(19), "took {took:?}");
    all_after_first(&samples[samples.len() - 100..], "api 2").unwrap();
    assert_eq!(rig.colors(), serving_2_keeping_1());
    let log = rig.agent_log();
    assert!(
        log.contains("percent=20") && log.contains("percent=50"),
        "{log}"
    );
    assert_eq!(rig.status()["proxy"].get("preview"), None);
    eprintln!(
        "canary: 20 % then 50 % of sessions, then the switch in {:.1} s; {} requests, {} sessions of 40 on the 20 % canary",
        took.as_secs_f64(),
        samples.len(),
        to_2
    );
}

/// A release answering every 20th request with 500, through a canary: the analysis compares
/// it with release 1 over the same seconds, fails it at its first step, sends its sessions
/// back, and it never takes the traffic. Only its own 500s fail.
#[test]
fn a_canary_failing_its_numbers_sends_its_sessions_back_and_never_switches() {
    let rig = canary_rig(
        "upgrade-canary-bad",
        "steps = [25, 50]\nstep_secs = 20\n",
        "min_requests = 40\n",
    );
    let load = Load::start(rig.traffic, "/cgi-bin/api", 4);
    load.run_for(200);
    rig.compose(RELEASED, &[("ERROR_EVERY", "20")]);
    let started = Instant::now();
    let out = rig.berth("upgrade", &["--release", "2", "--canary"]);
    let took = started.elapsed();
    load.run_for(100);
    let samples = load.finish();
    out.expect_code(1);
    let msg = out.error_message();
    assert!(
        msg.contains("release 2 failed its canary at 25 % of sessions, so 1 serves them all again")
            && msg.contains("judged by its traffic: 5xx on"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let failed = failures(&samples);
    let bad: Vec<&String> = failed.iter().filter(|f| *f != "500 error 2").collect();
    assert_eq!(
        bad,
        Vec::<&String>::new(),
        "failures other than release 2's 500s"
    );
    all_after_first(&samples[samples.len() - 100..], "api 1").unwrap();
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);
    let status = rig.status();
    assert_eq!(status["proxy"].get("preview"), None, "{status}");
    let analysis = &status["analysis"];
    assert_eq!(analysis["canary_percent"], 25, "{analysis}");
    assert!(
        analysis["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("failed: 5xx on")),
        "{analysis}"
    );
    eprintln!(
        "canary: the 5 %-500s release failed at 25 % in {:.2} s; {} of its 500s in {} requests",
        took.as_secs_f64(),
        failed.len(),
        samples.len()
    );
}

/// An agent killed mid-canary leaves a weighted preview in the proxy that nobody steps up or
/// judges: the next agent sends its sessions back to the serving release and removes the
/// canary's side, losing no request.
#[test]
fn an_agent_killed_mid_canary_ends_the_canary_when_it_comes_back() {
    let mut rig = canary_rig(
        "upgrade-canary-killed",
        "steps = [50]\nstep_secs = 120\n",
        "",
    );
    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);
    let client = upgrade_in_background_with(&rig, &["--release", "2", "--canary"]);
    eventually(
        "the canary at 50 %",
        Duration::from_secs(60),
        || match rig.status()["proxy"]["preview"]["percent"].as_u64() {
            Some(50) => Ok(()),
            _ => Err(format!("{}", rig.status()["proxy"])),
        },
    );
    load_for(&load, 100);
    kill_agent(&mut rig, client);
    rig.start_agent();
    eventually("the canary ended", Duration::from_secs(60), || {
        match rig.colors().as_slice() {
            [(color, release, true)] if color == "blue" && release == "1" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let before = load.count();
    load_for(&load, 100);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert!(answered(&samples, "2") > 0, "the canary served its share");
    assert_eq!(
        answered(&samples[before..], "2"),
        0,
        "a session still on the canary"
    );
    assert_eq!(rig.status()["proxy"].get("preview"), None);
    assert!(
        rig.agent_log()
            .contains("removing release 2 (green): an upgrade that never switched"),
        "{}",
        rig.agent_log()
    );
}
