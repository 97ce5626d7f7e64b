//! The AWS side of the test rig: the emulator in `tests/emulator` (IMDSv2, the AutoScaling
//! lifecycle actions, scripted ELBv2 target health) and moto in server mode (S3, SSM, ECR,
//! ELBv2), each a child process on its own 127.0.0.1 port, stopped when its guard is dropped.
//!
//! Both children also exit by themselves when the test binary goes away, however it goes (they
//! watch their stdin, a pipe from the test process), so a killed test run leaves no server behind.
//!
//! berth reaches them only through the standard variables ([`aws_env`]): `AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_<SERVICE>`, `AWS_EC2_METADATA_SERVICE_ENDPOINT` and the usual credentials.
//! What was found out about moto 5.2 with the Rust SDK:
//! - S3: with an IP-literal endpoint (`http://127.0.0.1:<port>`) the SDK's S3 endpoint rules
//!   choose path-style addressing by themselves (`/<bucket>/<key>`), with or without
//!   `force_path_style`, so no `AWS_ENDPOINT_URL_S3` or other variable is needed; berth's
//!   `s3_path_style = true` changes nothing here. (With `localhost` the SDK would go to
//!   `<bucket>.localhost` unless path-style is forced.) The SDK's default CRC32 checksums work.
//! - ECR's GetAuthorizationToken answers `AWS:<account-id>-auth-token` (account 123456789012),
//!   with `expiresAt` in 2015: a token cache that honours the expiry refetches every time.
//! - ELBv2 DescribeTargetHealth answers `healthy` for any registered target and `unused`
//!   (`Target.NotRegistered`) for others; `HealthCheckPort` is the literal `traffic-port`.
//!   Transitions come from the emulator ([`aws_env_with_elb_emulated`]).
//! - moto has no CompleteLifecycleAction / RecordLifecycleActionHeartbeat (HTTP 500): the
//!   emulator answers them (`AWS_ENDPOINT_URL_AUTO_SCALING`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The account moto and the emulator both use.
pub const ACCOUNT_ID: &str = "123456789012";
/// The region of the rig (moto's and the emulator's default).
pub const REGION: &str = "us-east-1";
/// The emulator's default instance id.
pub const INSTANCE_ID: &str = "i-0123456789abcdef0";
/// The emulator's default AutoScaling group (the `aws:autoscaling:groupName` tag).
pub const ASG_NAME: &str = "berth-asg";
/// The password in moto's ECR tokens (user `AWS`), which the test registry's htpasswd holds.
pub const ECR_PASSWORD: &str = "123456789012-auth-token";

/// How long a server may take to say it is ready.
const START_LIMIT: Duration = Duration::from_secs(30);

fn verbose() -> bool {
    std::env::var_os("BERTH_TEST_VERBOSE").is_some_and(|v| !v.is_empty() && v != "0")
}

fn python() -> String {
    std::env::var("BERTH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Reads the child's first stdout line, `ready <port>`, and returns the port.
fn wait_ready(child: &mut Child, what: &str) -> u16 {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(START_LIMIT) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not start within {START_LIMIT:?}");
        }
    };
    match line.trim().strip_prefix("ready ").map(str::parse::<u16>) {
        Some(Ok(port)) => port,
        _ => {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "{what} did not start (said {line:?}, {status:?}); is it installed? \
                 run tests/setup.sh"
            );
        }
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

// ----- a tiny HTTP/1.1 client -----

/// One HTTP/1.1 request (`Connection: close`) to a plain `http://host:port/path` URL; returns
/// the status and the body. Panics when the server cannot be reached.
pub fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    http_with_headers(method, url, &[], body)
}

