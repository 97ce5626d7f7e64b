#!/usr/bin/env python3
"""An instance in a box: the real .deb and the launch template's user-data, run by cloud-init in
a Debian container that boots systemd as PID 1, against moto, an authenticating registry and
the IMDS/lifecycle emulator. Asserts what an instance must do (boot, journal, hardening, the
proxy's restarts, the agent's restart that leaves the app serving, a self-upgrade through the
SSM document, a reboot in which the agent leaves, `berth leave`); see tests/box/README.md.

    python3 tests/box/box_test.py --deb target/.../berth_X_amd64.deb [--image berth-test/box:1]
                                  [--run-id ID]

tests/box/test.sh builds the image and runs this. Exit 0: every assertion held; 1: one failed
(the message says which, then the box's journal and logs follow); 2: the rig could not start.
"""

import argparse
import base64
import calendar
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import benchlib  # noqa: E402  (shared with the benchmarks)
import streams  # noqa: E402  (tests/box/streams.py: SSE, WebSocket, new connections)
from benchlib import die_with_parent, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EMULATOR = ROOT / "tests" / "emulator" / "aws_emulator.py"
MOTO_RUNNER = ROOT / "tests" / "emulator" / "moto_runner.py"
TEMPLATE = ROOT / "launch-template" / "berth.yaml"
SSM_DOCUMENT = ROOT / "launch-template" / "ssm-berth-upgrade.yaml"
OPS_DOCUMENT = ROOT / "launch-template" / "ssm-berth-operations.yaml"
SIGN = ROOT / "packaging" / "sign.py"

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"
INSTANCE_ID = "i-0123456789abcdef0"  # the emulator's
ASG_NAME = "berth-asg"  # the emulator's instance tag
LAUNCH_HOOK = "berth-launch"
ECR_PASSWORD = f"{ACCOUNT_ID}-auth-token"  # moto's GetAuthorizationToken password (user AWS)
LOCAL_IMAGE = "berth-test/web:1"  # built by tests/setup.sh
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
BOX_LABEL = "dev.berth.box"
HOST_STATE = "/var/lib/berth"  # the box's /var/lib/berth, shared with the host (see create_box)
ELB_CHECKER = "ELB-HealthChecker/2.0"
CLIENTS = 4

T0 = time.monotonic()

class Failed(Exception):
    """An assertion about the instance did not hold."""


class RigError(Exception):
    """The rig itself could not be set up."""


def log(msg):
    print(f"box [{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        raise Failed(msg)


def run(*cmd, check_rc=True, timeout=120):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        raise RigError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def docker(*args, **kw):
    return run("docker", *args, **kw).stdout


def http_get(port, path, headers=None, timeout=5):
    """(status, body) of one GET on a new connection; (0, error) when it fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def docker_time(text):
    """Nanoseconds since the epoch of a Docker timestamp (RFC 3339 in UTC, up to 9 fraction
    digits, trailing zeros dropped: text does not compare as a time)."""
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z", text.strip())
    if not m:
        raise RigError(f"not a Docker timestamp: {text!r}")
    *fields, frac = m.groups()
    return calendar.timegm(tuple(int(f) for f in fields)) * 10**9 + int((frac or "0").ljust(9, "0"))


def wait_for(what, limit, probe, interval=0.1):
    """Polls probe() until it returns something truthy; returns it. Fails after limit s."""
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise Failed(f"{what}: not within {limit} s (last: {last!r})")


# ---------------------------------------------------------------------------------------------
# Traffic: the ALB's health checker and keep-alive clients.


class Checker(threading.Thread):
    """GET /healthz every 0.5 s with the ALB checker's User-Agent, as a target group does (berth
    counts these answers to decide it is in service, and later that it is drained)."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.samples = []  # (monotonic time, status; 0: no answer)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            status, _ = http_get(self.port, "/healthz", {"User-Agent": ELB_CHECKER}, timeout=2)
            self.samples.append((time.monotonic(), status))
            self.stopping.wait(0.5)

    def between(self, start, end):
        return [s for t, s in self.samples if start <= t <= end]


class Load(benchlib.Load):
    """CLIENTS keep-alive clients on the traffic port, each GET / in a loop (2 ms apart, as the
    Rust tests' load), reconnecting when the server says Connection: close. Every request is
    recorded; a failure is an error (refused, reset, closed without an answer) or a non-2xx."""

    def __init__(self, port):
        super().__init__(port, "/", CLIENTS, 0.002)

    def served(self):
        return sum(1 for s in list(self.samples) if s[2])

    def wait_served(self, n, limit=30):
        start = self.served()
        wait_for(f"{n} more requests served", limit, lambda: self.served() - start >= n, 0.05)

    def finish(self):
        """(requests served, [(when, what) for each failed one])."""
        samples = self.stop(15)
        return sum(1 for s in samples if s[2]), [(s[1], s[3]) for s in samples if not s[2]]


def summary_of(failures):
    kinds = {}
    for _, what in failures:
        key = re.sub(r"\d{4,}", "N", what)[:80]
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{n}x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1]))


