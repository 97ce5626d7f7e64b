//! Shared helpers for the integration tests: a per-test project (unique name, its own temporary
//! directory, cleaned up by label on drop, even after a panic), the `berth` binary as a
//! subprocess, the docker CLI for inspecting what berth made, free host ports and polling.
//!
//! Everything is inspected through the docker CLI and parsed with serde_json, so that the tests
//! look at the daemon the way an operator would, independently of berth's own client.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod aws;
pub mod faulty;
pub mod registry;
pub mod rig;
pub mod traffic;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const PROJECT_LABEL: &str = "com.docker.compose.project";
pub const SERVICE_LABEL: &str = "com.docker.compose.service";
pub const NUMBER_LABEL: &str = "com.docker.compose.container-number";

/// The healthcheck the tests give berth-test/web.
pub const WEB_HEALTHCHECK: &str =
    r#"["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/healthz"]"#;

/// How long any single berth invocation may take before the test gives up on it.
const BERTH_LIMIT: Duration = Duration::from_secs(90);

/// The test images (tests/images): a shell and its tools, and a small web server.
pub const TOOL: &str = "berth-test/tool:1";
pub const WEB: &str = "berth-test/web:1";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, valid compose project name: `berth-t-<test>-<pid>-<counter>-<nanos>`.
pub fn unique_name(test: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let test: String = test
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("berth-t-{test}-{}-{n}-{nanos}", std::process::id())
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
/// A port free on 127.0.0.1 now, for a test to bind soon. Taken below Linux's ephemeral range
/// (32768-60999), where no bind to port 0 and no outgoing connection's source port lands: an
/// ephemeral port found free could be taken by the load clients' own connections before the
/// agent bound it. Each process walks its own stride from an offset of its pid, so parallel
/// tests and test binaries rarely try the same port (and a taken one is skipped).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const BASE: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(BASE + (start + n.wrapping_mul(7)) % SPAN).unwrap();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `n` consecutive free TCP ports on 127.0.0.1, for range mappings.
pub fn free_port_range(n: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base.checked_add(n).is_none() {
            continue;
        }
        let all_free = (base..base + n).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no run of {n} free ports found on 127.0.0.1");
}

/// What a finished process left.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    /// The error message berth printed: exactly one `error:` line (and its continuation lines),
    /// no panic. Returns the message.
    #[track_caller]
    pub fn error_message(&self) -> String {
        assert!(
            !self.stderr.contains("panicked"),
            "berth panicked:\n{}",
            self.stderr
        );
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one `error:` line on stderr, got:\n{}",
            self.stderr
        );
        // The line that starts with `error:` (not an `error:` inside a log line).
        let start = if self.stderr.starts_with("error:") {
            0
        } else {
            self.stderr.find("\nerror:").unwrap() + 1
        };
        self.stderr[start..].trim_end().to_string()
    }
}

/// Runs a command to completion with a time limit, capturing both streams.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let mut out_pipe = child.stdout.take().unwrap();
    let mut err_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        String::from_utf8_lossy(&s).to_string()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_reader.join().unwrap_or_default();
            panic!("{what} did not finish within {limit:?}; stderr so far:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.code().unwrap_or(-1),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The docker CLI.

/// Runs `docker ARGS`; panics when it fails.
#[track_caller]
pub fn docker(args: &[&str]) -> String {
    let out = docker_try(args);
    assert_eq!(
        out.code, 0,
        "docker {args:?} failed ({}): {}",
        out.code, out.stderr
    );
    out.stdout
}

pub fn docker_try(args: &[&str]) -> Output {
    let mut cmd = Command::new("docker");
    cmd.args(args).env_remove("DOCKER_HOST");
    run_with_limit(cmd, Duration::from_secs(60))
}

fn first_of(json: &str, what: &str) -> Value {
    let v: Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("docker inspect {what}: not JSON ({e}): {json}"));
    v.as_array()
        .and_then(|a| a.first())
        .cloned()
        .unwrap_or_else(|| panic!("docker inspect {what}: empty answer"))
}

/// `docker inspect` of a container (by id or name).
#[track_caller]
pub fn inspect(container: &str) -> Value {
    first_of(&docker(&["container", "inspect", container]), container)
}

#[track_caller]
pub fn inspect_network(name: &str) -> Value {
    first_of(&docker(&["network", "inspect", name]), name)
}

#[track_caller]
pub fn inspect_volume(name: &str) -> Value {
    first_of(&docker(&["volume", "inspect", name]), name)
}

pub fn container_exists(id: &str) -> bool {
    docker_try(&["container", "inspect", id]).code == 0
}

