//! A release is one pinned thing, end to end: `berth release create` (as CI runs it) pins the
//! compose file and env file in a versioned S3 bucket (moto) by VersionId and sha256 and each
//! image at the authenticated registry (ECR's stand-in) by digest; real `berth agent`s (IMDS
//! from the emulator, the pointer in SSM) with their own `berth proxy` deploy exactly that. An
//! env file edited in S3 changes nothing until a release names it, through a restart, a repair
//! and a new instance's boot; a config-only release goes through the canary and the analysis
//! as an image would; a failed one goes back whole (every service's environment); a way back
//! whose image was deleted is refused before the switch; a pointer with no manifest still
//! boots, floating, and says so.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::{self, Emulator, Moto, ACCOUNT_ID};
use common::registry::Registry;
use common::traffic::{failures, Conn, Load, Proxy};
use common::*;
use serde_json::Value;

/// The shared pieces: moto (a versioned bucket of the test's own, the pointer in SSM) and a
/// registry holding berth-test/web:1, :2 and :bad.
struct World {
    moto: &'static Moto,
    bucket: String,
    prefix: String,
    registry: Registry,
}

impl World {
    fn new(test: &str) -> World {
        let moto = Moto::shared();
        let name = unique_name(test);
        let bucket = aws::bucket_name("berth-rel", &name);
        aws::block_on(aws::create_versioned_bucket(moto, &bucket));
        let registry = Registry::start();
        for tag in ["1", "2", "bad"] {
            registry.push(&format!("berth-test/web:{tag}"), "berth-test/web", tag);
        }
        World {
            moto,
            bucket,
            prefix: name,
            registry,
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/berth-test/web:{tag}", self.registry.addr)
    }

    fn s3(&self, name: &str) -> String {
        format!("s3://{}/{}/{name}", self.bucket, self.prefix)
    }

    fn put(&self, name: &str, content: &str) {
        aws::block_on(aws::put_object(
            self.moto,
            &self.bucket,
            &format!("{}/{name}", self.prefix),
            content.as_bytes().to_vec(),
        ));
    }

    fn pointer(&self) -> String {
        format!("/{}/release", self.prefix)
    }

    fn point(&self, release: &str) {
        aws::block_on(aws::put_parameter(self.moto, &self.pointer(), release));
    }

    /// The compose file: `web` (routed) and `worker`, both from `image` with app.env.
    fn compose(&self, image: &str, traffic: u16) {
        self.put(
            "compose.yaml",
            &format!(
                "services:\n  web:\n    image: {image}\n    env_file: [app.env]\n    ports: [\"127.0.0.1:{traffic}:8080\"]\n    healthcheck:\n      test: {WEB_HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n      retries: 1\n      start_period: 30s\n  worker:\n    image: {image}\n    env_file: [app.env]\n    command: [\"sleep\", \"3600\"]\n    stop_signal: SIGKILL\n"
            ),
        );
    }
}

/// One instance: its agent, proxy, IMDS, health port, run and state directories.
struct Node {
    p: Project,
    emu: Emulator,
    proxy: Proxy,
    health: SocketAddr,
    _run: tempfile::TempDir,
    _state: tempfile::TempDir,
    docker_config: tempfile::TempDir,
    config: PathBuf,
    agent: Option<Child>,
    log: PathBuf,
}

impl Node {
    /// An instance whose berth.toml reads the world's compose file, env file, pointer and
    /// release store. All instances of a test share the traffic port's number in the compose
    /// file (the first's): the proxy strategy publishes it on an ephemeral port anyway.
    fn new(test: &str, world: &World, traffic: Option<u16>) -> Node {
        let p = Project::new(test);
        let proxy = Proxy::start(None, &[]);
        let port = traffic.unwrap_or(proxy.addr.port());
        let emu = Emulator::start();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let run = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let config = p.write(
            "berth.toml",
            &format!(
                "project = \"{name}\"\ncompose = \"{compose}\"\nenv_files = [\"{env}\"]\nrelease = \"ssm:{pointer}\"\n\
                 manifests = \"s3://{bucket}/{prefix}/\"\nrun_dir = \"{run}\"\nstate_dir = \"{state}\"\n\
                 [health]\nlisten = \"{health}\"\n\
                 [timeouts]\nimds_secs = 5\nfetch_secs = 10\nready_secs = 30\nin_service_secs = 30\n\
                 [upgrade]\nstrategy = \"proxy\"\nverify_secs = 2\ndrain_secs = 5\n\
                 [upgrade.analysis]\nbake_secs = 4\nmin_requests = 30\np99_floor_ms = 2000\n\
                 [upgrade.canary]\nsteps = [25, 50]\nstep_secs = 3\n\
                 [watchdog]\nobserve_secs = 1\n\
                 [proxy]\ncontrol = \"{control}\"\nport = {port}\nhealth_path = \"/healthz\"\n\
                 [registries.\"{registry}\"]\nauth = \"ecr\"\nregistry_id = \"{ACCOUNT_ID}\"\n",
                name = p.name,
                compose = world.s3("compose.yaml"),
                env = world.s3("app.env"),
                pointer = world.pointer(),
                bucket = world.bucket,
                prefix = world.prefix,
                run = run.path().display(),
                state = state.path().display(),
                control = proxy.control.display(),
                registry = world.registry.addr,
            ),
        );
        let log = p.path("agent.log");
        Node {
            p,
            emu,
            proxy,
            health,
            _run: run,
            _state: state,
            docker_config: tempfile::tempdir().unwrap(),
            config,
            agent: None,
            log,
        }
    }