def tally(checks):
    """The checker's answers counted: '12x 200, 2x 503, 1x no answer'."""
    kinds = {}
    for status in checks:
        key = str(status) if status else "no answer"
        kinds[key] = kinds.get(key, 0) + 1
    return ", ".join(f"{n}x {k}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"


# ---------------------------------------------------------------------------------------------
# The rig: moto, the emulator, the registry, the release.


class Rig:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.run_id = args.run_id
        self.project = f"berth-box-{self.run_id}"
        self.box = f"berth-box-{self.run_id}-instance"
        self.children = []
        self.pulled = []
        self.secret = "s3cr3t-" + secrets.token_hex(8)
        self.bucket = f"berth-box-{self.run_id}-{secrets.token_hex(4)}"
        self.health = free_port()
        self.traffic = free_port()
        self.timings = {}
        self.notes = []

    # --- servers ---

    def spawn_ready(self, what, cmd):
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             preexec_fn=die_with_parent)
        self.children.append(p)
        line = p.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            raise RigError(f"{what} did not start (said {line!r}); run tests/setup.sh")
        return f"http://127.0.0.1:{line[1]}"

    def start_servers(self):
        self.emulator = self.spawn_ready("the emulator", [sys.executable, str(EMULATOR), "--port", "0", "--exit-with-stdin"])
        self.moto = self.spawn_ready("moto", [sys.executable, str(MOTO_RUNNER)])
        reg_dir = self.work / "registry"
        reg_dir.mkdir()
        htpasswd = run("htpasswd", "-Bbn", "AWS", ECR_PASSWORD).stdout
        (reg_dir / "htpasswd").write_text(htpasswd)
        port = free_port()
        self.registry = f"127.0.0.1:{port}"
        (reg_dir / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {reg_dir}\n"
            f"http:\n  addr: {self.registry}\nauth:\n  htpasswd:\n    realm: berth-box\n    path: {reg_dir}/htpasswd\n")
        self.children.append(subprocess.Popen(
            ["docker-registry", "serve", str(reg_dir / "config.yml")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent))
        wait_for("the registry listens", 10, lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0)
        log(f"moto {self.moto}, emulator {self.emulator}, registry {self.registry} (htpasswd: AWS / moto's ECR token)")

    def stop_servers(self):
        for p in self.children:
            try:
                if p.stdin:
                    p.stdin.close()
                p.terminate()
                p.wait(timeout=10)
            except Exception:
                p.kill()

    def emu(self, path, body=None):
        import urllib.request

        req = urllib.request.Request(f"{self.emulator}/_emulator/{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    def aws(self, service):
        import boto3

        return boto3.client(service, endpoint_url=self.moto, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    # --- the release, the image, the package ---

    def push_image(self):
        """berth-test/web:1 as <registry>/berth-box/web:1, removed locally so that only a pull
        (with ECR-style credentials, which berth gets from moto) brings it back."""
        cfg = self.work / "docker-config"
        cfg.mkdir()
        auth = base64.b64encode(f"AWS:{ECR_PASSWORD}".encode()).decode()
        (cfg / "config.json").write_text(json.dumps({"auths": {self.registry: {"auth": auth}}}))
        ref = f"{self.registry}/berth-box/web:1"
        docker("tag", LOCAL_IMAGE, ref)
        self.pulled.append(ref)
        last = None
        for _ in range(40):  # the registry may listen a moment before it answers pushes
            p = run("docker", "--config", str(cfg), "push", ref, check_rc=False)
            if p.returncode == 0:
                break
            last = p.stderr.strip()
            time.sleep(0.25)
        else:
            raise RigError(f"docker push {ref}: {last}")
        docker("rmi", ref)

    def compose(self):
        image = f"{self.registry}/berth-box/web:${{RELEASE}}"
        hc = ('    healthcheck:\n      test: ["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/healthz"]\n'
              "      interval: 1s\n      timeout: 2s\n      retries: 3\n      start_period: 30s\n")
        return (
            "# The box's release: a database stand-in and the API, both berth-test/web.\n"
            "services:\n"
            f"  db:\n    image: {image}\n    restart: unless-stopped\n"
            # A relative bind: the project directory is on disk (/var/lib/berth), not on /run.
            "    volumes: [\"./data:/data\"]\n"
            f"{hc}"
            f"  api:\n    image: {image}\n    env_file: [app.env]\n"
            f"    ports: [\"127.0.0.1:{self.traffic}:8080\"]\n"
            "    depends_on:\n      db:\n        condition: service_healthy\n"
            f"    restart: unless-stopped\n{hc}"
        )

    def berth_toml(self):
        """The launch template's berth.toml, with what the box needs instead: its own ports on
        127.0.0.1 (the box shares the host's network), the registry's auth (not an ECR host
        name), and a target group of moto's (which calls any registered target healthy), while
        the checker above plays the ALB's health checks."""
        return f"""# /etc/berth/berth.toml, written by the launch template's user-data (tests/box).
project = "{self.project}"
compose = "s3://{self.bucket}/{self.project}/compose.yaml"
env_files = ["s3://{self.bucket}/{self.project}/app.env"]
release = "ssm:/{self.project}/release"
release_var = "RELEASE"
manifests = "s3://{self.bucket}/{self.project}/"

[health]
listen = "127.0.0.1:{self.health}"
path = "/healthz"

[lifecycle]
hook = "{LAUNCH_HOOK}"
terminate_hook = "berth-terminate"
group = "{ASG_NAME}"
heartbeat_secs = 60

[load_balancer]
target_group_arn = "{self.target_group}"
port = {self.traffic}
healthy_threshold = 2
unhealthy_threshold = 2

[timeouts]
ready_secs = 120
in_service_secs = 120

[upgrade]
strategy = "proxy"
drain_secs = 5

[proxy]
port = {self.traffic}
health_path = "/healthz"

[registries."{self.registry}"]
auth = "ecr"
registry_id = "{ACCOUNT_ID}"

[policy]
# As the launch template's: images from the one registry only.
registries = ["{self.registry}"]
"""

    def user_data(self, package_uri, sha256):
        """The launch template's user-data as CloudFormation renders it: the template's own
        header (Fn::Sub) with the box's values and berth.toml, then user-data.sh as embedded."""
        import yaml

        doc = yaml.safe_load(TEMPLATE.read_text())
        user_data = doc["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
        separator, parts = user_data["Fn::Base64"]["Fn::Join"]
        values = {"Strategy": "proxy", "BerthPackageUri": package_uri, "BerthPackageSha256": sha256,
                  "ConfigPrefix": self.project,
                  "AWS::Region": REGION, "AWS::StackName": "berth-box", "HealthPort": str(self.health)}

        def sub(form):
            # Fn::Sub's two forms: a string, or [string, {name: value}] (the config bucket).
            text, names = (form, {}) if isinstance(form, str) else form
            local = {name: self.bucket for name in names}
            return re.sub(r"\$\{([^}!]+)\}",
                          lambda m: local.get(m.group(1), values.get(m.group(1), f"<{m.group(1)}>")), text)

        out = separator.join(sub(p["Fn::Sub"]) if isinstance(p, dict) else p for p in parts)
        # The box listens on loopback only (it shares the host's network): berth.socket's
        # address follows the box's berth.toml, as the template's follows its own.
        listen = f"BERTH_HEALTH_LISTEN='0.0.0.0:{self.health}'"
        if out.count(listen) != 1:
            raise RigError(f"the template's user-data sets no single {listen}")
        out = out.replace(listen, f"BERTH_HEALTH_LISTEN='127.0.0.1:{self.health}'")
        heredoc = re.compile(r"(BERTH_CONFIG=\$\(cat <<'BERTH_TOML'\n)(.*?)(\nBERTH_TOML\n\))", re.S)
        if len(heredoc.findall(out)) != 1:
            raise RigError("the template's user-data has no single BERTH_CONFIG heredoc")
        out = heredoc.sub(lambda m: m.group(1) + self.berth_toml().rstrip("\n") + m.group(3), out)
        leftover = re.findall(r"<[A-Za-z:]+>", out.split("BERTH_TOML", 1)[0])
        if leftover:
            raise RigError(f"user-data header: no box value for {leftover}")
        return out

    def put_release(self):
        s3, ssm = self.aws("s3"), self.aws("ssm")
        s3.create_bucket(Bucket=self.bucket)
        s3.put_bucket_versioning(Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket=self.bucket, Key=f"{self.project}/compose.yaml", Body=self.compose().encode())
        s3.put_object(Bucket=self.bucket, Key=f"{self.project}/app.env",
                      Body=f"DB_PASSWORD={self.secret}\nGREETING=hello-from-s3\n".encode())
        ssm.put_parameter(Name=f"/{self.project}/release", Value="1", Type="String")
        elb = self.aws("elbv2")
        vpc = self.aws("ec2").describe_vpcs()["Vpcs"][0]["VpcId"]
        self.target_group = elb.create_target_group(
            Name=f"berth-box-{self.run_id}"[:32], Protocol="HTTP", Port=self.traffic, VpcId=vpc,
            TargetType="instance", HealthCheckPath="/healthz")["TargetGroups"][0]["TargetGroupArn"]
        elb.register_targets(TargetGroupArn=self.target_group,
                             Targets=[{"Id": INSTANCE_ID, "Port": self.traffic}])
        self.make_release("1")
        deb = Path(self.args.deb)
        data = deb.read_bytes()
        key = f"artifacts/{deb.name}"
        s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        self.deb_sha256 = hashlib.sha256(data).hexdigest()
        self.package_uri = f"s3://{self.bucket}/{key}"
        log(f"release in moto: s3://{self.bucket}/{self.project}/{{compose.yaml,app.env}}, "
            f"ssm:/{self.project}/release = 1, {self.package_uri} (sha256 {self.deb_sha256[:12]}...)")

    def make_release(self, release):
        """`berth release create` with the berth the .deb carries, as CI runs it: the compose
        file and env file pinned in the versioned bucket, the image by digest at the registry."""
        root = self.work / "berth-from-deb"
        if not root.exists():
            run("dpkg-deb", "-x", self.args.deb, str(root))
        store = f"s3://{self.bucket}/{self.project}/"
        env = dict(os.environ, AWS_ENDPOINT_URL=self.moto, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing", AWS_REGION=REGION, AWS_EC2_METADATA_DISABLED="true",
                   DOCKER_CONFIG=str(self.work / "docker-config"))
        p = subprocess.run(
            [str(root / "usr/bin/berth"), "release", "create", release, "--store", store,
             "--compose", f"{store}compose.yaml", "--env-file", f"{store}app.env", "--commit", "box"],
            capture_output=True, text=True, timeout=120, env=env)
        if p.returncode != 0:
            raise RigError(f"berth release create {release} exited {p.returncode}: {p.stderr.strip()}")
        manifest = json.loads(p.stdout)
        self.digest = manifest["images"]["api"]["digest"]
        log(f"release {release} made by the packaged berth: {store}releases/{release}.json "
            f"(api at {self.digest[:19]}...)")

    # --- the box ---

    def box_exec(self, *cmd, check_rc=True, timeout=120):
        return run("docker", "exec", self.box, *cmd, check_rc=check_rc, timeout=timeout)

    def sh(self, script, check_rc=True, timeout=120):
        return self.box_exec("sh", "-c", script, check_rc=check_rc, timeout=timeout).stdout

    def create_box(self):
        """The box, created but not started: the NoCloud seed and the stand-ins' environment go
        in first, as an AMI's cloud-init finds its user-data at the first boot."""
        Path(HOST_STATE).mkdir(mode=0o700, parents=True, exist_ok=True)
        docker(
            "create", "--name", self.box, "--label", f"{BOX_LABEL}={self.run_id}",
            "-e", "container=docker", "--cgroupns=host",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "--network", "host", "-v", "/var/run/docker.sock:/run/docker.sock",
            # berth's state directory at the same path as the host's: the containers it starts
            # run on the host's dockerd, which finds a relative bind's source (the project
            # directory, which berth makes) by that path, as it finds the socket.
            "-v", f"{HOST_STATE}:/var/lib/berth",
            # Without it systemd cannot set up the units' namespaces (ProtectSystem=, PrivateTmp=
            # ...) and runs them without, so the hardening would go untested.
            "--cap-add", "SYS_ADMIN",
            "--stop-signal", "SIGRTMIN+3", "--stop-timeout", "120",
            self.args.image, "/sbin/init",
        )
        files = self.work / "files"
        seed = files / "var/lib/cloud/seed/nocloud"
        seed.mkdir(parents=True)
        (seed / "meta-data").write_text(f"instance-id: {INSTANCE_ID}\nlocal-hostname: berth-box\n")
        self.rendered = self.user_data(self.package_uri, self.deb_sha256)
        (seed / "user-data").write_text(self.rendered)
        # What stands in for AWS's endpoints on an instance. Credentials and the region come
        # from IMDS (the emulator's instance profile), as on EC2. The SSM document's script
        # (self_upgrade) runs with the same.
        self.aws_env = {
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": self.emulator,
            "AWS_ENDPOINT_URL": self.moto,
            "AWS_ENDPOINT_URL_AUTO_SCALING": self.emulator,
        }
        aws_env = "".join(f"Environment={k}={v}\n" for k, v in self.aws_env.items())
        units = files / "etc/systemd/system"
        for unit in ("cloud-final.service", "berth.service"):
            (units / f"{unit}.d").mkdir(parents=True)
            (units / f"{unit}.d/10-box.conf").write_text(f"# tests/box: AWS's stand-ins.\n[Service]\n{aws_env}")
        (units / "berth-proxy.socket.d").mkdir(parents=True)
        (units / "berth-proxy.socket.d/10-box.conf").write_text(
            "# tests/box: the traffic port, on loopback (the box shares the host's network);\n"
            "# an empty ListenStream= clears both, so the control socket is listed again.\n"
            f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{self.traffic}\n"
            "ListenStream=/run/berth-proxy.sock\n")
        (units / "berth.socket.d").mkdir(parents=True)
        (units / "berth.socket.d/10-box.conf").write_text(
            "# tests/box: the health port on loopback, where berth.toml's health.listen is (the\n"
            "# agent refuses a passed socket on another address); an empty ListenStream= clears\n"
            "# the packaged 0.0.0.0:8081.\n"
            f"[Socket]\nListenStream=\nListenStream=127.0.0.1:{self.health}\n")
        docker("cp", f"{files}/.", f"{self.box}:/")
        self.emu("state", {"user_data": self.rendered})

    def wait_system(self, limit=60):
        """systemd's state once it answers and its boot jobs are done (`--wait`)."""

        def probe():
            try:
                p = self.box_exec("systemctl", "is-system-running", "--wait", check_rc=False, timeout=limit)
            except subprocess.TimeoutExpired:
                return f"still starting after {limit} s"
            state = p.stdout.strip()
            return state if state and state not in ("offline", "unknown") else None

        return wait_for("systemd in the box answers", limit, probe, 0.1)

    def unit(self, name, *props):
        out = self.box_exec("systemctl", "show", "-p", ",".join(props), name).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def containers(self, running_only=False):
        """{name: id} of the project's containers."""
        args = ["ps", "--no-trunc", "--format", "{{.Names}} {{.ID}}", "--filter", f"label={PROJECT_LABEL}={self.project}"]
        if not running_only:
            args.insert(1, "-a")
        return dict(line.split() for line in docker(*args).splitlines() if line.strip())

    def container_states(self):
        """{compose service (without the routed one's color): {id, running, started, finished}}
        of the project's containers
        (times in ns since the epoch; FinishedAt is the last stop's, kept across a start)."""
        ids = list(self.containers().values())
        if not ids:
            return {}
        fmt = (f'{{{{index .Config.Labels "{SERVICE_LABEL}"}}}} {{{{.Id}}}} {{{{.State.Running}}}} '
               "{{.State.StartedAt}} {{.State.FinishedAt}}")
        states = {}
        for line in docker("inspect", "-f", fmt, *ids).splitlines():
            if not line.strip():
                continue
            service, cid, running, started, finished = line.split()
            # The routed service's containers are labelled with their color (api-blue).
            for color in ("-blue", "-green"):
                if service.endswith(color):
                    service = service[: -len(color)]
            states[service] = {"id": cid, "running": running == "true",
                               "started": docker_time(started), "finished": docker_time(finished)}
        return states

    def healthz(self):
        return http_get(self.health, "/healthz")

    def status(self):
        """The agent's /status on the health port (it answers through the boot, unlike the
        control socket, which is busy until the agent holds), or None."""
        code, body = http_get(self.health, "/status")
        if code != 200:
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def wait_in_service(self, what, limit=120):
        """Until /status says in service: the agent holds (the checker's passes counted)."""
        wait_for(f"{what}: in service (/status)", limit,
                 lambda: (self.status() or {}).get("in_service") is True, 0.1)

    # --- the next build of berth, and the SSM document ---

    def next_package(self):
        """A stand-in for the next build of berth (a real rebuild costs minutes of LTO link): the
        .deb under test unpacked, another commit of the same length stamped over the binary's
        (nothing in it moves), `+box1` appended to its version, packed again and put into moto's
        S3 under the prefix the instance role reads. Returns what the box is to end up with."""
        work = self.work / "next-package"
        work.mkdir()
        pkg = work / "pkg"
        run("dpkg-deb", "-R", self.args.deb, str(pkg))
        pkg.chmod(0o755)  # the tree's root is the package's ./
        binary = pkg / "usr/bin/berth"
        line = run(str(binary), "--version").stdout.strip()  # static: it runs on the host
        m = re.fullmatch(r"berth (\S+) \(([^)]+)\)", line)
        if not m:
            raise RigError(f"berth --version printed {line!r}, not 'berth VERSION (COMMIT)'")
        version, commit = m.groups()
        new_commit = "".join(f"{(int(c, 16) + 1) % 16:x}" if c in "0123456789abcdef" else c for c in commit)
        if new_commit == commit:  # no hex digit in it ("unknown": built outside a git checkout)
            new_commit = ("b0x" + commit[3:])[:len(commit)]
        data = binary.read_bytes()
        stamped = data.count(commit.encode())
        check(stamped >= 1, f"the commit {commit!r} that berth --version prints is nowhere in "
              f"usr/bin/berth as plain bytes; cannot make the next build of it")
        binary.write_bytes(data.replace(commit.encode(), new_commit.encode()))
        md5sums = pkg / "DEBIAN/md5sums"
        if md5sums.exists():
            digest = hashlib.md5(binary.read_bytes()).hexdigest()
            md5sums.write_text(re.sub(r"^[0-9a-f]{32}(  usr/bin/berth)$", lambda m: digest + m.group(1),
                                      md5sums.read_text(), flags=re.M))
        control = pkg / "DEBIAN/control"
        text = control.read_text()
        deb_version = re.search(r"^Version: (\S+)$", text, re.M).group(1)
        arch = re.search(r"^Architecture: (\S+)$", text, re.M).group(1)
        new_deb_version = f"{deb_version}+box1"
        control.write_text(re.sub(r"^Version: \S+$", f"Version: {new_deb_version}", text, flags=re.M))
        deb = work / f"berth_{new_deb_version}_{arch}.deb"
        owner = ["--root-owner-group"] if "--root-owner-group" in run("dpkg-deb", "--help").stdout else []
        run("dpkg-deb", *owner, "-Zgzip", "-b", str(pkg), str(deb), timeout=300)
        data = deb.read_bytes()
        key = f"{self.project}/berth/{deb.name}"
        self.upload_signed(deb, key, self.release_key)
        next_build = {"uri": f"s3://{self.bucket}/{key}", "sha256": hashlib.sha256(data).hexdigest(),
                      "version": version, "commit": commit, "new_commit": new_commit,
                      "version_line": line, "deb_version": deb_version, "new_deb_version": new_deb_version,
                      "tree": pkg, "arch": arch}
        log(f"next build: {deb.name} ({len(data) >> 10} KiB, sha256 {next_build['sha256'][:12]}...), commit "
            f"{commit} -> {new_commit} ({stamped} in usr/bin/berth), in moto as {next_build['uri']}")
        return next_build

    def keygen(self, name):
        """A key pair of packaging/sign.py: (public key file, secret key file)."""
        public, secret = self.work / f"{name}.pub", self.work / f"{name}.key"
        run(sys.executable, str(SIGN), "keygen", str(public), str(secret))
        return public, secret

    def trust_key(self, public):
        """Installs `public` as an operator would trust their own builds' key."""
        b64 = base64.b64encode(public.read_bytes()).decode()
        self.sh(f"mkdir -p /etc/berth/keys && echo {b64} | base64 -d >/etc/berth/keys/box.pub")

    def upload_signed(self, package, key, secret, signed=True):
        """`package` into moto's S3 as `key`, with its signature (by `secret`) as `key`.minisig."""
        s3 = self.aws("s3")
        s3.put_object(Bucket=self.bucket, Key=key, Body=package.read_bytes())
        if signed:
            run(sys.executable, str(SIGN), "sign", str(secret), str(package))
            s3.put_object(Bucket=self.bucket, Key=key + ".minisig",
                          Body=Path(str(package) + ".minisig").read_bytes())
        return f"s3://{self.bucket}/{key}"

    def variant(self, nxt, name, package="berth", version=None, secret=None, signed=True, prefix="berth"):
        """The next build repacked as another package or version, signed by `secret` (default
        the trusted key), under `prefix` of the config prefix; its s3:// URI."""
        tree = self.work / f"variant-{name}"
        shutil.copytree(nxt["tree"], tree, symlinks=True)
        control = tree / "DEBIAN/control"
        text = re.sub(r"^Package: \S+$", f"Package: {package}", control.read_text(), flags=re.M)
        text = re.sub(r"^Version: \S+$", f"Version: {version or nxt['new_deb_version']}", text, flags=re.M)
        control.write_text(text)
        deb = self.work / f"{name}_{nxt['arch']}.deb"
        owner = ["--root-owner-group"] if "--root-owner-group" in run("dpkg-deb", "--help").stdout else []
        run("dpkg-deb", *owner, "-Zgzip", "-b", str(tree), str(deb), timeout=300)
        return self.upload_signed(deb, f"{self.project}/{prefix}/{deb.name}", secret or self.release_key, signed)

    def ssm_script(self, document=SSM_DOCUMENT, **params):
        """The SSM document's runCommand as SSM Run Command runs it: each parameter checked
        against its allowedValues/allowedPattern (SSM refuses the command otherwise), each
        `{{ name }}` replaced by its value (its default when not given), the lines joined."""
        import yaml

        doc = yaml.safe_load(document.read_text())
        declared = doc["parameters"]
        unknown = sorted(set(params) - set(declared))
        if unknown:
            raise RigError(f"{document.name} has no parameter {unknown}")
        values = {name: str(params.get(name, spec.get("default", ""))) for name, spec in declared.items()}
        for name, value in values.items():
            spec = declared[name]
            check("allowedValues" not in spec or value in spec["allowedValues"],
                  f"SSM would refuse {name}={value!r}: not one of {spec.get('allowedValues')}")
            check("allowedPattern" not in spec or re.search(spec["allowedPattern"], value),
                  f"SSM would refuse {name}={value!r}: it does not match {spec.get('allowedPattern')!r}")

        def sub(m):
            if m.group(1) not in values:
                raise RigError(f"{document.name} uses an undeclared parameter {m.group(0)}")
            return values[m.group(1)]

        lines = doc["mainSteps"][0]["inputs"]["runCommand"]
        return "\n".join(re.sub(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}", sub, line) for line in lines) + "\n"

    def ssm_run(self, limit=600, document=SSM_DOCUMENT, **params):
        """The SSM document's script run in the box as its SSM agent would: as root, `sh -c`, with
        the instance's AWS stand-ins (credentials from IMDS: the instance role) and the variables
        SSM sets. (exit code, [(seconds since the start, line)] of stdout and stderr together)."""
        env = {**self.aws_env, "AWS_SSM_INSTANCE_ID": INSTANCE_ID, "AWS_SSM_REGION_NAME": REGION}
        cmd = ["docker", "exec"]
        for k, v in env.items():
            cmd += ["-e", f"{k}={v}"]
        cmd += [self.box, "sh", "-c", self.ssm_script(document, **params)]
        started = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, errors="replace")
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            p.kill()

        timer = threading.Timer(limit, kill)
        timer.start()
        lines = []
        try:
            for line in p.stdout:
                lines.append((time.monotonic() - started, line.rstrip("\n")))
            rc = p.wait()
        finally:
            timer.cancel()
        output = "\n".join(text for _, text in lines)
        check(not timed_out.is_set(), f"the SSM document's {params.get('action')} did not end within "
              f"{limit} s; its output:\n{output[-3000:]}")
        return rc, lines

    def diagnostics(self):
        """What to look at when an assertion failed."""
        if run("docker", "inspect", self.box, check_rc=False).returncode != 0:
            return
        print("---- box diagnostics ----", file=sys.stderr)
        for title, script in [
            ("systemctl --failed", "systemctl --failed --no-pager"),
            ("systemctl status berth berth-proxy", "systemctl status --no-pager -n 0 berth.service berth.socket "
             "berth-proxy.service berth-proxy.socket"),
            ("/var/log/berth-user-data.log", "tail -n 40 /var/log/berth-user-data.log"),
            ("cloud-init status", "cloud-init status --long"),
            ("/var/log/cloud-init-output.log", "tail -n 30 /var/log/cloud-init-output.log"),
            ("journal of berth and berth-proxy", "journalctl --no-pager -n 80 -u berth -u berth-proxy"),
        ]:
            out = self.sh(script + " 2>&1", check_rc=False, timeout=30)
            print(f"-- {title}:\n{out.rstrip()}", file=sys.stderr)
        print(f"-- project containers: {self.containers()}", file=sys.stderr)

    def cleanup(self):
        run("docker", "rm", "-f", self.box, check_rc=False)
        # What the box's berth kept in the state directory it shares with the host.
        shutil.rmtree(f"{HOST_STATE}/projects/{self.project}", ignore_errors=True)
        shutil.rmtree(f"{HOST_STATE}/releases", ignore_errors=True)
        Path(f"{HOST_STATE}/deregistered").unlink(missing_ok=True)
        ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={self.project}", check_rc=False).split()
        if ids:
            run("docker", "rm", "-fv", *ids, check_rc=False)
        for kind, fmt in (("network", "{{.ID}}"), ("volume", "{{.Name}}")):
            names = docker(kind, "ls", "--format", fmt, "--filter", f"label={PROJECT_LABEL}={self.project}",
                           check_rc=False).split()
            if names:
                run("docker", kind, "rm", *names, check_rc=False)
        for ref in self.pulled:
            run("docker", "rmi", "-f", ref, check_rc=False)
        self.stop_servers()


# ---------------------------------------------------------------------------------------------
# The assertions.


def boot(rig):
    """a. user-data (cloud-init) -> berth.service active through Type=notify -> /healthz 200 ->
    the launch hook completed with CONTINUE."""
    started = time.monotonic()
    docker("start", rig.box)
    state = rig.wait_system(limit=180)
    rig.timings["box boot to systemd " + state] = time.monotonic() - started
    status = rig.sh("cloud-init status --wait --long 2>&1; true", timeout=180)
    rig.timings["box boot to cloud-init done"] = time.monotonic() - started
    check("status: done" in status, f"cloud-init did not finish cleanly:\n{status}")
    check(state == "running", f"the box's systemd is {state!r} after boot, expected 'running': "
          f"{rig.sh('systemctl --failed --no-legend --plain', check_rc=False)}")
    ud_log = rig.sh("cat /var/log/berth-user-data.log", check_rc=False)
    check("done (strategy proxy)" in ud_log, f"the user-data did not finish:\n{ud_log}")
    check(f"downloading {rig.package_uri}" in ud_log, f"the user-data did not download the .deb from S3:\n{ud_log}")
    version = rig.sh("dpkg-query -W -f '${Version} ${Status}' berth", check_rc=False)
    check("install ok installed" in version, f"the berth package is not installed in the box: {version}")

    def active():
        u = rig.unit("berth", "ActiveState", "SubState")
        if u.get("ActiveState") == "failed":
            raise Failed(f"berth.service failed: {u}")
        return u.get("ActiveState") == "active"

    wait_for("berth.service active", 120, active, 0.2)
    rig.timings["box boot to berth.service active (READY=1)"] = time.monotonic() - started
    u = rig.unit("berth", "Type", "ActiveState", "SubState", "StatusText", "NRestarts", "MainPID")
    check(u["Type"] == "notify" and u["ActiveState"] == "active" and u["SubState"] == "running",
          f"berth.service: expected an active Type=notify service, got {u}")
    check(u["StatusText"] != "", f"berth.service sent no STATUS= line: {u}")
    check(u["NRestarts"] == "0", f"berth.service restarted during the boot: {u}")
    log(f"a. berth.service {u['ActiveState']}/{u['SubState']} (Type={u['Type']}, STATUS={u['StatusText']!r}); "
        f"package berth {version.split()[0]}")
    status, body = wait_for("/healthz 200", 60, lambda: (lambda r: r if r[0] == 200 else None)(rig.healthz()))
    rig.timings["box boot to /healthz 200"] = time.monotonic() - started
    calls = wait_for("CompleteLifecycleAction", 60, lambda: [
        c for c in rig.emu("calls") if c["action"] == "CompleteLifecycleAction"])
    rig.timings["box boot to the hook's CONTINUE"] = time.monotonic() - started
    rig.wait_in_service("the boot")
    rig.timings["box boot to in service (the checker's passes)"] = time.monotonic() - started
    params = calls[0]["params"]
    check(len(calls) == 1 and params.get("LifecycleActionResult") == "CONTINUE"
          and params.get("LifecycleHookName") == LAUNCH_HOOK and params.get("InstanceId") == INSTANCE_ID
          and params.get("AutoScalingGroupName") == ASG_NAME,
          f"expected one CompleteLifecycleAction CONTINUE for {LAUNCH_HOOK}/{INSTANCE_ID}/{ASG_NAME}, got {calls}")
    code, page = http_get(rig.traffic, "/")
    check(code == 200 and "version 1" in page, f"the traffic port (berth-proxy) answered {code}: {page[:200]}")
    imds = rig.emu("imds")
    creds = [r for r in imds if "iam/security-credentials/" in r["path"] and r["status"] == 200]
    check(creds, "no instance-profile credentials were read from the IMDS stand-in (the AWS CLI and berth "
          f"have no other source): {imds[:10]}")
    log(f"a. /healthz {status} {body.strip()}; CompleteLifecycleAction {params['LifecycleActionResult']}; "
        f"GET / through berth-proxy {code}; {len(imds)} IMDSv2 requests at the stand-in "
        f"({len(creds)} for credentials: the AWS CLI's and berth's)")


def journal(rig):
    """b. The journal carries berth's structured fields (tracing-journald: each event's fields as
    BERTH_* fields), and never the env file's secret."""
    out = rig.sh("journalctl -b -u berth.service -o json --no-pager", timeout=60)
    entries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    own = [e for e in entries if str(e.get("TARGET", "")).startswith("berth")]
    check(own, f"no journal entry of berth.service carries berth's TARGET field ({len(entries)} entries); "
          f"fields seen: {sorted({k for e in entries for k in e})}")
    fields = sorted({k for e in own for k in e if not k.startswith("_") and not k.startswith("__")})
    for field in ("TARGET", "CODE_FILE", "CODE_LINE", "PRIORITY", "SYSLOG_IDENTIFIER"):
        check(field in fields, f"berth's journal entries lack {field}: they carry {fields}")
    targets = sorted({e["TARGET"] for e in own})
    phases = [e["MESSAGE"] for e in own if "phase" in str(e.get("MESSAGE", ""))]
    check(phases, "no journal entry of berth names a phase")
    # Each event's fields are fields of the entry: `journalctl BERTH_PHASE=ready` finds the boot.
    ready = [e for e in own if e.get("BERTH_PHASE") == "ready"]
    check(ready, f"no entry carries BERTH_PHASE=ready as a field of its own: {fields}")
    # The boot's timeline, on the box's journal clock: cloud-final (which runs the user-data)
    # starting, berth's READY=1 and berth in service.
    final = [json.loads(line) for line in rig.sh("journalctl -b -u cloud-final.service -o json --no-pager",
                                                   timeout=60).splitlines() if line.startswith("{")]
    def at(entries, needle):
        hit = next((e for e in entries if needle in str(e.get("MESSAGE", ""))), None)
        return int(hit["__REALTIME_TIMESTAMP"]) / 1e6 if hit else None
    t_final = at(final, "Starting cloud-final")
    t_ready = at(own, "services up and healthy")
    t_in = at(own, "in service")
    if t_final and t_ready and t_in:
        rig.timings["user-data start (cloud-final) to berth ready"] = t_ready - t_final
        rig.timings["user-data start (cloud-final) to in service"] = t_in - t_final
    everything = rig.sh("journalctl -b --no-pager -o cat; journalctl -b --no-pager -o json", timeout=60)
    check(rig.secret not in everything, "the env file's secret is in the box's journal")
    log(f"b. {len(own)} of berth's {len(entries)} journal entries carry its fields {fields}; "
        f"targets {targets[:6]}{'...' if len(targets) > 6 else ''}; no secret in the journal")


def hardening(rig):
    """c. The units' hardening (namespaces, seccomp, no capabilities) still lets the agent reach
    the Docker socket (containers run), IMDS (the lifecycle state, with a token) and /run/berth
    (0700, its files 0600)."""
    pid = rig.unit("berth", "MainPID")["MainPID"]
    status = dict(line.split(":", 1) for line in rig.sh(f"cat /proc/{pid}/status").splitlines() if ":" in line)
    status = {k: v.strip() for k, v in status.items()}
    check(status.get("NoNewPrivs") == "1" and status.get("Seccomp") == "2" and int(status.get("CapEff", "1"), 16) == 0,
          f"berth's process is not confined as the unit says (NoNewPrivs 1, Seccomp 2, no capabilities): "
          f"NoNewPrivs={status.get('NoNewPrivs')} Seccomp={status.get('Seccomp')} CapEff={status.get('CapEff')}")
    own_ns = rig.sh(f"readlink /proc/{pid}/ns/mnt").strip()
    init_ns = rig.sh("readlink /proc/1/ns/mnt").strip()
    check(own_ns != init_ns, f"berth runs in PID 1's mount namespace ({own_ns}): ProtectSystem= and the "
          "other sandboxing were not applied")
    writable = rig.sh(f"nsenter -t {pid} -m sh -c 'touch /usr/berth-box-probe 2>&1; echo rc=$?'", check_rc=False)
    check("rc=0" not in writable, f"/usr is writable for berth.service (ProtectSystem=strict): {writable}")
    running = rig.containers(running_only=True)
    check(len(running) == 2, f"expected the 2 app containers running (Docker socket reached), got {running}")
    imds = [r for r in rig.emu("imds") if "autoscaling/target-lifecycle-state" in r["path"]]
    check(any(r["token"] and r["status"] == 200 for r in imds),
          f"no IMDSv2 read of the lifecycle state from berth reached the emulator: {imds[:5]}")
    listing = rig.sh("find /run/berth -printf '%m %u %y %p\\n' | sort -k4")
    rows = [line.split(None, 3) for line in listing.splitlines()]
    check(rows and rows[0][3] == "/run/berth" and rows[0][0] == "700" and rows[0][1] == "root",
          f"/run/berth: expected mode 700 owned by root, got:\n{listing}")
    loose = [r for r in rows[1:] if r[2] in ("f", "s") and r[0] != "600"]
    check(not loose, f"files in /run/berth must be 0600:\n{listing}")
    files = [r[3] for r in rows[1:] if r[2] == "f"]
    check(any(f.endswith("app.env") for f in files), f"the env file is not in /run/berth:\n{listing}")
    log(f"c. berth (pid {pid}): NoNewPrivs=1 Seccomp=2 CapEff=0, own mount namespace, /usr read-only; "
        f"{len(running)} containers through /run/docker.sock; {len(imds)} IMDSv2 lifecycle reads; "
        f"/run/berth 0700 with {len(rows) - 1} entries all 0600")


def proxy_privilege(rig):
    """c2. berth-proxy faces the internet: it runs as an unprivileged user of its own, and
    cannot reach the Docker socket or /etc/berth; the control socket systemd made is root's,
    0600, and the agent (root) reaches the proxy through it (the app is served)."""
    pid = rig.unit("berth-proxy", "MainPID")["MainPID"]
    status = dict(line.split(":", 1) for line in rig.sh(f"cat /proc/{pid}/status").splitlines() if ":" in line)
    uids = status.get("Uid", "").split()
    check(uids and all(u != "0" for u in uids), f"berth-proxy runs as root: Uid {status.get('Uid')}")
    # Its mount namespace cannot be entered from here (another uid's needs CAP_SYS_PTRACE, which
    # the box lacks): as its uid, the Docker socket refuses it; the unit hides the rest.
    docker_sock = rig.sh(f"setpriv --reuid={uids[0]} --regid={uids[0]} --clear-groups "
                         "sh -c 'test -w /run/docker.sock && echo reachable || echo denied'",
                         check_rc=False).strip()
    check(docker_sock == "denied", f"berth-proxy's uid can write the Docker socket: {docker_sock!r}")
    hidden = rig.unit("berth-proxy", "InaccessiblePaths")["InaccessiblePaths"]
    check(all(p in hidden for p in ("/run/docker.sock", "/etc/berth")),
          f"berth-proxy.service InaccessiblePaths: {hidden!r}")
    sock = rig.sh("stat -c '%a %U %F' /run/berth-proxy.sock").strip()
    check(sock == "600 root socket", f"/run/berth-proxy.sock: expected '600 root socket', got {sock!r}")
    deny = rig.unit("berth-proxy", "IPAddressDeny")["IPAddressDeny"]
    check("169.254.169.254" in deny, f"berth-proxy.service IPAddressDeny: {deny!r}")
    # The health port: the user-data allowed this host and the VPC's range (from IMDS) only.
    allow = rig.sh("systemctl show berth.socket -p IPAddressAllow -p IPAddressDeny").strip()
    check("10.0.0.0/16" in allow and "127.0.0.0/8" in allow and "0.0.0.0/0" in allow,
          f"berth.socket's address lists: {allow!r}")
    log(f"c2. berth-proxy (pid {pid}) runs as uid {uids[0]}; the Docker socket refuses it; hidden: "
        f"{hidden}; control socket {sock}; IPAddressDeny {deny}")


def restart_proxy(rig):
    """d. `systemctl restart berth-proxy` under 4 keep-alive clients loses no request."""
    load = Load(rig.traffic)
    try:
        load.wait_served(300)
        took = []
        for _ in range(2):
            before = rig.unit("berth-proxy", "MainPID")["MainPID"]
            start = time.monotonic()
            rig.box_exec("systemctl", "restart", "berth-proxy.service", timeout=90)
            took.append(time.monotonic() - start)
            after = rig.unit("berth-proxy", "MainPID", "ActiveState")
            check(after["MainPID"] != before and after["ActiveState"] == "active",
                  f"berth-proxy did not restart: {before} -> {after}")
            load.wait_served(300)
    finally:
        ok, failures = load.finish()
    rig.timings["systemctl restart berth-proxy (each)"] = max(took)
    check(not failures, f"{len(failures)} of {ok + len(failures)} requests failed across 2 restarts of "
          f"berth-proxy: {summary_of(failures)}")
    log(f"d. 2x systemctl restart berth-proxy ({', '.join(f'{t:.2f} s' for t in took)}) under {CLIENTS} "
        f"keep-alive clients: {ok} requests, 0 failed")


def restart_proxy_streams(rig):
    """d0. `systemctl restart` of a proxy unit made from the packaged ones (their own settings,
    `--fd-store` and `FileDescriptorStoreMax=` among them; only the port, control socket, state
    directory and backend differ) while an SSE stream and a WebSocket are open through it, under
    4 keep-alive clients, a long poll and a new connection every 50 ms: the old proxy parks its
    connections in systemd's store, the next one takes them back. Every new connection is
    answered within 1 s, no request fails, the stream gets every event and its last chunk, the
    WebSocket goes on echoing on the same connection after the restart, and the long poll
    waiting across it gets its answer."""
    backend = streams.Backend(events=16, every=0.25)
    port = free_port()
    units = "/usr/lib/systemd/system"
    rig.sh(
        f"set -e; cd /etc/systemd/system; "
        f"sed -e 's#^ListenStream=0.0.0.0:8080#ListenStream=127.0.0.1:{port}#' "
        f"-e 's#/run/berth-proxy.sock#/run/berth-proxy-x.sock#' "
        f"-e 's#berth-proxy.service#berth-proxy-x.service#' {units}/berth-proxy.socket > berth-proxy-x.socket; "
        f"sed -e 's#berth-proxy.socket#berth-proxy-x.socket#g' "
        f"-e 's#/run/berth-proxy.sock#/run/berth-proxy-x.sock#' "
        f"-e 's#/run/berth-proxy/route.json#/run/berth-proxy-x/route.json --backend 127.0.0.1:{backend.port}#' "
        f"-e 's#RuntimeDirectory=berth-proxy#RuntimeDirectory=berth-proxy-x#' "
        f"{units}/berth-proxy.service > berth-proxy-x.service; "
        f"grep -q -- '--fd-store' berth-proxy-x.service; grep -q '^FileDescriptorStoreMax=' berth-proxy-x.service; "
        f"systemctl daemon-reload; systemctl start berth-proxy-x.socket berth-proxy-x.service")
    load = Load(port)
    probe = streams.Probe(port)
    events = streams.Events(port)
    socket_ = streams.Socket(port)
    polls = streams.Polls(port)
    try:
        for t in (probe, events, socket_, polls):
            t.start()
        wait_for("the first SSE events", 10, lambda: len(events.events) >= 2 or events.error, 0.05)
        wait_for("WebSocket echoes", 10, lambda: len(socket_.samples) >= 3 or socket_.error, 0.05)
        before = rig.unit("berth-proxy-x", "MainPID")["MainPID"]
        start = time.monotonic()
        rig.box_exec("systemctl", "restart", "berth-proxy-x.service", timeout=90)
        took = time.monotonic() - start
        after = rig.unit("berth-proxy-x", "MainPID", "ActiveState")
        check(after["MainPID"] != before and after["ActiveState"] == "active",
              f"berth-proxy-x did not restart: {before} -> {after}")
        events.join(20)
        wait_for("WebSocket echoes after the restart", 10,
                 lambda: sum(1 for t, _ in socket_.samples if t > start + took) >= 3 or socket_.error, 0.05)
        wait_for("a long poll after the restart", 10,
                 lambda: any(t > start + took for t, _, _ in polls.samples) or polls.error, 0.05)
    finally:
        for t in (socket_, probe, polls):
            t.stopping.set()
        for t in (socket_, probe, polls):
            t.join(5)
        ok, failures = load.finish()
        journal = rig.sh("journalctl -u berth-proxy-x --no-pager -o cat", check_rc=False)
        rig.sh("systemctl stop berth-proxy-x.service berth-proxy-x.socket; "
               "rm -f /etc/systemd/system/berth-proxy-x.*; systemctl daemon-reload", check_rc=False)
        backend.shutdown()
    slowest = max(p[1] for p in probe.samples)
    probe_failed = [p for p in probe.samples if not p[2]]
    after_restart = [ok_ for t, ok_ in socket_.samples if t > start + took]
    rig.timings["systemctl restart berth-proxy with an SSE stream and a WebSocket open"] = took
    check(not failures, f"{len(failures)} of {ok + len(failures)} keep-alive requests failed across the restart: "
          f"{summary_of(failures)}")
    check(not probe_failed and slowest < 1.0,
          f"new connections during the restart: slowest answered in {slowest:.2f} s, "
          f"{len(probe_failed)} failed ({probe_failed[:3]})")
    check(events.error is None and events.clean_end and len(events.events) == 16,
          f"the SSE stream across the restart: {len(events.events)} of 16 events, "
          f"clean end {events.clean_end}, error {events.error}")
    check(socket_.error is None and all(ok_ for _, ok_ in socket_.samples) and len(after_restart) >= 3,
          f"the WebSocket across the restart: {len(after_restart)} echoes after it, error {socket_.error}")
    across = [p for p in polls.samples if p[0] < start < p[1]]
    check(polls.error is None and all(p[2] for p in polls.samples) and across,
          f"long polls across the restart: {len(across)} spanned it, "
          f"{sum(1 for p in polls.samples if not p[2])} failed, error {polls.error}")
    took_back = next((line for line in journal.splitlines() if "restart: took back" in line), "")
    kinds = ("with a body on its way", "waiting for an answer", "upgraded")
    check(all(re.search(rf"\b[1-9]\d* {kind}", took_back) for kind in kinds),
          f"the next proxy did not say it took the connections back:\n{journal[-2000:]}")
    parked = next((line for line in journal.splitlines() if "connections parked" in line), "")
    log(f"d0. systemctl restart of a proxy with --fd-store ({took:.2f} s): {parked.strip()}; "
        f"{ok} keep-alive requests and {len(probe.samples)} new connections (slowest {slowest:.2f} s), 0 failed; "
        f"SSE {len(events.events)}/16 events and its last chunk; WebSocket {len(after_restart)} echoes after it "
        f"on the same connection; a long poll across it answered after {across[0][1] - across[0][0]:.2f} s")


def reload_proxy(rig):
    """d1. `systemctl reload berth-proxy` under 4 keep-alive clients hands over to a successor:
    systemd takes it as the unit's main process (a new MainPID, still active), the old one
    exits once it has finished, and no request fails."""
    load = Load(rig.traffic)
    took = []
    try:
        load.wait_served(300)
        for _ in range(2):
            before = rig.unit("berth-proxy", "MainPID")["MainPID"]
            start = time.monotonic()
            rig.box_exec("systemctl", "reload", "berth-proxy.service", timeout=60)

            def handed_over():
                u = rig.unit("berth-proxy", "MainPID", "ActiveState")
                return u["MainPID"] not in (before, "0") and u["ActiveState"] == "active"

            wait_for("berth-proxy's successor to be the main process", 20, handed_over, 0.05)
            took.append(time.monotonic() - start)
            wait_for(f"the old berth-proxy (pid {before}) to exit", 40,
                     lambda: rig.sh(f"test -d /proc/{before} && echo alive || echo gone").strip() == "gone", 0.1)
            load.wait_served(300)
    finally:
        ok, failures = load.finish()
    rig.timings["systemctl reload berth-proxy to the successor (each)"] = max(took)
    check(not failures, f"{len(failures)} of {ok + len(failures)} requests failed across 2 reloads of "
          f"berth-proxy: {summary_of(failures)}")
    log(f"d1. 2x systemctl reload berth-proxy ({', '.join(f'{t:.2f} s' for t in took)} to the successor) "
        f"under {CLIENTS} keep-alive clients: {ok} requests, 0 failed; the old ones exited")


def kill_proxy(rig):
    """d2. berth-proxy SIGKILLed (a crash): systemd restarts it (RestartSec=1s) on the same
    sockets; meanwhile connections queue. Only what was in flight on the killed process may
    fail: at most one request per client."""
    load = Load(rig.traffic)
    try:
        load.wait_served(300)
        before = rig.unit("berth-proxy", "MainPID")["MainPID"]
        start = time.monotonic()
        rig.box_exec("systemctl", "kill", "-s", "KILL", "berth-proxy.service")

        def restarted():
            u = rig.unit("berth-proxy", "MainPID", "ActiveState")
            return u["MainPID"] not in (before, "0") and u["ActiveState"] == "active"

        wait_for("berth-proxy to be restarted after SIGKILL", 30, restarted, 0.05)
        took = time.monotonic() - start
        load.wait_served(300)
    finally:
        ok, failures = load.finish()
    rig.timings["berth-proxy SIGKILL to active again"] = took
    check(len(failures) <= CLIENTS, f"{len(failures)} of {ok + len(failures)} requests failed across a "
          f"SIGKILL of berth-proxy (at most the {CLIENTS} in flight may): {summary_of(failures)}")
    log(f"d2. berth-proxy SIGKILLed, active again in {took:.2f} s under {CLIENTS} keep-alive clients: "
        f"{ok} requests, {len(failures)} failed ({summary_of(failures) or 'none'})")


def restart_agent(rig, checker):
    """e. `systemctl restart berth` under 4 keep-alive clients ends only the agent: the next one
    resumes (its journal says `resuming`) beside the same containers, `/status` says ready again
    within 5 s, no request fails, and the checker gets 200 to every check from the restart's
    start until a second after ready (berth.socket queues them while no agent runs)."""
    rig.wait_in_service("before the agent's restart")
    before = rig.containers()
    check(len(before) == 2, f"expected 2 app containers before the agent's restart, got {before}")
    pid = rig.unit("berth", "MainPID")["MainPID"]
    load = Load(rig.traffic)
    try:
        load.wait_served(300)
        start = time.monotonic()
        try:
            p = rig.box_exec("systemctl", "restart", "berth.service", check_rc=False, timeout=60)
        except subprocess.TimeoutExpired:
            raise Failed("systemctl restart berth did not return within 60 s")
        command = time.monotonic() - start
        check(p.returncode == 0, f"systemctl restart berth exited {p.returncode}: {p.stderr.strip()}")
        # The control socket is busy until the agent holds; /status on the health port answers.
        wait_for("/status says phase ready after the agent's restart", 60,
                 lambda: (rig.status() or {}).get("phase") == "ready", 0.05)
        ready = time.monotonic()
        wait_for("the checker's answers until a second after ready", 10,
                 lambda: checker.samples and checker.samples[-1][0] >= ready + 1, 0.1)
        load.wait_served(300)
    finally:
        ok, failures = load.finish()
    took = ready - start
    rig.timings["systemctl restart berth to /status ready"] = took
    checks = checker.between(start, ready + 1)
    check(checks and all(s == 200 for s in checks),
          f"the checker got other answers than 200 during the agent's restart ({tally(checks)}): berth.socket "
          "should queue the checks while no agent runs, and the next agent answer 200 as it resumes")
    check(took < 5, f"the agent's restart took {took:.1f} s to /status ready again (limit 5 s; "
          f"systemctl restart returned after {command:.1f} s)")
    check(not failures, f"{len(failures)} of {ok + len(failures)} requests failed across the agent's restart: "
          f"{summary_of(failures)}")
    after = rig.containers()
    check(after == before, f"the agent's restart changed the app's containers: before {before}, after {after}")
    u = rig.unit("berth", "ActiveState", "SubState", "MainPID")
    check(u["ActiveState"] == "active" and u["MainPID"] not in (pid, "0"),
          f"berth.service after the restart: expected active with a new MainPID (was {pid}), got {u}")
    own = f"journalctl --no-pager -o cat _SYSTEMD_UNIT=berth.service _PID={u['MainPID']}"
    try:
        wait_for("the new agent's journal says `resuming`", 10,
                 lambda: "resuming" in rig.sh(own, check_rc=False, timeout=30), 0.2)
    except Failed:
        tail = "\n".join(rig.sh(own, check_rc=False, timeout=30).splitlines()[-20:])
        raise Failed(f"the restarted agent (pid {u['MainPID']}) did not log `resuming`; its journal:\n{tail}")
    log(f"e. systemctl restart berth ({command:.2f} s) under {CLIENTS} keep-alive clients: /status ready after "
        f"{took:.2f} s; checks until ready + 1 s: {tally(checks)}; {ok} requests, 0 failed; container ids "
        f"unchanged; pid {pid} -> {u['MainPID']}, which logged `resuming`")


def self_upgrade(rig, checker):
    """e2. The operations document's self-upgrade, run as SSM Run Command runs it, installs the
    next build of berth (the .deb under test with another commit and a higher version, from the
    artifact location in S3, signed by a key the operator trusts in /etc/berth/keys): unsigned,
    signed by another key, not berth, older, or from elsewhere, it exits 3 and installs nothing;
    the signed one, under 4 keep-alive clients, exits 0 naming the new commit, the package's
    postinst restarts berth-proxy and berth (new MainPIDs) and `/status` shows the new commit,
    with no failed request, every check 200 and the same container ids."""
    rig.wait_in_service("before the self-upgrade")
    public, rig.release_key = rig.keygen("release")
    rig.trust_key(public)
    nxt = rig.next_package()

    def installed():
        """(berth --version, the package's version) in the box."""
        return (rig.sh("/usr/bin/berth --version").strip(),
                rig.sh("dpkg-query -W -f '${Version}' berth").strip())

    before_install = installed()
    check(before_install == (nxt["version_line"], nxt["deb_version"]),
          f"the box runs {before_install}, not the package under test ({nxt['version_line']}, {nxt['deb_version']})")
    pid = rig.unit("berth", "MainPID")["MainPID"]

    # What must not be installed, each refused (exit 3, saying why) before anything changes.
    _, stranger = rig.keygen("stranger")
    refused = [
        ("unsigned", rig.variant(nxt, "unsigned", signed=False), "has no signature"),
        ("signed by an untrusted key", rig.variant(nxt, "stranger", secret=stranger),
         "is not signed by a trusted key"),
        ("not berth", rig.variant(nxt, "notberth", package="notberth"), "not berth"),
        ("a downgrade", rig.variant(nxt, "older", version="0.0.1"), "is older than the installed"),
        ("outside the artifact location", rig.variant(nxt, "elsewhere", prefix="elsewhere"),
         "is not under"),
    ]
    for what, uri, says in refused:
        started = time.monotonic()
        rc, lines = rig.ssm_run(limit=180, document=OPS_DOCUMENT, action="self-upgrade", package=uri)
        output = "\n".join(text for _, text in lines)
        check(rc == 3 and says in output,
              f"self-upgrade of a package {what}: expected exit 3 saying {says!r}, got exit {rc}:\n{output[-3000:]}")
        after_refusal = installed()
        check(after_refusal == before_install, f"self-upgrade of a package {what} installed something: "
              f"{before_install} -> {after_refusal}")
        check(rig.unit("berth", "MainPID")["MainPID"] == pid, f"self-upgrade of a package {what} restarted the agent")
        log(f"e2. self-upgrade of a package {what}: exit 3 after {time.monotonic() - started:.1f} s, "
            f"'{lines[-1][1] if lines else ''}'")

    before = rig.containers()
    check(len(before) == 2, f"expected 2 app containers before the self-upgrade, got {before}")
    berth_before = (rig.status() or {}).get("berth") or {}
    check(berth_before == {"version": nxt["version"], "commit": nxt["commit"]},
          f"before the self-upgrade /status says berth {berth_before}, expected version {nxt['version']}, "
          f"commit {nxt['commit']} (berth --version)")
    pids = {unit: rig.unit(unit, "MainPID")["MainPID"] for unit in ("berth", "berth-proxy")}
    load = Load(rig.traffic)
    try:
        load.wait_served(300)
        start = time.monotonic()
        rc, lines = rig.ssm_run(limit=420, document=OPS_DOCUMENT, action="self-upgrade", package=nxt["uri"])
        end = time.monotonic()
        load.wait_served(300)
    finally:
        ok, failures = load.finish()
    output = "\n".join(text for _, text in lines)
    rig.timings["self-upgrade through SSM (download, install, agent ready)"] = end - start
    check(rc == 0, f"self-upgrade exited {rc}:\n{output[-3000:]}")
    new_line = nxt["version_line"].replace(nxt["commit"], nxt["new_commit"])
    said = [t for t, text in lines if f"{nxt['version_line']} -> {new_line}" in text]
    check(said, f"self-upgrade's output does not say '{nxt['version_line']} -> {new_line}':\n{output[-3000:]}")
    status = rig.status() or {}
    berth = status.get("berth") or {}
    check(berth.get("commit") == nxt["new_commit"] and berth.get("version") == berth_before["version"],
          f"after the self-upgrade /status says berth {berth} (expected version {berth_before['version']}, commit "
          f"{nxt['new_commit']}); phase {status.get('phase')!r}")
    check(status.get("phase") == "ready", f"after the self-upgrade the agent's phase is {status.get('phase')!r}")
    after_install = installed()
    check(after_install == (new_line, nxt["new_deb_version"]),
          f"after the self-upgrade the box runs {after_install}, expected ({new_line!r}, {nxt['new_deb_version']!r})")
    check(not failures, f"{len(failures)} of {ok + len(failures)} requests failed across the self-upgrade: "
          f"{summary_of(failures)}")
    checks = checker.between(start, end)
    check(checks and all(s == 200 for s in checks),
          f"the checker got other answers than 200 during the self-upgrade: {tally(checks)}")
    after = rig.containers()
    check(after == before, f"the self-upgrade changed the app's containers: before {before}, after {after}")
    for unit, old in pids.items():
        u = rig.unit(unit, "ActiveState", "MainPID")
        check(u["ActiveState"] == "active" and u["MainPID"] not in (old, "0"),
              f"{unit}.service after the self-upgrade: expected active with a new MainPID (was {old}), got {u}; "
              "the postinst restarts it on an upgrade")
    installed_after = said[0]
    log(f"e2. self-upgrade through the SSM document under {CLIENTS} keep-alive clients: {nxt['deb_version']} -> "
        f"{nxt['new_deb_version']} installed after {installed_after:.1f} s, the agent ready again after "
        f"{end - start:.1f} s; /status berth {berth['version']} ({berth['commit']}); {ok} requests, 0 failed; "
        f"checks {tally(checks)}; container ids unchanged; berth and berth-proxy restarted")


def alb_stops_sending(rig, checker, start):
    """The ALB's part, which moto's target group does not play: once the checker has seen two
    failed checks since `start`, the target leaves (moto has no unhealthy state; a deregistered
    target reads as unused), as the ALB stops sending to an unhealthy one."""
    def leave():
        wait_for("two failed checks", 120, lambda: checker.between(start, time.monotonic())[-2:] == [503, 503])
        rig.aws("elbv2").deregister_targets(TargetGroupArn=rig.target_group,
                                            Targets=[{"Id": INSTANCE_ID, "Port": rig.traffic}])
    threading.Thread(target=leave, daemon=True).start()


def reboot(rig, checker):
    """f. A reboot (`docker stop` of the box: SIGRTMIN+3, a clean shutdown; then `docker start`: a
    boot). The app's containers run on the host's dockerd, so only berth stops them: during the
    shutdown the agent leaves (the checker sees 503: the drain) and stops them, api no later
    than the db it depends on; the boot converges from Docker's labels: every container started
    again with the same id, all running, `/healthz` 200, the user-data not run again."""
    rig.wait_in_service("before the reboot")
    before = rig.containers()
    check(len(before) == 2, f"expected 2 app containers before the reboot, got {before}")
    states = rig.container_states()
    # The db's data, written through its relative bind: on disk under the state directory.
    db = states["db"]["id"]
    kept = f"kept-{secrets.token_hex(4)}"
    docker("exec", db, "sh", "-c", f"echo {kept} > /data/kept")
    source = docker("inspect", "-f", '{{range .Mounts}}{{if eq .Destination "/data"}}{{.Source}}{{end}}{{end}}',
                    db).strip()
    check(source == f"/var/lib/berth/projects/{rig.project}/data",
          f"the db's ./data is bound from {source!r}, not the project directory on disk")
    # A drain was under way: the instance had deregistered itself (berth's mark on disk says
    # so) when the machine went down; the load balancer stops sending once the shutdown's
    # drain fails its checks.
    elb = rig.aws("elbv2")
    rig.sh(f"printf %s '{rig.target_group}' > /var/lib/berth/deregistered")
    start = time.monotonic()
    alb_stops_sending(rig, checker, start)
    wall_start = time.time_ns()
    docker("stop", "-t", "120", rig.box, timeout=180)
    down = time.monotonic()
    wall_down = time.time_ns()
    docker("start", rig.box)
    state = rig.wait_system(limit=180)
    check(state == "running", f"after the reboot the box's systemd is {state!r}: "
          f"{rig.sh('systemctl --failed --no-legend --plain', check_rc=False)}")
    wait_for("/healthz 200 after the reboot", 120, lambda: rig.healthz()[0] == 200)
    took = time.monotonic() - start
    rig.timings["reboot: shutdown (docker stop)"] = down - start
    rig.timings["reboot: boot (docker start) to /healthz 200"] = time.monotonic() - down
    rig.wait_in_service("after the reboot")
    checks = checker.between(start, down)
    draining = sum(1 for s in checks if s == 503)
    check(draining >= 1, f"the checker never saw 503 during the shutdown (no drain): {tally(checks)}")
    after = rig.containers()
    running = rig.containers(running_only=True)
    check(after == before, f"the reboot recreated containers: before {before}, after {after}")
    check(set(running) == set(after) and len(running) == 2,
          f"after the reboot not every app container runs: {running} of {after}")
    states_after = rig.container_states()
    not_started = [s for s in states if states_after[s]["started"] == states[s]["started"]]
    check(not not_started, f"{not_started} kept running through the box's shutdown: berth did not stop them")
    slack = 2 * 10**9  # the host's clock and dockerd's are the same; a margin for rounding
    not_stopped = [s for s, st in states_after.items() if not wall_start - slack <= st["finished"] <= wall_down + slack]
    check(not not_stopped, f"{not_stopped} did not stop during the shutdown: {states_after}")
    api, db = states_after["api"]["finished"], states_after["db"]["finished"]
    check(api <= db, f"the api stopped {(api - db) / 1e9:.3f} s after the db it depends on "
          "(dependents stop first)")
    u = rig.unit("berth", "ActiveState")
    check(u["ActiveState"] == "active", f"berth.service after the reboot: {u}")
    runs = rig.sh("grep -c 'done (strategy' /var/log/berth-user-data.log", check_rc=False).strip()
    check(runs == "1", f"the user-data ran {runs} times; cloud-init runs it once per instance")
    code, _ = http_get(rig.traffic, "/")
    check(code == 200, f"the traffic port answered {code} after the reboot")
    back = docker("exec", states_after["db"]["id"], "cat", "/data/kept").strip()
    check(back == kept, f"the db's data through its relative bind: {back!r} after the reboot, {kept!r} before")
    targets = elb.describe_target_health(TargetGroupArn=rig.target_group)["TargetHealthDescriptions"]
    check([t["Target"]["Id"] for t in targets] == [INSTANCE_ID],
          f"after a reboot while deregistered the instance is not registered again: {targets}")
    mark = rig.sh("test -e /var/lib/berth/deregistered && echo there || echo gone").strip()
    check(mark == "gone", "berth's deregistered mark is still there after it registered again")
    log(f"f. the db's data through ./data kept ({source}); deregistered when it went down, registered again "
        "after the boot, the mark gone")
    log(f"f. reboot: shutdown {down - start:.1f} s (checks meanwhile: {tally(checks)}; api stopped "
        f"{(db - api) / 1e9:.2f} s before db), /healthz 200 {took:.1f} s after the start; {len(after)} container "
        f"ids kept, all started again and running; user-data not run again; GET / {code}")


def leave(rig, checker):
    """g. `berth leave` (what the SSM document's leave runs) drains (the checker sees 503), stops
    the app's containers in dependency order (kept, stopped; api no later than db) and prints
    what it did; the agent stays, in phase `left` (berth.service active, `/healthz` 503), so that
    berth.socket does not boot it again; berth-proxy stays active. Then berth.socket and
    berth.service stop, and the checker's next checks start nothing again."""
    rig.wait_in_service("before berth leave")
    before = rig.containers()
    check(len(rig.containers(running_only=True)) == 2, "expected the 2 app containers running before berth leave")
    pid = rig.unit("berth", "MainPID")["MainPID"]
    start = time.monotonic()
    wall_start = time.time_ns()
    alb_stops_sending(rig, checker, start)
    try:
        p = rig.box_exec("berth", "leave", check_rc=False, timeout=300)
    except subprocess.TimeoutExpired:
        raise Failed("berth leave did not return within 300 s")
    end = time.monotonic()
    rig.timings["berth leave"] = end - start
    check(p.returncode == 0, f"berth leave exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    try:
        left = json.loads(p.stdout)
    except ValueError:
        raise Failed(f"berth leave printed no JSON: {p.stdout[-2000:]!r}; stderr: {p.stderr.strip()[-2000:]}")
    check(left.get("reason") == "asked" and left.get("stopped") == 2,
          f"berth leave: expected reason 'asked' and 2 containers stopped, got {left}")
    checks = checker.between(start, end)
    draining = sum(1 for s in checks if s == 503)
    check(draining >= 1, f"the checker never saw 503 during berth leave (no drain): {tally(checks)}")
    running = rig.containers(running_only=True)
    check(not running, f"after berth leave these app containers still run: {running}")
    after = rig.containers()
    check(after == before, f"berth leave removed or recreated containers (expected the 2 kept, stopped): "
          f"before {before}, after {after}")
    states = rig.container_states()
    stale = [s for s, st in states.items() if st["finished"] < wall_start - 2 * 10**9]
    check(not stale, f"{stale} did not stop during berth leave: {states}")
    api, db = states["api"]["finished"], states["db"]["finished"]
    check(api <= db, f"the api stopped {(api - db) / 1e9:.3f} s after the db it depends on (dependents stop first)")
    u = rig.unit("berth", "ActiveState", "SubState", "MainPID")
    check(u["ActiveState"] == "active" and u["MainPID"] == pid,
          f"berth.service after berth leave: expected the same agent (pid {pid}) still active, got {u} (the "
          "agent must stay; a STOPPING=1 notification alone makes systemd count it as deactivating)")
    code, body = rig.healthz()
    try:
        phase = json.loads(body).get("phase")
    except ValueError:
        phase = None
    check(code == 503 and phase == "left", f"/healthz after berth leave: expected 503 with phase 'left', got "
          f"{code} {body[:200]}")
    proxy = rig.unit("berth-proxy", "ActiveState")["ActiveState"]
    check(proxy == "active", f"berth-proxy is {proxy} after berth leave; it must outlive the agent")
    log(f"g. berth leave: {end - start:.1f} s, printed {left}; checks meanwhile {tally(checks)}; 2 app "
        f"containers stopped (api {(db - api) / 1e9:.2f} s before db), kept; the agent (pid {pid}) stays, "
        f"/healthz {code} phase {phase}; berth-proxy active")

    stopping = time.monotonic()
    p = rig.box_exec("systemctl", "stop", "berth.socket", "berth.service", check_rc=False, timeout=120)
    stop_took = time.monotonic() - stopping
    check(p.returncode == 0, f"systemctl stop berth.socket berth.service exited {p.returncode}: {p.stderr.strip()}")
    # The checker's next checks find the port closed, and must not boot the agent again.
    wait_for("two checks after the stop", 10, lambda: len(checker.between(stopping + stop_took, time.monotonic())) >= 2)
    later = checker.between(stopping + stop_took, time.monotonic())
    units = {unit: rig.unit(unit, "ActiveState")["ActiveState"] for unit in ("berth.socket", "berth.service")}
    check(all(s == "inactive" for s in units.values()), f"after systemctl stop berth.socket berth.service: {units}")
    running = rig.containers(running_only=True)
    check(not running, f"after the agent stopped these app containers run again: {running}")
    log(f"g. systemctl stop berth.socket berth.service: {stop_took:.2f} s, both inactive; the next checks "
        f"{tally(later)}; the app's containers still stopped")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", required=True)
    parser.add_argument("--image", default="berth-test/box:1")
    parser.add_argument("--run-id", default=str(os.getpid()))
    parser.add_argument("--keep", action="store_true",
                        help="leave the box and the app's containers for a look (the servers stop)")
    args = parser.parse_args()

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    with tempfile.TemporaryDirectory(prefix="berth-box-") as tmp:
        rig = Rig(args, Path(tmp))
        checker = None
        rc = 0
        try:
            rig.start_servers()
            rig.push_image()
            rig.put_release()
            rig.create_box()
            checker = Checker(rig.health)
            checker.start()
            log(f"box {rig.box} ({args.image}), project {rig.project}, /healthz on 127.0.0.1:{rig.health}, "
                f"traffic on 127.0.0.1:{rig.traffic}")
            boot(rig)
            journal(rig)
            hardening(rig)
            proxy_privilege(rig)
            restart_proxy(rig)
            restart_proxy_streams(rig)
            reload_proxy(rig)
            kill_proxy(rig)
            restart_agent(rig, checker)
            self_upgrade(rig, checker)
            reboot(rig, checker)
            leave(rig, checker)
        except Failed as e:
            print(f"box: FAIL: {e}", file=sys.stderr, flush=True)
            rig.diagnostics()
            rc = 1
        except (RigError, subprocess.TimeoutExpired) as e:
            print(f"box: error: the rig: {e}", file=sys.stderr, flush=True)
            rig.diagnostics()
            rc = 2
        except KeyboardInterrupt as e:
            print(f"box: interrupted ({e})", file=sys.stderr, flush=True)
            rc = 130
        finally:
            if checker:
                checker.stopping.set()
            if args.keep:
                rig.stop_servers()
                log(f"kept: docker exec -it {rig.box} bash; remove with: docker rm -f {rig.box} "
                    f"$(docker ps -aq --filter label={PROJECT_LABEL}={rig.project}); "
                    f"docker network rm {rig.project}_default; docker rmi {' '.join(rig.pulled)}")
            else:
                rig.cleanup()
        print("box timings:", file=sys.stderr)
        for what, secs in rig.timings.items():
            print(f"  {secs:6.1f} s  {what}", file=sys.stderr)
        for note in rig.notes:
            print(f"box: {note}", file=sys.stderr)
        print(f"box: {'all assertions held' if rc == 0 else 'FAILED'} in {time.monotonic() - T0:.0f} s", file=sys.stderr)
        return rc


if __name__ == "__main__":
    sys.exit(main())