pub fn network_exists(name: &str) -> bool {
    docker_try(&["network", "inspect", name]).code == 0
}

pub fn volume_exists(name: &str) -> bool {
    docker_try(&["volume", "inspect", name]).code == 0
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Full ids of all containers (running or not) with these label filters.
pub fn container_ids(filters: &[String]) -> Vec<String> {
    let mut args = vec!["ps", "-aq", "--no-trunc"];
    for f in filters {
        args.push("--filter");
        args.push(f);
    }
    let mut ids = lines(&docker(&args));
    ids.sort();
    ids
}

/// Removes everything labelled with a project: containers (with their anonymous volumes),
/// networks, volumes. Never panics.
pub fn cleanup_project(project: &str) {
    let filter = format!("label={PROJECT_LABEL}={project}");
    let run = |args: &[&str]| docker_try(args).stdout;
    let ids = lines(&run(&["ps", "-aq", "--no-trunc", "--filter", &filter]));
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        run(&args);
    }
    let nets = lines(&run(&["network", "ls", "-q", "--filter", &filter]));
    if !nets.is_empty() {
        let mut args = vec!["network", "rm"];
        args.extend(nets.iter().map(String::as_str));
        run(&args);
    }
    let vols = lines(&run(&["volume", "ls", "-q", "--filter", &filter]));
    if !vols.is_empty() {
        let mut args = vec!["volume", "rm", "-f"];
        args.extend(vols.iter().map(String::as_str));
        run(&args);
    }
}

// ---------------------------------------------------------------------------------------------
// A project under test.

/// One test's compose project: a unique name, a temporary directory holding its files, and a
/// guard that removes whatever Docker holds with its label when the test ends, however it ends.
#[derive(Debug)]
pub struct Project {
    pub name: String,
    dir: tempfile::TempDir,
}

impl Project {
    pub fn new(test: &str) -> Project {
        let name = unique_name(test);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap();
        Project { name, dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file under the project directory (creating parents); returns its path.
    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(content.as_bytes()).unwrap();
        path
    }

    /// Writes `compose.yaml`.
    pub fn compose(&self, yaml: &str) -> PathBuf {
        self.write("compose.yaml", yaml)
    }

    /// A `berth` command run in the project directory, with nothing added.
    pub fn berth(&self) -> Berth {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.current_dir(self.dir())
            .env_remove("COMPOSE_PROJECT_NAME")
            .env_remove("COMPOSE_PROFILES")
            .env_remove("BERTH_LOG");
        Berth { cmd }
    }

    /// `berth SUB -f compose.yaml -p NAME`: the usual start of a command.
    pub fn cmd(&self, sub: &str) -> Berth {
        self.cmd_file(sub, &self.path("compose.yaml"))
    }

    /// `berth SUB -f FILE -p NAME`
    pub fn cmd_file(&self, sub: &str, file: &Path) -> Berth {
        let mut b = self.berth();
        b.cmd.arg(sub).arg("-f").arg(file);
        b.cmd.arg("-p").arg(&self.name);
        b
    }

    /// `berth up -f compose.yaml -p NAME --wait-timeout 60 EXTRA...`
    pub fn up_cmd(&self) -> Berth {
        self.up_file(&self.path("compose.yaml"))
    }

    /// `berth up -f FILE -p NAME --wait-timeout 60 EXTRA...`
    pub fn up_file(&self, file: &Path) -> Berth {
        self.cmd_file("up", file).args(&["--wait-timeout", "60"])
    }

    /// Writes `policy.toml` with `[policy]` holding `keys` (TOML lines): pass it as `--policy`.
    pub fn policy(&self, keys: &str) -> PathBuf {
        self.write("policy.toml", &format!("[policy]\n{keys}\n"))
    }

    /// `berth up` under the default policy must refuse: exit 3, one error naming `field`
    /// and the policy key `allow` that would allow it, and nothing created.
    #[track_caller]
    pub fn refused_by_policy(&self, field: &str, allow: &str) {
        let out = self.up_cmd().run();
        out.expect_code(3);
        let msg = out.error_message();
        assert!(
            msg.contains("the host policy (the default policy")
                && msg.contains(field)
                && msg.contains(allow),
            "{msg}"
        );
        assert!(self.container_ids().is_empty(), "refused, yet created");
    }

    /// `berth up` that must succeed.
    #[track_caller]
    pub fn up(&self) -> Output {
        let out = self.up_cmd().run();
        out.ok();
        out
    }

    #[track_caller]
    pub fn plan(&self) -> Output {
        let out = self.cmd("plan").run();
        out.ok();
        out
    }

    /// `berth plan --json`, parsed.
    #[track_caller]
    pub fn plan_json(&self) -> Value {
        let out = self.cmd("plan").arg("--json").run();
        out.ok();
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("plan --json is not JSON ({e}):\n{}", out.stdout))
    }

