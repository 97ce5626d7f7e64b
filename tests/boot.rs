//! The boot path end to end: `berth agent` booting an "instance" on the rig. The real Docker
//! daemon; a real registry (`docker-registry` with htpasswd) standing in for ECR; moto for S3,
//! SSM, ECR and ELBv2; the emulator for IMDSv2, the AutoScaling lifecycle actions and scripted
//! target health. berth reaches them only through the standard AWS variables and its
//! berth.toml. Each test has its own project, bucket prefix, SSM names, emulator, registry and
//! run directory, and cleans up by label however it ends.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::aws::{self, Emulator, Moto, ACCOUNT_ID, ASG_NAME, INSTANCE_ID};
use common::faulty::Faulty;
use common::registry::{image_present, Registry, RemoveImage};
use common::*;
use serde_json::{json, Value};

const WEB: &str = "berth-test/web:1";
const HOOK: &str = "berth-launch";
/// How long one berth run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// Short timeouts: every boot here takes seconds.
const TIMEOUTS: &str =
    "[timeouts]\nimds_secs = 3\nfetch_secs = 5\nready_secs = 8\nin_service_secs = 8\n";
/// Phases `/healthz` may show while a boot is under way (503).
const BOOT_PHASES: [&str; 5] = ["identity", "fetching", "pulling", "starting", "waiting"];

fn random_hex() -> String {
    format!("{:016x}", RandomState::new().build_hasher().finish())
}

// ---------------------------------------------------------------------------------------------
// The stack berth boots.

/// A healthcheck that passes as soon as the server answers (failures in the first 30 s do not
/// count, so a slow start is not unhealthy).
fn patient_healthcheck() -> String {
    format!(
        "    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n      start_period: 30s\n"
    )
}

/// A healthcheck that makes the container unhealthy at its first failure.
fn strict_healthcheck() -> String {
    format!(
        "    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n      retries: 1\n"
    )
}