    fn env(&self, world: &World) -> Vec<(String, String)> {
        let mut env = aws::aws_env(world.moto, &self.emu);
        env.push((
            "DOCKER_CONFIG".into(),
            self.docker_config.path().display().to_string(),
        ));
        env
    }

    fn berth(&self, world: &World, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args(args).arg("--config").arg(&self.config);
        aws::apply_env(&mut cmd, &self.env(world));
        run_with_limit(cmd, Duration::from_secs(180))
    }

    /// `berth release create ID --config berth.toml`, as CI runs it.
    fn create(&self, world: &World, id: &str) -> Value {
        let out = self.berth(world, &["release", "create", id, "--commit", "c0ffee"]);
        out.ok();
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
    }

    /// Starts the agent (appending to its log) and waits until it is ready.
    fn start(&mut self, world: &World) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("agent")
            .arg("--config")
            .arg(&self.config)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        aws::apply_env(&mut cmd, &self.env(world));
        self.agent = Some(cmd.spawn().unwrap());
        self.wait_ready();
    }

    fn wait_ready(&self) {
        eventually(
            "the agent to be ready",
            Duration::from_secs(90),
            || match self.status()["phase"].as_str() {
                Some("ready") => Ok(()),
                other => Err(format!("phase {other:?}\n{}", self.log())),
            },
        );
    }

