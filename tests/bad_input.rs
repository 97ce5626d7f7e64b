//! Bad input: every case fails with the documented exit code and one readable message naming
//! what is wrong (file, `services.x.field` path, service, image, port, socket), and leaves the
//! containers that were already running under the same project name running, untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;

use common::*;

/// A container that was running before the bad run: (id, StartedAt).
type Before = Vec<(String, String)>;

/// A compose file of one service `web` running WEB; `rest` follows (see [`one_service`]).
fn web(rest: &str) -> String {
    one_service("web", WEB, rest)
}

/// `web` with the healthcheck the tests give it (every second); `rest` follows.
fn healthchecked_web(rest: &str) -> String {
    web(&format!(
        "    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 1s\n{rest}"
    ))
}

/// The project's only container, which runs: what the bad run must leave alone.
#[track_caller]
fn the_one_running(p: &Project) -> Before {
    let snap = p.snapshot();
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert!(snap[0].1, "it runs: {snap:?}");
    snap.into_iter().map(|(id, _, s)| (id, s)).collect()
}

/// Starts a good project (service `keeper`, from good.yaml) under the project's name, so that
/// the bad run has something to leave alone. Returns what runs.
fn running_first(p: &Project) -> Before {
    let good = p.write("good.yaml", &one_service("keeper", TOOL, ""));
    p.cmd_file("up", &good)
        .args(&["-q", "--wait-timeout", "60"])
        .run()
        .ok();
    the_one_running(p)
}

/// A service already running under the project, to be changed by the bad run.
fn running_web(p: &Project) -> Before {
    p.compose(&healthchecked_web(""));
    p.up();
    the_one_running(p)
}

/// What ran before still runs: same containers, never restarted.
#[track_caller]
fn assert_still_running(before: &Before) {
    for (id, started) in before {
        assert!(
            container_exists(id),
            "container {id}, running before the bad run, is gone"
        );
        let c = inspect(id);
        assert_eq!(
            c["State"]["Running"], true,
            "container {id} was stopped: {}",
            c["State"]
        );
        assert_eq!(
            c["State"]["StartedAt"].as_str(),
            Some(started.as_str()),
            "container {id} was restarted"
        );
    }
}

/// Only the containers that ran before belong to the project: the bad run created nothing.
#[track_caller]
fn assert_nothing_created(p: &Project, before: &Before) {
    let mut want: Vec<String> = before.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(p.container_ids(), want, "the bad run created containers");
}

/// `berth up -q` of compose.yaml under the project's name, waiting up to `wait` seconds.
fn bad_up_within(p: &Project, wait: &str) -> Output {
    p.cmd("up").args(&["-q", "--wait-timeout", wait]).run()
}

/// `berth up -q` of compose.yaml under the project's name.
fn bad_up(p: &Project) -> Output {
    bad_up_within(p, "30")
}

/// The readable message: one `error:` line, no Rust debug output.
#[track_caller]
fn message(out: &Output, code: i32) -> String {
    out.expect_code(code);
    let msg = out.error_message();
    for noise in ["kind: ", "Error {", "Os {", "Some(", "\\n"] {
        assert!(
            !msg.contains(noise),
            "message has debug output ({noise:?}):\n{msg}"
        );
    }
    msg
}

/// `msg` contains every one of `needles`.
#[track_caller]
fn assert_names(msg: &str, needles: &[&str]) {
    for needle in needles {
        assert_contains(msg, needle);
    }
}

/// The bad run `out` failed with `code` and one readable message, left what ran `before`
/// running and created nothing. Returns the message.
#[track_caller]
fn rejected(p: &Project, before: &Before, out: &Output, code: i32) -> String {
    let msg = message(out, code);
    assert_still_running(before);
    assert_nothing_created(p, before);
    msg
}

/// The usual case: with the keeper running, `berth up -q` of `compose` is [`rejected`] with
/// `code` and a message naming every one of `needles`. Returns the project and the message, for
/// the test's own checks.
#[track_caller]
fn rejects(test: &str, compose: &str, code: i32, needles: &[&str]) -> (Project, String) {
    let p = Project::new(test);
    let before = running_first(&p);
    p.compose(compose);
    let msg = rejected(&p, &before, &bad_up(&p), code);
    assert_names(&msg, needles);
    (p, msg)
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let (p, msg) = rejects(
        "malformed_yaml",
        &web("    command: a: b\n"),
        3,
        &["line 4"],
    );
    assert_contains(&msg, p.path("compose.yaml").to_str().unwrap());
}

