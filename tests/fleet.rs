//! The release across a fleet, end to end: `berth rollout` as CI runs it, against instances on
//! this machine. Each instance is a real `berth agent` (not local: IMDS from its own emulator,
//! the release pointer in SSM) with its own `berth proxy`; HAProxy is the ALB in front of them,
//! checking each agent's `/healthz`; moto is S3, SSM and the AutoScaling group (whose instance
//! ids the instances carry); the Run Command stand-in runs the stack's own SSM document
//! (launch-template/ssm-berth-upgrade.yaml) on the instance it names. The rollout reaches all
//! of it through the standard endpoint variables only.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::aws::{self, Emulator, Moto, RunCommand, TargetGroup, ACCOUNT_ID};
use common::registry::Registry;
use common::rig::{answered, web_compose, Haproxy, RELEASED};
use common::traffic::{failures, Load, Proxy};
use common::*;
use serde_json::{json, Value};

const DOCUMENT: &str = "berth-upgrade";

/// One instance: its agent, proxy, IMDS and config.
struct Instance {
    project: Project,
    /// The proxy strategy's proxy (held: it stops with the instance); none with drain.
    _proxy: Option<Proxy>,
    /// Where the load balancer sends its traffic (the proxy, or the web service itself).
    traffic: SocketAddr,
    emulator: Emulator,
    health: SocketAddr,
    config: PathBuf,
    agent: Option<Child>,
    /// ELBv2's endpoint, when the target group is the stand-in's.
    elb: Option<String>,
    /// An empty Docker client config: registry credentials come from ECR's tokens only.
    docker_config: tempfile::TempDir,
}

/// Where a pinned fleet's releases are: a versioned bucket's prefix (the release store) and
/// the registry holding berth-test/web:1, :2 and :bad (ECR's stand-in, tokens from moto).
struct Store {
    registry: Registry,
    bucket: String,
    prefix: String,
}

impl Store {
    fn new(moto: &Moto, name: &str) -> Store {
        let bucket = aws::bucket_name("berth", name);
        aws::block_on(aws::create_versioned_bucket(moto, &bucket));
        let registry = Registry::start();
        for tag in ["1", "2", "bad"] {
            registry.push(&format!("berth-test/web:{tag}"), "berth-test/web", tag);
        }
        Store {
            registry,
            bucket,
            prefix: "releases-of-the-fleet".into(),
        }
    }

    fn url(&self) -> String {
        format!("s3://{}/{}/", self.bucket, self.prefix)
    }
}

impl Instance {
    /// An instance on its own berth-test/web images (releases float), or, with `store`,
    /// on releases pinned there (images from its registry by digest).
    /// An instance whose berth.toml ends with `settings` (tables of their own); its previews'
    /// tokens are derived under `preview_key`, the fleet's one.
    fn new(
        test: &str,
        parameter: &str,
        store: Option<&Store>,
        settings: &str,
        preview_key: &Path,
    ) -> Instance {
        let project = Project::new(test);
        let proxy = Proxy::start(None, &[]);
        let emulator = Emulator::start();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // The release's compose file is every instance's: it publishes one nominal traffic port
        // (proxy.port names it; each instance's proxy listens where it does).
        let nominal = if store.is_some() {
            8080
        } else {
            proxy.addr.port()
        };
        let (image, pinned) = match store {
            Some(st) => (
                format!("{}/{RELEASED}", st.registry.addr),
                format!(
                    "manifests = \"{}\"\n\n[registries.\"{}\"]\nauth = \"ecr\"\nregistry_id = \"{ACCOUNT_ID}\"\n",
                    st.url(),
                    st.registry.addr
                ),
            ),
            None => (RELEASED.to_string(), String::new()),
        };
        project.compose(&web_compose(nominal, &image, &[]));
        let config = project.write(
            "berth.toml",
            &format!(
                "project = \"{name}\"\ncompose = \"{compose}\"\nrelease = \"ssm:{parameter}\"\nrun_dir = \"{run}\"\nstate_dir = \"{state}\"\n{pinned}\
                 [health]\nlisten = \"{health}\"\n\
                 [timeouts]\nimds_secs = 10\nfetch_secs = 10\nready_secs = 30\nin_service_secs = 60\n\
                 [load_balancer]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n\
                 [upgrade]\nstrategy = \"proxy\"\nverify_secs = 2\ndrain_secs = 5\npreview_key = \"{preview_key}\"\n\
                 [upgrade.analysis]\nbake_secs = 3\nmin_requests = 30\np99_floor_ms = 2000\n\
                 [upgrade.canary]\nsteps = [25, 50]\nstep_secs = 8\n\
                 [proxy]\ncontrol = \"{control}\"\nport = {port}\nhealth_path = \"/healthz\"\n{settings}",
                name = project.name,
                compose = project.path("compose.yaml").display(),
                run = project.path("run").display(),
                state = project.path("state").display(),
                control = proxy.control.display(),
                port = nominal,
                preview_key = preview_key.display(),
            ),
        );
        Instance {
            project,
            traffic: proxy.addr,
            _proxy: Some(proxy),
            emulator,
            health,
            config,
            agent: None,
            elb: None,
            docker_config: tempfile::tempdir().unwrap(),
        }
    }

    /// The drain strategy, in target group `arn` (its ELBv2 endpoint set in `elb` before it
    /// boots): the web service published on the traffic port itself.
    fn drained(test: &str, parameter: &str, arn: &str) -> Instance {
        let project = Project::new(test);
        let emulator = Emulator::start();
        let health: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let traffic: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        project.compose(&web_compose(traffic.port(), RELEASED, &[]));
        let config = project.write(
            "berth.toml",
            &format!(
                "project = \"{name}\"\ncompose = \"{compose}\"\nrelease = \"ssm:{parameter}\"\nrun_dir = \"{run}\"\nstate_dir = \"{state}\"\n\
                 [health]\nlisten = \"{health}\"\n\
                 [timeouts]\nimds_secs = 10\nfetch_secs = 10\nready_secs = 30\nin_service_secs = 60\nlb_drain_secs = 15\n\
                 [load_balancer]\ntarget_group_arn = \"{arn}\"\nport = {port}\n\
                 [upgrade]\nstrategy = \"drain\"\n",
                name = project.name,
                compose = project.path("compose.yaml").display(),
                run = project.path("run").display(),
                state = project.path("state").display(),
                port = traffic.port(),
            ),
        );
        Instance {
            project,
            _proxy: None,
            traffic,
            emulator,
            health,
            config,
            agent: None,
            elb: None,
            docker_config: tempfile::tempdir().unwrap(),
        }
    }