    /// `berth down -p NAME`
    pub fn down_cmd(&self) -> Berth {
        self.berth().arg("down").args(&["-p", &self.name])
    }

    /// Full ids of the project's containers.
    pub fn container_ids(&self) -> Vec<String> {
        container_ids(&[format!("label={PROJECT_LABEL}={}", self.name)])
    }

    /// Full ids of one service's containers.
    pub fn service_ids(&self, service: &str) -> Vec<String> {
        container_ids(&[
            format!("label={PROJECT_LABEL}={}", self.name),
            format!("label={SERVICE_LABEL}={service}"),
        ])
    }

    /// The inspected container of a service's replica 1 (found by label, not by name).
    #[track_caller]
    pub fn container(&self, service: &str) -> Value {
        self.replica(service, 1)
    }

    #[track_caller]
    pub fn replica(&self, service: &str, number: u32) -> Value {
        let ids = container_ids(&[
            format!("label={PROJECT_LABEL}={}", self.name),
            format!("label={SERVICE_LABEL}={service}"),
            format!("label={NUMBER_LABEL}={number}"),
        ]);
        assert_eq!(
            ids.len(),
            1,
            "expected one container of service {service} #{number} in {}, found {ids:?}",
            self.name
        );
        inspect(&ids[0])
    }

    /// `<project>-<service>-1`
    pub fn container_name(&self, service: &str) -> String {
        format!("{}-{service}-1", self.name)
    }

