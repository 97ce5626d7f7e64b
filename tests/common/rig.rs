//! One "instance" for the end-to-end tests: a project, its `berth agent` (local mode) and its
//! config, and with the proxy strategy the real `berth proxy` process on the traffic port; the
//! web service on berth-test/web; and what the tests measure traffic with.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::traffic::{failures, Conn, Load, Proxy, Sample};
use super::*;

/// A web service on `berth-test/web:${RELEASE}`, published on the proxy's traffic port, with
/// a healthcheck that is strict once it has passed (unhealthy at the first failure; failures
/// before the first pass do not count, for a slow start) and `env` added.
pub fn web_compose(traffic: u16, image: &str, env: &[(&str, &str)]) -> String {
    let mut yaml = format!(
        "services:\n  web:\n    image: {image}\n    ports: [\"127.0.0.1:{traffic}:8080\"]\n    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n      retries: 1\n      start_period: 30s\n"
    );
    if !env.is_empty() {
        yaml.push_str("    environment:\n");
        for (k, v) in env {
            yaml.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    yaml
}

pub const RELEASED: &str = "berth-test/web:${RELEASE}";

/// One "instance": a project, its agent and its config, and (proxy strategy) its proxy.
pub struct Rig {
    pub project: Project,
    pub proxy: Option<Proxy>,
    /// The port clients (or the load balancer) send traffic to.
    pub traffic: SocketAddr,
    pub health: SocketAddr,
    pub config: PathBuf,
    pub agent: Option<Child>,
    /// The health endpoint's listening socket, held here as `berth.socket` holds it across
    /// agent restarts, when the agents are started socket-activated ([`Rig::hold_health`]).
    pub health_socket: Option<std::net::TcpListener>,
}

impl Rig {
    /// The proxy strategy: `berth proxy` owns the traffic port.
    pub fn new(test: &str) -> Rig {
        Rig::new_with(test, "")
    }

    /// The proxy strategy with more `[upgrade]` keys.
    pub fn new_with(test: &str, upgrade_keys: &str) -> Rig {
        Rig::new_analysed(test, upgrade_keys, "")
    }

    /// The proxy strategy with more `[upgrade]` and `[upgrade.analysis]` keys. Latency is
    /// judged only over 2 s by default: the rig shares the machine with the whole suite, so
    /// its latency is the machine's noise, not the release's.
    pub fn new_analysed(test: &str, upgrade_keys: &str, analysis_keys: &str) -> Rig {
        let proxy = Proxy::start(None, &[]);
        let analysis = if analysis_keys.contains("p99_floor_ms") {
            analysis_keys.to_string()
        } else {
            format!("p99_floor_ms = 2000\n{analysis_keys}")
        };
        let settings = format!(
            "[upgrade]\nstrategy = \"proxy\"\nverify_secs = 3\ndrain_secs = 10\n{upgrade_keys}\
             [upgrade.analysis]\n{analysis}\
             [proxy]\ncontrol = \"{}\"\nport = {}\nhealth_path = \"/healthz\"\n",
            proxy.control.display(),
            proxy.addr.port()
        );
        let traffic = proxy.addr;
        Rig::with(test, Some(proxy), traffic, &settings)
    }

    /// A proxy-strategy rig whose agent has booted `release` of the web service.
    pub fn booted(test: &str, release: &str) -> Rig {
        let mut rig = Rig::new(test);
        rig.compose(RELEASED, &[]);
        rig.pointer(release);
        rig.start_agent();
        rig
    }

    /// The drain strategy behind a load balancer that checks `/healthz` (2 passes in, 2
    /// failures out, as an ALB's thresholds); the web service is published directly.
    pub fn drain(test: &str) -> Rig {
        let traffic: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let settings = "[upgrade]\nstrategy = \"drain\"\n\
             [load_balancer]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
        Rig::with(test, None, traffic, settings)
    }

    pub fn with(test: &str, proxy: Option<Proxy>, traffic: SocketAddr, settings: &str) -> Rig {
        let project = Project::new(test);
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = project.write(
            "berth.toml",
            &format!(
                "project = \"{name}\"\ncompose = \"compose.yaml\"\nrelease = \"release\"\nlocal = true\nrun_dir = \"{run}\"\nstate_dir = \"{state}\"\n\
                 [health]\nlisten = \"{health}\"\n\
                 [timeouts]\nready_secs = 15\nin_service_secs = 30\n{settings}",
                name = project.name,
                run = project.path("run").display(),
                state = project.path("state").display(),
            ),
        );
        Rig {
            project,
            proxy,
            traffic,
            health,
            config,
            agent: None,
            health_socket: None,
        }
    }

    /// From now on the agents get the health endpoint's socket from this rig (fd 3,
    /// `LISTEN_FDS=1`), as systemd passes berth.socket's: it stays open between agents.
    pub fn hold_health(&mut self) {
        self.health_socket = Some(std::net::TcpListener::bind(self.health).unwrap());
    }

    pub fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().unwrap()
    }

    pub fn compose(&self, image: &str, env: &[(&str, &str)]) {
        self.project
            .compose(&web_compose(self.traffic.port(), image, env));
    }

    pub fn pointer(&self, release: &str) {
        self.project.write("release", &format!("{release}\n"));
    }

    /// Starts `berth agent` (its log appended to agent.log) and waits until it is ready:
    /// `/healthz` 200 and its phase `ready`.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.project.path("agent.log"))
            .unwrap();
        let mut cmd = match &self.health_socket {
            // The socket arrives as stdin; the shell moves it to fd 3 and execs berth in its
            // own process, so that `$$` is berth's pid.
            Some(listener) => {
                let fd: std::os::fd::OwnedFd = listener.try_clone().unwrap().into();
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(r#"exec 3<&0 </dev/null; LISTEN_FDS=1 LISTEN_PID=$$ exec "$0" "$@""#)
                    .arg(env!("CARGO_BIN_EXE_berth"))
                    .stdin(Stdio::from(fd));
                cmd
            }
            None => {
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
                cmd.stdin(Stdio::null());
                cmd
            }
        };
        let child = cmd
            .arg("agent")
            .arg("--config")
            .arg(&self.config)
            .env("BERTH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.agent = Some(child);
        let health = self.health;
        let log = self.project.path("agent.log");
        eventually("the agent to be ready", Duration::from_secs(60), || {
            if let Some(status) = self.agent.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the agent exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            // Ready, not only 200: a resuming agent answers 200 through its boot.
            match status_of(health, "/healthz") {
                Some(200) => {}
                other => return Err(format!("/healthz answered {other:?}")),
            }
            let (_, body) = Conn::try_open(health).and_then(|mut c| c.try_get("/status"))?;
            match serde_json::from_str::<Value>(&body).map_err(|e| e.to_string())?["phase"] {
                Value::String(ref p) if p == "ready" => Ok(()),
                ref other => Err(format!("phase {other}")),
            }
        });
    }

    /// A `berth` command against this rig's config.
    pub fn berth(&self, sub: &str, extra: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg(sub).arg("--config").arg(&self.config).args(extra);
        run_with_limit(cmd, Duration::from_secs(90))
    }

    pub fn status(&self) -> Value {
        let out = self.berth("status", &[]);
        out.ok();
        serde_json::from_str(&out.stdout).unwrap()
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.project.path("agent.log")).unwrap_or_default()
    }

    /// The routed service's containers: (color, release, running), from one `docker ps`
    /// (so a container removed meanwhile cannot break the listing).
    pub fn colors(&self) -> Vec<(String, String, bool)> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project.name);
        let format = r#"{{.Label "dev.berth.color"}} {{.Label "dev.berth.release"}} {{.State}}"#;
        let listed = docker(&["ps", "-a", "--filter", &filter, "--format", format]);
        let mut out: Vec<(String, String, bool)> = listed
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()? == "running",
                ))
            })
            .collect();
        out.sort();
        out
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// One GET on a new connection; the status code, or None when nothing answered.
pub fn status_of(addr: SocketAddr, path: &str) -> Option<u16> {
    std::net::TcpStream::connect(addr).ok()?;
    Conn::open(addr).try_get(path).ok().map(|(code, _)| code)
}

