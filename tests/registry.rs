//! Pulls from a private registry: Debian's `docker-registry` (the CNCF distribution registry) on
//! 127.0.0.1 with htpasswd basic auth, credentials read from the Docker client config that
//! `DOCKER_CONFIG` points at. Each test runs its own registry on its own port.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::registry::{docker_config, image_present, Registry, RemoveImage, PASSWORD, USER};
use common::*;

fn compose_for(p: &Project, image: &str, extra: &str) -> PathBuf {
    p.compose(&format!("services:\n  web:\n    image: {image}\n{extra}"))
}

fn config_path(dir: &tempfile::TempDir) -> &Path {
    dir.path()
}

#[test]
fn pulls_a_private_image_with_docker_config_credentials() {
    let registry = Registry::start();
    let p = Project::new("registry-pull");
    let reference = registry.push("berth-test/web:1", "team/web", &p.name);
    let _cleanup = RemoveImage(reference.clone());
    assert!(!image_present(&reference));
    compose_for(&p, &reference, "");
    let creds = docker_config(&registry.addr, USER, PASSWORD);

    p.up_cmd()
        .env("DOCKER_CONFIG", config_path(&creds).to_str().unwrap())
        .run()
        .ok();

    assert!(image_present(&reference), "berth did not pull {reference}");
    let c = p.container("web");
    assert_eq!(c["Config"]["Image"], reference.as_str());
    assert_eq!(c["State"]["Running"], true);
}

#[test]
fn wrong_registry_password_fails_before_anything_changes() {
    let registry = Registry::start();
    let p = Project::new("registry-badpw");
    let reference = registry.push("berth-test/web:1", "team/web", &p.name);
    let _cleanup = RemoveImage(reference.clone());
    // A healthy service already running in the project must survive the failed run.
    p.compose("services:\n  keep:\n    image: berth-test/web:1\n");
    p.up();
    let before = p.snapshot();

    p.compose(&format!(
        "services:\n  keep:\n    image: berth-test/web:1\n  web:\n    image: {reference}\n"
    ));
    let creds = docker_config(&registry.addr, USER, "not-the-token");
    let out = p
        .up_cmd()
        .env("DOCKER_CONFIG", config_path(&creds).to_str().unwrap())
        .run();
    out.expect_code(5);
    let msg = out.error_message();
    assert!(
        msg.contains(&reference),
        "message should name the image: {msg}"
    );
    assert!(
        msg.contains("unauthorized")
            || msg.contains("authentication required")
            || msg.contains("no basic auth"),
        "message should carry the registry's answer: {msg}"
    );
    assert!(!msg.contains("not-the-token"), "the password leaked: {msg}");
    assert_eq!(p.snapshot(), before, "the running service changed");
    assert!(
        p.service_ids("web").is_empty(),
        "a container was created for the failed image"
    );
}

#[test]
fn no_credentials_for_a_private_registry_is_a_clear_pull_error() {
    let registry = Registry::start();
    let p = Project::new("registry-nocreds");
    let reference = registry.push("berth-test/web:1", "team/web", &p.name);
    let _cleanup = RemoveImage(reference.clone());
    compose_for(&p, &reference, "");
    let empty = tempfile::tempdir().unwrap();
    let out = p
        .up_cmd()
        .env("DOCKER_CONFIG", empty.path().to_str().unwrap())
        .run();
    out.expect_code(5);
    let msg = out.error_message();
    assert!(
        msg.contains(&reference) && msg.contains("service web"),
        "{msg}"
    );
}

#[test]
fn pull_policy_always_pulls_even_when_the_image_is_local() {
    let registry = Registry::start();
    let p = Project::new("registry-always");
    let reference = registry.push("berth-test/web:1", "team/web", &p.name);
    let _cleanup = RemoveImage(reference.clone());
    docker(&["tag", "berth-test/web:2", &reference]);
    let local_before = docker(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    compose_for(&p, &reference, "    pull_policy: always\n");
    let creds = docker_config(&registry.addr, USER, PASSWORD);
    let cfg = config_path(&creds).to_str().unwrap().to_string();

    let plan = p
        .cmd("plan")
        .args(&["--json"])
        .env("DOCKER_CONFIG", &cfg)
        .run();
    plan.ok();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(
        plan["pulls"][0],
        reference.as_str(),
        "plan must list the pull: {plan}"
    );

    p.up_cmd().env("DOCKER_CONFIG", &cfg).run().ok();
    // The registry holds web:1; the local tag pointed at web:2 until berth pulled.
    let local_after = docker(&["image", "inspect", "-f", "{{.Id}}", &reference]);
    let web1 = docker(&["image", "inspect", "-f", "{{.Id}}", "berth-test/web:1"]);
    assert_ne!(
        local_before, local_after,
        "pull_policy: always did not pull"
    );
    assert_eq!(local_after, web1);
}

#[test]
fn pull_policy_never_with_a_missing_image_changes_nothing() {
    let p = Project::new("registry-never");
    compose_for(
        &p,
        "127.0.0.1:1/berth-t/absent:1",
        "    pull_policy: never\n",
    );
    let out = p.up_cmd().run();
    out.expect_code(5);
    let msg = out.error_message();
    assert!(
        msg.contains("127.0.0.1:1/berth-t/absent:1") && msg.contains("never"),
        "{msg}"
    );
    assert!(p.container_ids().is_empty());
}