    fn env(&self, moto: &Moto) -> Vec<(String, String)> {
        let mut env = aws::aws_env(moto, &self.emulator);
        env.push((
            "DOCKER_CONFIG".to_string(),
            self.docker_config.path().display().to_string(),
        ));
        if let Some(elb) = &self.elb {
            env.push((
                "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2".to_string(),
                elb.clone(),
            ));
        }
        env
    }

    /// `berth SUB ARGS` against this instance's agent.
    fn berth(&self, sub: &str, args: &[&str], moto: &Moto) -> Output {
        run_with_limit(self.berth_cmd(sub, args, moto), Duration::from_secs(120))
    }

    fn berth_cmd(&self, sub: &str, args: &[&str], moto: &Moto) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg(sub).arg("--config").arg(&self.config).args(args);
        aws::apply_env(&mut cmd, &self.env(moto));
        cmd
    }

    /// Boots the agent as instance `id` and waits until it serves (the load balancer's checks
    /// counted, phase ready).
    fn boot(&mut self, id: &str, moto: &Moto) {
        self.emulator.set(json!({"instance_id": id}));
        let log = std::fs::File::create(self.project.path("agent.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.arg("agent")
            .arg("--config")
            .arg(&self.config)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        aws::apply_env(&mut cmd, &self.env(moto));
        self.agent = Some(cmd.spawn().unwrap());
        eventually(
            &format!("{id} to serve"),
            Duration::from_secs(90),
            || match self.status()["phase"].as_str() {
                Some("ready") => Ok(()),
                other => Err(format!("phase {other:?}\n{}", self.log())),
            },
        );
    }

    fn status(&self) -> Value {
        match std::net::TcpStream::connect(self.health) {
            Ok(_) => {
                let (_, body) = common::traffic::Conn::open(self.health).get("/status");
                serde_json::from_str(&body).unwrap_or(Value::Null)
            }
            Err(_) => Value::Null,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.project.path("agent.log")).unwrap_or_default()
    }

    /// Every release any container of this instance has carried (its label), running or not.
    fn releases_seen(&self) -> Vec<String> {
        let filter = format!("label={PROJECT_LABEL}={}", self.project.name);
        let mut seen: Vec<String> = docker(&[
            "ps",
            "-a",
            "--filter",
            &filter,
            "--format",
            r#"{{.Label "dev.berth.release"}}"#,
        ])
        .lines()
        .map(String::from)
        .collect();
        seen.sort();
        seen.dedup();
        seen
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// The fleet: moto with the group, the Run Command stand-in, instances, the load balancer.
struct Fleet {
    moto: Moto,
    run_command: RunCommand,
    group: String,
    parameter: String,
    instances: Vec<Instance>,
    /// The group's instance ids, in the order of `instances` (booted ones).
    ids: Vec<String>,
    lb: Haproxy,
    dir: tempfile::TempDir,
    /// A pinned fleet's release store and registry.
    store: Option<Store>,
}

impl Fleet {
    /// `booted` instances of the group on `release`, and `spare` more known to the load
    /// balancer but not started (for an instance that launches during a rollout). Releases
    /// float (no store): the compose file and the image tag are the release.
    fn new(test: &str, booted: usize, spare: usize, release: &str) -> Fleet {
        Fleet::build(test, booted, spare, release, false, "")
    }

    /// As [`Fleet::new`], each release made with `berth release create` into a store, its
    /// images from the registry by digest; `release` is made before the instances boot.
    fn pinned(test: &str, booted: usize, spare: usize, release: &str) -> Fleet {
        Fleet::build(test, booted, spare, release, true, "")
    }

    fn build(
        test: &str,
        booted: usize,
        spare: usize,
        release: &str,
        pinned: bool,
        settings: &str,
    ) -> Fleet {
        Fleet::build_on(
            Moto::start(),
            test,
            booted,
            spare,
            release,
            pinned,
            settings,
        )
    }

    /// As [`Fleet::build`], on a moto already started (what the instances need there from
    /// their first boot, put).
    fn build_on(
        moto: Moto,
        test: &str,
        booted: usize,
        spare: usize,
        release: &str,
        pinned: bool,
        settings: &str,
    ) -> Fleet {
        let name = unique_name(test);
        let group = format!("{name}-asg");
        let parameter = format!("/{name}/release");
        let document = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../launch-template/ssm-berth-upgrade.yaml");
        // Pages of 2: every send of 3 or more instances takes ListCommandInvocations' paging.
        let run_command = RunCommand::start_paged(&moto, &[(DOCUMENT, &document)], 2);
        aws::block_on(aws::put_parameter(&moto, &parameter, release));
        let store = pinned.then(|| Store::new(&moto, &name));
        let ids = create_group(&moto, &name, &group, i32::try_from(booted).unwrap());
        let dir = tempfile::tempdir().unwrap();
        // The fleet's preview key, one file every instance reads (on AWS: an SSM SecureString).
        let preview_key = dir.path().join("preview.key");
        std::fs::write(&preview_key, format!("fleet preview key of {name}\n")).unwrap();
        let instances: Vec<Instance> = (0..booted + spare)
            .map(|_| Instance::new(test, &parameter, store.as_ref(), settings, &preview_key))
            .collect();
        // One AutoScaling endpoint, as on AWS: the lifecycle actions here, the rest moto's.
        for inst in &instances {
            inst.emulator.set(json!({
                "autoscaling_upstream": moto.url,
                "tags": {"aws:autoscaling:groupName": group},
            }));
        }
        let lb = Haproxy::over(
            &instances
                .iter()
                .map(|i| (i.traffic, i.health))
                .collect::<Vec<_>>(),
        );
        let mut fleet = Fleet {
            moto,
            run_command,
            group,
            parameter,
            instances,
            ids: vec![],
            lb,
            dir,
            store,
        };
        if fleet.store.is_some() {
            fleet.create(release);
        }
        for id in ids {
            fleet.boot(&id);
        }
        fleet
    }

    /// `berth release create RELEASE` as CI runs it (with an instance's berth.toml: the store,
    /// the compose file, the registry); the seconds it took.
    fn create(&self, release: &str) -> f64 {
        let inst = &self.instances[0];
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args([
            "release", "create", release, "--commit", "f1ee7", "--config",
        ])
        .arg(&inst.config);
        aws::apply_env(&mut cmd, &inst.env(&self.moto));
        run_with_limit(cmd, Duration::from_secs(120)).ok();
        started.elapsed().as_secs_f64()
    }

    /// Boots the next instance as `id`, and tells Run Command of it.
    fn boot(&mut self, id: &str) {
        let n = self.ids.len();
        let inst = &mut self.instances[n];
        inst.boot(id, &self.moto);
        self.run_command
            .add_instance(id, &inst.config, &inst.env(&self.moto));
        self.ids.push(id.to_string());
    }

    /// `berth rollout RELEASE`, as CI runs it.
    fn rollout_cmd(&self, release: &str, extra: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
        cmd.args([
            "rollout",
            release,
            "--group",
            &self.group,
            "--document",
            DOCUMENT,
            "--parameter",
            &self.parameter,
            "--poll-secs",
            "1",
            "--command-secs",
            "300",
        ])
        .args(extra)
        .env("BERTH_LOG", "info");
        if let Some(store) = &self.store {
            cmd.args(["--store".to_string(), store.url()]);
        }
        let env: Vec<(String, String)> = [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", aws::REGION),
            ("AWS_ENDPOINT_URL", self.moto.url.as_str()),
            ("AWS_ENDPOINT_URL_SSM", self.run_command.url.as_str()),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
        aws::apply_env(&mut cmd, &env);
        if let Some(store) = &self.store {
            // As CI logs in to its registries: the way back's images are looked up there.
            let creds = common::registry::docker_config(
                &store.registry.addr,
                common::registry::USER,
                &store.registry.password,
            );
            cmd.env("DOCKER_CONFIG", creds.path());
            std::mem::forget(creds);
        }
        cmd
    }

    fn rollout(&self, release: &str, extra: &[&str]) -> Output {
        run_with_limit(self.rollout_cmd(release, extra), Duration::from_secs(400))
    }

    fn pointer(&self) -> Option<String> {
        parameter(&self.moto, &self.parameter)
    }
}

/// A parameter's value in moto, if it exists.
fn parameter(moto: &Moto, name: &str) -> Option<String> {
    aws::block_on(async {
        let ssm = moto.ssm().await;
        ssm.get_parameter()
            .name(name)
            .send()
            .await
            .ok()
            .and_then(|p| p.parameter().and_then(|p| p.value()).map(String::from))
    })
}

/// An AutoScaling group of `n` instances in moto (a launch template first, as the stack has);
/// their ids, sorted as the rollout sorts them.
fn create_group(moto: &Moto, name: &str, group: &str, n: i32) -> Vec<String> {
    let (status, body) = aws::ec2_query(
        moto,
        &format!(
            "Action=CreateLaunchTemplate&Version=2016-11-15&LaunchTemplateName={name}\
             &LaunchTemplateData.ImageId=ami-12c6146b&LaunchTemplateData.InstanceType=t3.micro"
        ),
    );
    assert_eq!(status, 200, "CreateLaunchTemplate: {body}");
    aws::block_on(async {
        let asg = aws_sdk_autoscaling::Client::new(&moto.sdk_config().await);
        asg.create_auto_scaling_group()
            .auto_scaling_group_name(group)
            .launch_template(
                aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
                    .launch_template_name(name)
                    .build(),
            )
            .min_size(n)
            .max_size(n + 2)
            .desired_capacity(n)
            .availability_zones("us-east-1a")
            .send()
            .await
            .unwrap();
    });
    group_ids(moto, group)
}

/// The group's instances as moto has them.
fn group_members(moto: &Moto, group: &str) -> Vec<aws_sdk_autoscaling::types::Instance> {
    aws::block_on(async {
        let asg = aws_sdk_autoscaling::Client::new(&moto.sdk_config().await);
        let out = asg
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(group)
            .send()
            .await
            .unwrap();
        out.auto_scaling_groups()[0].instances().to_vec()
    })
}

fn group_ids(moto: &Moto, group: &str) -> Vec<String> {
    let mut ids: Vec<String> = group_members(moto, group)
        .iter()
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    ids.sort();
    ids
}

fn scale_to(moto: &Moto, group: &str, n: i32) {
    aws::block_on(async {
        let asg = aws_sdk_autoscaling::Client::new(&moto.sdk_config().await);
        asg.set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(n)
            .send()
            .await
            .unwrap();
    });
}

/// Sets a server of the load balancer's backend to `state` (ready, drain, maint) over its
/// runtime API.
fn lb_server(lb: &Haproxy, server: &str, state: &str) {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(&lb.admin).unwrap();
    writeln!(conn, "set server app/{server} state {state}").unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.trim().is_empty(), "haproxy: {answer}");
}

/// Puts an instance into Standby (out of service, the group's capacity one less) or back.
fn standby(moto: &Moto, group: &str, id: &str, enter: bool) {
    aws::block_on(async {
        let asg = aws_sdk_autoscaling::Client::new(&moto.sdk_config().await);
        if enter {
            asg.enter_standby()
                .auto_scaling_group_name(group)
                .instance_ids(id)
                .should_decrement_desired_capacity(true)
                .send()
                .await
                .unwrap();
        } else {
            asg.exit_standby()
                .auto_scaling_group_name(group)
                .instance_ids(id)
                .send()
                .await
                .unwrap();
        }
    });
}

fn summary(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e})\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout, out.stderr
        )
    })
}