/// One service `web` running `image` (which may hold `${RELEASE}`), with its variables from
/// `app.env` (fetched beside the compose file) and `env`.
fn web_compose(image: &str, env: &[(&str, &str)], healthcheck: &str) -> String {
    let mut yaml = format!("services:\n  web:\n    image: {image}\n    env_file: [app.env]\n");
    if !env.is_empty() {
        yaml.push_str("    environment:\n");
        for (k, v) in env {
            yaml.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    yaml.push_str(healthcheck);
    yaml
}

/// `[registries."<addr>"]` authenticating with ECR tokens (moto's GetAuthorizationToken).
fn ecr_registry(addr: &str) -> String {
    format!("[registries.\"{addr}\"]\nauth = \"ecr\"\nregistry_id = \"{ACCOUNT_ID}\"\n")
}

/// `[lifecycle]` with the launch hook (the group comes from the instance's tag).
fn lifecycle(extra: &str) -> String {
    format!("[lifecycle]\nhook = \"{HOOK}\"\n{extra}")
}

// ---------------------------------------------------------------------------------------------
// One boot under test.

/// A test's world: its project, its emulator (its own recorded calls), the shared moto, a
/// bucket and SSM names of its own, a run directory, the health port, and a secret.
#[derive(Debug)]
struct Boot {
    p: Project,
    emu: Emulator,
    moto: &'static Moto,
    bucket: String,
    run_dir: tempfile::TempDir,
    state_dir: tempfile::TempDir,
    /// An empty Docker client config: no credentials but what berth gets itself.
    docker_config: tempfile::TempDir,
    health_port: u16,
    /// The value in the env file that must never leave the container's environment.
    secret: String,
}

impl Boot {
    fn new(test: &str) -> Boot {
        Boot::with_state(test, json!({}))
    }

    /// With the emulator's state merged with `state`.
    fn with_state(test: &str, state: Value) -> Boot {
        let p = Project::new(test);
        let emu = Emulator::start_with(state);
        Boot {
            p,
            emu,
            moto: Moto::shared(),
            bucket: format!("berth-boot-{}", random_hex()),
            run_dir: tempfile::tempdir().unwrap(),
            state_dir: tempfile::tempdir().unwrap(),
            docker_config: tempfile::tempdir().unwrap(),
            health_port: free_port(),
            secret: format!("s3cr3t-{}", random_hex()),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.p.name)
    }

    /// `s3://<bucket>/<project>/<name>`
    fn s3(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    fn put(&self, name: &str, content: &str) {
        aws::block_on(aws::put_object(
            self.moto,
            &self.bucket,
            &self.key(name),
            content.as_bytes().to_vec(),
        ));
    }

    /// What berth should record as the object's version: its VersionId, else its ETag.
    fn s3_version(&self, name: &str) -> String {
        let key = self.key(name);
        aws::block_on(async {
            let head = self
                .moto
                .s3()
                .await
                .head_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
                .unwrap();
            head.version_id()
                .map(String::from)
                .or_else(|| head.e_tag().map(|t| t.trim_matches('"').to_string()))
                .unwrap()
        })
    }

    /// `/<project>/<name>`
    fn param(&self, name: &str) -> String {
        format!("/{}/{name}", self.p.name)
    }

    fn env_file(&self) -> String {
        format!("DB_PASSWORD={}\nGREETING=hello-from-s3\n", self.secret)
    }

    /// The release: `compose` as compose.yaml and the env file as app.env in S3, `release_id`
    /// in SSM. Returns the top-level berth.toml lines that point at them.
    fn put_release(&self, compose: &str, release_id: &str) -> String {
        self.put("compose.yaml", compose);
        self.put("app.env", &self.env_file());
        aws::block_on(aws::put_parameter(
            self.moto,
            &self.param("release"),
            release_id,
        ));
        self.release_lines()
    }

    fn release_lines(&self) -> String {
        format!(
            "compose = \"{}\"\nenv_files = [\"{}\"]\nrelease = \"ssm:{}\"\n",
            self.s3("compose.yaml"),
            self.s3("app.env"),
            self.param("release")
        )
    }

    /// Writes berth.toml: project, run_dir, `top`, the health listener, `tables`, and the short
    /// timeouts unless `tables` has its own.
    fn config(&self, top: &str, tables: &str) -> PathBuf {
        let timeouts = if tables.contains("[timeouts]") {
            ""
        } else {
            TIMEOUTS
        };
        let text = format!(
            "project = \"{}\"\nrun_dir = \"{}\"\nstate_dir = \"{}\"\n{top}\n[health]\nlisten = \"127.0.0.1:{}\"\n\n{tables}\n{timeouts}",
            self.p.name,
            self.run_dir.path().display(),
            self.state_dir.path().display(),
            self.health_port
        );
        self.p.write("berth.toml", &text)
    }

    fn aws_env(&self) -> Vec<(String, String)> {
        aws::aws_env(self.moto, &self.emu)
    }

    /// `berth ARGS` with exactly `env` for AWS (inherited AWS variables removed), no systemd
    /// variables, and an empty Docker client config.
    fn command(&self, args: &[&str], env: &[(String, String)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(args).current_dir(self.p.dir());
        for k in [
            "COMPOSE_PROJECT_NAME",
            "COMPOSE_PROFILES",
            "BERTH_LOG",
            "NOTIFY_SOCKET",
            "JOURNAL_STREAM",
            "DOCKER_CONFIG",
        ] {
            cmd.env_remove(k);
        }
        aws::apply_env(&mut cmd, env);
        cmd.env("DOCKER_CONFIG", self.docker_config.path());
        cmd
    }

    /// `berth agent --config CONFIG [--once]`
    fn agent_cmd(&self, config: &Path, once: bool, env: &[(String, String)]) -> Command {
        let mut args = vec!["agent", "--config", config.to_str().unwrap()];
        if once {
            args.push("--once");
        }
        self.command(&args, env)
    }

    /// `berth agent --config CONFIG --once` on the rig, to completion.
    fn boot_once(&self, config: &Path) -> Output {
        run_with_limit(self.agent_cmd(config, true, &self.aws_env()), RUN_LIMIT)
    }

    /// `berth agent` in the background.
    fn spawn(&self, config: &Path, once: bool, env: &[(String, String)]) -> Agent {
        Agent::spawn(self.agent_cmd(config, once, env), self.health_port)
    }

    /// No container of the project runs (after a failed boot: the instance is being given up).
    #[track_caller]
    fn assert_nothing_running(&self) {
        let running: Vec<String> = self
            .p
            .snapshot()
            .into_iter()
            .filter(|(_, running, _)| *running)
            .map(|(id, _, _)| id)
            .collect();
        assert!(
            running.is_empty(),
            "containers of the project still run after a failed boot: {running:?}"
        );
    }

    /// The recorded CompleteLifecycleAction calls: their results, in order, each checked to
    /// name this instance, its group and the hook.
    #[track_caller]
    fn completions(&self) -> Vec<String> {
        self.emu
            .calls_of("CompleteLifecycleAction")
            .iter()
            .map(|c| {
                assert_hook_call(c);
                c["params"]["LifecycleActionResult"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[track_caller]
    fn assert_no_secret(&self, what: &str, text: &str) {
        assert!(
            !text.contains(&self.secret),
            "the env file's secret appears in {what}:\n{text}"
        );
    }
}

/// A lifecycle call names the group (from the instance tag), the hook and this instance.
#[track_caller]
fn assert_hook_call(c: &Value) {
    let params = &c["params"];
    assert_eq!(params["AutoScalingGroupName"], ASG_NAME, "{c}");
    assert_eq!(params["LifecycleHookName"], HOOK, "{c}");
    assert_eq!(params["InstanceId"], INSTANCE_ID, "{c}");
}

/// Index of the first recorded call satisfying `pred`.
fn position(calls: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    calls.iter().position(pred)
}

fn is_continue(c: &Value) -> bool {
    c["action"] == "CompleteLifecycleAction" && c["params"]["LifecycleActionResult"] == "CONTINUE"
}

/// The phase in a `/healthz` body.
fn phase_of(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["phase"].as_str().map(String::from))
        .unwrap_or_else(|| format!("<no phase in {body:?}>"))
}

// ---------------------------------------------------------------------------------------------
// berth in the background.

/// A background `berth agent`, its output going to files; killed when dropped (a failing test
/// leaves no agent behind).
#[derive(Debug)]
struct Agent {
    child: Child,
    logs: tempfile::TempDir,
    port: u16,
}

impl Agent {
    fn spawn(mut cmd: Command, port: u16) -> Agent {
        let logs = tempfile::tempdir().unwrap();
        let out = File::create(logs.path().join("stdout")).unwrap();
        let err = File::create(logs.path().join("stderr")).unwrap();
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap();
        Agent { child, logs, port }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    /// The exit code once it has exited.
    fn exit_code(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .unwrap()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Panics (with berth's stderr) if berth has exited.
    #[track_caller]
    fn assert_running(&mut self, when: &str) {
        if let Some(code) = self.exit_code() {
            panic!(
                "berth exited with {code} {when}; stderr:\n{}",
                self.stderr()
            );
        }
    }

    /// Calls `each` every 25 ms until berth exits; its output.
    #[track_caller]
    fn finish_with(&mut self, limit: Duration, mut each: impl FnMut(&Agent)) -> Output {
        let start = Instant::now();
        let code = loop {
            if let Some(code) = self.exit_code() {
                break code;
            }
            assert!(
                start.elapsed() < limit,
                "berth did not exit within {limit:?}; stderr:\n{}",
                self.stderr()
            );
            each(self);
            std::thread::sleep(Duration::from_millis(25));
        };
        Output {
            code,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    #[track_caller]
    fn finish(&mut self, limit: Duration) -> Output {
        self.finish_with(limit, |_| {})
    }

    /// Once the agent has left (phase `left`: it stays, 503, until stopped), its SIGTERM ends
    /// it at once; what it printed.
    #[track_caller]
    fn leave_then_stop(&mut self) -> Output {
        assert_eq!(self.wait_phase("left", 30), 503);
        signal(self.child.id(), "TERM");
        let out = self.finish(Duration::from_secs(5));
        out.ok();
        out
    }

    /// `GET path` on the health listener: (status, body).
    fn get(&self, path: &str) -> Result<(u16, String), String> {
        self.get_with(path, &[])
    }

    fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
        aws::try_http(
            "GET",
            &format!("http://127.0.0.1:{}{path}", self.port),
            headers,
            None,
        )
    }

    /// `/healthz` as (status, phase), once the listener is up.
    fn healthz(&self) -> Option<(u16, String)> {
        self.get("/healthz")
            .ok()
            .map(|(status, body)| (status, phase_of(&body)))
    }

    /// `/status`, parsed.
    #[track_caller]
    fn status(&self) -> (String, Value) {
        let (code, body) = self.get("/status").unwrap();
        assert_eq!(code, 200, "/status: {body}");
        let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status: {e}: {body}"));
        (body, v)
    }

    /// Polls `/healthz` until it says `phase`; panics if berth exits first.
    #[track_caller]
    fn wait_phase(&mut self, phase: &str, secs: u64) -> u16 {
        let port = self.port;
        let what = format!("/healthz to say {phase}");
        eventually(&what, Duration::from_secs(secs), || {
            self.assert_running(&format!("while waiting for {phase}"));
            let probe = Agent::probe_healthz(port);
            match probe {
                Some((status, p)) if p == phase => Ok(status),
                Some((status, p)) => Err(format!("{status} {p}")),
                None => Err("not listening yet".into()),
            }
        })
    }

    fn probe_healthz(port: u16) -> Option<(u16, String)> {
        aws::try_http(
            "GET",
            &format!("http://127.0.0.1:{port}/healthz"),
            &[],
            None,
        )
        .ok()
        .map(|(status, body)| (status, phase_of(&body)))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The whole boot.

#[test]
fn boots_from_s3_ssm_and_ecr_and_continues_the_hook_once_the_target_is_healthy() {
    let b = Boot::new("boot-happy");
    let registry = Registry::start();
    let reference = registry.push(WEB, "team/web", "r1");
    let _rm = RemoveImage(reference.clone());
    assert!(!image_present(&reference));
    let image = format!("{}/team/web:${{RELEASE}}", registry.addr);
    let top = b.put_release(&web_compose(&image, &[], &patient_healthcheck()), "r1");
    let tg_name = format!("berth-{}", &random_hex()[..12]);
    let tg = aws::block_on(aws::create_target_group(
        b.moto,
        &tg_name,
        INSTANCE_ID,
        8080,
    ));
    let config = b.config(
        &top,
        &format!(
            "{}{}[load_balancer]\ntarget_group_arn = \"{tg}\"\nport = 8080\n",
            lifecycle(""),
            ecr_registry(&registry.addr)
        ),
    );

    let mut agent = b.spawn(&config, true, &b.aws_env());
    let mut statuses = Vec::new();
    let out = agent.finish_with(RUN_LIMIT, |a| {
        if let Ok((200, body)) = a.get("/status") {
            statuses.push(body);
        }
    });
    out.ok();

    // The container runs the release's image, pulled from the registry with the ECR token
    // (the Docker config berth sees is empty), with the env file's values.
    assert!(image_present(&reference), "{reference} was not pulled");
    let c = p_container(&b);
    assert_eq!(c["Config"]["Image"], reference.as_str());
    assert_eq!(c["State"]["Running"], true);
    let env = env_of(&c);
    assert_eq!(env.get("DB_PASSWORD"), Some(&b.secret), "{env:?}");
    assert_eq!(
        env.get("GREETING").map(String::as_str),
        Some("hello-from-s3")
    );

    // The hook: one CONTINUE for this instance, its group and the hook.
    assert_eq!(b.completions(), ["CONTINUE"]);

    // The fetched files: the env file 0600 in a 0700 directory of the run directory (tmpfs
    // under systemd), the compose file in the project directory on disk (where relative binds
    // land), with a link to the env file beside it.
    let dir = b.run_dir.path().join(&b.p.name);
    let project_dir = b.state_dir.path().join("projects").join(&b.p.name);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    assert_eq!(mode(&project_dir), 0o700, "{}", project_dir.display());
    assert_eq!(mode(&dir.join("app.env")), 0o600);
    assert_eq!(mode(&project_dir.join("compose.yaml")), 0o600);
    assert!(!dir.join("compose.yaml").exists());
    assert_eq!(
        std::fs::read_link(project_dir.join("app.env")).unwrap(),
        dir.join("app.env")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("app.env")).unwrap(),
        b.env_file()
    );

    // The secret stays in the container's environment.
    b.assert_no_secret("berth's stdout", &out.stdout);
    b.assert_no_secret("berth's stderr", &out.stderr);
    assert!(
        !statuses.is_empty(),
        "/status never answered during the boot"
    );
    for s in &statuses {
        b.assert_no_secret("/status", s);
    }
    let labels = c["Config"]["Labels"].as_object().unwrap();
    for (k, v) in labels {
        b.assert_no_secret("a container label", &format!("{k}={v}"));
    }
}

/// The project's `web` container, inspected.
#[track_caller]
fn p_container(b: &Boot) -> Value {
    b.p.container("web")
}

#[test]
fn secrets_and_configs_from_s3_and_an_ssm_secure_string_are_files_never_written_or_shown() {
    let b = Boot::new("boot-secrets");
    // Values of their own (the env file, written beside the compose file by design, holds
    // b.secret).
    let key = format!("tls-key-{}", random_hex());
    let password = format!("pw-{}", random_hex());
    b.put("tls.key", &key);
    aws::block_on(aws::put_secure_parameter(
        b.moto,
        &b.param("db-password"),
        &password,
    ));
    let mut compose = web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck());
    compose.push_str(&format!(
        "    secrets:\n      - db_password\n    configs:\n      - source: tls\n        target: /etc/tls.key\n        mode: 0o400\nsecrets:\n  db_password:\n    file: ssm:{}\nconfigs:\n  tls:\n    file: {}\n",
        b.param("db-password"),
        b.s3("tls.key")
    ));
    let top = b.put_release(&compose, "1");
    let config = b.config(&top, "");
    let mut agent = b.spawn(&config, true, &b.aws_env());
    let out = agent.finish(RUN_LIMIT);
    out.ok();

    let id = p_container(&b)["Id"].as_str().unwrap().to_string();
    assert_eq!(
        exec(&id, &["cat", "/run/secrets/db_password"]),
        (0, password.clone())
    );
    assert_eq!(exec(&id, &["cat", "/etc/tls.key"]), (0, key.clone()));
    assert_eq!(exec(&id, &["stat", "-c", "%a", "/etc/tls.key"]).1, "400");
    // Fetched into memory only: nothing of them under the run directory, in the output or in
    // the labels; their locations and versions are in the record.
    let labels = p_container(&b)["Config"]["Labels"].to_string();
    let mut shown: Vec<(String, String)> = walkdir(b.run_dir.path())
        .into_iter()
        .chain(walkdir(b.state_dir.path()))
        .map(|f| {
            let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap_or_default()).to_string();
            (f.display().to_string(), text)
        })
        .collect();
    shown.push(("berth's stderr".into(), out.stderr.clone()));
    shown.push(("berth's stdout".into(), out.stdout.clone()));
    shown.push(("labels".into(), labels));
    for (what, text) in &shown {
        assert!(
            !text.contains(&key) && !text.contains(&password),
            "a secret's value is in {what}:\n{text}"
        );
    }
    assert!(
        out.stderr.contains("fetched a secret or config"),
        "{}",
        out.stderr
    );
}

/// Every file under `dir`.
fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walkdir(&path));
        } else {
            out.push(path);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// 2. /healthz and /status.

#[test]
fn healthz_is_503_with_the_phase_until_the_service_is_healthy_then_200_and_status_tells_all() {
    let b = Boot::new("boot-healthz");
    let top = b.put_release(
        &web_compose(
            "berth-test/web:${RELEASE}",
            &[("SLOW_START", "2")],
            &patient_healthcheck(),
        ),
        "1",
    );
    let config = b.config(&top, "");
    let mut agent = b.spawn(&config, false, &b.aws_env());

    let port = agent.port;
    let mut seen: Vec<(u16, String)> = Vec::new();
    eventually("/healthz to answer 200", Duration::from_secs(30), || {
        agent.assert_running("before /healthz answered 200");
        match Agent::probe_healthz(port) {
            Some(answer) => {
                if seen.last() != Some(&answer) {
                    seen.push(answer.clone());
                }
                if answer.0 == 200 {
                    Ok(())
                } else {
                    Err(format!("{answer:?}"))
                }
            }
            None => Err("not listening yet".into()),
        }
    });
    let (before, after) = seen.split_at(seen.len() - 1);
    assert_eq!(after[0], (200, "ready".to_string()), "{seen:?}");
    for (status, phase) in before {
        assert_eq!(*status, 503, "{seen:?}");
        assert!(BOOT_PHASES.contains(&phase.as_str()), "{seen:?}");
    }
    assert!(
        before
            .iter()
            .any(|(_, p)| ["starting", "waiting", "pulling", "fetching"].contains(&p.as_str())),
        "no 503 with a boot phase before the first 200: {seen:?}"
    );
    // Really healthy: the server answers.
    let c = p_container(&b);
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(
        exec(&b.p.container_name("web"), &["cat", "/www/healthz"]).1,
        "ok"
    );

    let (raw, status) = agent.status();
    b.assert_no_secret("/status", &raw);
    assert_eq!(status["phase"], "ready", "{raw}");
    assert_eq!(status["release"], "1", "{raw}");
    assert_eq!(status["project"], b.p.name.as_str(), "{raw}");
    assert_eq!(status["instance_id"], INSTANCE_ID, "{raw}");
    let objects = status["objects"].as_array().unwrap();
    let object = |location: &str| {
        objects
            .iter()
            .find(|o| o["location"] == location)
            .unwrap_or_else(|| panic!("no object {location} in /status: {raw}"))
            .clone()
    };
    let compose = object(&b.s3("compose.yaml"));
    assert_eq!(
        compose["version"],
        b.s3_version("compose.yaml").as_str(),
        "{raw}"
    );
    let envf = object(&b.s3("app.env"));
    assert_eq!(envf["version"], b.s3_version("app.env").as_str(), "{raw}");
    assert_eq!(envf["bytes"], b.env_file().len(), "{raw}");
    let release = object(&format!("ssm:{}", b.param("release")));
    assert_eq!(release["version"], "1", "{raw}");
    assert_eq!(objects.len(), 3, "{raw}");
    let services = status["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{raw}");
    assert_eq!(services[0]["name"], "web", "{raw}");
    assert_eq!(services[0]["state"], "healthy", "{raw}");
    let timings = &status["timings"];
    let at = |phase: &str| {
        timings[phase]
            .as_f64()
            .unwrap_or_else(|| panic!("no timing for {phase}: {raw}"))
    };
    assert!(at("fetching") <= at("waiting"), "{raw}");
    assert!(at("waiting") <= at("ready"), "{raw}");
    assert!(
        at("ready") - at("waiting") >= 1.0,
        "SLOW_START=2 should show in the timings: {raw}"
    );
    assert!(status["last_error"].is_null(), "{raw}");
    agent.assert_running("while holding");
}

// ---------------------------------------------------------------------------------------------
// 3. Heartbeats.

#[test]
fn heartbeats_keep_the_hook_alive_while_the_boot_is_slow_and_stop_once_it_is_completed() {
    let b = Boot::with_state(
        "boot-heartbeat",
        json!({"target_health": ["initial", "initial", "initial", "healthy"]}),
    );
    let top = b.put_release(
        &web_compose(
            "berth-test/web:${RELEASE}",
            &[("SLOW_START", "3")],
            &patient_healthcheck(),
        ),
        "1",
    );
    let arn = format!(
        "arn:aws:elasticloadbalancing:us-east-1:{ACCOUNT_ID}:targetgroup/hb/0123456789abcdef"
    );
    let config = b.config(
        &top,
        &format!(
            "{}[load_balancer]\ntarget_group_arn = \"{arn}\"\nport = 8080\n",
            lifecycle("heartbeat_secs = 1\n")
        ),
    );
    let env = aws::aws_env_with_elb_emulated(b.moto, &b.emu);
    let out = run_with_limit(b.agent_cmd(&config, true, &env), RUN_LIMIT);
    out.ok();

    let calls = b.emu.calls();
    let beats: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c["action"] == "RecordLifecycleActionHeartbeat")
        .map(|(i, _)| i)
        .collect();
    let done = position(&calls, is_continue).expect("CONTINUE recorded");
    assert!(
        beats.iter().any(|&i| i < done),
        "no heartbeat before CONTINUE: {calls:#?}"
    );
    for &i in &beats {
        assert_hook_call(&calls[i]);
    }
    // The target-health wait after CONTINUE lasts seconds: a completed action takes no
    // heartbeats (AutoScaling would answer "No active Lifecycle Action").
    let late: Vec<&Value> = beats
        .iter()
        .filter(|&&i| i > done)
        .map(|&i| &calls[i])
        .collect();
    assert!(
        late.is_empty(),
        "heartbeats were sent after the lifecycle action was completed: {late:#?}"
    );
    assert_eq!(b.completions(), ["CONTINUE"]);
}

// ---------------------------------------------------------------------------------------------
// 4. In service without a target group: the ALB checker's passes.

#[test]
fn without_a_target_group_it_waits_for_healthy_threshold_passes_from_the_elb_checker() {
    let b = Boot::new("boot-elbcheck");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, "[load_balancer]\nhealthy_threshold = 3\n");
    let mut agent = b.spawn(&config, true, &b.aws_env());
    agent.wait_phase("ready", 30);
    const ELB: (&str, &str) = ("User-Agent", "ELB-HealthChecker/2.0");

    for n in 1..=2 {
        let (code, body) = agent.get_with("/healthz", &[ELB]).unwrap();
        assert_eq!(code, 200, "check {n}: {body}");
    }
    // Still booting: an upgrade sent now is refused as busy by the agent's control socket
    // (bound from the start), not run in-process beside the boot.
    let upgrade = run_with_limit(
        b.command(
            &["upgrade", "--config", config.to_str().unwrap()],
            &b.aws_env(),
        ),
        RUN_LIMIT,
    );
    upgrade.expect_code(7);
    let said = format!("{}{}", upgrade.stdout, upgrade.stderr);
    assert!(said.contains("booting"), "{said}");
    // Two passes are not three: berth holds on, not in service. (Watched for a second.)
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        agent.assert_running("after 2 of 3 passing checks");
        let (_, status) = agent.status();
        assert_eq!(status["in_service"], false, "{status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = agent.get_with("/healthz", &[ELB]).unwrap();
    assert_eq!(code, 200, "check 3: {body}");
    let out = agent.finish(Duration::from_secs(10));
    out.ok();
    assert_eq!(p_container(&b)["State"]["Running"], true);
}

// ---------------------------------------------------------------------------------------------
// 5. In service with a target group: DescribeTargetHealth.

#[test]
fn with_a_target_group_it_waits_until_describe_target_health_says_healthy() {
    let b = Boot::with_state(
        "boot-tghealth",
        json!({"target_health": ["initial", "unhealthy", "healthy"]}),
    );
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let arn = format!(
        "arn:aws:elasticloadbalancing:us-east-1:{ACCOUNT_ID}:targetgroup/web/0123456789abcdef"
    );
    let config = b.config(
        &top,
        &format!(
            "{}[load_balancer]\ntarget_group_arn = \"{arn}\"\nport = 8080\n",
            lifecycle("")
        ),
    );
    let env = aws::aws_env_with_elb_emulated(b.moto, &b.emu);
    let out = run_with_limit(b.agent_cmd(&config, true, &env), RUN_LIMIT);
    out.ok();

    let calls = b.emu.calls();
    let asked: Vec<&Value> = calls
        .iter()
        .filter(|c| c["action"] == "DescribeTargetHealth")
        .collect();
    assert!(
        asked.len() >= 3,
        "berth was in service before the target was healthy: {asked:#?}"
    );
    for c in &asked {
        assert_eq!(c["params"]["TargetGroupArn"], arn.as_str(), "{c}");
        assert_eq!(c["params"]["Targets.member.1.Id"], INSTANCE_ID, "{c}");
    }
    // The instance joins the target group only once the launch hook is completed.
    let done = position(&calls, is_continue).expect("CONTINUE recorded");
    let first_ask = position(&calls, |c| c["action"] == "DescribeTargetHealth").unwrap();
    assert!(done < first_ask, "{calls:#?}");
    assert_eq!(b.completions(), ["CONTINUE"]);
}

// ---------------------------------------------------------------------------------------------
// 6. Warm pool.

#[test]
fn a_warm_pool_instance_pulls_but_starts_nothing_until_it_goes_in_service() {
    let b = Boot::with_state("boot-warm", json!({"lifecycle_state": "Warmed:Stopped"}));
    let registry = Registry::start();
    let reference = registry.push(WEB, "team/web", "w1");
    let _rm = RemoveImage(reference.clone());
    let image = format!("{}/team/web:${{RELEASE}}", registry.addr);
    let top = b.put_release(&web_compose(&image, &[], &patient_healthcheck()), "w1");
    let config = b.config(
        &top,
        &format!("{}{}", lifecycle(""), ecr_registry(&registry.addr)),
    );
    let mut agent = b.spawn(&config, true, &b.aws_env());

    assert_eq!(agent.wait_phase("warmed", 30), 503);
    assert!(
        image_present(&reference),
        "warmed without pulling {reference}"
    );
    assert_eq!(
        b.completions(),
        ["CONTINUE"],
        "the warm-pool launch (Warmed:Pending:Wait) is completed once warmed"
    );
    // berth keeps reading the lifecycle state, and starts nothing meanwhile.
    let state_reads = || {
        b.emu
            .imds_requests()
            .iter()
            .filter(|r| r["path"] == "/latest/meta-data/autoscaling/target-lifecycle-state")
            .count()
    };
    let reads = state_reads();
    assert_eventually!(10, "berth to read the lifecycle state twice more", || {
        assert!(
            b.p.container_ids().is_empty(),
            "a container exists while warmed"
        );
        let status = Agent::probe_healthz(agent.port);
        assert_eq!(status.map(|s| s.1), Some("warmed".to_string()));
        let now = state_reads();
        if now >= reads + 2 {
            Ok(())
        } else {
            Err(format!("{now} reads, {reads} when warmed"))
        }
    });
    assert!(
        b.p.container_ids().is_empty(),
        "a container exists while warmed"
    );

    b.emu.set(json!({"lifecycle_schedule": [[1, "InService"]]}));
    let out = agent.finish(RUN_LIMIT);
    out.ok();
    let c = p_container(&b);
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(c["Config"]["Image"], reference.as_str());
    // Leaving the warm pool, the launch hook pauses the instance again (Pending:Wait): berth
    // completes it once the services are up.
    assert_eq!(
        b.completions(),
        ["CONTINUE", "CONTINUE"],
        "expected a CONTINUE when warmed and another once InService (AWS pauses the launch hook \
         in Warmed:Pending:Wait and again in Pending:Wait)"
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Failures: the exit code, one error line naming the thing, ABANDON where a hook was
// configured and the identity known, and nothing of the project running (checked last, after
// everything else).

/// berth's error: the one line starting with `error:` (and any continuation lines after it).
#[track_caller]
fn error_line(out: &Output) -> String {
    out.error_message(); // exactly one `error:` line, no panic
    let start = if out.stderr.starts_with("error:") {
        0
    } else {
        out.stderr.find("\nerror:").unwrap() + 1
    };
    out.stderr[start..].trim_end().to_string()
}

#[track_caller]
fn assert_boot_failed(b: &Boot, out: &Output, code: i32, names: &[&str], abandon: bool) -> String {
    out.expect_code(code);
    let msg = error_line(out);
    for n in names {
        assert!(msg.contains(n), "the error should name {n:?}:\n{msg}");
    }
    let expected: &[&str] = if abandon { &["ABANDON"] } else { &[] };
    assert_eq!(b.completions(), expected, "CompleteLifecycleAction calls");
    b.assert_no_secret("berth's stdout", &out.stdout);
    b.assert_no_secret("berth's stderr", &out.stderr);
    msg
}

/// `b.aws_env()` with S3 behind `faulty`.
fn env_with_s3_at(b: &Boot, faulty: &Faulty) -> Vec<(String, String)> {
    let mut env = b.aws_env();
    env.push(("AWS_ENDPOINT_URL_S3".to_string(), faulty.url.clone()));
    env
}

#[test]
fn every_s3_request_names_the_instances_account_as_the_buckets_owner() {
    let b = Boot::new("boot-owner");
    let top = b.put_release(&web_compose(WEB, &[], &patient_healthcheck()), "1");
    // Boots once through a recording front of moto; every S3 request must name `owner`.
    let boot_expecting = |config: &Path, owner: &str| {
        let faulty = Faulty::start(b.moto.port, 0, Duration::ZERO);
        let out = run_with_limit(
            b.agent_cmd(config, true, &env_with_s3_at(&b, &faulty)),
            RUN_LIMIT,
        );
        out.ok();
        let heads = faulty.heads.lock().unwrap().clone();
        assert!(heads.len() >= 2, "{heads:?}");
        let header = format!("x-amz-expected-bucket-owner: {owner}\r\n");
        for head in &heads {
            assert!(head.to_ascii_lowercase().contains(&header), "{head}");
        }
    };
    // The IMDS stand-in's identity document says account 123456789012.
    boot_expecting(&b.config(&top, ""), ACCOUNT_ID);
    // berth.toml's bucket_owner wins. S3 refuses a bucket another account owns (moto does not
    // check the header, so this shows what berth sends).
    let config = b.config(&top, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("bucket_owner = \"210987654321\"\n{text}")).unwrap();
    boot_expecting(&config, "210987654321");
}

#[test]
fn s3_answering_500_then_recovering_still_boots() {
    let b = Boot::new("boot-s3-500");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    // Two 500s, then S3 answers: the SDK's retries (4 attempts, with backoff) carry the boot.
    let faulty = Faulty::start(b.moto.port, 2, Duration::ZERO);
    let out = run_with_limit(
        b.agent_cmd(&config, true, &env_with_s3_at(&b, &faulty)),
        RUN_LIMIT,
    );
    out.ok();
    assert!(
        faulty.count() >= 4,
        "{} requests reached S3",
        faulty.count()
    );
    assert_eq!(b.completions(), ["CONTINUE"]);
    b.assert_no_secret("berth's stderr", &out.stderr);
}

#[test]
fn s3_slower_than_fetch_secs_fails_naming_the_object_and_abandons() {
    let b = Boot::new("boot-s3-slow");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    // fetch_secs = 2: each S3 answer takes 3 s.
    let config = b.config(
        &top,
        &format!(
            "{}[timeouts]\nimds_secs = 3\nfetch_secs = 2\nready_secs = 8\nin_service_secs = 8\n",
            lifecycle("")
        ),
    );
    let faulty = Faulty::start(b.moto.port, 0, Duration::from_secs(3));
    let started = Instant::now();
    let out = run_with_limit(
        b.agent_cmd(&config, true, &env_with_s3_at(&b, &faulty)),
        RUN_LIMIT,
    );
    let msg = assert_boot_failed(&b, &out, 6, &["s3://"], true);
    assert!(
        msg.contains("compose.yaml") || msg.contains("app.env"),
        "the error names the object: {msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "fetch_secs bounds the wait: {:?}",
        started.elapsed()
    );
    assert!(b.p.container_ids().is_empty(), "a container was created");
}

#[test]
fn an_ecr_token_expiring_while_holding_is_renewed_before_the_next_pull() {
    // ECR at the emulator: tokens that last 15 min and 3 s, so that berth's cache (renewing 15
    // min before the expiry) holds one for 3 s.
    let password = format!("emu-{}", random_hex());
    let b = Boot::with_state(
        "boot-ecr-expiry",
        json!({"ecr_password": password, "ecr_token_secs": 15 * 60 + 3}),
    );
    let registry = Registry::start_with_password(&password);
    let r1 = registry.push(WEB, "team/web", "r1");
    let _rm1 = RemoveImage(r1);
    let image = format!("{}/team/web:${{RELEASE}}", registry.addr);
    let top = b.put_release(&web_compose(&image, &[], &patient_healthcheck()), "r1");
    let config = b.config(
        &top,
        &format!("{}{}", lifecycle(""), ecr_registry(&registry.addr)),
    );
    let mut env = b.aws_env();
    env.push(("AWS_ENDPOINT_URL_ECR".to_string(), b.emu.url.clone()));
    let mut agent = b.spawn(&config, false, &env);
    agent.wait_phase("ready", 30);
    // Holding, the pointer read once more (a moved one would be upgraded to by the agent
    // itself, and this test's upgrade refused as busy).
    eventually(
        "the agent to read the pointer once more",
        Duration::from_secs(30),
        || {
            let log = agent.stderr();
            match log.contains("read once more") {
                true => Ok(()),
                false => Err(log),
            }
        },
    );
    let tokens = || b.emu.calls_of("GetAuthorizationToken").len();
    assert_eq!(tokens(), 1, "the boot's pull asked for one token");

    // The cached token runs out while the agent holds; then a release with a new image.
    let issued = Instant::now();
    let r2 = registry.push(WEB, "team/web", "r2");
    let _rm2 = RemoveImage(r2.clone());
    aws::block_on(aws::put_parameter(b.moto, &b.param("release"), "r2"));
    std::thread::sleep(Duration::from_secs(4).saturating_sub(issued.elapsed()));
    let out = run_with_limit(
        b.command(&["upgrade", "--config", config.to_str().unwrap()], &env),
        RUN_LIMIT,
    );
    assert_eq!(
        out.code,
        0,
        "{}\n--- the agent's log\n{}",
        out.stderr,
        agent.stderr()
    );
    assert_eq!(
        tokens(),
        2,
        "the expired token was renewed for the upgrade's pull"
    );
    assert!(image_present(&r2), "{r2} was not pulled");
    agent.assert_running("after the upgrade");
}

#[test]
fn missing_s3_key_fails_naming_it_and_abandons() {
    let b = Boot::new("boot-nokey");
    b.put("app.env", &b.env_file());
    aws::block_on(aws::put_parameter(b.moto, &b.param("release"), "1"));
    // compose.yaml is not in the bucket.
    let config = b.config(&b.release_lines(), &lifecycle(""));
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 6, &[&b.s3("compose.yaml")], true);
    assert_contains(&msg, "NoSuchKey");
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn wrong_registry_password_fails_naming_the_image_and_abandons() {
    let b = Boot::new("boot-badpw");
    let registry = Registry::start_with_password("not-the-ecr-token");
    let reference = registry.push(WEB, "team/web", "r1");
    let _rm = RemoveImage(reference.clone());
    let image = format!("{}/team/web:${{RELEASE}}", registry.addr);
    let top = b.put_release(&web_compose(&image, &[], &patient_healthcheck()), "r1");
    let config = b.config(
        &top,
        &format!("{}{}", lifecycle(""), ecr_registry(&registry.addr)),
    );
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 5, &[&reference], true);
    assert!(
        msg.contains("unauthorized")
            || msg.contains("authentication required")
            || msg.contains("no basic auth"),
        "the error should carry the registry's answer:\n{msg}"
    );
    assert!(!msg.contains("auth-token"), "the token leaked: {msg}");
    assert!(!image_present(&reference));
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn missing_image_tag_fails_naming_the_image_and_abandons() {
    let b = Boot::new("boot-notag");
    let registry = Registry::start();
    let pushed = registry.push(WEB, "team/web", "r1");
    let _rm = RemoveImage(pushed);
    let image = format!("{}/team/web:${{RELEASE}}", registry.addr);
    let top = b.put_release(&web_compose(&image, &[], &patient_healthcheck()), "r2");
    let config = b.config(
        &top,
        &format!("{}{}", lifecycle(""), ecr_registry(&registry.addr)),
    );
    let out = b.boot_once(&config);
    let missing = format!("{}/team/web:r2", registry.addr);
    let _rm2 = RemoveImage(missing.clone());
    let msg = assert_boot_failed(&b, &out, 5, &[&missing], true);
    assert!(
        msg.contains("manifest unknown") || msg.contains("not found"),
        "the error should carry the registry's answer:\n{msg}"
    );
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn imds_down_fails_naming_the_endpoint_without_any_aws_call() {
    let b = Boot::with_state("boot-imdsdown", json!({"fail": "imds_down"}));
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 6, &[&b.emu.url], false);
    assert_contains(&msg, "instance metadata");
    assert!(!b.emu.imds_requests().is_empty(), "IMDS was never tried");
    assert_eq!(
        b.emu.calls(),
        Vec::<Value>::new(),
        "no AWS call without an identity"
    );
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn imds_throttling_then_answering_still_boots() {
    // IMDS answers 429 (throttled) to the first 3 requests, then normally.
    let b = Boot::with_state("boot-imds429", json!({"fail": "imds_429", "fail_times": 3}));
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    let out = b.boot_once(&config);
    out.ok();
    let throttled = b
        .emu
        .imds_requests()
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert_eq!(throttled, 3, "{:?}", b.emu.imds_requests());
    assert_eq!(b.completions(), ["CONTINUE"]);
}

#[test]
fn imds_timing_out_fails_within_imds_secs_naming_the_endpoint() {
    // Every IMDS answer takes 5 s, past the SDK's 1 s timeout; imds_secs = 3 bounds the retries.
    let b = Boot::with_state("boot-imdsslow", json!({"fail": "imds_slow"}));
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    let started = Instant::now();
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 6, &[&b.emu.url], false);
    assert_contains(&msg, "instance metadata");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "imds_secs bounds the wait: {:?}",
        started.elapsed()
    );
    assert!(b.p.container_ids().is_empty(), "a container was created");
}

/// A small tmpfs mounted at a directory for as long as it lives (unmounted even after a panic).
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    /// Mounts a 64 KiB tmpfs at `dir` and fills it.
    fn full(dir: &Path) -> SmallTmpfs {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount tmpfs at {}: {status}",
            dir.display()
        );
        let fill = std::fs::write(dir.join("filler"), vec![0u8; 1024 * 1024]);
        assert!(fill.is_err(), "a 1 MiB file fitted in the 64 KiB tmpfs");
        SmallTmpfs(dir.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_run_dir_fails_the_boot_naming_the_file_and_abandons() {
    let b = Boot::new("boot-runfull");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    let _full = SmallTmpfs::full(b.run_dir.path());
    let out = b.boot_once(&config);
    let run_dir = b.run_dir.path().display().to_string();
    // 3: a setting (run_dir) cannot be used; no AWS call failed.
    let msg = assert_boot_failed(&b, &out, 3, &[&run_dir], true);
    assert!(msg.contains("No space left"), "{msg}");
    assert!(b.p.container_ids().is_empty(), "a container was created");
}

#[test]
fn invalid_config_fails_naming_the_key_before_any_aws_call() {
    let b = Boot::new("boot-badconfig");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&format!("{top}bogus_key = 1\n"), &lifecycle(""));
    let out = b.boot_once(&config);
    assert_boot_failed(&b, &out, 3, &["bogus_key"], false);

    let config = b.config(
        &top.replace(&b.s3("compose.yaml"), "s3://bucket-only"),
        &lifecycle(""),
    );
    let out = b.boot_once(&config);
    assert_boot_failed(&b, &out, 3, &["`compose`", "bucket-only"], false);

    assert_eq!(b.emu.calls(), Vec::<Value>::new());
    assert_eq!(b.emu.imds_requests(), Vec::<Value>::new());
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn health_never_passing_fails_naming_the_service_and_abandons_its_output_left_with_docker() {
    let b = Boot::new("boot-unhealthy");
    let top = b.put_release(
        &web_compose(
            "berth-test/web:${RELEASE}",
            &[("HEALTHY", "0")],
            &strict_healthcheck(),
        ),
        "1",
    );
    let config = b.config(
        &top,
        &format!(
            "{}[timeouts]\nimds_secs = 3\nfetch_secs = 5\nready_secs = 4\nin_service_secs = 8\n",
            lifecycle("")
        ),
    );
    let mut agent = b.spawn(&config, true, &b.aws_env());
    let mut phases: Vec<String> = Vec::new();
    let out = agent.finish_with(RUN_LIMIT, |a| {
        if let Some((_, phase)) = a.healthz() {
            if phases.last() != Some(&phase) {
                phases.push(phase);
            }
        }
    });
    assert!(
        !phases.iter().any(|p| p == "ready"),
        "/healthz said ready: {phases:?}"
    );
    let msg = assert_boot_failed(&b, &out, 1, &["service web", "healthcheck"], true);
    assert!(
        msg.contains("unhealthy") || msg.contains("healthy within"),
        "{msg}"
    );
    // The healthcheck's output (busybox wget's 404) stays with Docker: neither the error that
    // /status, STATUS= and SSM's output carry nor the journal has it; the log says where.
    assert!(!msg.contains("server returned error"), "{msg}");
    assert!(
        !out.stderr.contains("server returned error"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("json .State.Health"), "{}", out.stderr);
    // ABANDONed: the group replaces this instance; nothing of the failed release serves on.
    b.assert_nothing_running();
}

#[test]
fn missing_ssm_parameter_fails_naming_it_and_abandons() {
    let b = Boot::new("boot-noparam");
    b.put(
        "compose.yaml",
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
    );
    b.put("app.env", &b.env_file());
    // The release parameter is not in SSM.
    let config = b.config(&b.release_lines(), &lifecycle(""));
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 6, &[&b.param("release")], true);
    assert_contains(&msg, "ParameterNotFound");
    assert!(b.p.container_ids().is_empty(), "a container was created");
    b.assert_nothing_running();
}

#[test]
fn a_release_pointer_that_holds_no_release_id_fails_naming_it_and_abandons() {
    let b = Boot::new("boot-badpointer");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    // Someone wrote shell into the parameter: it must reach neither interpolation nor a name.
    aws::block_on(aws::put_parameter(
        b.moto,
        &b.param("release"),
        "1; rm -rf /",
    ));
    let config = b.config(&top, &lifecycle(""));
    let out = b.boot_once(&config);
    let msg = assert_boot_failed(&b, &out, 3, &[&b.param("release")], true);
    assert_contains(&msg, "\"1; rm -rf /\", which is not a release id");
    assert!(b.p.container_ids().is_empty(), "a container was created");
}

// ---------------------------------------------------------------------------------------------
// 8. IMDSv2 only.

#[test]
fn every_metadata_request_carries_an_imdsv2_token() {
    let b = Boot::new("boot-imdsv2");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, &lifecycle(""));
    // As on an instance: credentials and region from IMDS too.
    let env = aws::aws_env_instance_profile(b.moto, &b.emu);
    run_with_limit(b.agent_cmd(&config, true, &env), RUN_LIMIT).ok();
    assert_eq!(b.completions(), ["CONTINUE"]);

    let requests = b.emu.imds_requests();
    let gets: Vec<&Value> = requests.iter().filter(|r| r["method"] == "GET").collect();
    assert!(
        gets.iter()
            .any(|r| r["path"] == "/latest/meta-data/instance-id"),
        "{requests:#?}"
    );
    assert!(
        gets.iter().any(|r| r["path"]
            .as_str()
            .unwrap_or("")
            .starts_with("/latest/meta-data/iam/security-credentials")),
        "credentials did not come from IMDS: {requests:#?}"
    );
    for r in &requests {
        match r["method"].as_str() {
            Some("GET") => assert_eq!(r["token"], true, "an IMDSv1 request: {r}"),
            Some("PUT") => assert_eq!(r["path"], "/latest/api/token", "{r}"),
            _ => panic!("unexpected IMDS request {r}"),
        }
        assert_ne!(r["status"], 401, "{r}");
    }
    assert!(requests.iter().any(|r| r["method"] == "PUT"));
}

// ---------------------------------------------------------------------------------------------
// 9. sd_notify.

#[test]
fn tells_systemd_its_phases_and_when_it_is_ready() {
    let b = Boot::new("boot-notify");
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(&top, "");
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).to_string()),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        if stop.load(Ordering::SeqCst) {
                            return got;
                        }
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
        })
    };
    let mut cmd = b.agent_cmd(&config, true, &b.aws_env());
    cmd.env("NOTIFY_SOCKET", &sock_path);
    let out = run_with_limit(cmd, RUN_LIMIT);
    stop.store(true, Ordering::SeqCst);
    let datagrams = reader.join().unwrap();
    out.ok();

    let lines: Vec<&str> = datagrams
        .iter()
        .flat_map(|d| d.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let at = |line: &str| {
        lines
            .iter()
            .position(|l| *l == line)
            .unwrap_or_else(|| panic!("no {line} among the notifications: {lines:?}"))
    };
    let fetching = at("STATUS=fetching");
    let ready = at("READY=1");
    at("STATUS=ready");
    assert!(fetching < ready, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("STATUS=") || *l == "READY=1"),
        "{lines:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 10. A local run.

#[test]
fn local_run_plans_then_boots_from_local_files_without_imds_or_aws() {
    let b = Boot::new("boot-local");
    let compose = b.p.write(
        "stack/compose.yaml",
        &web_compose(WEB, &[], &patient_healthcheck()),
    );
    let envf = b.p.write("stack/app.env", &b.env_file());
    let config = b.p.write(
        "berth.toml",
        &format!(
            "project = \"{}\"\nlocal = true\nrun_dir = \"{}\"\nstate_dir = \"{}\"\ncompose = \"{}\"\nenv_files = [\"{}\"]\n\n[health]\nlisten = \"127.0.0.1:{}\"\n\n{TIMEOUTS}",
            b.p.name,
            b.run_dir.path().display(),
            b.state_dir.path().display(),
            compose.display(),
            envf.display(),
            b.health_port
        ),
    );
    // Anything reaching for IMDS would connect here.
    let imds = TcpListener::bind("127.0.0.1:0").unwrap();
    imds.set_nonblocking(true).unwrap();
    let imds_url = format!("http://{}", imds.local_addr().unwrap());
    let env = vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(), imds_url)];
    let config_s = config.to_str().unwrap();

    let plan = run_with_limit(
        b.command(&["plan", "--config", config_s, "--local"], &env),
        RUN_LIMIT,
    );
    plan.ok();
    let line = plan
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(b.p.container_name("web").as_str()))
        .unwrap_or_else(|| panic!("no line for the container in the plan:\n{}", plan.stdout));
    assert_eq!(line.split_whitespace().nth(2), Some("create"), "{line}");
    assert!(b.p.container_ids().is_empty(), "plan created a container");
    assert!(
        !network_exists(&format!("{}_default", b.p.name)),
        "plan created a network"
    );

    let out = run_with_limit(
        b.command(&["agent", "--config", config_s, "--local", "--once"], &env),
        RUN_LIMIT,
    );
    out.ok();
    let c = p_container(&b);
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(c["Config"]["Image"], WEB);
    assert_eq!(env_of(&c).get("DB_PASSWORD"), Some(&b.secret));
    b.assert_no_secret("berth's stderr", &out.stderr);

    match imds.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a local run connected to the IMDS endpoint: {other:?}"),
    }
    // Nothing left to do: the plan now keeps the container.
    let plan = run_with_limit(
        b.command(&["plan", "--config", config_s, "--local"], &env),
        RUN_LIMIT,
    );
    plan.ok();
    assert_contains(&plan.stdout, "nothing to do");
}

// ---------------------------------------------------------------------------------------------
// The host policy: a compose file from S3 is input, berth.toml's [policy] decides.

#[test]
fn a_hostile_compose_file_from_s3_is_refused_before_anything_runs_naming_field_and_key() {
    let b = Boot::new("boot-hostile");
    // Each asks the host for something the default policy refuses: the field it names and
    // the key that would allow it (or that none does).
    let other_param = format!("/{}-other/db", b.p.name);
    aws::block_on(aws::put_secure_parameter(b.moto, &other_param, "pw-other"));
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "    privileged: true\n".into(),
            "services.web.privileged",
            "`privileged = true`",
        ),
        (
            "    cap_add: [SYS_ADMIN]\n".into(),
            "services.web.cap_add",
            "`cap_add = [\"SYS_ADMIN\"]`",
        ),
        (
            "    security_opt: [\"seccomp:unconfined\"]\n".into(),
            "services.web.security_opt",
            "security_opt = ",
        ),
        (
            "    volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]\n".into(),
            "services.web.volumes",
            "no policy allows it",
        ),
        (
            "    volumes: [\"/:/host\"]\n".into(),
            "services.web.volumes",
            "no policy allows it",
        ),
        (
            "    env_file: [app.env, /etc/shadow]\n".into(),
            "services.web.env_file",
            "no policy allows it",
        ),
        (
            format!("    secrets: [pw]\nsecrets:\n  pw:\n    file: ssm:{other_param}\n"),
            "secrets/configs file",
            "`sources = [\"ssm:/",
        ),
    ];
    for (i, (extra, field, allow)) in cases.into_iter().enumerate() {
        let mut compose = web_compose(WEB, &[], &patient_healthcheck());
        // An env_file line of its own replaces the one web_compose writes.
        if extra.contains("env_file") {
            compose = compose.replace("    env_file: [app.env]\n", "");
        }
        compose.push_str(&extra);
        let top = b.put_release(&compose, "1");
        let config = b.config(&top, &lifecycle(""));
        let out = b.boot_once(&config);
        out.expect_code(3);
        let msg = error_line(&out);
        for name in [field, allow, "the host policy ([policy] of "] {
            assert!(msg.contains(name), "the error should name {name:?}:\n{msg}");
        }
        assert!(!out.stderr.contains("pw-other"), "{}", out.stderr);
        b.assert_no_secret("berth's stderr", &out.stderr);
        // Each boot gave the instance up (one ABANDON each), and created nothing.
        assert_eq!(b.completions(), vec!["ABANDON"; i + 1], "{field}");
        assert!(
            b.p.container_ids().is_empty(),
            "{field}: a container was created"
        );
    }
    // A registry the policy does not name.
    let top = b.put_release(&web_compose(WEB, &[], &patient_healthcheck()), "1");
    let config = b.config(
        &top,
        &format!(
            "{}\n[policy]\nregistries = [\"*.dkr.ecr.us-east-1.amazonaws.com\"]\n",
            lifecycle("")
        ),
    );
    let out = b.boot_once(&config);
    out.expect_code(3);
    let msg = error_line(&out);
    for name in ["services.web.image", "`registries = [\"docker.io\"]`"] {
        assert!(msg.contains(name), "the error should name {name:?}:\n{msg}");
    }
    assert!(b.p.container_ids().is_empty());
}

