#!/usr/bin/env python3
"""Faults while holding: how fast the agent's watchdog tells the truth (/healthz 503), how
fast traffic is served again, and what the clients lose, for each way the app can die; and
the agent's and the proxy's resident memory while holding. Prints figures against issue
11's targets; asserts nothing (not a test).

  python3 tests/bench/faults.py
  BERTH_BIN=... BENCH_ROUNDS=5 BENCH_FAULTS=sigkill,oom python3 tests/bench/faults.py

Each round is a fresh stack, as tests/common/rig.rs makes one: `berth proxy` on a free
traffic port (--state in the stack's directory), `berth agent --config` (local mode, proxy
strategy, BERTH_LOG=info) booting berth-test/web:1 (busybox httpd, its healthcheck every
1 s) under a unique project name (berth-bench-faults-<pid>-<n>), and 4 keep-alive HTTP/1.1
clients sending GET /version to the traffic port (a 2 ms pause after each answer, as the
Rust rig's load). Once the agent's /healthz answers 200 and the clients have made 100
requests, the fault is applied; then the round runs until the app serves again (or, with no
restart policy, until the agent has given up), and 100 more requests. Then the agent and
the proxy are killed and the project's containers and networks removed.

The faults (BENCH_FAULTS selects them by key):

  sigkill    the app's process SIGKILLed from the host (kill -KILL of State.Pid),
             `restart: unless-stopped`, 1 replica: Docker restarts it, on a new host port
  dkill      `docker kill` of the app, 1 replica: to Docker a stop, so its policy leaves it
             down, and berth starts it after its 2 s grace
  replica    as sigkill with 2 replicas, one of them killed
  oom        the app's main process OOM-killed: `mem_limit: 24m`, and the main process (a
             shell that starts the web server in the background) grows past it once a file
             appears in a tmpfs (`docker exec ... touch /trigger/grow`; a tmpfs, so that the
             restarted container does not grow again); `docker inspect` confirms it
             afterwards (State.OOMKilled, which Docker 20.10 keeps, and RestartCount)
  norestart  no restart policy (compose's default), 1 replica, SIGKILL; [watchdog]
             repair_secs = 5: the time to phase `failed`, and whether /healthz stays 503
  restart    `docker restart` of the app (a restart, on a new host port), unless-stopped

What is measured, from the app's death: the kill(2) call for a SIGKILL from the host;
Docker's `kill` event (SIGKILL sent) for `docker kill`; Docker's `die` event for `docker
restart` (the app stops gracefully on its SIGTERM, and answers meanwhile) and for the OOM
kill (the `oom` event comes some 40 ms before, while the kernel kills, and the web server,
another process, still answers meanwhile):

  503        /healthz (polled every 20 ms on a keep-alive connection) first answers 503.
             With a restart policy, Docker or the watchdog may repair the app before any
             look sees it dead: "never 503" is then the right answer (target <= 2 s).
  served     the first 2xx answer to a request sent after the death, and after the
             container's exit (Docker's `die` event; until then its processes may still
             answer, for some milliseconds after a SIGKILL of the main process) (the proxy
             holds a request no backend accepts for --hold-secs, 5 s, until the route
             changes; so this is when the app serves again). With 2 replicas it is the
             other replica's first answer.
  routed     the proxy's route (its control socket, polled every 20 ms) names the
             restarted replica's new host port (as many backends as replicas, not the
             route before the death) (target for both: <= 10 s with a restart policy).
  200        /healthz 200 again after a 503.
  lost       requests that failed (non-2xx, a broken connection) among those that ended
             after the fault began (the call's start), split by when they were sent: before
             the app began to die (in flight: the SIGKILL; for `docker restart` its SIGTERM,
             for the OOM kill Docker's `oom` event); while its container went down (the
             teardown, until Docker's `die` event: the proxy may find the port still
             accepting, by docker-proxy, and the connection closed); after the exit (a
             request the proxy should have held). Target: only those in flight, none with 2
             replicas; where that is missed, the verdict also says whether any was sent after
             the exit. Each round's line says what the lost requests got and when they were
             sent, from the death.

Memory (once, in the first round): VmRSS and VmHWM (/proc/PID/status) and PSS
(/proc/PID/smaps_rollup) of the agent and of the proxy, while holding under load just
before the fault, and again once the fault is repaired.

Each fault runs BENCH_ROUNDS times (default 3); the table gives the median and the max over
rounds. The last line printed is a JSON summary. Exit status: 0 when the rig worked, whatever
the figures; 1 when a round could not run (a stack did not boot, docker failed: said why,
logs kept); 2 when the binary or the image is missing.

BENCH_KEEP_LOGS=1 keeps each round's directory (the agent's and the proxy's logs);
BENCH_DEBUG=1 prints every lost request (sent .. ended, from the death, and what it got).

Before measuring, it waits (up to BENCH_QUIET_SECS, default 600, polling every 10 s) while a
`rustc` runs on the machine, and says so in the header if it gave up waiting.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import BenchError, Load, die_with_parent, free_port, wait_quiet

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MUSL = os.path.join(ROOT, "target", "x86_64-unknown-linux-musl", "release", "berth")
BERTH = os.environ.get("BERTH_BIN") or (MUSL if os.access(MUSL, os.X_OK)
                                        else os.path.join(ROOT, "target", "release", "berth"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
QUIET_SECS = int(os.environ.get("BENCH_QUIET_SECS", "600"))
IMAGE = "berth-test/web:1"
CLIENTS = 4
PAUSE = 0.002  # after each answer, per client
POLL = 0.02  # /healthz and the proxy's route
WARMUP = 100  # requests before the fault, and after the recovery
RECOVER_SECS = 30  # a round gives up waiting for the app to serve again after this
BOOT_SECS = 60
PROJECT_LABEL = "com.docker.compose.project"
HEALTHCHECK = '["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/healthz"]'
NORESTART_REPAIR_SECS = 5

# The OOM stack's main process: the web server in the background, then, once /trigger/grow
# exists, a shell variable of 200 MB (`$$` is compose's escape for `$`).
OOM_COMMAND = ("web & while [ ! -e /trigger/grow ]; do sleep 0.1; done; "
               "x=$$(head -c 200000000 /dev/zero | tr '\\0' a); wait")

FAULTS = [
    {"key": "sigkill", "label": "SIGKILL (host), unless-stopped, 1 replica",
     "restart": "unless-stopped", "replicas": 1, "action": "sigkill"},
    {"key": "dkill", "label": "docker kill, unless-stopped, 1 replica",
     "restart": "unless-stopped", "replicas": 1, "action": "docker-kill"},
    {"key": "replica", "label": "SIGKILL (host), unless-stopped, 1 of 2 replicas",
     "restart": "unless-stopped", "replicas": 2, "action": "sigkill"},
    {"key": "oom", "label": "OOM kill (mem_limit 24m), unless-stopped, 1 replica",
     "restart": "unless-stopped", "replicas": 1, "action": "oom"},
    {"key": "norestart", "label": f"SIGKILL (host), no restart policy, repair_secs {NORESTART_REPAIR_SECS}",
     "restart": None, "replicas": 1, "action": "sigkill", "repair_secs": NORESTART_REPAIR_SECS},
    {"key": "restart", "label": "docker restart, unless-stopped, 1 replica",
     "restart": "unless-stopped", "replicas": 1, "action": "docker-restart"},
]
# The Docker events that mark, where the call's start does not, when the app began to die
# ("dying": SIGKILL or SIGTERM sent, the kernel's OOM kill) and when its container had
# exited ("exit": `die`). The death the times are measured from is "dying", except where the
# app still answers until the exit: `docker restart` (a graceful stop on SIGTERM) and the OOM
# kill (the web server, another process, answers until the main process is gone).
DEATH_EVENTS = {"sigkill": {"exit": "die"}, "docker-kill": {"dying": "kill", "exit": "die"},
                "docker-restart": {"dying": "kill", "exit": "die"}, "oom": {"dying": "oom", "exit": "die"}}
DEATH_IS_EXIT = {"docker-restart", "oom"}
SELECTED = [k for k in os.environ.get("BENCH_FAULTS", ",".join(f["key"] for f in FAULTS)).split(",") if k]


# --- docker and /proc ---------------------------------------------------------------------

def docker(*args, check=True, timeout=60):
    p = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise BenchError(f"docker {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def project_ids(project, *filters):
    args = ["ps", "-aq", "--no-trunc", "--filter", f"label={PROJECT_LABEL}={project}"]
    for f in filters:
        args += ["--filter", f]
    return sorted(docker(*args).split())


def inspect(cid):
    return json.loads(docker("inspect", cid))[0]


def cleanup(project):
    """Removes what Docker holds with this project's label (containers with their anonymous
    volumes, networks, volumes). Never raises."""
    label = f"label={PROJECT_LABEL}={project}"
    try:
        ids = docker("ps", "-aq", "--no-trunc", "--filter", label, check=False).split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        nets = docker("network", "ls", "-q", "--filter", label, check=False).split()
        if nets:
            docker("network", "rm", *nets, check=False)
        vols = docker("volume", "ls", "-q", "--filter", label, check=False).split()
        if vols:
            docker("volume", "rm", "-f", *vols, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"  cleanup of {project}: {e}", file=sys.stderr)


def proc_memory(pid):
    """{rss, hwm, anon, pss, threads} in KiB (threads: a count), or None if the process went."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        pss = None
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
        return {"rss": int(fields["VmRSS"].split()[0]), "hwm": int(fields["VmHWM"].split()[0]),
                "anon": int(fields["RssAnon"].split()[0]), "pss": pss,
                "threads": int(fields["Threads"].split()[0])}
    except (OSError, KeyError, ValueError):
        return None