fn write_smoke(dir: &Path, lb: SocketAddr) -> (String, PathBuf) {
    let marker = dir.join("smoke-passed");
    // Through the load balancer: a request carrying the preview's token reaches it on whichever
    // instance it lands (six: every instance twice, round robin), as every instance derived the
    // same token; one naming only the release, or nothing, stays on release 1.
    let smoke = format!(
        "set -e; for i in 1 2 3 4 5 6; do \
           test \"$(curl -fsS -H \"X-Berth-Preview: $BERTH_PREVIEW_TOKEN\" http://{lb}/cgi-bin/api)\" = \"api $BERTH_PREVIEW_RELEASE\"; \
           test \"$(curl -fsS -H \"X-Berth-Preview: $BERTH_PREVIEW_RELEASE\" http://{lb}/cgi-bin/api)\" != \"api $BERTH_PREVIEW_RELEASE\"; \
           test \"$(curl -fsS http://{lb}/cgi-bin/api)\" = 'api 1'; \
         done; touch {}",
        marker.display()
    );
    (smoke, marker)
}

/// A good release, pinned (made by `berth release create`), checked for its way back, then
/// previewed on every instance and smoke-tested through the load balancer, then the canary,
/// then the rest, under continuous load with 0 failed requests. Meanwhile a second rollout is
/// refused naming the first; an instance that was booting (on release 1) when the rollout
/// listed the group reaches service during it and is sent the release afterwards; and every
/// send to three instances or more reads its verdicts over pages (the stand-in pages by 2).
#[test]
fn a_good_release_reaches_the_whole_fleet_one_canary_first_losing_nothing() {
    let mut fleet = Fleet::pinned("fleet-good", 3, 1, "1");
    // A fourth instance boots on release 1 and waits out of service (Standby stands in for
    // Pending:Wait, which moto does not model): the rollout lists the group without it, and
    // the load balancer sends it nothing but health checks until it is in service.
    lb_server(&fleet.lb, "i3", "drain");
    scale_to(&fleet.moto, &fleet.group, 4);
    let late_id = group_ids(&fleet.moto, &fleet.group)
        .into_iter()
        .find(|i| !fleet.ids.contains(i))
        .unwrap();
    standby(&fleet.moto, &fleet.group, &late_id, true);
    fleet.boot(&late_id);
    assert_eq!(fleet.instances[3].status()["release"], "1");
    let create_secs = fleet.create("2");
    let load = Load::start(fleet.lb.addr, "/cgi-bin/api", 4);
    load.run_for(200);
    let (smoke, marker) = write_smoke(fleet.dir.path(), fleet.lb.addr);

    let started = Instant::now();
    let first = fleet.rollout_cmd("2", &["--smoke", &smoke]);
    let first = std::thread::spawn(move || run_with_limit(first, Duration::from_secs(400)));
    let lock = format!("{}.rollout", fleet.parameter);
    eventually("the first rollout's lock", Duration::from_secs(30), || {
        parameter(&fleet.moto, &lock).ok_or_else(|| "none yet".to_string())
    });
    let second = fleet.rollout("2", &[]);
    second.expect_code(7);
    assert!(
        second
            .error_message()
            .contains("another rollout runs (the rollout of 2 from"),
        "{}",
        second.stderr
    );

    // Once the smoke test passed (its ordinary requests all met release 1), the booting
    // instance reaches service, still on release 1: the rollout never sent it anything.
    let waited = Instant::now();
    while !marker.exists() {
        if first.is_finished() {
            let out = first.join().unwrap();
            panic!(
                "the rollout ended before the smoke test passed: {}\n{}",
                out.code, out.stderr
            );
        }
        assert!(
            waited.elapsed() < Duration::from_secs(120),
            "the smoke test did not pass within 120 s (pointer {:?})",
            fleet.pointer()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    standby(&fleet.moto, &fleet.group, &late_id, false);
    lb_server(&fleet.lb, "i3", "ready");

    let out = first.join().unwrap();
    let took = started.elapsed();
    out.ok();
    load.run_for(200);
    let samples = load.finish();
    let s = summary(&out);
    let readiness = s["readiness_secs"].as_f64().unwrap_or(-1.0);
    eprintln!(
        "fleet: rollout of 2 to 3 instances (+1 that reached service meanwhile) in {:.1}s (canary's verdict at {:.1}s; the way back checked in {readiness:.2}s; `berth release create` {create_secs:.2}s), {} requests through the load balancer, {} failed",
        took.as_secs_f64(),
        s["canary_secs"].as_f64().unwrap_or(0.0),
        samples.len(),
        failures(&samples).len()
    );
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert_eq!(s["outcome"], "released", "{s}");
    assert_eq!(s["previous"], "1");
    let before: Vec<String> = fleet.ids[..3].to_vec();
    assert_eq!(s["canary"], before[0]);
    assert!(readiness >= 0.0, "the way back was checked: {s}");
    let verdicts: Vec<(&str, &str)> = s["upgrades"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["instance"].as_str().unwrap(),
                u["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        before
            .iter()
            .map(|i| (i.as_str(), "Success"))
            .collect::<Vec<_>>()
    );
    assert_eq!(s["late"][0]["instance"], late_id.as_str(), "{s}");
    assert_eq!(s["late"][0]["status"], "Success", "{s}");
    assert!(marker.exists(), "the smoke test passed against the preview");
    for inst in &fleet.instances {
        assert_eq!(inst.status()["release"], "2", "{}", inst.log());
    }
    let tail = &samples[samples.len() - 100..];
    assert_eq!(answered(tail, "api 2"), 100);
    // Canary first: the first SendCommands are the preview to all, then the canary alone,
    // then the rest, then the one that came late.
    let calls = fleet.run_command.calls();
    let actions: Vec<(String, usize)> = calls
        .iter()
        .map(|c| {
            (
                c["Parameters"]["action"][0]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                c["InstanceIds"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("preview".to_string(), 3),
            ("promote".to_string(), 1),
            ("upgrade".to_string(), 2),
            ("upgrade".to_string(), 1)
        ]
    );
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    assert_eq!(
        parameter(&fleet.moto, &lock),
        None,
        "the lock is given back"
    );
    // What the rollout and every instance said of release 2.
    let inst = &fleet.instances[0];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["releases", "--json", "--config"])
        .arg(&inst.config);
    aws::apply_env(&mut cmd, &inst.env(&fleet.moto));
    let listed = run_with_limit(cmd, Duration::from_secs(60));
    listed.ok();
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["release"], "2", "{listed:#}");
    let said: Vec<(String, String)> = listed[0]["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["by"].as_str().unwrap().to_string(),
                r["event"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        said.contains(&("rollout".into(), "released".into())),
        "{said:?}"
    );
    for id in &fleet.ids {
        assert!(
            said.contains(&(id.clone(), "deployed".into())),
            "{id}: {said:?}"
        );
    }
}

/// A release that answers 1 in 20 API requests with 500 but passes every health check, rolled
/// out with `--weighted`: the canary instance's weighted canary gives it a quarter of that
/// instance's sessions, its agent catches it by its numbers beside release 1 and sends them
/// back; the pointer goes back; the other instances never run it.
#[test]
fn a_release_failing_by_its_numbers_stops_at_the_canary() {
    let fleet = Fleet::new("fleet-bad", 3, 0, "1");
    // Enough requests that the canary's steps see its 1 in 20: with 4 clients and 5 s steps
    // its quarter of one instance's traffic got about 3 of its 500s before the switch, and
    // one cold run in several had too few to decide on until after it.
    let load = Load::start(fleet.lb.addr, "/cgi-bin/api", 6);
    load.run_for(300);
    let out = fleet.rollout("bad", &["--weighted"]);
    load.run_for(200);
    let samples = load.finish();
    out.expect_code(1);
    let s = summary(&out);
    eprintln!(
        "fleet: the bad release caught and rolled back on the canary {:.1}s after the rollout started; {} requests, {} of them its 500s",
        s["canary_secs"].as_f64().unwrap_or(0.0),
        samples.len(),
        failures(&samples).len()
    );
    assert_eq!(s["outcome"], "rolled back", "{s}");
    let canary = &fleet.ids[0];
    assert_eq!(s["canary"], canary.as_str());
    assert_eq!(s["upgrades"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["upgrades"][0]["status"], "Failed", "{s}");
    assert!(
        s["error"]
            .as_str()
            // At its first step or its second (steps 25, 50): the sequential test decides
            // when its counts allow, before the switch either way.
            .is_some_and(|e| (e.contains("failed its canary at 25 % of sessions")
                || e.contains("failed its canary at 50 % of sessions"))
                && e.contains("judged by its traffic: 5xx on")),
        "{s}"
    );
    assert_eq!(fleet.pointer().as_deref(), Some("1"));
    // Only the canary was ever sent the release (through its weighted canary); the others
    // never ran it.
    for c in fleet.run_command.calls() {
        assert_eq!(c["InstanceIds"], json!([canary]), "{c}");
    }
    assert!(
        fleet
            .run_command
            .calls()
            .iter()
            .any(|c| c["Parameters"]["action"] == json!(["canary"])),
        "{:?}",
        fleet.run_command.calls()
    );
    for inst in &fleet.instances[1..] {
        assert_eq!(inst.releases_seen(), ["1"]);
    }
    for inst in &fleet.instances {
        assert_eq!(inst.status()["release"], "1");
    }
    // What failed is the bad release's own 500s, on the canary, while it was judged.
    let failed = failures(&samples);
    assert!(!failed.is_empty());
    let other: Vec<&String> = failed.iter().filter(|f| *f != "500 error bad").collect();
    assert_eq!(other, Vec::<&String>::new());
    assert_eq!(
        answered(&samples[samples.len() - 100..], "api 1"),
        100,
        "release 1 everywhere at the end"
    );
}

/// The drain strategy with a target group, behind a load balancer that would fail open: each
/// instance leaves by DeregisterTargets (the stand-in puts its HAProxy server in maintenance)
/// only while another target is healthy, waits for `unused`, recreates, registers again and
/// waits for `healthy`. Two upgrades started together therefore run one after the other, and
/// nothing is lost; with the other target unhealthy, an upgrade is refused and the instance
/// keeps serving.
#[test]
fn drain_by_deregistration_never_takes_the_last_healthy_target_out() {
    let moto = Moto::start();
    let name = unique_name("fleet-deregister");
    let parameter = format!("/{name}/release");
    aws::block_on(aws::put_parameter(&moto, &parameter, "1"));
    let arn = format!(
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{name}/0123456789abcdef"
    );
    let ids = ["i-0aaaaaaaaaaaaaaa1", "i-0bbbbbbbbbbbbbbb2"];
    let mut instances = vec![
        Instance::drained("fleet-deregister-a", &parameter, &arn),
        Instance::drained("fleet-deregister-b", &parameter, &arn),
    ];
    let lb = Haproxy::over(
        &instances
            .iter()
            .map(|i| (i.traffic, i.health))
            .collect::<Vec<_>>(),
    );
    let tg = TargetGroup::start(&lb.admin, "app", &arn);
    tg.add(&[
        (ids[0], "i0", instances[0].traffic.port()),
        (ids[1], "i1", instances[1].traffic.port()),
    ]);
    for (inst, id) in instances.iter_mut().zip(ids) {
        inst.elb = Some(tg.url.clone());
        inst.boot(id, &moto);
    }
    eventually("both targets healthy", Duration::from_secs(30), || {
        let both = (0..4).all(|_| common::rig::status_of(lb.addr, "/version") == Some(200));
        if both {
            Ok(())
        } else {
            Err("a request failed".into())
        }
    });
    // Holding: each agent saw its target healthy (and answers upgrades).
    for inst in &instances {
        eventually(
            "the agent in service",
            Duration::from_secs(30),
            || match inst.status()["in_service"].as_bool() {
                Some(true) => Ok(()),
                _ => Err(inst.log()),
            },
        );
    }
    let load = Load::start(lb.addr, "/version", 4);
    load.run_for(200);

    // Both upgrades asked for at once: the second waits for the first to come back.
    let started = Instant::now();
    let (a, b) = (&instances[0], &instances[1]);
    let (out_a, out_b) = std::thread::scope(|s| {
        let first = s.spawn(|| a.berth("upgrade", &["--release", "2"], &moto));
        eventually("instance a deregistered", Duration::from_secs(30), || {
            let calls = tg.calls();
            let out = calls.iter().any(|c| c["action"] == "DeregisterTargets");
            // Done already (failed: its output says why, below).
            match out || first.is_finished() {
                true => Ok(()),
                false => Err(format!("{calls:?}\n{}", a.log())),
            }
        });
        let second = s.spawn(|| b.berth("upgrade", &["--release", "2"], &moto));
        (first.join().unwrap(), second.join().unwrap())
    });
    let took = started.elapsed();
    out_a.ok();
    out_b.ok();
    load.run_for(200);
    for inst in &instances {
        assert_eq!(inst.status()["release"], "2", "{}", inst.log());
    }
    assert!(
        b.log().contains("no other healthy target yet"),
        "b waited for a: {}",
        b.log()
    );
    // Each target's way out and back, in order, and never both out at once.
    let events = tg.events();
    let span = |id: &str| -> Vec<(String, f64)> {
        events
            .iter()
            .filter(|e| e["target"] == id)
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_string(),
                    e["time"].as_f64().unwrap(),
                )
            })
            .collect()
    };
    let (sa, sb) = (span(ids[0]), span(ids[1]));
    for s in [&sa, &sb] {
        let order: Vec<&str> = s.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(
            order,
            ["deregistered", "unused", "registered", "healthy"],
            "{events:?}"
        );
    }
    assert!(
        sa[3].1 <= sb[0].1,
        "b left before a was healthy again: {events:?}"
    );

    // An agent killed while its instance is deregistered (before its recreate): the next one,
    // finding release 2 serving as the pointer now says, changes nothing, yet registers the
    // instance again by the mark the first one left.
    let deregistrations = |tg: &TargetGroup| {
        tg.calls()
            .iter()
            .filter(|c| c["action"] == "DeregisterTargets")
            .count()
    };
    let cmd = instances[0].berth_cmd("upgrade", &["--release", "1"], &moto);
    let cut = std::thread::spawn(move || run_with_limit(cmd, Duration::from_secs(120)));
    eventually(
        "a deregistered again",
        Duration::from_secs(30),
        || match deregistrations(&tg) {
            3 => Ok(()),
            n => Err(format!("{n} deregistrations")),
        },
    );
    let mut killed = instances[0].agent.take().unwrap();
    killed.kill().unwrap();
    killed.wait().unwrap();
    assert_ne!(cut.join().unwrap().code, 0, "the upgrade was cut short");
    aws::block_on(aws::put_parameter(&moto, &parameter, "2"));
    instances[0].boot(ids[0], &moto);
    eventually("a back in the group", Duration::from_secs(60), || {
        let a = &instances[0];
        match (
            tg.state_of(ids[0]).as_str(),
            a.status()["in_service"].as_bool(),
        ) {
            ("healthy", Some(true)) => Ok(()),
            other => Err(format!("{other:?}\n{}", a.log())),
        }
    });
    assert!(
        !instances[0].project.path("state/deregistered").exists(),
        "the mark is gone once registered"
    );
    assert_eq!(
        instances[0].status()["release"],
        "2",
        "the pointer's release"
    );

    // The other target unhealthy (its agent gone, so its health checks fail): an upgrade of a
    // is refused, a stays registered and serves.
    let mut b = instances.pop().unwrap();
    if let Some(mut agent) = b.agent.take() {
        agent.kill().unwrap();
        agent.wait().unwrap();
    }
    eventually("b unhealthy", Duration::from_secs(20), || {
        match tg.state_of(ids[1]).as_str() {
            "unhealthy" => Ok(()),
            other => Err(other.to_string()),
        }
    });
    let a = &instances[0];
    let before_refusal = deregistrations(&tg);
    let refused = a.berth("upgrade", &["--release", "1"], &moto);
    refused.expect_code(1);
    let msg = refused.error_message();
    assert!(
        msg.contains(&format!(
            "no other target of target group {arn} became healthy within 15s"
        )) && msg.contains(&format!("{} unhealthy", ids[1]))
            && msg.contains(&format!(
                "instance {} stays registered and keeps serving",
                ids[0]
            )),
        "{msg}"
    );
    load.run_for(200);
    let samples = load.finish();
    assert_eq!(failures(&samples), Vec::<String>::new(), "failed requests");
    assert_eq!(a.status()["release"], "2");
    assert_eq!(
        deregistrations(&tg),
        before_refusal,
        "the refused upgrade deregistered nothing"
    );
    eprintln!(
        "deregistration: two upgrades, the second asked while the first was out, done one after the other in {:.1} s; 0 of {} requests failed",
        took.as_secs_f64(),
        samples.len()
    );
    drop(b);
}

/// Each instance's health in the group, as moto has it, by id.
fn group_health(moto: &Moto, group: &str) -> std::collections::BTreeMap<String, String> {
    group_members(moto, group)
        .iter()
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_string(),
                i.health_status().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Makes the instance's web container fail its healthcheck for good (it has no restart
/// policy, so the watchdog cannot repair it).
fn break_app(inst: &Instance) {
    let filter = format!("label={PROJECT_LABEL}={}", inst.project.name);
    let ids = docker(&["ps", "-q", "--filter", &filter]);
    for id in ids.lines() {
        docker(&["exec", id, "rm", "-f", "/www/healthz"]);
    }
}

#[test]
fn the_fleet_brake_lets_one_of_three_report_itself_unhealthy_and_holds_back_the_rest() {
    let settings = "[watchdog]\nobserve_secs = 1\nrepair_secs = 4\n";
    let fleet = Fleet::build("fleet-brake", 3, 0, "1", false, settings);
    let (a, b, c) = (&fleet.ids[0], &fleet.ids[1], &fleet.ids[2]);
    let health = || group_health(&fleet.moto, &fleet.group);
    assert!(health().values().all(|h| h == "Healthy"), "{:?}", health());

    // One instance alone breaks: it reports itself (the catch).
    break_app(&fleet.instances[0]);
    eventually(
        "the broken instance to report itself unhealthy",
        Duration::from_secs(30),
        || match health().get(a).map(String::as_str) {
            Some("Unhealthy") => Ok(()),
            other => Err(format!("{other:?}\n{}", fleet.instances[0].log())),
        },
    );
    // Then the other two break together, as in an outage all of them see: one of three is
    // already out (30 %: one at a time), so both hold back and only log.
    break_app(&fleet.instances[1]);
    break_app(&fleet.instances[2]);
    for inst in &fleet.instances[1..] {
        eventually(
            "the fleet brake to hold a report back",
            Duration::from_secs(30),
            || match inst.log().contains("fleet brake") {
                true => Ok(()),
                false => Err(inst.log()),
            },
        );
    }
    let now = health();
    assert_eq!(now.get(a).map(String::as_str), Some("Unhealthy"), "{now:?}");
    assert_eq!(now.get(b).map(String::as_str), Some("Healthy"), "{now:?}");
    assert_eq!(now.get(c).map(String::as_str), Some("Healthy"), "{now:?}");
    for inst in &fleet.instances[1..] {
        let log = inst.log();
        assert!(log.contains("1 of the group's 3 instances"), "{log}");
        assert!(!log.contains("reported Unhealthy"), "{log}");
        // Still 503 for the load balancer: the brake holds back the report, not the verdict.
        assert_eq!(inst.status()["phase"], "failed", "{log}");
    }
}

/// A pinned release's compose file: berth-test/web:`tag` from the store's registry answering
/// `release` (so that each release is a new container), and, with `migration` (its phase and
/// whether it succeeds), a one-shot `migrate` service the web service waits for, which writes
/// one line per run into the database stand-in (`db/runs`, shared by the fleet).
fn release_compose(
    store: &Store,
    release: &str,
    tag: &str,
    migration: Option<(&str, bool)>,
    db: &Path,
) -> String {
    let image = format!("{}/berth-test/web:{tag}", store.registry.addr);
    let mut yaml = web_compose(8080, &image, &[("VERSION", release)]);
    if let Some((phase, ok)) = migration {
        yaml.push_str(&format!(
            "    depends_on:\n      migrate:\n        condition: service_completed_successfully\n  \
             migrate:\n    image: {image}\n    command: [\"sh\", \"-c\", \"echo migrating {release}; echo {release} >> /db/runs; exit {code}\"]\n    \
             volumes: [\"{db}:/db\"]\n    labels:\n      dev.berth.migration: {phase}\n",
            code = if ok { 0 } else { 1 },
            db = db.display(),
        ));
    }
    yaml
}

/// A rollout that failed: its exit code and outcome as expected, its error saying each of
/// `says`; its summary.
fn failed(out: &Output, code: i32, outcome: &str, says: &[&str]) -> Value {
    out.expect_code(code);
    let s = summary(out);
    eprintln!(
        "fleet: release {} {} after {:.1}s (the canary's verdict at {:.1}s): {}",
        s["release"],
        s["outcome"],
        s["seconds"].as_f64().unwrap_or(0.0),
        s["canary_secs"].as_f64().unwrap_or(0.0),
        s["error"]
    );
    assert_eq!(s["outcome"], outcome, "{s}");
    let error = s["error"].as_str().unwrap_or_default();
    for said in says {
        assert!(error.contains(said), "{said:?} not in: {s}");
    }
    s
}

/// The releases the database stand-in saw migrate, one per run.
fn migrations_run(db: &Path) -> Vec<String> {
    std::fs::read_to_string(db.join("runs"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Releases that know about their database and their alarms, across a pinned fleet of two:
/// an expand migration runs once for the fleet (on the canary, before it takes traffic); one
/// that fails stops the rollout before any traffic moves; a failing `after_healthy` hook stops
/// the release on the canary; an alarm going to ALARM during the bake sends the fleet back (and
/// one already in ALARM refuses the next rollout); a contract release failing on its canary is
/// not rolled back, and `berth rollback` needs `--force` to go back across it.
#[test]
fn migrations_hooks_and_alarms_gate_releases_across_the_fleet() {
    let db = tempfile::tempdir().unwrap();
    // The hook checks the new release where only it reaches it, and refuses release 4.
    let settings = format!(
        "[policy]\nbind_prefixes = [\"{db}\"]\n\
         [upgrade.alarms]\nnames = [\"shop-errors\"]\ncheck_secs = 1\n\
         [upgrade.hooks.after_healthy]\n\
         command = '[ \"$BERTH_RELEASE\" != 4 ] && curl -fsS \"http://${{BERTH_BACKENDS%%,*}}/version\"'\n\
         timeout_secs = 20\n\
         [upgrade.hooks.after_switch]\n\
         command = 'echo \"$BERTH_RELEASE from $BERTH_PREVIOUS_RELEASE\" >> {db}/switches'\n\
         [upgrade.hooks.after_rollback]\n\
         command = 'echo \"$BERTH_RELEASE after $BERTH_PREVIOUS_RELEASE\" >> {db}/rollbacks'\n",
        db = db.path().display()
    );
    // The instances' own alarm gate ([upgrade.alarms]): it must exist before they upgrade.
    let moto = Moto::start();
    aws::block_on(moto.put_alarm("shop-errors"));
    aws::block_on(moto.set_alarm("shop-errors", "OK", "fine"));
    let fleet = Fleet::build_on(moto, "fleet-migrate", 2, 0, "1", true, &settings);
    let store = fleet.store.as_ref().unwrap();
    let write = |release: &str, tag: &str, migration: Option<(&str, bool)>| {
        fleet.instances[0].project.compose(&release_compose(
            store,
            release,
            tag,
            migration,
            db.path(),
        ));
        fleet.create(release);
    };
    let serving = |i: usize| fleet.instances[i].status()["release"].clone();
    let load = Load::start(fleet.lb.addr, "/cgi-bin/api", 4);
    let (canary, other) = (&fleet.ids[0], &fleet.ids[1]);

    // 2: an expand migration, run once for the fleet, on the canary.
    write("2", "2", Some(("expand", true)));
    let started = Instant::now();
    let out = fleet.rollout("2", &[]);
    out.ok();
    let s = summary(&out);
    eprintln!(
        "fleet: release 2 with its migration rolled out in {:.1}s (canary {:.1}s): {s}",
        started.elapsed().as_secs_f64(),
        s["canary_secs"].as_f64().unwrap_or(0.0)
    );
    let said = |i: usize| -> String {
        fleet.instances[i]
            .log()
            .lines()
            .filter(|l| !l.contains("hook passed"))
            .skip_while(|l| !l.contains("release=3"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        migrations_run(db.path()),
        ["2"],
        "exactly once\n{}\n---\n{}",
        said(0),
        said(1)
    );
    assert_eq!(s["migration"]["service"], "migrate", "{s}");
    assert_eq!(s["migration"]["phase"], "expand", "{s}");
    assert_eq!(s["migration"]["ran_on"], canary.as_str(), "{s}");
    assert_eq!(s["migration"]["exit"], 0, "{s}");
    assert_eq!((serving(0), serving(1)), (json!("2"), json!("2")));
    assert!(
        fleet.instances[1].log().contains("left out here"),
        "{}",
        fleet.instances[1].log()
    );
    // Its output stays on the canary, 0600, under the run directory.
    let output = fleet.instances[0].project.path("run/migrations/2.log");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", output.display());
    // The release list shows the migration, its phase and its run.
    let inst = &fleet.instances[0];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["releases", "--config"]).arg(&inst.config);
    aws::apply_env(&mut cmd, &inst.env(&fleet.moto));
    let listed = run_with_limit(cmd, Duration::from_secs(60));
    listed.ok();
    // Its last lines are kept beside the release in the store, never printed.
    assert!(!listed.stdout.contains("migrating 2"), "{}", listed.stdout);
    let s3 = aws::block_on(fleet.moto.s3());
    let prefix = format!("{}/reports/2/", store.prefix);
    let kept = aws::block_on(async {
        let list = s3
            .list_objects_v2()
            .bucket(&store.bucket)
            .prefix(&prefix)
            .send()
            .await
            .unwrap();
        let key = list
            .contents()
            .iter()
            .filter_map(|o| o.key())
            .find(|k| k.ends_with("-migration-output.log"))
            .unwrap_or_else(|| panic!("no output kept under {prefix}"))
            .to_string();
        let got = s3
            .get_object()
            .bucket(&store.bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        String::from_utf8(got.body.collect().await.unwrap().to_vec()).unwrap()
    });
    assert!(kept.contains("migrating 2"), "{kept:?}");
    assert!(
        listed.stdout.contains("migration: migrate (expand)")
            && listed
                .stdout
                .contains(&format!("{canary}: migrated (migrate, exit 0"))
            && listed.stdout.contains("-migration-output.log"),
        "{}",
        listed.stdout
    );

    // 3: its migration fails on the canary: no traffic moves, every instance stays on 2.
    write("3", "2", Some(("expand", false)));
    let out = fleet.rollout("3", &[]);
    failed(
        &out,
        1,
        "rolled back",
        &["service migrate exited with code 1"],
    );
    assert_eq!(
        migrations_run(db.path()),
        ["2", "3"],
        "{}\n---\n{}",
        said(0),
        said(1)
    );
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    assert_eq!((serving(0), serving(1)), (json!("2"), json!("2")));
    assert!(!fleet.instances[1]
        .releases_seen()
        .contains(&"3".to_string()));

    // 4: the after_healthy hook refuses it on the canary, before any traffic.
    write("4", "2", None);
    let out = fleet.rollout("4", &[]);
    failed(
        &out,
        1,
        "rolled back",
        &["after_healthy hook", "exited with code 1"],
    );
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    assert_eq!((serving(0), serving(1)), (json!("2"), json!("2")));
    assert!(fleet.instances[0]
        .project
        .path("run/hooks/after_healthy.log")
        .exists());

    // 5: an alarm goes to ALARM during the bake after the canary: the fleet goes back.
    aws::block_on(fleet.moto.put_alarm("shop-queue"));
    aws::block_on(fleet.moto.set_alarm("shop-queue", "OK", "fine"));
    write("5", "2", None);
    let cmd = fleet.rollout_cmd("5", &["--alarm", "shop-queue", "--bake-secs", "120"]);
    let rollout = std::thread::spawn(move || run_with_limit(cmd, Duration::from_secs(400)));
    eventually(
        "the canary to serve 5",
        Duration::from_secs(120),
        || match serving(0) {
            v if v == json!("5") => Ok(()),
            v => Err(format!("{v}")),
        },
    );
    let fired = Instant::now();
    aws::block_on(fleet.moto.set_alarm(
        "shop-queue",
        "ALARM",
        "Threshold Crossed: 250 messages waiting",
    ));
    let out = rollout.join().unwrap();
    eprintln!(
        "fleet: an alarm during the bake ended the rollout of 5 {:.1}s after it fired",
        fired.elapsed().as_secs_f64()
    );
    out.expect_code(1);
    let s = summary(&out);
    assert_eq!(s["outcome"], "rolled back", "{s}");
    assert!(
        // The canary's command may still be answering when the alarm fires, or the bake
        // has begun: either way the release fails, naming the alarm and its reason.
        s["error"].as_str().is_some_and(|e| {
            (e.starts_with("during the canary: ")
            || e.starts_with("during the bake: "))
            && e.contains(
                "CloudWatch alarm shop-queue is in ALARM: Threshold Crossed: 250 messages waiting"
            )
        }),
        "{s}"
    );
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    assert_eq!((serving(0), serving(1)), (json!("2"), json!("2")));
    assert!(!fleet.instances[1]
        .releases_seen()
        .contains(&"5".to_string()));
    // Still in ALARM: the next rollout refuses before anything moves.
    let calls = fleet.run_command.calls().len();
    let out = fleet.rollout("5", &["--alarm", "shop-queue"]);
    out.expect_code(1);
    assert!(
        out.error_message()
            .contains("an alarm is in ALARM before anything moved: shop-queue"),
        "{}",
        out.stderr
    );
    assert_eq!(fleet.run_command.calls().len(), calls, "nothing was sent");
    aws::block_on(fleet.moto.set_alarm("shop-queue", "OK", "drained"));

    // 7: the instances' own alarm goes to ALARM while the canary watches it: the canary
    // switches back by itself, and the rollout stops there.
    write("7", "2", None);
    let cmd = fleet.rollout_cmd("7", &[]);
    let rollout = std::thread::spawn(move || run_with_limit(cmd, Duration::from_secs(400)));
    eventually("the canary to watch 7", Duration::from_secs(120), || {
        let a = fleet.instances[0].status()["analysis"].clone();
        match (a["release"].as_str(), a["verdict"].as_str()) {
            (Some("7"), Some("watching")) => Ok(()),
            _ => Err(format!("{a}")),
        }
    });
    aws::block_on(fleet.moto.set_alarm(
        "shop-errors",
        "ALARM",
        "Threshold Crossed: checkout errors 12 > 5",
    ));
    let out = rollout.join().unwrap();
    failed(
        &out,
        1,
        "rolled back",
        &[
            "rolled back to 2",
            "CloudWatch alarm shop-errors is in ALARM: Threshold Crossed: checkout errors 12 > 5",
        ],
    );
    assert_eq!(fleet.pointer().as_deref(), Some("2"));
    assert_eq!((serving(0), serving(1)), (json!("2"), json!("2")));
    aws::block_on(fleet.moto.set_alarm("shop-errors", "OK", "fixed"));
    // The hooks after the switch and after the rollback ran where they should: every switch
    // to 2 and to 7 (boots switch to 1), and the canary's own rollback from 7.
    let lines = |name: &str| -> Vec<String> {
        let mut l: Vec<String> = std::fs::read_to_string(db.path().join(name))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        l.sort();
        l
    };
    assert_eq!(
        lines("switches")
            .into_iter()
            .filter(|l| !l.starts_with("1 "))
            .collect::<Vec<_>>(),
        ["2 from 1", "2 from 1", "2 from 5", "5 from 2", "7 from 2"],
    );
    assert!(
        lines("rollbacks").contains(&"2 after 7".to_string()),
        "{:?}",
        lines("rollbacks")
    );

    // 6: a contract migration, then 500s on the canary: not rolled back; a human decides.
    write("6", "bad", Some(("contract", true)));
    let out = fleet.rollout("6", &[]);
    let s = failed(
        &out,
        8,
        "stopped, not rolled back",
        &["contract migration migrate has run"],
    );
    assert!(
        s["upgrades"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("NOT rolled back")),
        "{s}"
    );
    assert_eq!(fleet.pointer().as_deref(), Some("6"));
    assert_eq!((serving(0), serving(1)), (json!("6"), json!("2")));
    assert_eq!(migrations_run(db.path()), ["2", "3", "6"]);
    // berth rollback on the canary: refused, saying what it risks; then forced.
    let r = fleet.instances[0].berth("rollback", &[], &fleet.moto);
    r.expect_code(3);
    assert!(
        r.error_message()
            .contains("ran a contract migration (migrate)"),
        "{}",
        r.stderr
    );
    let r = fleet.instances[0].berth("rollback", &["--force"], &fleet.moto);
    r.ok();
    assert_eq!(serving(0), json!("2"));
    load.finish();
    let _ = other;
}