#[test]
fn what_the_policy_allows_runs() {
    let b = Boot::new("boot-allowed");
    let shared = tempfile::tempdir().unwrap();
    std::fs::write(shared.path().join("hello"), "from the host").unwrap();
    let mut compose = web_compose(WEB, &[], &patient_healthcheck());
    compose.push_str(&format!(
        "    cap_add: [NET_ADMIN]\n    volumes: [\"{}:/shared:ro\", \"./data:/data\"]\n",
        shared.path().display()
    ));
    let top = b.put_release(&compose, "1");
    let policy = format!(
        "\n[policy]\ncap_add = [\"NET_ADMIN\"]\nbind_prefixes = [\"{}\"]\nregistries = [\"docker.io\"]\n",
        shared.path().display()
    );
    let config = b.config(&top, &format!("{}{policy}", lifecycle("")));
    let out = b.boot_once(&config);
    out.ok();
    assert_eq!(b.completions(), ["CONTINUE"]);
    let c = p_container(&b);
    assert_eq!(c["HostConfig"]["CapAdd"], json!(["NET_ADMIN"]));
    let id = c["Id"].as_str().unwrap();
    assert_eq!(
        docker(&["exec", id, "cat", "/shared/hello"]).trim(),
        "from the host"
    );
    // The data directory landed in the project directory, under the state directory.
    let data = b
        .state_dir
        .path()
        .join("projects")
        .join(&b.p.name)
        .join("data");
    assert!(data.is_dir(), "{}", data.display());
}