    /// Every container of the project: id -> (running, StartedAt).
    pub fn snapshot(&self) -> Vec<(String, bool, String)> {
        self.container_ids()
            .into_iter()
            .map(|id| {
                let c = inspect(&id);
                (
                    id,
                    c["State"]["Running"].as_bool().unwrap_or(false),
                    c["State"]["StartedAt"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        cleanup_project(&self.name);
    }
}

/// A `berth` invocation being put together.
#[derive(Debug)]
pub struct Berth {
    cmd: Command,
}

impl Berth {
    pub fn arg(mut self, a: impl AsRef<std::ffi::OsStr>) -> Berth {
        self.cmd.arg(a);
        self
    }

    pub fn args(mut self, a: &[&str]) -> Berth {
        self.cmd.args(a);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Berth {
        self.cmd.env(k, v);
        self
    }

    pub fn env_remove(mut self, k: &str) -> Berth {
        self.cmd.env_remove(k);
        self
    }

    pub fn current_dir(mut self, dir: &Path) -> Berth {
        self.cmd.current_dir(dir);
        self
    }

    pub fn run(self) -> Output {
        run_with_limit(self.cmd, BERTH_LIMIT)
    }
}

// ---------------------------------------------------------------------------------------------
// Reading inspected containers.

/// The container's full id.
#[track_caller]
pub fn id_of(c: &Value) -> String {
    c["Id"].as_str().unwrap().to_string()
}

/// When the container last started (`State.StartedAt`, as Docker wrote it).
#[track_caller]
pub fn started_at(c: &Value) -> String {
    c["State"]["StartedAt"].as_str().unwrap().to_string()
}

/// The container's environment as a map (`Config.Env`).
pub fn env_of(c: &Value) -> std::collections::BTreeMap<String, String> {
    c["Config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A JSON array of strings as a Vec (null -> empty).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

pub fn label_of(c: &Value, key: &str) -> Option<String> {
    c["Config"]["Labels"][key].as_str().map(String::from)
}

/// `Mounts` entry whose destination is `target`.
#[track_caller]
pub fn mount_at(c: &Value, target: &str) -> Value {
    c["Mounts"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["Destination"] == target))
        .cloned()
        .unwrap_or_else(|| panic!("no mount at {target}: {}", c["Mounts"]))
}

/// Runs a command in a container; returns (exit code, stdout trimmed).
pub fn exec(container: &str, cmd: &[&str]) -> (i32, String) {
    let mut args = vec!["exec", container];
    args.extend_from_slice(cmd);
    let out = docker_try(&args);
    (out.code, out.stdout.trim().to_string())
}

/// A Docker timestamp (RFC 3339, UTC, up to nanoseconds) as nanoseconds since the epoch.
#[track_caller]
pub fn ts_nanos(ts: &str) -> i128 {
    let s = ts
        .strip_suffix('Z')
        .unwrap_or_else(|| panic!("not a UTC Docker timestamp: {ts:?}"));
    let (date, time) = s
        .split_once('T')
        .unwrap_or_else(|| panic!("not a Docker timestamp: {ts:?}"));
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    let frac_ns: i128 = format!("{frac:0<9}")[..9].parse().unwrap();
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (d[0], d[1], d[2]);
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    secs as i128 * 1_000_000_000 + frac_ns
}

// ---------------------------------------------------------------------------------------------
// Talking to published ports.

/// `GET path` on 127.0.0.1:port; the body when the status is 200.
pub fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .map_err(|e| format!("read: {e}"))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(format!("status {status:?}"))
    }
}

/// Sends `signal` ("TERM", "KILL") to process `pid`, as `kill -SIGNAL PID` would.
#[track_caller]
pub fn signal(pid: impl std::fmt::Display, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

// ---------------------------------------------------------------------------------------------
// Polling.

/// Polls `probe` every 50 ms until it returns `Ok`, up to `timeout`; panics with what was last
/// observed (the `Err` text) when it never does.
#[track_caller]
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) => {
                if started.elapsed() >= timeout {
                    panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `assert_eventually!(secs, "what", || -> Result<T, String>)`: see [`eventually`].
#[macro_export]
macro_rules! assert_eventually {
    ($secs:expr, $what:expr, $probe:expr) => {
        $crate::common::eventually($what, ::std::time::Duration::from_secs($secs), $probe)
    };
}

/// Waits until Docker itself reports the container's health as `want`.
#[track_caller]
pub fn wait_health(container: &str, want: &str, secs: u64) -> Value {
    eventually(
        &format!("{container} to be {want}"),
        Duration::from_secs(secs),
        || {
            let c = inspect(container);
            let status = c["State"]["Health"]["Status"].as_str().unwrap_or("none");
            if status == want {
                Ok(c)
            } else {
                Err(format!(
                    "health {status}, log {}",
                    c["State"]["Health"]["Log"]
                ))
            }
        },
    )
}

/// Runs `cmd` in `container` every 50 ms, up to `secs`, until it exits 0 with output that
/// `done` accepts; returns that output (trimmed).
#[track_caller]
pub fn exec_until(
    container: &str,
    cmd: &[&str],
    secs: u64,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> String {
    eventually(what, Duration::from_secs(secs), || {
        match exec(container, cmd) {
            (0, s) if done(&s) => Ok(s),
            other => Err(format!("{other:?}")),
        }
    })
}

/// A compose file of one service, `name` running `image`; `rest` follows as it is (but for a
/// leading newline, so that it may be a raw string): more of that service's keys (indented
/// four spaces), then any top-level sections.
pub fn one_service(name: &str, image: &str, rest: &str) -> String {
    let rest = rest.strip_prefix('\n').unwrap_or(rest);
    format!("services:\n  {name}:\n    image: {image}\n{rest}")
}

/// A compose file where `app` (TOOL) starts once the one-shot `migrate` (TOOL, running
/// `sh -c SCRIPT`) has completed successfully.
pub fn app_after_one_shot(script: &str) -> String {
    format!(
        r#"
services:
  migrate:
    image: {TOOL}
    command: ["sh", "-c", "{script}"]
  app:
    image: {TOOL}
    depends_on:
      migrate:
        condition: service_completed_successfully
"#
    )
}

/// `haystack` contains `needle`, or a message showing both.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected to contain {needle:?}, got:\n{haystack}"
    );
}

/// An image built for one test (`docker build` of a directory), removed when dropped.
#[derive(Debug)]
pub struct TestImage {
    pub tag: String,
}

impl TestImage {
    /// Builds `dockerfile` (its context is an otherwise empty directory under `dir`).
    #[track_caller]
    pub fn build(tag: &str, dir: &Path, dockerfile: &str) -> TestImage {
        let ctx = dir.join("image-context");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let mut cmd = Command::new("docker");
        cmd.args(["build", "-q", "-t", tag])
            .arg(&ctx)
            .env("DOCKER_BUILDKIT", "0")
            .env_remove("DOCKER_HOST");
        let out = run_with_limit(cmd, Duration::from_secs(60));
        assert_eq!(out.code, 0, "docker build {tag} failed: {}", out.stderr);
        TestImage {
            tag: tag.to_string(),
        }
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = docker_try(&["image", "rm", "-f", &self.tag]);
    }
}
