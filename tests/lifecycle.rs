//! Convergence over time: what a second `up` does (nothing, or only what changed), orphans,
//! stopped containers, `down`, `ps`, `config`, and secrets staying out of labels and output.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;

/// The plan's line for one container: `container  NAME  ACTION (reasons)`.
#[track_caller]
fn plan_line(plan: &str, container: &str) -> String {
    plan.lines()
        .find(|l| l.starts_with("container") && l.split_whitespace().nth(1) == Some(container))
        .unwrap_or_else(|| panic!("no line for {container} in the plan:\n{plan}"))
        .to_string()
}

/// The action the plan gives a container (second word after its name).
fn action_of(line: &str) -> String {
    line.split_whitespace().nth(2).unwrap_or("").to_string()
}

/// The plan gives `service`'s container `action`; returns the plan's line for it.
#[track_caller]
fn assert_action(plan: &str, p: &Project, service: &str, action: &str) -> String {
    let line = plan_line(plan, &p.container_name(service));
    assert_eq!(action_of(&line), action, "{line}");
    line
}

/// `now` is the container `before` was, never restarted since.
#[track_caller]
fn assert_untouched(now: &Value, before: &Value, what: &str) {
    assert_eq!(id_of(now), id_of(before), "{what} kept");
    assert_eq!(started_at(now), started_at(before), "{what} not restarted");
}

/// A project of two services `a` and `b` of TOOL, up; returns it and their containers.
fn up_two(test: &str, a: &str, b: &str) -> (Project, Value, Value) {
    let p = Project::new(test);
    p.compose(&format!(
        "services:\n  {a}:\n    image: {TOOL}\n  {b}:\n    image: {TOOL}\n"
    ));
    p.up();
    let (first, second) = (p.container(a), p.container(b));
    (p, first, second)
}

fn stack(hc_interval: &str) -> String {
    format!(
        r#"
services:
  web:
    image: {WEB}
    healthcheck:
      test: {WEB_HEALTHCHECK}
      interval: {hc_interval}
    volumes: ["data:/data"]
  migrate:
    image: {TOOL}
    command: ["sh", "-c", "echo migrated"]
  worker:
    image: {TOOL}
    depends_on:
      web:
        condition: service_healthy
      migrate:
        condition: service_completed_successfully
volumes:
  data: {{}}
"#
    )
}