// ---------------------------------------------------------------------------------------------
// The health port under abuse: an app container (or anything in the VPC) holding connections.

/// The Docker bridge's gateway: the host as a container on the default network reaches it.
fn bridge_gateway() -> String {
    let net = inspect_network("bridge");
    net["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .unwrap_or("172.17.0.1")
        .to_string()
}

/// The agent's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn the_health_port_answers_within_a_second_while_a_container_holds_2000_connections() {
    let b = Boot::new("boot-abuse");
    let top = b.put_release(&web_compose(WEB, &[], &patient_healthcheck()), "1");
    let config = b.config(&top, "");
    // On every address, as on an instance: the container reaches it through the bridge.
    let text = std::fs::read_to_string(&config).unwrap();
    let local = format!("listen = \"127.0.0.1:{}\"", b.health_port);
    assert!(text.contains(&local), "{text}");
    std::fs::write(
        &config,
        text.replace(&local, &format!("listen = \"0.0.0.0:{}\"", b.health_port)),
    )
    .unwrap();
    let mut agent = b.spawn(&config, false, &b.aws_env());
    agent.wait_phase("ready", 30);
    let pid = agent.child.id();
    let gateway = bridge_gateway();
    let port = b.health_port;

    // Another container, before: /healthz answers it, /status and /metrics do not.
    // (busybox's static wget crashes on a bridge address here; nc speaks HTTP/1.0 enough.)
    let probe = |path: &str| {
        // stdin held open a while: busybox nc stops reading once its stdin ends, which could
        // be before the answer arrives.
        let request = format!(
            "(printf 'GET {path} HTTP/1.0\\r\\n\\r\\n'; sleep 2) | nc -w 5 {gateway} {port}"
        );
        let out = docker_try(&["run", "--rm", TOOL, "sh", "-c", &request]);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.stdout
    };
    let health = probe("/healthz");
    assert!(health.starts_with("HTTP/1.0 200"), "{health}");
    assert_contains(&health, "\"phase\":\"ready\"");
    for path in ["/status", "/metrics"] {
        let answer = probe(path);
        assert!(
            answer.starts_with("HTTP/1.0 403"),
            "{path} answered a container: {answer}"
        );
        assert!(!answer.contains(&b.p.name), "{answer}");
    }
    let fds_before = open_fds(pid);

    // 2,000 clients that connect, send nothing, and connect again whenever closed.
    let script = format!(
        "i=0; while [ $i -lt 2000 ]; do (while true; do sleep 60 | nc {gateway} {port}; sleep 1; done) & i=$((i+1)); done; wait"
    );
    let name = format!("{}-abuser", b.p.name);
    docker(&[
        "run", "-d", "--rm", "--name", &name, TOOL, "sh", "-c", &script,
    ]);
    struct Kill(String);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = docker_try(&["rm", "-f", &self.0]);
        }
    }
    let _kill = Kill(name);

    // 12 s: through two header timeouts of the held ones, with the rest reconnecting.
    let start = Instant::now();
    let (mut slowest, mut looks, mut max_fds) = (Duration::ZERO, 0, 0);
    while start.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        let (code, body) = agent.get("/healthz").unwrap();
        let took = t.elapsed();
        assert_eq!(code, 200, "{body}");
        slowest = slowest.max(took);
        looks += 1;
        max_fds = max_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(200));
    }
    let held = docker(&["exec", &_kill.0, "sh", "-c", "ps | grep -c '[n]c '"]);
    eprintln!(
        "health port under abuse: {looks} looks, slowest {slowest:?}, agent fds {fds_before} before, at most {max_fds} during; nc processes in the container: {}",
        held.trim()
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a /healthz took {slowest:?}"
    );
    assert!(
        held.trim().parse::<usize>().unwrap_or(0) >= 1000,
        "the container did not hold its connections open: {held}"
    );
    // The source's share, not its 2,000: the cap (16 from one source) holds the descriptors.
    assert!(
        max_fds < fds_before + 64,
        "the agent held {max_fds} descriptors ({fds_before} before)"
    );
    agent.assert_running("after the abuse");
}