/// Every request that started after the first answer from `new` ended was answered by `new`.
pub fn all_after_first(samples: &[Sample], new: &str) -> Result<usize, String> {
    let Some(first) = samples
        .iter()
        .filter(|s| s.result.as_deref() == Ok(new))
        .map(|s| s.ended)
        .min()
    else {
        return Err(format!("no request was answered by {new:?}"));
    };
    let after: Vec<&Sample> = samples.iter().filter(|s| s.started > first).collect();
    let stale: Vec<&Sample> = after
        .iter()
        .copied()
        .filter(|s| s.result.as_deref() != Ok(new))
        .collect();
    if stale.is_empty() {
        Ok(after.len())
    } else {
        Err(format!(
            "{} of {} requests after the switch were not answered by {new:?}: {:?}",
            stale.len(),
            after.len(),
            stale.iter().take(5).map(|s| &s.result).collect::<Vec<_>>()
        ))
    }
}

pub fn answered(samples: &[Sample], body: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.result.as_deref() == Ok(body))
        .count()
}

/// Runs `step` under load on `addr` (`n` requests before and after it); returns what it
/// printed and every request made, after checking that none failed.
#[track_caller]
pub fn under_load<T>(addr: SocketAddr, n: usize, step: impl FnOnce() -> T) -> (T, Vec<Sample>) {
    let load = Load::start(addr, "/version", 4);
    load_for(&load, n);
    let out = step();
    load_for(&load, n);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    (out, samples)
}