#[test]
fn second_up_with_nothing_changed_touches_nothing() {
    let p = Project::new("up_twice");
    p.compose(&stack("1s"));
    p.up();
    let before = p.snapshot();
    assert_eq!(before.len(), 3, "{before:?}");

    let plan = p.plan().stdout;
    for svc in ["web", "migrate", "worker"] {
        assert_action(&plan, &p, svc, "keep");
    }
    assert_contains(&plan, "nothing to do");
    let json = p.plan_json();
    let containers = json["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 3, "{json}");
    for c in containers {
        assert_eq!(c["action"], "keep", "{c}");
    }
    for n in json["networks"].as_array().unwrap() {
        assert_eq!(n["action"], "keep", "{n}");
    }
    for v in json["volumes"].as_array().unwrap() {
        assert_eq!(v["action"], "keep", "{v}");
    }
    assert!(json["pulls"].as_array().unwrap().is_empty(), "{json}");

    let out = p.up();
    assert_contains(&out.stderr, "up to date");
    assert_eq!(
        p.snapshot(),
        before,
        "ids, running state and StartedAt must be unchanged"
    );
}

#[test]
fn changed_environment_recreates_only_that_service() {
    let p = Project::new("env_change");
    let compose = |value: &str| {
        format!(
            r#"
services:
  changing:
    image: {WEB}
    environment:
      SETTING: {value}
  steady:
    image: {TOOL}
  dependent:
    image: {TOOL}
    depends_on: [changing]
"#
        )
    };
    p.compose(&compose("one"));
    p.up();
    let changing = p.container("changing");
    let steady = p.container("steady");
    let dependent = p.container("dependent");

    p.compose(&compose("two"));
    let plan = p.plan().stdout;
    let line = assert_action(&plan, &p, "changing", "recreate");
    assert_contains(&line, "environment");
    for svc in ["steady", "dependent"] {
        assert_action(&plan, &p, svc, "keep");
    }
    assert!(!plan.contains("nothing to do"), "{plan}");

    p.up();
    let after = p.container("changing");
    assert_ne!(id_of(&after), id_of(&changing), "recreated");
    assert_eq!(after["Name"], format!("/{}", p.container_name("changing")));
    assert_eq!(env_of(&after)["SETTING"], "two");
    assert_eq!(after["State"]["Running"], true);
    assert!(
        !container_exists(&id_of(&changing)),
        "the old container is gone"
    );
    for (svc, old) in [("steady", &steady), ("dependent", &dependent)] {
        assert_untouched(&p.container(svc), old, svc);
    }
    assert_eq!(p.container_ids().len(), 3);
}

#[test]
fn dependent_with_restart_true_is_restarted_when_its_dependency_is_recreated() {
    let p = Project::new("restart_dependent");
    let compose = |value: &str| {
        format!(
            r#"
services:
  db:
    image: {WEB}
    environment:
      GENERATION: {value}
  app:
    image: {TOOL}
    depends_on:
      db:
        condition: service_started
        restart: true
  bystander:
    image: {TOOL}
    depends_on:
      db:
        condition: service_started
"#
        )
    };
    p.compose(&compose("1"));
    p.up();
    let db = p.container("db");
    let app = p.container("app");
    let bystander = p.container("bystander");
    assert_eq!(
        label_of(&app, "com.docker.compose.depends_on").as_deref(),
        Some("db:service_started:true")
    );

    p.compose(&compose("2"));
    let plan = p.plan().stdout;
    assert_action(&plan, &p, "db", "recreate");
    let line = assert_action(&plan, &p, "app", "restart");
    assert_contains(&line, "db");
    assert_action(&plan, &p, "bystander", "keep");

    p.up();
    let db2 = p.container("db");
    assert_ne!(id_of(&db2), id_of(&db), "db recreated");
    let app2 = p.container("app");
    assert_eq!(id_of(&app2), id_of(&app), "app is restarted, not recreated");
    assert_eq!(app2["State"]["Running"], true);
    let restarted = ts_nanos(&started_at(&app2));
    assert!(
        restarted > ts_nanos(&started_at(&app)),
        "app was not restarted: StartedAt {} then {}",
        started_at(&app),
        started_at(&app2)
    );
    assert!(
        restarted >= ts_nanos(&started_at(&db2)),
        "app restarted ({}) before the new db started ({})",
        started_at(&app2),
        started_at(&db2)
    );
    assert_untouched(
        &p.container("bystander"),
        &bystander,
        "bystander (no restart: true)",
    );
}

#[test]
fn orphans_are_kept_with_a_warning_and_removed_on_request() {
    let (p, app, old) = up_two("orphans", "app", "old");

    p.compose(&one_service("app", TOOL, ""));
    assert_action(&p.plan().stdout, &p, "old", "orphan");
    let out = p.up();
    assert_contains(&out.stderr, "orphan");
    assert_contains(&out.stderr, &p.container_name("old"));
    let kept = inspect(&id_of(&old));
    assert_eq!(kept["State"]["Running"], true, "the orphan is kept");
    assert_untouched(&kept, &old, "the orphan");

    p.up_cmd().arg("--remove-orphans").run().ok();
    assert!(
        !container_exists(&id_of(&old)),
        "--remove-orphans removes it"
    );
    assert!(p.service_ids("old").is_empty());
    assert_untouched(&p.container("app"), &app, "app");
}

#[test]
fn stopped_but_current_container_is_only_started() {
    let (p, app, other) = up_two("stopped_container", "app", "other");
    docker(&["stop", &id_of(&app)]);
    assert_eq!(inspect(&id_of(&app))["State"]["Running"], false);

    assert_action(&p.plan().stdout, &p, "app", "start");

    p.up();
    let now = p.container("app");
    assert_eq!(id_of(&now), id_of(&app), "same container");
    assert_eq!(now["State"]["Running"], true);
    assert!(ts_nanos(&started_at(&now)) > ts_nanos(&started_at(&app)));
    assert_untouched(&p.container("other"), &other, "other");
}

#[test]
fn down_removes_containers_and_network_and_with_v_volumes() {
    let p = Project::new("down");
    p.compose(&format!(
        r#"
services:
  app:
    image: {TOOL}
    volumes: ["data:/data"]
    depends_on: [db]
  db:
    image: {TOOL}
volumes:
  data: {{}}
"#
    ));
    p.up();
    let network = format!("{}_default", p.name);
    let volume = format!("{}_data", p.name);
    assert!(network_exists(&network));
    assert!(volume_exists(&volume));
    assert_eq!(p.container_ids().len(), 2);

    p.down_cmd().run().ok();
    assert!(p.container_ids().is_empty(), "{:?}", p.container_ids());
    assert!(!network_exists(&network), "network removed");
    assert!(volume_exists(&volume), "volumes stay without -v");

    p.up();
    assert_eq!(p.container_ids().len(), 2);
    p.down_cmd().arg("-v").run().ok();
    assert!(p.container_ids().is_empty());
    assert!(!network_exists(&network));
    assert!(!volume_exists(&volume), "down -v removes named volumes");
}

#[test]
fn ps_json_lists_services_with_state_and_health() {
    let p = Project::new("ps_json");
    p.compose(&stack("1s"));
    p.up();
    let ps = |p: &Project| -> Vec<Value> {
        let out = p.berth().args(&["ps", "-p", &p.name, "--json"]).run();
        out.ok();
        serde_json::from_str::<Value>(&out.stdout)
            .unwrap_or_else(|e| panic!("ps --json is not JSON ({e}):\n{}", out.stdout))
            .as_array()
            .unwrap()
            .clone()
    };
    let rows = assert_eventually!(20, "ps to report web healthy", || {
        let rows = ps(&p);
        let web = rows.iter().find(|r| r["service"] == "web");
        match web {
            Some(w) if w["health"] == "healthy" => Ok(rows),
            other => Err(format!("{other:?}")),
        }
    });
    let mut services: Vec<&str> = rows
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ["migrate", "web", "worker"]);
    let row = |svc: &str| rows.iter().find(|r| r["service"] == svc).unwrap().clone();
    let web = row("web");
    assert_eq!(web["name"], p.container_name("web"));
    assert_eq!(web["state"], "running");
    assert_eq!(web["image"], WEB);
    let migrate = row("migrate");
    assert_eq!(migrate["state"], "exited");
    assert_eq!(migrate["exit_code"], 0);
    let worker = row("worker");
    assert_eq!(worker["state"], "running");
    assert!(worker["health"].is_null(), "{worker}");

    let text = p.berth().args(&["ps", "-p", &p.name]).run();
    text.ok();
    assert_contains(&text.stdout, &p.container_name("web"));
    assert_contains(&text.stdout, "healthy");
}

