//! The agent's own restarts and leaving, end to end: the real `berth agent` (local mode) and
//! the real `berth proxy` in front of berth-test/web on the real Docker daemon, 4 keep-alive
//! clients on the traffic port and a checker polling `/healthz` as the ALB's does. A SIGTERM
//! ends only the agent: the app, the proxy and its route keep serving, and the next agent
//! resumes them without a failed check. `berth leave` drains and stops the stack in dependency
//! order; its wait for the load balancer is bounded by `timeouts.lb_drain_secs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::rig::*;
use common::traffic::{failures, Load};
use common::*;
use serde_json::Value;

/// The ALB's health checker: a GET of `/healthz` on a new connection every 100 ms with its
/// User-Agent; every answer (or the failure to get one) is kept.
struct Checker {
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Result<u16, String>>>>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    fn start(health: SocketAddr) -> Checker {
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), answers.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                a.lock().unwrap().push(check(health));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Checker {
            stop,
            answers,
            thread: Some(thread),
        }
    }

    /// Every answer so far.
    fn answers(&self) -> Vec<Result<u16, String>> {
        self.answers.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<Result<u16, String>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.answers()
    }
}

fn check(health: SocketAddr) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&health, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: instance\r\nUser-Agent: ELB-HealthChecker/2.0\r\nConnection: close\r\n\r\n",
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .map_err(|e| format!("read: {e}"))?;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line: {answer:?}"))
}

/// Sends the agent `sig` and waits for it to exit; how it exited and how long that took.
fn stop_agent(rig: &mut Rig, sig: &str) -> (ExitStatus, Duration) {
    let mut agent = rig.agent.take().unwrap();
    let started = Instant::now();
    signal(agent.id(), sig);
    let status = eventually("the agent to exit", Duration::from_secs(30), || {
        agent
            .try_wait()
            .unwrap()
            .ok_or_else(|| "running".to_string())
    });
    (status, started.elapsed())
}

/// The health endpoint's `/status` (it answers through the boot, unlike the control socket).
fn http_status(rig: &Rig) -> Result<Value, String> {
    let (_, body) =
        common::traffic::Conn::try_open(rig.health).and_then(|mut c| c.try_get("/status"))?;
    serde_json::from_str(&body).map_err(|e| e.to_string())
}

/// The agent's `/status` once it says `phase`.
fn wait_phase(rig: &Rig, phase: &str) -> Value {
    eventually(
        &format!("the agent's phase {phase}"),
        Duration::from_secs(30),
        || {
            let s = http_status(rig)?;
            if s["phase"] == phase {
                Ok(s)
            } else {
                Err(s.to_string())
            }
        },
    )
}

#[test]
fn a_sigterm_ends_only_the_agent_and_the_next_one_resumes_without_a_failed_check() {
    let mut rig = Rig::new("restart-resume");
    rig.hold_health();
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    let ids = running_of(&rig, "blue");
    let checker = Checker::start(rig.health);
    let load = Load::start(rig.traffic, "/version", 4);
    load_for(&load, 100);

    // `systemctl restart berth`: SIGTERM, then a new agent on the same health socket.
    let restarted = Instant::now();
    let (status, exit_took) = stop_agent(&mut rig, "TERM");
    assert!(status.success(), "{status}\n{}", rig.agent_log());
    assert!(exit_took < Duration::from_secs(5), "{exit_took:?}");
    assert_eq!(running_of(&rig, "blue"), ids, "the app keeps running");
    load_for(&load, 100);
    rig.start_agent();
    wait_phase(&rig, "ready");
    let took = restarted.elapsed();
    eprintln!("figures: agent exit {exit_took:?}, SIGTERM to ready again {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    load_for(&load, 100);

    let checks = checker.finish();
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    let not_200: Vec<_> = checks.iter().filter(|c| **c != Ok(200)).collect();
    assert!(
        not_200.is_empty(),
        "{} of {} checks: {not_200:?}\n{}",
        not_200.len(),
        checks.len(),
        rig.agent_log()
    );
    assert_eq!(running_of(&rig, "blue"), ids, "nothing recreated");
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);
    let berth = &http_status(&rig).unwrap()["berth"];
    assert_eq!(berth["version"], env!("CARGO_PKG_VERSION"), "{berth}");
    assert_eq!(rig.status()["berth"], *berth);
    let log = rig.agent_log();
    assert!(log.contains("keep serving"), "{log}");
    assert!(log.contains("resuming"), "{log}");
    assert!(!log.contains("leaving"), "{log}");
}