#[test]
fn unknown_service_in_depends_on() {
    rejects(
        "unknown_dependency",
        &web("    depends_on: [nosuchservice]\n"),
        3,
        &["web", "nosuchservice"],
    );
}

#[test]
fn dependency_cycle_is_shown() {
    let compose = format!(
        r#"
services:
  a:
    image: {TOOL}
    depends_on: [b]
  b:
    image: {TOOL}
    depends_on: [c]
  c:
    image: {TOOL}
    depends_on: [a]
"#
    );
    rejects(
        "dependency_cycle",
        &compose,
        3,
        &["cycle", "a -> b -> c -> a"],
    );
}

#[test]
fn required_variable_unset_names_it_and_its_message() {
    let p = Project::new("required_variable");
    let before = running_first(&p);
    p.compose("services:\n  web:\n    image: ${WEB_IMAGE:?set WEB_IMAGE to the image to run}\n");
    let out = p
        .cmd("up")
        .args(&["-q", "--wait-timeout", "30"])
        .env_remove("WEB_IMAGE")
        .run();
    let msg = rejected(&p, &before, &out, 3);
    assert_names(
        &msg,
        &[
            "WEB_IMAGE",
            "set WEB_IMAGE to the image to run",
            "services.web.image",
        ],
    );
}

#[test]
fn invalid_interpolation_syntax() {
    rejects(
        "invalid_interpolation",
        &web("    environment:\n      A: \"${X\"\n"),
        3,
        &["services.web.environment.A", "invalid interpolation", "${X"],
    );
}

#[test]
fn missing_required_env_file_names_the_path() {
    let (p, msg) = rejects(
        "missing_env_file",
        &web("    env_file: config/missing.env\n"),
        3,
        &["services.web.env_file"],
    );
    assert_contains(&msg, p.path("config/missing.env").to_str().unwrap());
}

#[test]
fn bad_port_string_names_the_field() {
    rejects(
        "bad_port",
        &web("    ports:\n      - \"127.0.0.1:8080:8080\"\n      - \"http:8080\"\n"),
        3,
        &["services.web.ports[1]", "http"],
    );
}

#[test]
fn undeclared_named_volume() {
    let (p, _) = rejects(
        "undeclared_volume",
        &web("    volumes: [\"appdata:/data\"]\n"),
        3,
        &["services.web.volumes[0]", "appdata"],
    );
    assert!(!volume_exists(&format!("{}_appdata", p.name)));
}

#[test]
fn service_healthy_on_a_service_without_healthcheck() {
    let compose = format!(
        r#"
services:
  db:
    image: {WEB}
  app:
    image: {TOOL}
    depends_on:
      db:
        condition: service_healthy
"#
    );
    rejects("no_healthcheck", &compose, 3, &["db", "app", "healthcheck"]);
}

#[test]
fn build_without_image() {
    rejects(
        "build_only",
        "services:\n  web:\n    build: .\n",
        3,
        &["services.web.build"],
    );
}

#[test]
fn image_missing_locally_and_in_its_registry() {
    let image = "127.0.0.1:1/nope:1";
    rejects(
        "image_missing",
        &one_service("web", image, ""),
        5,
        &[image, "web"],
    );
}

#[test]
fn pull_policy_never_with_a_missing_image() {
    let image = format!("{}:1", unique_name("pull_never-absent"));
    rejects(
        "pull_never",
        &one_service("web", &image, "    pull_policy: never\n"),
        5,
        &[&image, "never"],
    );
}

#[test]
fn host_port_already_taken() {
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    rejects(
        "port_taken",
        &web(&format!("    ports: [\"127.0.0.1:{port}:8080\"]\n")),
        3,
        &[&format!("127.0.0.1:{port}"), "web"],
    );
    drop(holder);
}