#[test]
fn config_and_plan_mask_environment_values() {
    let p = Project::new("config_masks");
    let secret = "Zx81-do-not-print-me";
    let inline = "inline-Qw12-hidden";
    p.write("app.env", &format!("DB_PASSWORD={secret}\n"));
    let compose = |token: &str| {
        one_service(
            "app",
            TOOL,
            &format!("    env_file: app.env\n    environment:\n      API_TOKEN: {token}\n"),
        )
    };
    p.compose(&compose(inline));
    let config = p.cmd("config").run();
    config.ok();
    assert_contains(&config.stdout, "DB_PASSWORD");
    assert_contains(&config.stdout, "API_TOKEN");
    assert_contains(&config.stdout, TOOL);
    assert_contains(&config.stdout, "********");
    for out in [&config.stdout, &config.stderr] {
        assert!(
            !out.contains(secret) && !out.contains(inline),
            "config printed a value:\n{out}"
        );
    }
    let parsed: serde_json::Value = serde_norway::from_str(&config.stdout)
        .unwrap_or_else(|e| panic!("config is not YAML ({e}):\n{}", config.stdout));
    assert!(!parsed.is_null());

    let before = p.plan();
    let up = p.up();
    p.compose(&compose(&format!("{inline}-changed")));
    let after = p.plan();
    let json = p.cmd("plan").arg("--json").run();
    json.ok();
    assert_contains(&after.stdout, "recreate");
    let recreate = p.up();
    assert_contains(&recreate.stderr, "environment");
    for out in [&before, &up, &after, &json, &recreate] {
        for text in [&out.stdout, &out.stderr] {
            assert!(
                !text.contains(secret) && !text.contains(inline),
                "a value was printed:\n{text}"
            );
        }
    }
    // What a user sets to debug: berth's own debug logs, not other crates' (bollard's debug
    // logs the create body, values included). Named explicitly, a crate's debug is the
    // user's choice, and it does log them: that is what the cap keeps out.
    p.compose(&compose(&format!("{inline}-debug")));
    let debug = p.up_cmd().env("BERTH_LOG", "debug").run();
    debug.ok();
    assert!(
        !debug.stderr.contains(secret) && !debug.stderr.contains(inline),
        "BERTH_LOG=debug printed a value:\n{}",
        debug.stderr
    );
    p.compose(&compose(&format!("{inline}-named")));
    let named = p.up_cmd().env("BERTH_LOG", "debug,bollard=debug").run();
    named.ok();
    assert_contains(&named.stderr, secret);
    // The values did reach the container.
    let env = env_of(&p.container("app"));
    assert_eq!(env["DB_PASSWORD"], secret);
    assert_eq!(env["API_TOKEN"], format!("{inline}-named"));
}