# --- traffic ------------------------------------------------------------------------------

class Poller:
    """Calls fn every POLL seconds on a thread, recording (time, value) when it returns."""

    def __init__(self, fn):
        self.fn = fn
        self.samples = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping.is_set():
            value = self.fn()
            self.samples.append((time.monotonic(), value))
            self.stopping.wait(POLL)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        return list(self.samples)


class HealthClient:
    """GET /healthz on a kept-alive connection: (code, phase), or (None, error)."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def __call__(self):
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.conn.request("GET", "/healthz")
            r = self.conn.getresponse()
            body = r.read()
            if r.will_close:
                self.conn.close()
                self.conn = None
            try:
                phase = json.loads(body).get("phase")
            except ValueError:
                phase = None
            return r.status, phase
        except (OSError, http.client.HTTPException) as e:
            if self.conn is not None:
                self.conn.close()
            self.conn = None
            return None, str(e)


def proxy_control(sock_path, request, timeout=5):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


class Events:
    """`docker events` for one project, read on a thread: (wall seconds, action, id)."""

    def __init__(self, project):
        self.events = []
        self.p = subprocess.Popen(
            ["docker", "events", "--filter", f"label={PROJECT_LABEL}={project}",
             "--filter", "type=container", "--format", "{{json .}}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, preexec_fn=die_with_parent)
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        for line in self.p.stdout:
            try:
                e = json.loads(line)
                self.events.append((e["timeNano"] / 1e9, e.get("Action", ""), e.get("id", "")))
            except (ValueError, KeyError):
                pass

    def wait_any(self, timeout):
        """Until the stream has delivered an event (the healthchecks' execs make some every
        second), so that it is known to be connected."""
        deadline = time.monotonic() + timeout
        while not self.events and time.monotonic() < deadline:
            time.sleep(0.02)
        return bool(self.events)

    def first(self, action, since_wall, cid):
        return next(((t, i) for t, a, i in self.events if a == action and t >= since_wall and i == cid), None)

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


# --- one stack ----------------------------------------------------------------------------

def compose_yaml(port, fault):
    y = ("services:\n  web:\n    image: berth-test/web:${RELEASE}\n"
         f"    ports: [\"127.0.0.1:{port}:8080\"]\n"
         f"    healthcheck:\n      test: {HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n"
         "      retries: 1\n      start_period: 30s\n")
    if fault["restart"]:
        y += f"    restart: {fault['restart']}\n"
    y += f"    deploy:\n      replicas: {fault['replicas']}\n"
    if fault["action"] == "oom":
        y += ("    mem_limit: 24m\n    tmpfs: [\"/trigger\"]\n"
              f"    command: [\"sh\", \"-c\", {json.dumps(OOM_COMMAND)}]\n")
    return y


class Stack:
    """One instance: a directory with berth.toml, compose.yaml and the release pointer; the
    proxy on a free traffic port; the agent. Everything is killed and removed by close()."""

    def __init__(self, project, fault):
        self.project = project
        self.fault = fault
        self.dir = tempfile.mkdtemp(prefix=f"{project}-")
        self.sock = os.path.join(self.dir, "proxy.sock")
        self.proxy = self.agent = None
        self.logs = []

    def path(self, name):
        return os.path.join(self.dir, name)

    def spawn(self, name, argv, env=None):
        log = open(self.path(f"{name}.log"), "wb")
        self.logs.append(log)
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=env, preexec_fn=die_with_parent)

    def log(self, name, lines=25):
        try:
            with open(self.path(f"{name}.log"), "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join("      " + line for line in text.splitlines()[-lines:])

    def start_proxy(self):
        # A free port may be taken before the proxy binds it: the proxy then exits saying so.
        for _ in range(5):
            self.port = free_port()
            self.proxy = self.spawn("proxy", [BERTH, "proxy", "--listen", f"127.0.0.1:{self.port}",
                                              "--control", self.sock, "--state", self.path("route.json")])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proxy.poll() is not None:
                    break
                try:
                    proxy_control(self.sock, {"op": "status"})
                    return
                except (OSError, ValueError):
                    time.sleep(0.02)
            if self.proxy.poll() is None:
                raise BenchError(f"the proxy's control socket did not answer in 10 s:\n{self.log('proxy')}")
            if "cannot listen" not in self.log("proxy"):
                raise BenchError(f"the proxy exited ({self.proxy.returncode}):\n{self.log('proxy')}")
        raise BenchError("the proxy found no free port in 5 tries")

    def write_config(self):
        self.health = free_port()
        watchdog = f"[watchdog]\nrepair_secs = {self.fault['repair_secs']}\n" if "repair_secs" in self.fault else ""
        files = {
            "berth.toml": (
                f'project = "{self.project}"\ncompose = "compose.yaml"\nrelease = "release"\nlocal = true\n'
                f'run_dir = "{self.path("run")}"\n'
                f'[health]\nlisten = "127.0.0.1:{self.health}"\n'
                "[timeouts]\nready_secs = 15\nin_service_secs = 30\n"
                "[upgrade]\nstrategy = \"proxy\"\nverify_secs = 3\ndrain_secs = 10\n"
                f'[proxy]\ncontrol = "{self.sock}"\nport = {self.port}\nhealth_path = "/healthz"\n'
                f"{watchdog}"),
            "compose.yaml": compose_yaml(self.port, self.fault),
            "release": "1\n",
        }
        for name, text in files.items():
            with open(self.path(name), "w") as f:
                f.write(text)

    def start_agent(self):
        env = dict(os.environ, BERTH_LOG="info")
        self.agent = self.spawn("agent", [BERTH, "agent", "--config", self.path("berth.toml")], env)
        deadline = time.monotonic() + BOOT_SECS
        health = HealthClient(self.health)
        last = None
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise BenchError(f"the agent exited ({self.agent.returncode}) while booting:\n{self.log('agent')}")
            code, phase = health()
            if code == 200:
                return
            last = (code, phase)
            time.sleep(0.05)
        raise BenchError(f"/healthz not 200 after {BOOT_SECS} s (last {last}):\n{self.log('agent')}")

    def route(self):
        try:
            return tuple(sorted(proxy_control(self.sock, {"op": "status"})["active"]))
        except (OSError, ValueError, KeyError) as e:
            return f"error: {e}"

    def running(self):
        return project_ids(self.project, "status=running")

    def close(self):
        # The agent first: its watchdog would start again what is being removed.
        for p in (self.agent, self.proxy):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        cleanup(self.project)
        for f in self.logs:
            f.close()


# --- one round ----------------------------------------------------------------------------

def apply_fault(fault, target):
    """Applies the fault to container `target`; returns the monotonic time of the death
    (for the OOM kill: of the trigger, replaced by Docker's `oom` event later)."""
    action = fault["action"]
    if action == "sigkill":
        pid = inspect(target)["State"]["Pid"]
        if not pid:
            raise BenchError(f"container {target[:12]} has no process")
        t = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return t
    if action == "docker-kill":
        t = time.monotonic()
        docker("kill", target)
        return t
    if action == "docker-restart":
        t = time.monotonic()
        # Returns once the container runs again; the clients and pollers see the rest.
        docker("restart", target)
        return t
    if action == "oom":
        t = time.monotonic()
        docker("exec", target, "touch", "/trigger/grow")
        return t
    raise BenchError(f"unknown action {action}")


def first(samples, pred):
    return next((s for s in samples if pred(s)), None)


def figures(fault, marks, load, health, route, old_route):
    """The round's figures (seconds from the death; None: never) from what was recorded.
    marks: monotonic times of the fault's start ("action": requests lost are counted from
    then), of when the app began to die ("dying": a lost request sent before it was in flight
    in the app), of its container's exit ("exit": one sent before it was caught in the
    container's teardown; one sent after, the proxy should have held) and of the death the
    times are measured from ("death")."""
    t_death = marks["death"]
    r = {}
    after = [(t, v) for t, v in health if t > t_death]
    s503 = first(after, lambda s: s[1][0] == 503)
    r["to_503"] = s503[0] - t_death if s503 else None
    r["phase_503"] = s503[1][1] if s503 else None
    if s503:
        s200 = first(after, lambda s: s[0] > s503[0] and s[1][0] == 200)
        r["to_200"] = s200[0] - t_death if s200 else None
        sf = first(after, lambda s: s[1][1] == "failed")
        r["to_failed"] = sf[0] - t_death if sf else None
        r["stays_503"] = all(v[0] == 503 for t, v in after if t >= s503[0])
    else:
        r["to_200"] = r["to_failed"] = None
        r["stays_503"] = False

    # Sent after the container's exit: a dying container's other processes may still answer
    # for some milliseconds after its main process was killed.
    served = first(load, lambda s: s[0] > max(t_death, marks["exit"]) and s[2])
    r["served"] = served[1] - t_death if served else None

    changed = False
    r["routed"] = None
    for t, v in route:
        if t <= t_death or isinstance(v, str):
            continue
        if v != old_route:
            changed = True
        if changed and len(v) == fault["replicas"]:
            r["routed"] = t - t_death
            break

    lost = [s for s in load if not s[2] and s[1] >= marks["action"]]
    r["lost"] = len(lost)
    r["lost_before"] = sum(1 for s in load if not s[2] and s[1] < marks["action"])
    r["lost_inflight"] = sum(1 for s in lost if s[0] <= marks["dying"])
    r["lost_teardown"] = sum(1 for s in lost if marks["dying"] < s[0] <= marks["exit"])
    r["lost_after"] = sum(1 for s in lost if s[0] > marks["exit"])
    r["requests"] = len(load)
    kinds = {}
    for s in lost:
        k = s[3].split(":")[0][:40]
        kinds.setdefault(k, []).append(round(s[0] - t_death, 2))
    r["lost_kinds"] = kinds
    return r


def recovered(fault, marks, load, health, route, old_route):
    """The round may end: the app serves again (and /healthz is 200 again if it was 503),
    or, without a restart policy, the agent has given up."""
    f = figures(fault, marks, load, health, route, old_route)
    if fault["restart"] is None:
        return f["to_failed"] is not None
    return f["served"] is not None and f["routed"] is not None and (f["to_503"] is None or f["to_200"] is not None)


def run_round(fault, n, measure_memory, offset):
    """One fresh stack, one fault; returns the figures (and memory when asked)."""
    project = f"berth-bench-faults-{os.getpid()}-{n}"
    stack = Stack(project, fault)
    events = load = hpoll = rpoll = None
    ok = False
    try:
        stack.start_proxy()
        stack.write_config()
        stack.start_agent()
        running = stack.running()
        if len(running) != fault["replicas"]:
            raise BenchError(f"{len(running)} containers running, not {fault['replicas']}")
        events = Events(project)
        events.wait_any(2.5)
        hpoll = Poller(HealthClient(stack.health))
        rpoll = Poller(stack.route)
        load = Load(stack.port, "/version", CLIENTS, PAUSE)
        load.wait_for(WARMUP)
        old_route = stack.route()
        if isinstance(old_route, str) or len(old_route) != fault["replicas"]:
            raise BenchError(f"the proxy's route before the fault: {old_route}")
        mem = {}
        if measure_memory:
            mem["before"] = {"agent": proc_memory(stack.agent.pid), "proxy": proc_memory(stack.proxy.pid)}

        target = running[-1]
        t_action = apply_fault(fault, target)
        marks = {"action": t_action, "dying": t_action, "exit": t_action, "death": t_action}
        wall_action = t_action + offset
        waiting = dict(DEATH_EVENTS[fault["action"]])
        deadline = time.monotonic() + (RECOVER_SECS if fault["restart"] else fault["repair_secs"] + 20)
        stopped_early = False
        notes = []
        while time.monotonic() < deadline:
            if stack.agent.poll() is not None:
                raise BenchError(f"the agent exited ({stack.agent.returncode}):\n{stack.log('agent')}")
            for mark, event in list(waiting.items()):
                seen = events.first(event, wall_action - 0.5, target)
                if seen:
                    marks[mark] = seen[0] - offset
                    del waiting[mark]
                    marks["death"] = marks["exit" if fault["action"] in DEATH_IS_EXIT else "dying"]
            if fault["restart"] is None and not stopped_early and any(
                    t > marks["death"] and v[0] == 503 for t, v in hpoll.samples):
                # Nothing will serve again: no more requests (those held by the proxy end
                # within its hold time, meanwhile).
                load.stopping.set()
                stopped_early = True
            # (Docker's events come within milliseconds; without them, after 3 s, the marks
            # stay at the call's start, and a note says so.)
            if (not waiting or time.monotonic() - t_action > 3) and recovered(
                    fault, marks, load.samples, hpoll.samples, rpoll.samples, old_route):
                break
            time.sleep(0.05)
        else:
            notes.append(f"not recovered within {deadline - t_action:.0f} s of the fault")
        for mark, event in waiting.items():
            notes.append(f"no `{event}` event from Docker: the {mark} is the call's start")
        oom_killed = None
        if fault["action"] == "oom":
            # Docker 20.10 keeps OOMKilled true after its restart, beside RestartCount.
            info = inspect(target)
            oom_killed = bool(info["State"]["OOMKilled"]) and info["RestartCount"] > 0
            if not oom_killed:
                notes.append(f"docker inspect: State.OOMKilled {info['State']['OOMKilled']}, RestartCount "
                             f"{info['RestartCount']}: the app was not OOM-killed and restarted")
        if fault["restart"] is None:
            time.sleep(1.0)  # stays 503?
        elif not stopped_early:
            load.wait_for(WARMUP)
        if measure_memory:
            mem["after"] = {"agent": proc_memory(stack.agent.pid), "proxy": proc_memory(stack.proxy.pid)}
        samples = load.stop()
        load = None
        health = hpoll.stop()
        route = rpoll.stop()
        f = figures(fault, marks, samples, health, route, old_route)
        f["dying_to_exit"] = marks["exit"] - marks["dying"]
        if os.environ.get("BENCH_DEBUG"):
            for x in samples:
                if not x[2]:
                    print(f"      lost: {x[0] - marks['death']:+.3f} .. {x[1] - marks['death']:+.3f} {x[3]}")
        f["notes"] = notes
        f["oom_killed"] = oom_killed
        f["memory"] = mem
        expected = fault["replicas"] if fault["restart"] else fault["replicas"] - 1
        running_after = len(stack.running())
        if running_after != expected:
            f["notes"].append(f"{running_after} containers running at the end, not {expected}")
        ok = True
        return f
    finally:
        for x in (load, hpoll, rpoll):
            if x is not None:
                x.stop()
        if events is not None:
            events.stop()
        stack.close()
        if ok and not os.environ.get("BENCH_KEEP_LOGS"):
            shutil.rmtree(stack.dir, ignore_errors=True)
        else:
            print(f"    logs kept in {stack.dir}", flush=True)


# --- the report ---------------------------------------------------------------------------

def secs(x):
    return "-" if x is None else f"{x:.2f}"


def med_max(values, never="never"):
    """'median / max' of the rounds' values in seconds; rounds where it never happened are
    counted beside them."""
    got = [v for v in values if v is not None]
    if not got:
        return never
    text = f"{statistics.median(got):.2f} / {max(got):.2f}"
    if len(got) < len(values):
        text += f" ({len(values) - len(got)}x {never})"
    return text


def summary(values):
    got = [v for v in values if v is not None]
    return {"median": round(statistics.median(got), 3) if got else None,
            "max": round(max(got), 3) if got else None,
            "rounds": [None if v is None else round(v, 3) for v in values]}


def fmt_rounds(f):
    parts = [f"503 {secs(f['to_503']) if f['to_503'] is not None else 'never'}"
             + (f" ({f['phase_503']})" if f["phase_503"] else "")]
    if f["to_200"] is not None:
        parts.append(f"200 again {secs(f['to_200'])}")
    if f["to_failed"] is not None:
        parts.append(f"failed {secs(f['to_failed'])}, {'stays 503' if f['stays_503'] else 'did NOT stay 503'}")
    parts.append(f"served {secs(f['served']) if f['served'] is not None else 'never'}")
    parts.append(f"routed {secs(f['routed']) if f['routed'] is not None else 'never'}")
    parts.append(f"lost {f['lost']} of {f['requests']} ({f['lost_inflight']} in flight, {f['lost_teardown']} sent in "
                 f"the {1000 * f['dying_to_exit']:.0f} ms teardown, {f['lost_after']} after the exit)")
    if f["lost_kinds"]:
        parts.append("; ".join(f"{k} x{len(v)} (started at " + ", ".join(f"{x:+.2f}" for x in v[:4])
                               + (", ..." if len(v) > 4 else "") + " s)"
                               for k, v in sorted(f["lost_kinds"].items())))
    if f["lost_before"]:
        parts.append(f"{f['lost_before']} failed BEFORE the fault")
    return ", ".join(parts)


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


def fmt_mem(m):
    if not m:
        return "gone"
    return (f"VmRSS {mib(m['rss'])} MiB, VmHWM {mib(m['hwm'])} MiB, PSS {mib(m['pss'])} MiB "
            f"(anon {mib(m['anon'])} MiB, {m['threads']} threads)")


def verdict(ok):
    return "PASS" if ok else "MISS"


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    unknown = [k for k in SELECTED if k not in {f["key"] for f in FAULTS}]
    if unknown:
        print(f"BENCH_FAULTS: unknown {unknown} ({', '.join(f['key'] for f in FAULTS)})", file=sys.stderr)
        return 2
    if not os.access(BERTH, os.X_OK):
        print(f"missing {BERTH}: build berth (cargo build --release -p berth), or BERTH_BIN=...", file=sys.stderr)
        return 2
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        print(f"missing the image {IMAGE}: bash tests/setup.sh", file=sys.stderr)
        return 2
    faults = [f for f in FAULTS if f["key"] in SELECTED]
    print(f"faults benchmark: {len(faults)} faults x {ROUNDS} rounds, a fresh stack each; {CLIENTS} keep-alive "
          f"clients on the traffic port; binary {os.path.relpath(BERTH, ROOT)}; {os.cpu_count()} CPUs", flush=True)
    note = wait_quiet(QUIET_SECS)
    if note:
        print(f"  NOTE: {note}", flush=True)

    offset = time.time() - time.monotonic()  # monotonic -> wall clock, for Docker's events
    results = {f["key"]: [] for f in faults}
    failures = []
    memory = None
    n = 0
    started = time.monotonic()
    for fault in faults:
        print(f"  {fault['key']}: {fault['label']}", flush=True)
        for rnd in range(ROUNDS):
            n += 1
            try:
                f = run_round(fault, n, memory is None, offset)
            except (BenchError, OSError, subprocess.SubprocessError) as e:
                failures.append(f"{fault['key']} round {rnd + 1}: {e}")
                print(f"    round {rnd + 1}: FAILED: {e}", flush=True)
                continue
            if f["memory"]:
                memory = f["memory"]
            results[fault["key"]].append(f)
            print(f"    round {rnd + 1}: {fmt_rounds(f)}", flush=True)
            for x in f["notes"]:
                print(f"      NOTE: {x}", flush=True)
    elapsed = time.monotonic() - started

    print()
    print(f"Faults while holding: {ROUNDS} round(s) each, median / max over rounds, seconds from the app's death "
          f"({elapsed:.0f} s in all)")
    print(f"  {'fault':<10} {'to 503':<26} {'served again':<13} {'routed again':<13} {'200 again':<13} "
          f"{'lost':<8} in flight / teardown / after exit (all rounds)")
    out = {"bench": "faults", "rounds": ROUNDS, "clients": CLIENTS, "faults": {}}
    for fault in faults:
        rs = results[fault["key"]]
        if not rs:
            print(f"  {fault['key']:<10} no round completed")
            continue
        lost = [f["lost"] for f in rs]
        to503 = [f["to_503"] for f in rs]
        served = [f["served"] for f in rs]
        routed = [f["routed"] for f in rs]
        to200 = [f["to_200"] for f in rs if f["to_503"] is not None]  # of the rounds with a 503
        checks = []
        got503 = [x for x in to503 if x is not None]
        if got503:
            checks.append(f"503 <= 2 s {verdict(max(got503) <= 2)}")
        if fault["restart"]:
            both = [max(x, y) if x is not None and y is not None else None for x, y in zip(served, routed)]
            checks.append(f"serving again <= 10 s {verdict(all(x is not None and x <= 10 for x in both))}")
            if fault["replicas"] >= 2:
                checks.append(f"nothing lost {verdict(max(lost) == 0)}")
            else:
                strict = all(f["lost"] == f["lost_inflight"] for f in rs)
                after = sum(f["lost_after"] for f in rs)
                checks.append(f"lost only what was in flight {verdict(strict)}"
                              + ("" if strict else f" (none sent after the exit {verdict(after == 0)})"))
        else:
            failed = [f["to_failed"] for f in rs]
            stays = all(f["stays_503"] for f in rs)
            checks.append(f"phase failed {med_max(failed)} (repair_secs {fault['repair_secs']}); "
                          f"stays 503 {verdict(stays)}")
        if fault["action"] == "oom":
            no_oom = sum(1 for f in rs if not f["oom_killed"])
            checks.append("OOMKilled " + ("every round" if not no_oom else f"NOT in {no_oom} round(s)"))
        lost_text = f"{statistics.median(lost):g} / {max(lost)}"
        split = [sum(f[k] for f in rs) for k in ("lost_inflight", "lost_teardown", "lost_after")]
        split_text = " / ".join(str(x) for x in split)
        if fault["restart"] is None:
            lost_text = f"({lost_text})"
        print(f"  {fault['key']:<10} {med_max(to503, 'never 503'):<26} {med_max(served):<13} {med_max(routed):<13} "
              f"{med_max(to200) if to200 else '-':<13} {lost_text:<8} {split_text}")
        print(f"  {'':<10} {fault['label']}: {'; '.join(checks)}")
        entry = {"label": fault["label"], "to_503": summary(to503), "served": summary(served),
                 "routed": summary(routed), "to_200": summary(to200),
                 "lost": {"median": statistics.median(lost), "max": max(lost), "rounds": lost,
                          "in_flight": split[0], "teardown": split[1], "after_exit": split[2],
                          "requests": sum(f["requests"] for f in rs)}}
        if fault["restart"] is None:
            entry["to_failed"] = summary([f["to_failed"] for f in rs])
            entry["stays_503"] = all(f["stays_503"] for f in rs)
        if fault["action"] == "oom":
            entry["oom_killed_rounds"] = sum(1 for f in rs if f["oom_killed"])
        out["faults"][fault["key"]] = entry
    print("  to 503: the first /healthz 503 (never 503: repaired before a look saw it dead). served again: the first")
    print("  2xx to a request sent after the death (and the container's exit). routed again: the proxy's route")
    print("  names the new backend.")
    print("  200 again: /healthz after its 503. lost: failed requests (non-2xx, broken connections) per round,")
    print("  and over all rounds how many were sent before the app began to die (in flight), while its container")
    print("  went down (teardown: to Docker's `die` event), and after. Without a restart policy, lost is in")
    print("  brackets: the instance is honestly 503, and those are the requests the proxy held, then 502.")
    if memory:
        print()
        print("Resident memory while holding (first round, under load):")
        for when, title in (("before", "before the fault"), ("after", "after the repair")):
            m = memory.get(when) or {}
            print(f"  agent, {title:<17} {fmt_mem(m.get('agent'))}")
            print(f"  proxy, {title:<17} {fmt_mem(m.get('proxy'))}")
        out["memory_kib"] = memory
        a = (memory.get("before") or {}).get("agent")
        if a:
            print(f"  agent VmRSS {mib(a['rss'])} MiB   target <= 10 MiB (issue 11)   {verdict(a['rss'] <= 10 * 1024)}")
    if failures:
        print(f"\n{len(failures)} round(s) could not run:")
        for f in failures:
            print(f"  {f}")
        out["failed_rounds"] = len(failures)
    if note:
        out["note"] = note
    print()
    print(json.dumps(out, separators=(",", ":")))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