#[test]
fn healthcheck_that_never_passes() {
    let p = Project::new("never_healthy");
    let before = running_first(&p);
    p.compose(&healthchecked_web(
        "    environment:\n      HEALTHY: \"0\"\n",
    ));
    let started = std::time::Instant::now();
    let out = bad_up_within(&p, "6");
    let msg = message(&out, 1);
    assert!(
        started.elapsed().as_secs() < 20,
        "--wait-timeout 6 is honoured: took {:?}",
        started.elapsed()
    );
    // The last health check output (busybox wget's complaint) stays with Docker: the log says
    // where to read it, and neither the error nor the log carries it (it may hold secrets).
    assert_names(&msg, &["web", "healthcheck"]);
    assert!(!msg.contains("wget"), "{msg}");
    assert!(
        !out.stderr.contains("server returned error"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("json .State.Health"), "{}", out.stderr);
    assert_still_running(&before);
}

#[test]
fn one_shot_exiting_non_zero_shows_code_and_where_its_output_is() {
    let p = Project::new("one_shot_fails");
    let before = running_first(&p);
    p.compose(&app_after_one_shot(
        "echo first-log-line; echo second-log-line >&2; exit 3",
    ));
    let out = bad_up(&p);
    let msg = message(&out, 1);
    assert_names(&msg, &["migrate", "code 3"]);
    // The container's output stays with Docker (it may hold secrets, and logs and errors
    // travel to the journal, /status and SSM output): the log names where to read it.
    assert!(!msg.contains("log-line"), "{msg}");
    assert!(!out.stderr.contains("log-line"), "{}", out.stderr);
    assert!(
        out.stderr.contains("docker logs --tail 20"),
        "{}",
        out.stderr
    );
    assert!(
        p.service_ids("app").is_empty(),
        "app must not be created when its one-shot dependency fails"
    );
    assert_still_running(&before);
}

#[test]
fn docker_daemon_not_reachable() {
    let p = Project::new("docker_unreachable");
    let before = running_first(&p);
    p.compose(&web(""));
    let socket = p.path("nonexistent.sock");
    let host = format!("unix://{}", socket.display());
    for sub in ["up", "plan", "ps", "down"] {
        let cmd = if sub == "ps" || sub == "down" {
            p.berth().arg(sub).args(&["-p", &p.name])
        } else {
            p.cmd(sub)
        };
        let out = cmd.env("DOCKER_HOST", &host).run();
        let msg = message(&out, 4);
        assert_contains(&msg, socket.to_str().unwrap());
    }
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn unsupported_field_is_an_error() {
    rejects(
        "unsupported_field",
        &web("    runtime: runsc\n"),
        3,
        &["services.web.runtime", "not supported"],
    );
}

#[test]
fn undeclared_secret_names_the_service_and_the_secret() {
    rejects(
        "undeclared_secret",
        &web("    secrets: [db_password]\n"),
        3,
        &["services.web.secrets[0]", "db_password", "not declared"],
    );
}

#[test]
fn unknown_key_is_only_a_warning() {
    let p = Project::new("unknown_key");
    let before = running_first(&p);
    p.compose(&web("    frobnicate: 1\n"));
    let out = p.cmd("up").args(&["--wait-timeout", "30"]).run();
    out.ok();
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    assert_names(&out.stderr, &["warning", "services.web.frobnicate"]);
    // One readable warning: said once, without terminal escape codes in a pipe.
    assert_eq!(
        out.stderr.matches("services.web.frobnicate").count(),
        1,
        "the warning is repeated:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\x1b'),
        "escape codes on a non-terminal stderr:\n{:?}",
        out.stderr
    );
    assert_eq!(p.container("web")["State"]["Running"], true);
    // keeper is no longer in the file: an orphan, warned about, still running.
    assert_still_running(&before);
}

#[test]
fn invalid_duration() {
    rejects(
        "invalid_duration",
        &web(&format!(
            "    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 5 parsecs\n"
        )),
        3,
        &["services.web.healthcheck.interval", "5 parsecs"],
    );
}

#[test]
fn invalid_restart_value() {
    rejects(
        "invalid_restart",
        &web("    restart: sometimes\n"),
        3,
        &["services.web.restart", "sometimes"],
    );
}

#[test]
fn env_file_with_unterminated_quote_names_file_and_line_but_not_the_value() {
    let p = Project::new("env_file_unterminated");
    let before = running_first(&p);
    let secret = "s3cr3t-Zq9-value";
    let env = p.write(
        "app.env",
        &format!("PLAIN=1\nPASSWORD=\"{secret}\nOTHER=2\n"),
    );
    p.compose(&web("    env_file: app.env\n"));
    let out = bad_up(&p);
    let msg = rejected(&p, &before, &out, 3);
    assert_names(&msg, &[env.to_str().unwrap(), "line 2"]);
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "the value leaked:\n{}",
        out.stderr
    );
}

#[test]
fn invalid_project_name() {
    let p = Project::new("invalid_project_name");
    p.compose(&web(""));
    let out = p
        .berth()
        .arg("up")
        .arg("-f")
        .arg(p.path("compose.yaml"))
        .args(&["-p", "Bad_Name!", "-q"])
        .run();
    let msg = message(&out, 3);
    assert_names(&msg, &["Bad_Name!", "project name"]);
    let made = container_ids(&[format!("label={PROJECT_LABEL}=Bad_Name!")]);
    assert!(made.is_empty(), "{made:?}");
}

#[test]
fn no_compose_file_in_the_directory() {
    let p = Project::new("no_compose_file");
    let before = running_first(&p);
    let empty = p.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = p
        .berth()
        .current_dir(&empty)
        .args(&["up", "-p", &p.name, "-q"])
        .run();
    let msg = rejected(&p, &before, &out, 3);
    assert_names(&msg, &[empty.to_str().unwrap(), "compose.yaml"]);
}

#[test]
fn service_healthy_dependency_that_turns_unhealthy() {
    let p = Project::new("dependency_unhealthy");
    let before = running_first(&p);
    p.compose(&format!(
        r#"
services:
  db:
    image: {WEB}
    environment:
      HEALTHY: "0"
    healthcheck:
      test: {WEB_HEALTHCHECK}
      interval: 1s
      retries: 1
  app:
    image: {TOOL}
    depends_on:
      db:
        condition: service_healthy
"#
    ));
    let msg = message(&bad_up_within(&p, "6"), 1);
    assert_contains(&msg, "db");
    assert!(
        p.service_ids("app").is_empty(),
        "app must never be created: {:?}",
        p.service_ids("app")
    );
    assert_still_running(&before);
}

#[test]
fn unknown_command_line_flag_is_a_usage_error() {
    let p = Project::new("usage_error");
    let before = running_first(&p);
    let out = p.cmd("up").arg("--no-such-flag").run();
    let msg = message(&out, 2);
    assert_contains(&msg, "--no-such-flag");
    assert_still_running(&before);
}

#[test]
fn external_network_missing() {
    let net = unique_name("external_network-absent-net");
    rejects(
        "external_network",
        &web(&format!(
            "    networks: [ext]\nnetworks:\n  ext:\n    external: true\n    name: {net}\n"
        )),
        3,
        &[&net],
    );
}

#[test]
fn unknown_depends_on_condition() {
    let compose = format!(
        "services:\n  db:\n    image: {WEB}\n  app:\n    image: {TOOL}\n    depends_on:\n      db:\n        condition: service_ready\n"
    );
    rejects(
        "unknown_condition",
        &compose,
        3,
        &["services.app.depends_on.db.condition", "service_ready"],
    );
}

#[test]
fn wrong_type_names_the_field() {
    rejects(
        "wrong_type",
        &web("    cpus: lots\n"),
        3,
        &["services.web.cpus", "lots"],
    );
}

#[test]
fn recreate_onto_a_taken_host_port_leaves_the_running_container_alone() {
    let p = Project::new("recreate_port_taken");
    let before = running_web(&p);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    // The change adds a port that another process holds: checkable before anything is stopped.
    p.compose(&healthchecked_web(&format!(
        "    ports: [\"127.0.0.1:{port}:8080\"]\n"
    )));
    let msg = rejected(&p, &before, &bad_up(&p), 3);
    assert_names(&msg, &[&format!("127.0.0.1:{port}"), "web"]);
    drop(holder);
}

#[test]
fn recreate_that_never_becomes_healthy_leaves_the_old_container_running() {
    let p = Project::new("recreate_unhealthy");
    let before = running_web(&p);
    p.compose(&healthchecked_web(
        "    environment:\n      HEALTHY: \"0\"\n",
    ));
    let out = bad_up_within(&p, "6");
    let msg = message(&out, 1);
    assert_names(&msg, &["web", "healthcheck"]);
    // Its output (busybox wget's 404) stays with Docker; the log says where.
    assert!(
        !msg.contains("server returned error")
            && !out.stderr.contains("server returned error")
            && out.stderr.contains("json .State.Health"),
        "{}",
        out.stderr
    );
    // Recreate is stop-first (two copies of a service may not share its volumes), so the old
    // container was stopped while the new one was tried; it must be back, the same container,
    // running, with the failed new one gone.
    for (id, _) in &before {
        let c = inspect(id);
        assert_eq!(
            c["State"]["Running"], true,
            "old container {id} not restored: {}",
            c["State"]
        );
    }
    let ids: Vec<String> = before.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        p.container_ids(),
        ids,
        "the failed new container was left behind"
    );
}