#[test]
fn config_masks_env_file_values_wherever_they_were_interpolated() {
    let p = Project::new("config_masks_interpolated");
    let token = "Tk-93-interpolated-hidden";
    p.write(".env", &format!("CLI_TOKEN={token}\nSHORT=on\n"));
    p.compose(&one_service(
        "app",
        TOOL,
        "    command: [\"serve\", \"--token=${CLI_TOKEN}\", \"--verbose=${SHORT}\"]\n    labels:\n      auth: \"Bearer ${CLI_TOKEN}\"\n",
    ));
    let config = p.cmd("config").run();
    config.ok();
    assert!(
        !config.stdout.contains(token) && !config.stderr.contains(token),
        "config printed an interpolated .env value:\n{}",
        config.stdout
    );
    assert_contains(&config.stdout, "--token=********");
    assert_contains(&config.stdout, "Bearer ********");
    // Too short to be a secret worth the name, and masking it would garble the output.
    assert_contains(&config.stdout, "--verbose=on");
}

#[test]
fn secrets_never_appear_in_labels() {
    let p = Project::new("secrets_labels");
    let secret = "Lb7-secret-in-env-file";
    p.write("secret.env", &format!("SECRET_KEY={secret}\n"));
    p.compose(&one_service("app", TOOL, "    env_file: secret.env\n"));
    p.up();
    let c = p.container("app");
    assert_eq!(
        env_of(&c)["SECRET_KEY"],
        secret,
        "the secret reached the env"
    );
    let labels = c["Config"]["Labels"].as_object().unwrap();
    assert!(labels.len() > 5, "{labels:?}");
    for (k, v) in labels {
        let v = v.as_str().unwrap_or("");
        assert!(
            !k.contains(secret) && !v.contains(secret),
            "label {k}={v} holds the secret"
        );
    }
    let net = inspect_network(&format!("{}_default", p.name));
    assert!(!net["Labels"].to_string().contains(secret));
}

#[test]
fn changed_image_recreates_and_serves_the_new_version() {
    let p = Project::new("image_change");
    let port = free_port();
    let compose = |tag: &str| {
        format!(
            r#"
services:
  web:
    image: berth-test/web:{tag}
    ports: ["127.0.0.1:{port}:8080"]
    healthcheck:
      test: {WEB_HEALTHCHECK}
      interval: 1s
"#
        )
    };
    p.compose(&compose("1"));
    p.up();
    let v1 = p.container("web");
    assert_eq!(http_get(port, "/version").unwrap().trim(), "1");

    p.compose(&compose("2"));
    let line = assert_action(&p.plan().stdout, &p, "web", "recreate");
    assert_contains(&line, "image");
    p.up();
    let v2 = p.container("web");
    assert_ne!(id_of(&v2), id_of(&v1));
    let body = assert_eventually!(10, "version 2 on the same port", || {
        match http_get(port, "/version") {
            Ok(b) if b.trim() == "2" => Ok(b),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(body.trim(), "2");
    assert_eq!(p.container_ids().len(), 1, "the old container is gone");
}

#[test]
fn scaling_down_removes_the_extra_replicas() {
    let p = Project::new("scale_down");
    let compose = |n: u32| {
        format!("services:\n  worker:\n    image: {TOOL}\n    deploy:\n      replicas: {n}\n")
    };
    p.compose(&compose(3));
    p.up();
    assert_eq!(p.service_ids("worker").len(), 3);
    let first = p.replica("worker", 1);

    p.compose(&compose(1));
    let out = p.up();
    assert!(
        !out.stderr.contains("orphan"),
        "replicas of a service in the project are not orphans:\n{}",
        out.stderr
    );
    let ids = p.service_ids("worker");
    assert_eq!(ids, [id_of(&first)], "only replica 1 is left");
    assert_untouched(&p.replica("worker", 1), &first, "replica 1");
}