    /// SIGTERM: the agent alone ends (`systemctl restart berth`); the app keeps serving.
    fn stop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            signal(a.id(), "TERM");
            let _ = a.wait();
        }
    }

    fn status(&self) -> Value {
        match std::net::TcpStream::connect(self.health) {
            Ok(_) => serde_json::from_str(&Conn::open(self.health).get("/status").1)
                .unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The running containers of `service` (`web` matches its colors), inspected.
    fn running(&self, service: &str) -> Vec<Value> {
        // A container may go between the listing and its inspect (a color removed).
        self.p
            .container_ids()
            .into_iter()
            .filter_map(|id| {
                let out = docker_try(&["container", "inspect", &id]);
                let list: Value = serde_json::from_str(&out.stdout).ok()?;
                list.get(0).cloned()
            })
            .filter(|c| c["State"]["Running"] == true)
            .filter(|c| {
                label_of(c, "com.docker.compose.service")
                    .is_some_and(|s| s == service || s.starts_with(&format!("{service}-")))
            })
            .collect()
    }

    /// The environment of the one running container of `service`, the variables app.env sets.
    fn env_of(&self, service: &str) -> BTreeMap<String, String> {
        let running = self.running(service);
        assert_eq!(running.len(), 1, "one running {service}: {running:#?}");
        env_of(&running[0])
            .into_iter()
            .filter(|(k, _)| ["VERSION", "ERROR_EVERY", "GREETING"].contains(&k.as_str()))
            .collect()
    }

    fn version(&self) -> String {
        Conn::open(self.proxy.addr)
            .get("/version")
            .1
            .trim()
            .to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// (f) and (c): a pointer with no manifest boots, floating, and says so; then releases pin
/// everything, and an env file edited in S3 without a release changes nothing: not through an
/// agent restart (it resumes, the same containers), not through the watchdog's repair of a
/// removed container, not through a new instance's boot. Only the next release takes it.
#[test]
fn an_env_file_edited_in_s3_changes_nothing_until_a_release_names_it() {
    let world = World::new("rel-pinned");
    let mut a = Node::new("rel-pinned-a", &world, None);
    let traffic = a.proxy.addr.port();
    world.compose(&world.image("1"), traffic);
    world.put("app.env", "VERSION=a\nGREETING=one\n");
    world.point("r0");

    // (f) No manifest for r0: it boots as before, floating, and says so every deploy.
    a.start(&world);
    let status = a.status();
    let floating = status["floating"].as_str().unwrap_or_default().to_string();
    assert!(
        floating.contains("release r0 has no manifest") && floating.contains("float"),
        "{status}"
    );
    assert!(a.log().contains("has no manifest"), "{}", a.log());
    assert_eq!(a.version(), "a");

    // A release: the files as they are now, by version and sha256; each image by digest.
    let created = Instant::now();
    let m = a.create(&world, "r1");
    let create_secs = created.elapsed().as_secs_f64();
    assert_eq!(m["release"], "r1");
    assert_eq!(m["source"]["commit"], "c0ffee");
    assert_eq!(m["compose"]["location"], world.s3("compose.yaml"));
    assert!(m["compose"]["version"].as_str().is_some(), "{m}");
    assert_eq!(m["compose"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(m["env_files"][0]["location"], world.s3("app.env"));
    let digest = m["images"]["web"]["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{m}");
    assert_eq!(m["images"]["web"]["image"], world.image("1"));
    // Written once: the same id again is refused, naming it.
    let again = a.berth(&world, &["release", "create", "r1"]);
    again.expect_code(3);
    assert!(again.error_message().contains("exists"), "{}", again.stderr);
    // `berth release show` prints it back.
    let shown = a.berth(&world, &["release", "show", "r1"]);
    shown.ok();
    assert_eq!(serde_json::from_str::<Value>(&shown.stdout).unwrap(), m);
    // Written over with a plain PUT (what the conditional write of `create` refuses): the
    // release still reads as it was made, its first version.
    let mut forged = m.clone();
    forged["images"]["web"]["image"] = Value::String(world.image("2"));
    world.put("releases/r1.json", &forged.to_string());
    let shown = a.berth(&world, &["release", "show", "r1"]);
    shown.ok();
    assert_eq!(serde_json::from_str::<Value>(&shown.stdout).unwrap(), m);

    world.point("r1");
    let up = a.berth(&world, &["upgrade"]);
    up.ok();
    assert_eq!(a.status()["release"], "r1");
    assert!(a.status()["floating"].is_null(), "{}", a.status());
    // Run by digest, the tag kept in a label for people.
    let web = &a.running("web")[0];
    assert_eq!(
        web["Config"]["Image"],
        format!("{}/berth-test/web@{digest}", world.registry.addr)
    );
    assert_eq!(
        label_of(web, "dev.berth.image").as_deref(),
        Some(world.image("1").as_str())
    );
    let pinned = env(&[("VERSION", "a"), ("GREETING", "one")]);
    assert_eq!(a.env_of("web"), pinned);
    assert_eq!(a.env_of("worker"), pinned);

    // Someone edits app.env in S3 "for the next release".
    world.put("app.env", "VERSION=b\nGREETING=two\n");

    // The agent restarts (systemctl restart berth): it resumes r1 as pinned; nothing moves.
    let before: Vec<String> = a.p.container_ids();
    a.stop();
    a.start(&world);
    assert_eq!(a.status()["release"], "r1");
    assert_eq!(
        a.p.container_ids(),
        before,
        "the restart recreated containers"
    );
    assert_eq!(a.env_of("web"), pinned);
    assert_eq!(a.version(), "a");

    // The watchdog repairs a removed container by deploying the serving release again: r1's.
    let web_id = id_of(&a.running("web")[0]);
    docker(&["rm", "-f", &web_id]);
    eventually(
        "the web container to be recreated",
        Duration::from_secs(60),
        || match a.running("web").as_slice() {
            [c] if id_of(c) != web_id => Ok(()),
            other => Err(format!("{} running\n{}", other.len(), a.log())),
        },
    );
    assert_eq!(a.env_of("web"), pinned);
    eventually(
        "the repaired web to serve",
        Duration::from_secs(30),
        || match a.version().as_str() {
            "a" => Ok(()),
            other => Err(other.to_string()),
        },
    );

    // A new instance (a scale-out) boots the pointer's release as pinned.
    let mut b = Node::new("rel-pinned-b", &world, Some(traffic));
    b.start(&world);
    assert_eq!(b.status()["release"], "r1");
    assert_eq!(b.env_of("web"), pinned);
    assert_eq!(b.env_of("worker"), pinned);
    assert_eq!(b.version(), "a");

    // The next release names the edited file: now it goes live.
    let m2 = a.create(&world, "r2");
    assert_ne!(m2["env_files"][0]["version"], m["env_files"][0]["version"]);
    let up = a.berth(&world, &["upgrade", "--release", "r2"]);
    up.ok();
    assert_eq!(
        a.env_of("web"),
        env(&[("VERSION", "b"), ("GREETING", "two")])
    );
    assert_eq!(a.version(), "b");

    // What the instances said of each release.
    let listed = a.berth(&world, &["releases", "--json"]);
    listed.ok();
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    let said = |release: &str| -> Vec<(String, String)> {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["release"] == release)
            .map(|r| {
                r["reports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| {
                        (
                            x["by"].as_str().unwrap().to_string(),
                            x["event"].as_str().unwrap().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(listed[0]["release"], "r2", "newest first: {listed:#}");
    assert!(
        said("r2").contains(&(aws::INSTANCE_ID.into(), "deployed".into())),
        "{listed:#}"
    );
    assert!(
        said("r1").len() >= 2,
        "a's upgrade and b's boot of r1: {listed:#}"
    );
    eprintln!("release: `berth release create` took {create_secs:.2}s (S3 versions, sha256, one digest from the registry)");
}

/// (a) and (b): a config-only release is a release like an image: it goes through the
/// weighted canary and the analysis. A release whose env breaks the app (1 in 3 answers 500)
/// is rolled back by its numbers, and every service's environment is the previous release's
/// again, the worker's included (it was converged to the bad release beside the new color).
/// `berth rollback` restores the release before, whole, too.
#[test]
fn a_config_only_release_is_judged_like_an_image_and_goes_back_whole() {
    let world = World::new("rel-config");
    let mut a = Node::new("rel-config", &world, None);
    world.compose(&world.image("1"), a.proxy.addr.port());
    world.put("app.env", "VERSION=a\n");
    let r1 = a.create(&world, "r1");
    world.point("r1");
    a.start(&world);
    let load = Load::start(a.proxy.addr, "/cgi-bin/api", 4);
    load.run_for(100);

    // r2 changes only the env file; through the canary (25 %, 50 %), judged, then switched.
    world.put("app.env", "VERSION=b\n");
    let r2 = a.create(&world, "r2");
    // The same compose file and image; only the env file's version moved.
    assert_eq!(r2["compose"], r1["compose"]);
    assert_eq!(r2["images"], r1["images"]);
    assert_ne!(r2["env_files"][0]["version"], r1["env_files"][0]["version"]);
    let started = Instant::now();
    let up = a.berth(&world, &["upgrade", "--release", "r2", "--canary"]);
    up.ok();
    let canary_secs = started.elapsed().as_secs_f64();
    let answer: Value = serde_json::from_str(&up.stdout).unwrap();
    assert_eq!(answer["how"], "switched", "{answer}");
    let analysis = &a.status()["analysis"];
    assert!(
        analysis.is_object(),
        "the canary was judged: {}",
        a.status()
    );
    let r2_env = env(&[("VERSION", "b")]);
    assert_eq!(a.env_of("web"), r2_env);
    assert_eq!(a.env_of("worker"), r2_env);
    load.run_for(100);

    // berth rollback: r1 whole again (its kept color, and the worker converged back).
    let back = a.berth(&world, &["rollback"]);
    back.ok();
    assert_eq!(a.status()["release"], "r1");
    // /status shows r1's objects again: its env file at r1's version.
    let objects = a.status()["objects"].clone();
    let env_version = objects
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["location"] == world.s3("app.env"))
        .map(|o| o["version"].clone());
    assert_eq!(
        env_version,
        Some(r1["env_files"][0]["version"].clone()),
        "{objects}"
    );
    let r1_env = env(&[("VERSION", "a")]);
    assert_eq!(a.env_of("web"), r1_env);
    assert_eq!(a.env_of("worker"), r1_env);
    assert_eq!(a.version(), "a");
    a.berth(&world, &["upgrade", "--release", "r2"]).ok();
    assert_eq!(a.env_of("worker"), r2_env);
    load.run_for(100);

    // r3's env breaks the app: 1 in 3 API answers is a 500. Rolled back by its numbers.
    world.put("app.env", "VERSION=c\nERROR_EVERY=3\n");
    a.create(&world, "r3");
    let bad = a.berth(&world, &["upgrade", "--release", "r3"]);
    bad.expect_code(1);
    assert!(
        bad.error_message()
            .contains("release r3 failed right after the switch"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.error_message().contains("judged by its traffic"),
        "{}",
        bad.stderr
    );
    // The verdict on stdout too, one line (what SSM keeps first).
    let verdict: Value = serde_json::from_str(bad.stdout.trim()).unwrap();
    assert_eq!(verdict["code"], 1);
    assert_eq!(a.status()["release"], "r2");
    assert_eq!(a.env_of("web"), r2_env, "web is r2's again");
    assert_eq!(a.env_of("worker"), r2_env, "the worker is r2's again");
    load.run_for(100);
    let samples = load.finish();
    let failed = failures(&samples);
    assert!(
        failed.iter().all(|f| f.contains("error c")),
        "only r3's own 500s failed: {failed:?}"
    );
    eprintln!(
        "release: a config-only release through a 2-step canary in {canary_secs:.1}s; a bad env rolled back whole; {} requests, {} failed (r3's 500s)",
        samples.len(),
        failed.len()
    );
}

/// (d): the release an upgrade would go back to lost its image at the registry (a lifecycle
/// policy): the upgrade is refused before anything changes, naming the image; with
/// `--allow-no-rollback` it goes on, and says so in its answer and in `/status`.
#[test]
fn a_way_back_whose_image_was_deleted_refuses_the_upgrade_before_the_switch() {
    let world = World::new("rel-ready");
    let mut a = Node::new("rel-ready", &world, None);
    world.compose(&world.image("1"), a.proxy.addr.port());
    world.put("app.env", "VERSION=a\n");
    let m1 = a.create(&world, "r1");
    world.point("r1");
    a.start(&world);
    world.compose(&world.image("2"), a.proxy.addr.port());
    world.put("app.env", "VERSION=b\n");
    a.create(&world, "r2");

    // The way back is whole: the check passes, and says how long it took.
    let ids = a.p.container_ids();
    world.registry.delete(
        "berth-test/web",
        m1["images"]["web"]["digest"].as_str().unwrap(),
    );
    let refused = a.berth(&world, &["upgrade", "--release", "r2"]);
    refused.expect_code(3);
    let message = refused.error_message();
    assert!(
        message.contains("release r1 cannot be restored whole")
            && message.contains(&world.image("1"))
            && message.contains("--allow-no-rollback"),
        "{message}"
    );
    assert_eq!(a.status()["release"], "r1");
    assert_eq!(a.p.container_ids(), ids, "nothing changed");
    assert_eq!(a.version(), "a");

    let anyway = a.berth(
        &world,
        &["upgrade", "--release", "r2", "--allow-no-rollback"],
    );
    anyway.ok();
    let answer: Value = serde_json::from_str(&anyway.stdout).unwrap();
    assert!(
        answer["no_way_back"]
            .as_str()
            .is_some_and(|w| w.contains(&world.image("1"))),
        "{answer}"
    );
    let status = a.status();
    assert_eq!(status["release"], "r2");
    assert!(status["no_rollback"].is_string(), "{status}");
    assert_eq!(a.version(), "b");
    let log = a.log();
    let secs: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rollback readiness checked"))
        .collect();
    eprintln!("release: readiness checks: {secs:?}");
}

/// A bucket that keeps no versions cannot hold a release: `berth release create` says so,
/// naming the bucket and how to turn versioning on, and writes no manifest.
#[test]
fn a_release_in_a_bucket_without_versions_is_refused() {
    let world = World::new("rel-unversioned");
    let a = Node::new("rel-unversioned", &world, None);
    let bucket = format!("{}-nv", world.bucket)
        .chars()
        .take(63)
        .collect::<String>();
    aws::block_on(aws::put_object(
        world.moto,
        &bucket,
        "p/compose.yaml",
        b"services: {}\n".to_vec(),
    ));
    let out = a.berth(
        &world,
        &[
            "release",
            "create",
            "r1",
            "--store",
            &format!("s3://{bucket}/p/"),
            "--compose",
            &format!("s3://{bucket}/p/compose.yaml"),
        ],
    );
    out.expect_code(3);
    let message = out.error_message();
    assert!(
        message.contains(&format!("bucket {bucket} keeps no versions"))
            && message.contains("put-bucket-versioning"),
        "{message}"
    );
    let listed = aws::block_on(async {
        world
            .moto
            .s3()
            .await
            .list_objects_v2()
            .bucket(&bucket)
            .prefix("p/releases/")
            .send()
            .await
            .unwrap()
            .key_count()
    });
    assert_eq!(listed, Some(0), "no manifest written");
}

/// An instance whose boot read the pointer before a rollout moved it (it was on its way into
/// service) reads it once more when it gets there, and deploys the release it names now.
#[test]
fn an_instance_that_reaches_service_after_the_pointer_moved_deploys_the_new_release() {
    let world = World::new("rel-late");
    let mut a = Node::new("rel-late", &world, None);
    world.compose(&world.image("1"), a.proxy.addr.port());
    world.put("app.env", "VERSION=a\n");
    a.create(&world, "r1");
    world.put("app.env", "VERSION=b\n");
    a.create(&world, "r2");
    world.point("r1");
    // In service only once the load balancer's checker has seen two 200s.
    let mut config = std::fs::read_to_string(&a.config).unwrap();
    config.push_str("[load_balancer]\nhealthy_threshold = 2\n");
    std::fs::write(&a.config, config).unwrap();
    a.start(&world);
    assert_eq!(a.status()["release"], "r1");
    assert_eq!(a.status()["in_service"], false);

    world.point("r2");
    for _ in 0..2 {
        let (code, _) = aws::http_with_headers(
            "GET",
            &format!("http://{}/healthz", a.health),
            &[("User-Agent", "ELB-HealthChecker/2.0")],
            None,
        );
        assert_eq!(code, 200);
    }
    eventually(
        "the release the pointer names now",
        Duration::from_secs(60),
        || {
            let s = a.status();
            match (s["release"].as_str(), s["in_service"].as_bool()) {
                (Some("r2"), Some(true)) => Ok(()),
                _ => Err(format!("{s}")),
            }
        },
    );
    assert!(
        a.log()
            .contains("the release pointer moved while this instance booted"),
        "{}",
        a.log()
    );
    assert_eq!(a.env_of("web"), env(&[("VERSION", "b")]));
}