/// [`http`] with extra request headers, e.g. `X-aws-ec2-metadata-token`.
pub fn http_with_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, String) {
    try_http(method, url, headers, body).unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// [`http_with_headers`], with the transport error returned instead of a panic.
pub fn try_http(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        let ct = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        request.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("receive: {e}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body)?;
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

fn json_of(what: &str, status: u16, body: &str) -> Value {
    assert_eq!(status, 200, "{what}: HTTP {status}: {body}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"))
}

// ----- the emulator -----

/// The emulator in `tests/emulator/aws_emulator.py` on its own port: IMDSv2, the AutoScaling
/// lifecycle actions and scripted ELBv2 target health. Killed on drop.
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:<port>`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT` and
    /// `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub url: String,
    pub port: u16,
    child: Child,
}

impl Emulator {
    /// The script's path: `<repo>/tests/emulator/aws_emulator.py`.
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/emulator/aws_emulator.py")
    }

    /// Starts an emulator with the default state (instance `i-0123456789abcdef0` in
    /// `us-east-1a`, account 123456789012, `InService`, group `berth-asg`, targets healthy).
    pub fn start() -> Emulator {
        let mut cmd = Command::new(python());
        cmd.arg(Self::script())
            .args(["--port", "0", "--exit-with-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if verbose() {
            cmd.arg("--verbose");
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
        let port = wait_ready(&mut child, "the AWS emulator");
        Emulator {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
        }
    }

    /// Starts an emulator and merges `state` into its default state.
    pub fn start_with(state: Value) -> Emulator {
        let emulator = Self::start();
        emulator.set(state);
        emulator
    }

    /// Merges a JSON object into the state (keys: `instance_id`, `instance_type`, `region`,
    /// `az`, `account_id`, `lifecycle_state`, `tags`, `user_data`, `spot_action`, `iam_role`,
    /// `target_health`, `target_port`, `fail`, `asg_error`, `lifecycle_schedule`; see
    /// tests/emulator/README.md). Returns the state after the merge.
    #[allow(clippy::needless_pass_by_value)] // taken by value so that `set(json!({..}))` reads well
    pub fn set(&self, state: Value) -> Value {
        let (status, body) = http(
            "POST",
            &format!("{}/_emulator/state", self.url),
            Some(&state.to_string()),
        );
        json_of("emulator set", status, &body)
    }

    /// The current state (with the lifecycle schedule applied up to now).
    pub fn state(&self) -> Value {
        let (status, body) = http("GET", &format!("{}/_emulator/state", self.url), None);
        json_of("emulator state", status, &body)
    }

    /// Back to the default state; forgets the recorded calls (tokens stay valid).
    pub fn reset(&self) {
        let (status, body) = http("POST", &format!("{}/_emulator/reset", self.url), None);
        json_of("emulator reset", status, &body);
    }

    /// Invalidates every IMDS token handed out so far (the next request with one gets 401).
    pub fn expire_tokens(&self) {
        let (status, body) = http(
            "POST",
            &format!("{}/_emulator/expire-tokens", self.url),
            None,
        );
        json_of("emulator expire-tokens", status, &body);
    }

    /// Every AWS API call received, in order: `{"service", "action", "params", "time"}`, with
    /// `params` the request's form fields less Action and Version.
    pub fn calls(&self) -> Vec<Value> {
        let (status, body) = http("GET", &format!("{}/_emulator/calls", self.url), None);
        array_of(json_of("emulator calls", status, &body))
    }

    /// The recorded calls of one action, e.g. `CompleteLifecycleAction`.
    pub fn calls_of(&self, action: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|c| c["action"] == action)
            .collect()
    }

    /// Waits until at least `n` calls of `action` were recorded; returns them all.
    pub fn wait_for_calls(&self, action: &str, n: usize, limit: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let calls = self.calls_of(action);
            if calls.len() >= n {
                return calls;
            }
            assert!(
                start.elapsed() < limit,
                "{n} {action} call(s) expected within {limit:?}, got {}: {:?}",
                calls.len(),
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every IMDS request received: `{"method", "path", "token" (bool), "status", "time"}`
    /// (`status` 0: the connection was dropped, `fail = "imds_down"`).
    pub fn imds_requests(&self) -> Vec<Value> {
        let (status, body) = http("GET", &format!("{}/_emulator/imds", self.url), None);
        array_of(json_of("emulator imds", status, &body))
    }

    /// A fresh IMDSv2 token, as an instance's own tools would get it.
    pub fn imds_token(&self) -> String {
        let (status, token) = http_with_headers(
            "PUT",
            &format!("{}/latest/api/token", self.url),
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
            None,
        );
        assert_eq!(status, 200, "token PUT: {token}");
        token
    }

    /// GET `/latest/<path>` with a fresh token: `(status, body)`.
    pub fn imds_get(&self, path: &str) -> (u16, String) {
        let token = self.imds_token();
        http_with_headers(
            "GET",
            &format!("{}/latest/{}", self.url, path.trim_start_matches('/')),
            &[("X-aws-ec2-metadata-token", &token)],
            None,
        )
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn array_of(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        other => panic!("expected a JSON array, got {other}"),
    }
}

// ----- moto -----

/// moto's server (`ThreadedMotoServer`, which `moto_server` also runs) on a port it binds
/// itself, so parallel tests never race for one; it logs only warnings unless
/// BERTH_TEST_VERBOSE is set, and exits when its stdin (a pipe from the test) closes.
const MOTO_RUNNER: &str = include_str!("../emulator/moto_runner.py");

/// moto in server mode on its own 127.0.0.1 port (S3, SSM, ECR, ELBv2...). Killed on drop.
/// Starts stand-in `script` of tests/emulator/ with `args` on a free port, exiting with this
/// process: the child and its `http://127.0.0.1:<port>`.
fn stand_in(script: &str, args: &[String], what: &str) -> (Child, String) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/emulator")
        .join(script);
    let mut child = Command::new(python())
        .arg(script)
        .args(["--port", "0", "--exit-with-stdin"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
    let port = wait_ready(&mut child, what);
    (child, format!("http://127.0.0.1:{port}"))
}

/// The stand-in for SSM Run Command (`tests/emulator/run_command.py`): SendCommand runs the
/// document's script on the instances it has been told of; every other SSM call goes to moto.
#[derive(Debug)]
pub struct RunCommand {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_SSM`.
    pub url: String,
    child: Child,
}

impl RunCommand {
    /// Serving `documents` (name, path of the SSM document's YAML) in front of `moto`.
    pub fn start(moto: &Moto, documents: &[(&str, &Path)]) -> RunCommand {
        RunCommand::start_paged(moto, documents, 50)
    }

    /// [`RunCommand::start`], answering ListCommandInvocations `page` invocations at a time
    /// (SSM's page is 50: a smaller one tries the paging on a small fleet).
    pub fn start_paged(moto: &Moto, documents: &[(&str, &Path)], page: usize) -> RunCommand {
        let mut args = vec![
            "--page-size".to_string(),
            page.to_string(),
            "--moto".to_string(),
            moto.url.clone(),
            "--documents".into(),
        ];
        args.extend(
            documents
                .iter()
                .map(|(name, path)| format!("{name}={}", path.display())),
        );
        let (child, url) = stand_in("run_command.py", &args, "the Run Command stand-in");
        RunCommand { url, child }
    }

    /// Tells it of an instance: `berth` with `config` and `env` runs what is sent to `id`.
    pub fn add_instance(&self, id: &str, config: &Path, env: &[(String, String)]) {
        let env: serde_json::Map<String, Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let body = serde_json::json!({ id: {
            "berth": env!("CARGO_BIN_EXE_berth"),
            "config": config,
            "env": env,
        }});
        let (status, answer) = http(
            "POST",
            &format!("{}/_run_command/instances", self.url),
            Some(&body.to_string()),
        );
        assert_eq!(status, 200, "{answer}");
    }

    /// The SendCommand requests it got (CommandId, DocumentName, Parameters, InstanceIds,
    /// MaxConcurrency, MaxErrors).
    pub fn calls(&self) -> Vec<Value> {
        let (status, body) = http("GET", &format!("{}/_run_command/calls", self.url), None);
        array_of(json_of("calls", status, &body))
    }
}

impl Drop for RunCommand {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// The stand-in for an ELBv2 target group (`tests/emulator/target_group.py`) over HAProxy's
/// backend: RegisterTargets, DeregisterTargets and DescribeTargetHealth drive and read HAProxy's
/// servers through its runtime API, so that registration is what the load balancer does.
#[derive(Debug)]
pub struct TargetGroup {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`.
    pub url: String,
    pub arn: String,
    child: Child,
}

impl TargetGroup {
    /// Target group `arn` as HAProxy's `backend`, driven through its admin socket `admin`.
    pub fn start(admin: &Path, backend: &str, arn: &str) -> TargetGroup {
        let args = [
            "--haproxy-socket".to_string(),
            admin.display().to_string(),
            "--backend".into(),
            backend.into(),
            "--target-group-arn".into(),
            arn.into(),
        ];
        let (child, url) = stand_in("target_group.py", &args, "the target group stand-in");
        TargetGroup {
            url,
            arn: arn.to_string(),
            child,
        }
    }

    /// Registers `targets` (instance id, HAProxy server, port), as an ASG registers its
    /// instances.
    pub fn add(&self, targets: &[(&str, &str, u16)]) {
        let body: serde_json::Map<String, Value> = targets
            .iter()
            .map(|(id, server, port)| {
                (
                    (*id).to_string(),
                    serde_json::json!({"server": server, "port": port}),
                )
            })
            .collect();
        let (status, answer) = http(
            "POST",
            &format!("{}/_target_group/targets", self.url),
            Some(&Value::Object(body).to_string()),
        );
        assert_eq!(status, 200, "{answer}");
    }

    /// Each target's registration changes: `{"target", "event", "time"}`, `event` one of
    /// deregistered, unused, registered, healthy.
    pub fn events(&self) -> Vec<Value> {
        let (status, body) = http("GET", &format!("{}/_target_group/events", self.url), None);
        array_of(json_of("events", status, &body))
    }

    /// DescribeTargetHealth's state for target `id`, as berth would read it.
    pub fn state_of(&self, id: &str) -> String {
        let query = format!(
            "Action=DescribeTargetHealth&Version=2015-12-01&TargetGroupArn={}&Targets.member.1.Id={id}",
            self.arn
        );
        let (status, body) = http("POST", &format!("{}/", self.url), Some(&query));
        assert_eq!(status, 200, "{body}");
        let state = body
            .split_once("<State>")
            .and_then(|(_, rest)| rest.split_once("</State>"))
            .map(|(state, _)| state.to_string());
        state.unwrap_or_else(|| panic!("no state in {body}"))
    }

    /// The ELBv2 calls received: `{"action", "targets", "time"}`.
    pub fn calls(&self) -> Vec<Value> {
        let (status, body) = http("GET", &format!("{}/_target_group/calls", self.url), None);
        array_of(json_of("calls", status, &body))
    }
}

impl Drop for TargetGroup {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// moto keeps everything in memory, per server: tests sharing one ([`Moto::shared`]) isolate
/// themselves by unique bucket and parameter names.
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:<port>`, for `AWS_ENDPOINT_URL`.
    pub url: String,
    pub port: u16,
    child: Child,
}

impl Moto {
    /// Starts a moto server of this test's own (about 1 s on the rig's machine).
    pub fn start() -> Moto {
        let mut child = Command::new(python())
            .args(["-c", MOTO_RUNNER])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python()));
        let port = wait_ready(&mut child, "moto (pip install 'moto[server]')");
        let moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
        };
        let (status, body) = http("GET", &format!("{}/moto-api/", moto.url), None);
        assert_eq!(status, 200, "moto does not answer: {body}");
        moto
    }

    /// One moto server for the whole test binary, started on first use. It is never dropped:
    /// it exits with the test binary (its stdin closes).
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }

    /// An SDK configuration for the test's own calls to this moto: its endpoint, test
    /// credentials, us-east-1.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.url)
            .region(aws_sdk_s3::config::Region::new(REGION))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "berth-tests",
            ))
            .load()
            .await
    }

    /// An S3 client for this moto (path-style addressing).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk_config().await)
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// An SSM client for this moto.
    pub async fn ssm(&self) -> aws_sdk_ssm::Client {
        aws_sdk_ssm::Client::new(&self.sdk_config().await)
    }

    /// An ECR client for this moto.
    pub async fn ecr(&self) -> aws_sdk_ecr::Client {
        aws_sdk_ecr::Client::new(&self.sdk_config().await)
    }

    /// An ELBv2 client for this moto.
    pub async fn elbv2(&self) -> aws_sdk_elasticloadbalancingv2::Client {
        aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk_config().await)
    }

    /// A CloudWatch client for this moto.
    pub async fn cloudwatch(&self) -> aws_sdk_cloudwatch::Client {
        aws_sdk_cloudwatch::Client::new(&self.sdk_config().await)
    }

    /// A metric alarm named `name` (in state INSUFFICIENT_DATA until set).
    pub async fn put_alarm(&self, name: &str) {
        use aws_sdk_cloudwatch::types::{ComparisonOperator, Statistic};
        self.cloudwatch()
            .await
            .put_metric_alarm()
            .alarm_name(name)
            .namespace("Shop")
            .metric_name("QueueDepth")
            .statistic(Statistic::Maximum)
            .period(60)
            .evaluation_periods(1)
            .threshold(100.0)
            .comparison_operator(ComparisonOperator::GreaterThanThreshold)
            .send()
            .await
            .unwrap_or_else(|e| panic!("PutMetricAlarm {name}: {e:?}"));
    }

    /// Sets alarm `name`'s state (`ALARM`, `OK`) with `reason`, as CloudWatch would.
    pub async fn set_alarm(&self, name: &str, state: &str, reason: &str) {
        self.cloudwatch()
            .await
            .set_alarm_state()
            .alarm_name(name)
            .state_value(aws_sdk_cloudwatch::types::StateValue::from(state))
            .state_reason(reason)
            .send()
            .await
            .unwrap_or_else(|e| panic!("SetAlarmState {name}: {e:?}"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

// ----- the environment berth runs in -----

/// The environment of a berth process on the rig: test credentials and us-east-1, S3, SSM, ECR
/// and ELBv2 at moto, AutoScaling and IMDS at the emulator. Apply it with [`apply_env`], which
/// also drops any AWS variable the test process inherited.
pub fn aws_env(moto: &Moto, emulator: &Emulator) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", moto.url.as_str()),
        ("AWS_ENDPOINT_URL_AUTO_SCALING", emulator.url.as_str()),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", emulator.url.as_str()),
        ("AWS_EC2_METADATA_DISABLED", "false"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
    .collect()
}

/// [`aws_env`] with ELBv2 at the emulator too, whose DescribeTargetHealth plays the
/// `target_health` script (moto's always says healthy).
pub fn aws_env_with_elb_emulated(moto: &Moto, emulator: &Emulator) -> Vec<(String, String)> {
    let mut env = aws_env(moto, emulator);
    env.push((
        "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2".to_string(),
        emulator.url.clone(),
    ));
    env
}

/// [`aws_env`] as on an instance: no credentials and no region in the environment, so the
/// SDK's default chains take both from IMDS (the emulator's instance profile and placement).
pub fn aws_env_instance_profile(moto: &Moto, emulator: &Emulator) -> Vec<(String, String)> {
    aws_env(moto, emulator)
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" | "AWS_REGION"
            )
        })
        .collect()
}

/// Sets `env` on `cmd` after removing the AWS variables it would inherit (a developer's
/// profile, session token or endpoints must not leak into a test), and points the shared
/// config and credentials files at nothing.
pub fn apply_env(cmd: &mut Command, env: &[(String, String)]) {
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str() {
            if key.starts_with("AWS_") {
                cmd.env_remove(key);
            }
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/berth-test/aws-config");
    cmd.env(
        "AWS_SHARED_CREDENTIALS_FILE",
        "/nonexistent/berth-test/aws-credentials",
    );
    for (k, v) in env {
        cmd.env(k, v);
    }
}

// ----- test-side helpers against moto -----

/// Runs a future to completion on a fresh current-thread runtime (for the synchronous tests).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(future)
}

/// Creates `bucket` if it is missing.
pub async fn create_bucket(moto: &Moto, bucket: &str) {
    let s3 = moto.s3().await;
    if let Err(e) = s3.create_bucket().bucket(bucket).send().await {
        let service = e.as_service_error();
        let exists = service
            .is_some_and(|s| s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists());
        assert!(exists, "CreateBucket {bucket}: {e:?}");
    }
}

/// Creates `bucket` with versioning on (a release store's, or one holding what releases pin).
pub async fn create_versioned_bucket(moto: &Moto, bucket: &str) {
    create_bucket(moto, bucket).await;
    moto.s3()
        .await
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutBucketVersioning {bucket}: {e:?}"));
}

/// A bucket name of `test`'s unique name: lowercase, dashes, 63 characters at most.
pub fn bucket_name(prefix: &str, name: &str) -> String {
    format!("{prefix}-{}", name.replace('_', "-"))
        .to_lowercase()
        .chars()
        .take(63)
        .collect()
}

/// Puts an object into moto's S3, creating the bucket if it is missing.
pub async fn put_object(moto: &Moto, bucket: &str, key: &str, bytes: impl Into<Vec<u8>>) {
    create_bucket(moto, bucket).await;
    moto.s3()
        .await
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(bytes.into().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutObject s3://{bucket}/{key}: {e:?}"));
}

/// Reads an object back from moto's S3.
pub async fn get_object(moto: &Moto, bucket: &str, key: &str) -> Vec<u8> {
    let out = moto
        .s3()
        .await
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetObject s3://{bucket}/{key}: {e:?}"));
    out.body
        .collect()
        .await
        .expect("the object's body")
        .into_bytes()
        .to_vec()
}

/// Puts (overwrites) a String parameter into moto's SSM. `name` starts with `/`.
pub async fn put_parameter(moto: &Moto, name: &str, value: &str) {
    put_parameter_typed(moto, name, value, aws_sdk_ssm::types::ParameterType::String).await;
}

/// Puts (overwrites) a SecureString parameter into moto's SSM (moto's default KMS key).
pub async fn put_secure_parameter(moto: &Moto, name: &str, value: &str) {
    put_parameter_typed(
        moto,
        name,
        value,
        aws_sdk_ssm::types::ParameterType::SecureString,
    )
    .await;
}

async fn put_parameter_typed(
    moto: &Moto,
    name: &str,
    value: &str,
    kind: aws_sdk_ssm::types::ParameterType,
) {
    moto.ssm()
        .await
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(kind)
        .overwrite(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("PutParameter {name}: {e:?}"));
}

/// moto's ECR credentials from GetAuthorizationToken: `("AWS", "123456789012-auth-token")`.
pub async fn ecr_token(moto: &Moto) -> (String, String) {
    use base64::Engine as _;
    let out = moto
        .ecr()
        .await
        .get_authorization_token()
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetAuthorizationToken: {e:?}"));
    let data = out
        .authorization_data()
        .first()
        .expect("one authorization data entry");
    let token = data.authorization_token().expect("an authorization token");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .expect("a base64 token");
    let decoded = String::from_utf8(decoded).expect("a UTF-8 token");
    let (user, password) = decoded.split_once(':').expect("user:password");
    (user.to_string(), password.to_string())
}

/// The id of moto's default VPC (ELBv2 target groups need one). berth has no EC2 client, so
/// this is a plain query-protocol call ([`ec2_query`]).
pub fn default_vpc(moto: &Moto) -> String {
    let (status, body) = ec2_query(moto, "Action=DescribeVpcs&Version=2016-11-15");
    assert_eq!(status, 200, "DescribeVpcs: {body}");
    let start = body.find("<vpcId>").expect("a VPC in DescribeVpcs") + "<vpcId>".len();
    let end = body[start..].find("</vpcId>").expect("</vpcId>") + start;
    body[start..end].to_string()
}

/// An EC2 query-protocol call to moto (berth has no EC2 client to build one with); moto reads
/// the region from the credential scope and checks no signature.
pub fn ec2_query(moto: &Moto, query: &str) -> (u16, String) {
    http_with_headers(
        "POST",
        &format!("{}/", moto.url),
        &[(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, \
             SignedHeaders=host, Signature=0",
        )],
        Some(query),
    )
}

/// Creates an HTTP target group `name` in moto (health check `/healthz`) with
/// `instance_id:port` registered in it; returns its ARN. moto then says `healthy` for that
/// target, and `unused` (`Target.NotRegistered`) for any other.
pub async fn create_target_group(moto: &Moto, name: &str, instance_id: &str, port: i32) -> String {
    use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetDescription, TargetTypeEnum};
    let vpc = default_vpc(moto);
    let elb = moto.elbv2().await;
    let out = elb
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Http)
        .port(port)
        .vpc_id(vpc)
        .target_type(TargetTypeEnum::Instance)
        .health_check_path("/healthz")
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateTargetGroup {name}: {e:?}"));
    let arn = out
        .target_groups()
        .first()
        .and_then(|g| g.target_group_arn())
        .expect("the target group's ARN")
        .to_string();
    elb.register_targets()
        .target_group_arn(&arn)
        .targets(
            TargetDescription::builder()
                .id(instance_id)
                .port(port)
                .build(),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("RegisterTargets {arn}: {e:?}"));
    arn
}