#[test]
fn an_agent_restarted_after_its_app_died_boots_afresh_and_says_503_until_ready() {
    let mut rig = Rig::new("restart-dead");
    rig.hold_health();
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    rig.start_agent();
    let (status, _) = stop_agent(&mut rig, "TERM");
    assert!(status.success());
    let id = running_of(&rig, "blue").remove(0);
    docker(&["stop", "-t", "1", &id]);
    // The record names a container that no longer runs: no resume, no 200 it cannot back.
    let checker = Checker::start(rig.health);
    rig.start_agent();
    let checks = checker.finish();
    assert!(
        checks.contains(&Ok(503)),
        "a fresh boot answers 503 until ready: {checks:?}"
    );
    let log = rig.agent_log();
    assert!(log.contains("booting afresh"), "{log}");
    assert_eq!(
        running_of(&rig, "blue"),
        vec![id],
        "started again, not recreated"
    );
}

#[test]
fn berth_leave_lets_requests_finish_then_stops_the_stack_in_dependency_order() {
    let mut rig = Rig::new("restart-leave");
    let mut yaml = web_compose(rig.traffic.port(), RELEASED, &[]);
    yaml.push_str(
        "    depends_on: [cache]\n  cache:\n    image: berth-test/web:1\n    stop_grace_period: 1s\n",
    );
    rig.project.compose(&yaml);
    rig.pointer("1");
    rig.start_agent();

    let addr = rig.traffic;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || common::traffic::Conn::open(addr).try_get("/cgi-bin/slow?3"))
        })
        .collect();
    common::traffic::wait_inflight(&rig.proxy().control, 3);
    let out = rig.berth("leave", &[]);
    out.ok();
    let left: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(left["reason"], "asked", "{left}");
    assert_eq!(left["stopped"], 2, "{left}");
    for t in slow {
        assert_eq!(t.join().unwrap(), Ok((200, "slow 1\n".to_string())));
    }
    // Left, and still there (a health check must not start a new agent that boots the
    // services again): 503, and nothing but `status` is done any more.
    let (code, body) = common::traffic::Conn::open(rig.health).get("/healthz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["phase"],
        "left"
    );
    let refused = rig.berth("upgrade", &["--release", "1"]);
    refused.expect_code(7);
    assert!(
        refused.error_message().contains("has left"),
        "{}",
        refused.stderr
    );
    rig.status();
    let (status, took) = stop_agent(&mut rig, "TERM");
    assert!(status.success(), "{status}\n{}", rig.agent_log());
    assert!(took < Duration::from_secs(5), "{took:?}");

    // Stopped, not removed (their logs stay readable); web before the cache it depends on.
    // The routed service's containers carry their color in the service label (web-blue).
    let stopped_at = |service: &str| {
        let ids = rig.project.service_ids(service);
        assert_eq!(ids.len(), 1, "{service}: {ids:?}");
        let state = &inspect(&ids[0])["State"];
        assert_eq!(state["Running"], false, "{service}");
        // Docker drops trailing zeros of the fraction: compared as times, not text.
        ts_nanos(state["FinishedAt"].as_str().unwrap())
    };
    let (web, cache) = (stopped_at("web-blue"), stopped_at("cache"));
    assert!(
        web <= cache,
        "web stopped at {web}, its dependency at {cache}"
    );
    let log = rig.agent_log();
    assert!(log.contains("leaving: draining"), "{log}");

    // The next agent boots afresh (nothing serves to resume) and starts the same containers.
    rig.start_agent();
    assert_eq!(rig.colors(), vec![("blue".into(), "1".into(), true)]);
}

#[test]
fn a_leave_waits_for_the_load_balancer_at_most_lb_drain_secs() {
    // A checker that counted passes, then went quiet: the 503s it would need never come.
    let mut rig = Rig::with(
        "restart-bounded",
        None,
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        "[upgrade]\nstrategy = \"drain\"\n[load_balancer]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
    );
    let config = std::fs::read_to_string(&rig.config).unwrap();
    let config = config.replace("[timeouts]\n", "[timeouts]\nlb_drain_secs = 3\n");
    std::fs::write(&rig.config, config).unwrap();
    rig.compose(RELEASED, &[]);
    rig.pointer("1");
    let checker = Checker::start(rig.health);
    rig.start_agent();
    eventually(
        "in service",
        Duration::from_secs(20),
        || match http_status(&rig)?["in_service"].as_bool() {
            Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    checker.finish();

    let started = Instant::now();
    let out = rig.berth("leave", &[]);
    out.ok();
    let took = started.elapsed();
    eprintln!("figures: leave with a silent checker {took:?}");
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(15)).contains(&took),
        "{took:?}"
    );
    let log = rig.agent_log();
    assert!(
        log.contains("did not confirm the drain; stopping anyway"),
        "{log}"
    );
    assert!(rig
        .project
        .service_ids("web")
        .iter()
        .all(|id| inspect(id)["State"]["Running"] == false));
}
