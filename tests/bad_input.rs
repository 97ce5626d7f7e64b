//! Bad input: every case fails with the documented exit code and one readable message naming
//! what is wrong (file, `services.x.field` path, service, image, port, socket), and leaves the
//! containers that were already running under the same project name running, untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;

use common::*;

const TOOL: &str = "berth-test/tool:1";
const WEB: &str = "berth-test/web:1";

/// A container that was running before the bad run: (id, StartedAt).
type Before = Vec<(String, String)>;

/// Starts a good project (service `keeper`, from good.yaml) under the project's name, so that
/// the bad run has something to leave alone. Returns what runs.
fn running_first(p: &Project) -> Before {
    let good = p.write(
        "good.yaml",
        &format!("services:\n  keeper:\n    image: {TOOL}\n"),
    );
    p.berth()
        .arg("up")
        .arg("-f")
        .arg(&good)
        .args(&["-p", &p.name, "-q", "--wait-timeout", "60"])
        .run()
        .ok();
    let snap = p.snapshot();
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert!(snap[0].1, "keeper runs: {snap:?}");
    snap.into_iter().map(|(id, _, s)| (id, s)).collect()
}

/// What ran before still runs: same containers, never restarted.
#[track_caller]
fn assert_still_running(before: &Before) {
    for (id, started) in before {
        assert!(
            docker_try(&["container", "inspect", id]).code == 0,
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

/// `berth up -q` of compose.yaml under the project's name.
fn bad_up(p: &Project) -> Output {
    p.cmd("up").args(&["-q", "--wait-timeout", "30"]).run()
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

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let p = Project::new("malformed_yaml");
    let before = running_first(&p);
    let file = p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    command: a: b\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, file.to_str().unwrap());
    assert_contains(&msg, "line 4");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn unknown_service_in_depends_on() {
    let p = Project::new("unknown_dependency");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    depends_on: [nosuchservice]\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "web");
    assert_contains(&msg, "nosuchservice");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn dependency_cycle_is_shown() {
    let p = Project::new("dependency_cycle");
    let before = running_first(&p);
    p.compose(&format!(
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
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "cycle");
    assert_contains(&msg, "a -> b -> c -> a");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
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
    let msg = message(&out, 3);
    assert_contains(&msg, "WEB_IMAGE");
    assert_contains(&msg, "set WEB_IMAGE to the image to run");
    assert_contains(&msg, "services.web.image");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn invalid_interpolation_syntax() {
    let p = Project::new("invalid_interpolation");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    environment:\n      A: \"${{X\"\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.environment.A");
    assert_contains(&msg, "invalid interpolation");
    assert_contains(&msg, "${X");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn missing_required_env_file_names_the_path() {
    let p = Project::new("missing_env_file");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    env_file: config/missing.env\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, p.path("config/missing.env").to_str().unwrap());
    assert_contains(&msg, "services.web.env_file");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn bad_port_string_names_the_field() {
    let p = Project::new("bad_port");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    ports:\n      - \"127.0.0.1:8080:8080\"\n      - \"http:8080\"\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.ports[1]");
    assert_contains(&msg, "http");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn undeclared_named_volume() {
    let p = Project::new("undeclared_volume");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    volumes: [\"appdata:/data\"]\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.volumes[0]");
    assert_contains(&msg, "appdata");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
    assert!(!volume_exists(&format!("{}_appdata", p.name)));
}

#[test]
fn service_healthy_on_a_service_without_healthcheck() {
    let p = Project::new("no_healthcheck");
    let before = running_first(&p);
    p.compose(&format!(
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
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "db");
    assert_contains(&msg, "app");
    assert_contains(&msg, "healthcheck");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn build_without_image() {
    let p = Project::new("build_only");
    let before = running_first(&p);
    p.compose("services:\n  web:\n    build: .\n");
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.build");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn image_missing_locally_and_in_its_registry() {
    let p = Project::new("image_missing");
    let before = running_first(&p);
    p.compose("services:\n  web:\n    image: 127.0.0.1:1/nope:1\n");
    let msg = message(&bad_up(&p), 5);
    assert_contains(&msg, "127.0.0.1:1/nope:1");
    assert_contains(&msg, "web");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn pull_policy_never_with_a_missing_image() {
    let p = Project::new("pull_never");
    let before = running_first(&p);
    let image = format!("{}-absent:1", p.name);
    p.compose(&format!(
        "services:\n  web:\n    image: {image}\n    pull_policy: never\n"
    ));
    let msg = message(&bad_up(&p), 5);
    assert_contains(&msg, &image);
    assert_contains(&msg, "never");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn host_port_already_taken() {
    let p = Project::new("port_taken");
    let before = running_first(&p);
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    ports: [\"127.0.0.1:{port}:8080\"]\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, &format!("127.0.0.1:{port}"));
    assert_contains(&msg, "web");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
    drop(holder);
}

#[test]
fn healthcheck_that_never_passes() {
    let p = Project::new("never_healthy");
    let before = running_first(&p);
    p.compose(&format!(
        r#"
services:
  web:
    image: {WEB}
    environment:
      HEALTHY: "0"
    healthcheck:
      test: {WEB_HEALTHCHECK}
      interval: 1s
"#
    ));
    let started = std::time::Instant::now();
    let out = p.cmd("up").args(&["-q", "--wait-timeout", "6"]).run();
    let msg = message(&out, 1);
    assert!(
        started.elapsed().as_secs() < 20,
        "--wait-timeout 6 is honoured: took {:?}",
        started.elapsed()
    );
    assert_contains(&msg, "web");
    // The last health check output: busybox wget's answer to the 404.
    assert_contains(&msg, "404");
    assert_still_running(&before);
}

#[test]
fn one_shot_exiting_non_zero_shows_code_and_logs() {
    let p = Project::new("one_shot_fails");
    let before = running_first(&p);
    p.compose(&format!(
        r#"
services:
  migrate:
    image: {TOOL}
    command: ["sh", "-c", "echo first-log-line; echo second-log-line >&2; exit 3"]
  app:
    image: {TOOL}
    depends_on:
      migrate:
        condition: service_completed_successfully
"#
    ));
    let msg = message(&bad_up(&p), 1);
    assert_contains(&msg, "migrate");
    assert_contains(&msg, "code 3");
    assert_contains(&msg, "first-log-line");
    assert_contains(&msg, "second-log-line");
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
    p.compose(&format!("services:\n  web:\n    image: {WEB}\n"));
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
    let p = Project::new("unsupported_field");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    secrets: [db_password]\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.secrets");
    assert_contains(&msg, "not supported");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn unknown_key_is_only_a_warning() {
    let p = Project::new("unknown_key");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    frobnicate: 1\n"
    ));
    let out = p.cmd("up").args(&["--wait-timeout", "30"]).run();
    out.ok();
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    assert_contains(&out.stderr, "warning");
    assert_contains(&out.stderr, "services.web.frobnicate");
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
    let p = Project::new("invalid_duration");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 5 parsecs\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.healthcheck.interval");
    assert_contains(&msg, "5 parsecs");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn invalid_restart_value() {
    let p = Project::new("invalid_restart");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    restart: sometimes\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.restart");
    assert_contains(&msg, "sometimes");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
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
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    env_file: app.env\n"
    ));
    let out = bad_up(&p);
    let msg = message(&out, 3);
    assert_contains(&msg, env.to_str().unwrap());
    assert_contains(&msg, "line 2");
    assert!(
        !out.stderr.contains(secret) && !out.stdout.contains(secret),
        "the value leaked:\n{}",
        out.stderr
    );
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn invalid_project_name() {
    let p = Project::new("invalid_project_name");
    p.compose(&format!("services:\n  web:\n    image: {WEB}\n"));
    let out = p
        .berth()
        .arg("up")
        .arg("-f")
        .arg(p.path("compose.yaml"))
        .args(&["-p", "Bad_Name!", "-q"])
        .run();
    let msg = message(&out, 3);
    assert_contains(&msg, "Bad_Name!");
    assert_contains(&msg, "project name");
    let made = container_ids(&["label=com.docker.compose.project=Bad_Name!".to_string()]);
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
    let msg = message(&out, 3);
    assert_contains(&msg, empty.to_str().unwrap());
    assert_contains(&msg, "compose.yaml");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
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
    let out = p.cmd("up").args(&["-q", "--wait-timeout", "6"]).run();
    let msg = message(&out, 1);
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
    let p = Project::new("external_network");
    let before = running_first(&p);
    let net = format!("{}-absent-net", p.name);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    networks: [ext]\nnetworks:\n  ext:\n    external: true\n    name: {net}\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, &net);
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn unknown_depends_on_condition() {
    let p = Project::new("unknown_condition");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  db:\n    image: {WEB}\n  app:\n    image: {TOOL}\n    depends_on:\n      db:\n        condition: service_ready\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.app.depends_on.db.condition");
    assert_contains(&msg, "service_ready");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

#[test]
fn wrong_type_names_the_field() {
    let p = Project::new("wrong_type");
    let before = running_first(&p);
    p.compose(&format!(
        "services:\n  web:\n    image: {WEB}\n    cpus: lots\n"
    ));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, "services.web.cpus");
    assert_contains(&msg, "lots");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}

/// A service already running under the project, to be changed by the bad run.
fn running_web(p: &Project, extra: &str) -> Before {
    running_web_file(p, extra);
    p.up();
    let snap = p.snapshot();
    assert_eq!(snap.len(), 1, "{snap:?}");
    snap.into_iter().map(|(id, _, s)| (id, s)).collect()
}

#[test]
fn recreate_onto_a_taken_host_port_leaves_the_running_container_alone() {
    let p = Project::new("recreate_port_taken");
    let before = running_web(&p, "");
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    // The change adds a port that another process holds: checkable before anything is stopped.
    running_web_file(&p, &format!("    ports: [\"127.0.0.1:{port}:8080\"]\n"));
    let msg = message(&bad_up(&p), 3);
    assert_contains(&msg, &format!("127.0.0.1:{port}"));
    assert_contains(&msg, "web");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
    drop(holder);
}

#[test]
fn recreate_that_never_becomes_healthy_leaves_the_old_container_running() {
    let p = Project::new("recreate_unhealthy");
    let before = running_web(&p, "");
    running_web_file(&p, "    environment:\n      HEALTHY: \"0\"\n");
    let out = p.cmd("up").args(&["-q", "--wait-timeout", "6"]).run();
    let msg = message(&out, 1);
    assert_contains(&msg, "web");
    assert_contains(&msg, "404");
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

fn running_web_file(p: &Project, extra: &str) {
    p.compose(&format!(
        r#"
services:
  web:
    image: {WEB}
    healthcheck:
      test: {WEB_HEALTHCHECK}
      interval: 1s
{extra}"#
    ));
}

#[test]
fn missing_env_file_flag_names_the_path() {
    let p = Project::new("missing_env_file_flag");
    let before = running_first(&p);
    p.compose(&format!("services:\n  web:\n    image: {WEB}\n"));
    let out = p
        .cmd("up")
        .args(&["-q", "--env-file", "nowhere/interp.env"])
        .run();
    let msg = message(&out, 3);
    assert_contains(&msg, "nowhere/interp.env");
    assert_still_running(&before);
    assert_nothing_created(&p, &before);
}