/// Lets the load run until it has made at least `n` more requests.
pub fn load_for(load: &Load, n: usize) {
    let target = load.count() + n;
    eventually("load to make requests", Duration::from_secs(30), || {
        if load.count() >= target {
            Ok(())
        } else {
            Err(format!("{} of {target}", load.count()))
        }
    });
}

/// The proxy's active backends, and the release each one's route was labelled with.
pub fn active_backends(proxy: &Proxy) -> Vec<(String, String)> {
    let status = proxy.control(serde_json::json!({"op": "status"}));
    status["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let addr = b.as_str().unwrap().to_string();
            let release = status["backends"][&addr]["release"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (addr, release)
        })
        .collect()
}

/// The routed service's running containers of `color`.
pub fn running_of(rig: &Rig, color: &str) -> Vec<String> {
    let project = format!("label={PROJECT_LABEL}={}", rig.project.name);
    let color = format!("label=dev.berth.color={color}");
    container_ids(&[project, color, "status=running".to_string()])
}

/// HAProxy (Debian) as the ALB's stand-in: round robin over the instances' web ports, active
/// checks of each agent's `/healthz` as the ALB's checker sends them (its User-Agent), 2 fails
/// out and 2 passes in. No retries or redispatch: a request sent to a stopped server fails.
/// Its servers are `i0`, `i1`, ... of backend `app`, in the order given.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    /// Its runtime API (admin level): the target group stand-in drives the servers through it.
    pub admin: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(instances: &[&Rig]) -> Haproxy {
        let servers: Vec<(SocketAddr, SocketAddr)> =
            instances.iter().map(|r| (r.traffic, r.health)).collect();
        Haproxy::over(&servers)
    }

    /// Over instances given as (traffic port, health port); one not up yet is down until its
    /// checks pass.
    pub fn over(instances: &[(SocketAddr, SocketAddr)]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin = dir.path().join("admin.sock");
        let mut cfg = format!(
            "global\n  stats socket {} level admin\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  retries 0\n\
             frontend web\n  bind {addr}\n  default_backend app\n\
             backend app\n  balance roundrobin\n  option httpchk\n\
             http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host instance hdr User-Agent ELB-HealthChecker/2.0\n\
             http-check expect status 200\n",
            admin.display()
        );
        for (i, (traffic, health)) in instances.iter().enumerate() {
            cfg.push_str(&format!(
                "  server i{i} {traffic} check port {} inter 500ms fall 2 rise 2\n",
                health.port()
            ));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (tests/setup.sh installs it)");
        let h = Haproxy {
            child,
            addr,
            admin,
            _dir: dir,
        };
        eventually("haproxy to listen", Duration::from_secs(10), || {
            status_of(h.addr, "/version").ok_or_else(|| "no answer".to_string())
        });
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