#[test]
fn missing_env_file_flag_names_the_path() {
    let p = Project::new("missing_env_file_flag");
    let before = running_first(&p);
    p.compose(&web(""));
    let out = p
        .cmd("up")
        .args(&["-q", "--env-file", "nowhere/interp.env"])
        .run();
    let msg = rejected(&p, &before, &out, 3);
    assert_contains(&msg, "nowhere/interp.env");
}

// The host policy: `berth up`, `plan` and `config` judge as the agent does.

#[test]
fn the_host_policy_refuses_in_up_plan_and_config_and_reads_no_refused_file() {
    // /etc/shadow is read by nothing: the refusal names it, never a line of it (nor a parse
    // error about it, which reading it first would give).
    let compose = web(
        "    privileged: true\n    env_file: [/etc/shadow]\n    volumes: [\"/etc:/host-etc\"]\n",
    );
    let (p, msg) = rejects(
        "policy",
        &compose,
        3,
        &[
            "the host policy (the default policy",
            "services.web.env_file: /etc/shadow reaches /etc, the host's own",
        ],
    );
    assert!(!msg.contains("root:"), "{msg}");
    for sub in ["plan", "config"] {
        let msg = message(&p.cmd(sub).run(), 3);
        assert_names(&msg, &["services.web.env_file", "/etc/shadow"]);
    }
    // Once the file is read no more, every other refusal is named in one message.
    p.compose(&web(
        "    privileged: true\n    volumes: [\"/etc:/host-etc\"]\n",
    ));
    let msg = message(&p.cmd("config").run(), 3);
    assert_names(
        &msg,
        &[
            "services.web.privileged: true gives the container the whole host (allow with `privileged = true` under [policy])",
            "services.web.volumes: the bind of /etc reaches /etc, the host's own",
        ],
    );
    // A policy file allows what it names, and names itself in what it still refuses.
    let policy = p.policy("privileged = true");
    let msg = message(&p.cmd("config").arg("--policy").arg(&policy).run(), 3);
    assert_names(
        &msg,
        &[
            &format!("[policy] of {}", policy.display()),
            "the bind of /etc",
        ],
    );
    assert!(!msg.contains("privileged"), "{msg}");
    p.compose(&web("    privileged: true\n"));
    p.cmd("config").arg("--policy").arg(&policy).run().ok();
    // A policy file that is wrong is an error naming its key, not a silent default.
    let bad = p.write("bad.toml", "[policy]\nbind_prefixes = [\"/var\"]\n");
    let msg = message(&p.cmd("config").arg("--policy").arg(&bad).run(), 3);
    assert_names(
        &msg,
        &[
            "policy.bind_prefixes[0]",
            "/var reaches /var/run/docker.sock",
        ],
    );
}

#[test]
fn a_crashed_containers_output_stays_with_docker_and_out_of_berths_log() {
    // Its last words carry a secret from its environment: berth's log names where to read
    // them (docker logs), never what they say.
    let compose = app_after_one_shot("echo connecting with $$DB_PASSWORD; exit 4");
    let compose = compose.replace(
        "    image: berth-test/tool:1\n    command:",
        "    image: berth-test/tool:1\n    environment: {DB_PASSWORD: s3cr3t-crash-output}\n    command:",
    );
    assert!(compose.contains("s3cr3t-crash-output"), "{compose}");
    let p = Project::new("crash-output");
    p.compose(&compose);
    let out = p.up_cmd().env("BERTH_LOG", "info").run();
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(
        !out.stderr.contains("s3cr3t-crash-output"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("s3cr3t-crash-output"),
        "{}",
        out.stdout
    );
    assert_contains(&out.stderr, "docker logs --tail 20");
    // Docker has it, for whoever may run docker logs.
    let id = p.service_ids("migrate").pop().unwrap();
    assert_contains(&docker(&["logs", &id]), "s3cr3t-crash-output");
}