// ---------------------------------------------------------------------------------------------
// Leaving: scale-in and spot interruptions, as IMDS announces them.

const TERMINATE_HOOK: &str = "berth-terminate";

/// Boots and holds with a terminate hook configured; returns once in service.
fn boot_and_hold(b: &Boot) -> Agent {
    let top = b.put_release(
        &web_compose("berth-test/web:${RELEASE}", &[], &patient_healthcheck()),
        "1",
    );
    let config = b.config(
        &top,
        &lifecycle(&format!("terminate_hook = \"{TERMINATE_HOOK}\"\n")),
    );
    let mut agent = b.spawn(&config, false, &b.aws_env());
    agent.wait_phase("ready", 30);
    // The launch hook is completed just after `ready`.
    b.emu
        .wait_for_calls("CompleteLifecycleAction", 1, Duration::from_secs(10));
    assert_eq!(b.completions(), vec!["CONTINUE".to_string()]);
    assert_eq!(p_container(b)["State"]["Running"], true);
    agent
}

#[test]
fn scale_in_drains_stops_the_services_and_completes_the_terminate_hook() {
    let b = Boot::new("boot-scalein");
    let mut agent = boot_and_hold(&b);
    b.emu.set(json!({"lifecycle_state": "Terminated"}));
    let out = agent.leave_then_stop();
    assert!(
        out.stderr.contains("the group is scaling this instance in"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("leaving: draining"), "{}", out.stderr);
    assert_eq!(
        p_container(&b)["State"]["Running"],
        false,
        "stopped, gracefully"
    );
    let done = b
        .emu
        .wait_for_calls("CompleteLifecycleAction", 2, Duration::from_secs(5));
    let last = done.last().unwrap();
    assert_eq!(
        last["params"]["LifecycleHookName"], TERMINATE_HOOK,
        "{last}"
    );
    assert_eq!(
        last["params"]["LifecycleActionResult"], "CONTINUE",
        "{last}"
    );
    assert_eq!(last["params"]["InstanceId"], INSTANCE_ID, "{last}");
}

#[test]
fn a_spot_interruption_notice_drains_and_stops_the_services() {
    let b = Boot::new("boot-spot");
    let mut agent = boot_and_hold(&b);
    b.emu.set(json!({"spot_action": {"action": "terminate"}}));
    let out = agent.leave_then_stop();
    assert!(
        out.stderr.contains("spot interruption notice"),
        "{}",
        out.stderr
    );
    assert_eq!(p_container(&b)["State"]["Running"], false);
    // A spot interruption is not the group's scale-in: no terminate hook to complete.
    assert_eq!(b.completions(), vec!["CONTINUE".to_string()]);
}
