#!/usr/bin/env python3
"""Upgrades under load (issue 4): failed requests while berth-test/web goes from one release to
the next, and the time from `berth upgrade` to the switch. Prints figures and ratios against the
targets; not a test.

  tests/bench/upgrade.sh          (builds berth --release, runs this)
  BERTH_BIN=... BENCH_ROUNDS=3 python3 tests/bench/upgrade.py

The service is berth-test/web (busybox httpd; GET /version answers the release, 1 or 2) with
the healthcheck the integration tests use (wget of /healthz, interval 1s, timeout 2s, retries
1, start_period 30s). Images are already local. Everything listens on 127.0.0.1, on ports
picked free at run time. Three ways of upgrading, each BENCH_ROUNDS times (default 3),
releases 1 -> 2, then 2 -> 1, 1 -> 2, ...:

  compose  Debian's docker-compose 1.29.2: the compose file publishes PORT:8080 and names
           `berth-test/web:${RELEASE}`; the upgrade is `RELEASE=<new> docker-compose up -d`.
           The load hits PORT.
  proxy    berth's proxy strategy: `berth proxy --listen PORT` owns the traffic port, `berth
           agent` (local mode) holds the project, the upgrade is `berth upgrade --release
           <new>` (through the agent's control socket). The load hits PORT.
  drain    berth's drain strategy on two "instances" (two projects, two agents, each with its
           own web port and health port) behind HAProxy as the load balancer's stand-in:
           round robin, active checks of each agent's /healthz with the ALB checker's
           User-Agent (inter 1s, fall 2, rise 2), `retries 0` and no `option redispatch` (a
           request sent to a server that is gone fails, as it would through an ALB). Each
           agent has `[load_balancer] healthy_threshold = 2, unhealthy_threshold = 2`. The
           upgrade is `berth upgrade --release <new>` on instance A, then on B (SSM with
           MaxConcurrency 1). The load hits HAProxy.

The load is the same for each: BENCH_CLIENTS (4) threads, each a keep-alive HTTP/1.1
connection (http.client; reopened when the server closes it or after an error) doing GET
/version in a loop with a 2 ms pause, from BENCH_WARMUP_SECS (2) before the upgrade command to
BENCH_AFTER_SECS (3) after it returns. Every request is counted: a connection refused or reset,
a timeout (5 s) or a non-2xx answer is a failed request. Also reported: the longest time
without any 2xx answer, and requests that began after the upgrade returned but were answered
by the old release.

Time to switch: the proxy strategy's `to_switch_secs` from `berth upgrade`'s JSON (from the
start of the upgrade to the proxy's switch: create the new color, wait for its health, switch),
and the wall time of the whole `berth upgrade` command, which also holds the verify window
(`verify_secs`, BENCH_VERIFY_SECS, default 10, berth's default) and the drain of the old color.
Measured on the proxy rounds, under the load above.

Exit status: 0 when every round ran (whatever the figures); 1 when something failed to run (a
process did not start, an upgrade command failed); the figures gathered are printed anyway.
BENCH_METHODS=compose,proxy,drain picks the methods. Logs (agents, proxy, HAProxy) are kept in
the temp dir on failure, when berth lost a request, or with BENCH_KEEP_LOGS=1.
"""

import collections
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import BenchError, conclude, die_with_parent, free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BERTH = os.environ.get("BERTH_BIN", os.path.join(ROOT, "target", "release", "berth"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
WARMUP = float(os.environ.get("BENCH_WARMUP_SECS", "2"))
AFTER = float(os.environ.get("BENCH_AFTER_SECS", "3"))
VERIFY = int(os.environ.get("BENCH_VERIFY_SECS", "10"))
METHODS = [m for m in os.environ.get("BENCH_METHODS", "compose,proxy,drain").split(",") if m]
COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
PAUSE = 0.002
REQUEST_TIMEOUT = 5
COMMAND_TIMEOUT = 180
PROJECT_LABEL = "com.docker.compose.project"
HEALTHCHECK = '["CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8080/healthz"]'


def tail_of(path, n=30):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode(errors="replace").splitlines()
        return "\n".join("    " + line for line in lines[-n:])
    except OSError:
        return ""


class Proc:
    """A process this script started, its output in a log file."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=die_with_parent)

    def check_alive(self):
        if self.p.poll() is not None:
            raise BenchError(f"{self.name} exited with status {self.p.returncode}:\n{tail_of(self.log_path)}")

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


def run(argv, timeout=COMMAND_TIMEOUT, env=None, check=True):
    """Runs a command to its end; returns (wall seconds, CompletedProcess)."""
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{' '.join(argv)}: still running after {timeout} s")
    wall = time.monotonic() - started
    if check and done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return wall, done


def docker(*args, check=True):
    return run(["docker", *args], timeout=120, check=check)[1].stdout


def sweep(project):
    """Removes whatever is left of a project (containers, networks), by compose's label."""
    ids = docker("ps", "-aq", "--filter", f"label={PROJECT_LABEL}={project}", check=False).split()
    if ids:
        docker("rm", "-fv", *ids, check=False)
    for net in docker("network", "ls", "-q", "--filter", f"label={PROJECT_LABEL}={project}", check=False).split():
        docker("network", "rm", net, check=False)


def get(port, path, timeout=2):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace").strip()
    finally:
        c.close()


def eventually(what, timeout, probe, procs=()):
    """Calls probe() until it returns a true value; its last error or value explains a timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            v = probe()
            if v:
                return v
            last = v
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        time.sleep(0.1)
    raise BenchError(f"{what}: not after {timeout} s (last: {last!r})")


def answers(port, version):
    return get(port, "/version") == (200, version)


# ---------------------------------------------------------------------------------------------
# The load client


class Load:
    """CLIENTS threads, each a keep-alive connection doing GET /version with a short pause.
    Every request is recorded as (started, ended, ok, body-or-reason)."""

    def __init__(self, port):
        self.port = port
        self.stop_flag = threading.Event()
        self.samples = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(CLIENTS)]
        self.started = time.monotonic()
        for t in self.threads:
            t.start()

    def client(self):
        conn = None
        mine = []
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
                conn.request("GET", "/version", headers={"Host": "app.example"})
                r = conn.getresponse()
                body = r.read().decode(errors="replace").strip()
                if 200 <= r.status < 300:
                    result = (True, body)
                else:
                    result = (False, f"HTTP {r.status}")
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                result = (False, type(e).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            mine.append((t0, time.monotonic(), *result))
            if len(mine) >= 256:
                with self.lock:
                    self.samples.extend(mine)
                mine = []
            time.sleep(PAUSE)
        if conn is not None:
            conn.close()
        with self.lock:
            self.samples.extend(mine)

    def count(self):
        with self.lock:
            return len(self.samples)

    def finish(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=REQUEST_TIMEOUT + 5)
        self.ended = time.monotonic()
        return sorted(self.samples)


def analyse(samples, load_started, load_ended, old, new, command_ended):
    """Figures of one round from its samples."""
    failed = [s for s in samples if not s[2]]
    ok_ends = sorted(s[1] for s in samples if s[2])
    # Longest stretch without a 2xx answer completing (from the load's start to its end).
    points = [load_started, *ok_ends, load_ended]
    gap = max(b - a for a, b in zip(points, points[1:]))
    first_new = min((s[1] for s in samples if s[2] and s[3] == new), default=None)
    return {
        "secs": load_ended - load_started,
        "requests": len(samples),
        "failed": len(failed),
        "reasons": collections.Counter(s[3] for s in failed),
        "gap": gap,
        "by_old": sum(1 for s in samples if s[2] and s[3] == old),
        "by_new": sum(1 for s in samples if s[2] and s[3] == new),
        "other": sum(1 for s in samples if s[2] and s[3] not in (old, new)),
        # Began after the upgrade command returned, yet not answered by the new release.
        "stale": sum(1 for s in samples if s[0] > command_ended and s[2] and s[3] != new),
        # Answered by the old release although they began after the new one first answered.
        "old_after_new": 0 if first_new is None else
        sum(1 for s in samples if s[0] > first_new and s[2] and s[3] == old),
        "no_new": first_new is None,
    }


def under_load(port, upgrade):
    """Load on `port`; WARMUP s; upgrade() -> extra dict; AFTER s; the round's samples."""
    load = Load(port)
    try:
        time.sleep(WARMUP)
        if load.count() == 0:
            raise BenchError(f"the load client made no request in {WARMUP} s")
        extra = upgrade()
        command_ended = time.monotonic()
        time.sleep(AFTER)
    finally:
        samples = load.finish()
    return samples, load.started, load.ended, command_ended, extra


def fmt_round(r):
    reasons = ", ".join(f"{k} {v}" for k, v in r["reasons"].most_common(3))
    line = (f"{r['requests']:>6} requests, {r['failed']:>4} failed"
            f"{' (' + reasons + ')' if reasons else ''}, longest without a 2xx {r['gap'] * 1000:.0f} ms, "
            f"old {r['by_old']} / new {r['by_new']}")
    if r["stale"]:
        line += f", {r['stale']} answered by the old release after the upgrade returned"
    if r["no_new"]:
        line += ", NEVER answered by the new release"
    return line


# ---------------------------------------------------------------------------------------------
# The three methods


def compose_yaml(port, healthcheck=True):
    y = (f"services:\n  web:\n    image: berth-test/web:${{RELEASE}}\n"
         f"    ports: [\"127.0.0.1:{port}:8080\"]\n")
    if healthcheck:
        y += (f"    healthcheck:\n      test: {HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n"
              f"      retries: 1\n      start_period: 30s\n")
    return y


def releases(rnd):
    return ("1", "2") if rnd % 2 == 0 else ("2", "1")


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []
        self.projects = []  # (name, kind, config)
        self.failures = []
        self.rounds = {m: [] for m in METHODS}
        self.switch = []  # proxy rounds: (to_switch_secs, wall)
        self.drain_walls = []
        self.keep_logs = os.environ.get("BENCH_KEEP_LOGS") == "1"

    def start(self, name, argv, log, env=None):
        p = Proc(name, argv, log, env)
        self.procs.append(p)
        return p

    def record(self, method, rnd, samples, started, ended, command_ended, extra, old, new):
        r = analyse(samples, started, ended, old, new, command_ended)
        r.update(extra)
        r["round"] = rnd
        self.rounds[method].append(r)
        print(f"    round {rnd + 1} ({old} -> {new}): {fmt_round(r)}", flush=True)
        return r

    # -- a. docker-compose ------------------------------------------------------------------
    def compose(self):
        name = "berth-bench-compose"
        d = os.path.join(self.tmp, "compose")
        os.makedirs(d)
        port = free_port()
        path = os.path.join(d, "compose.yaml")
        with open(path, "w") as f:
            f.write(compose_yaml(port))
        self.projects.append((name, "compose", path))
        sweep(name)

        def up(release):
            env = dict(os.environ, RELEASE=release)
            wall, _ = run([COMPOSE, "-p", name, "-f", path, "up", "-d"], env=env)
            return wall

        print(f"  compose: docker-compose -p {name} up -d, web on 127.0.0.1:{port}", flush=True)
        up("1")
        eventually("docker-compose's web to answer 1", 60, lambda: answers(port, "1"))
        for rnd in range(ROUNDS):
            old, new = releases(rnd)
            samples, s, e, c, extra = under_load(port, lambda: {"wall": up(new)})
            r = self.record("compose", rnd, samples, s, e, c, extra, old, new)
            print(f"      `RELEASE={new} docker-compose up -d` took {r['wall']:.2f} s", flush=True)
            eventually(f"docker-compose's web to answer {new}", 60, lambda: answers(port, new))

    # -- berth: a project with its agent ------------------------------------------------------
    def berth_project(self, name, web_port, settings):
        d = os.path.join(self.tmp, name)
        os.makedirs(d)
        health = free_port()
        with open(os.path.join(d, "compose.yaml"), "w") as f:
            f.write(compose_yaml(web_port))
        with open(os.path.join(d, "release"), "w") as f:
            f.write("1\n")
        config = os.path.join(d, "berth.toml")
        with open(config, "w") as f:
            f.write(f'project = "{name}"\ncompose = "compose.yaml"\nrelease = "release"\nlocal = true\n'
                    f'run_dir = "{os.path.join(d, "run")}"\n'
                    f'[health]\nlisten = "127.0.0.1:{health}"\n'
                    f'[timeouts]\nready_secs = 60\nin_service_secs = 60\n{settings}')
        self.projects.append((name, "berth", config))
        sweep(name)
        log = os.path.join(d, "agent.log")
        env = dict(os.environ, BERTH_LOG="info")
        agent = self.start(f"berth agent ({name})", [BERTH, "agent", "--config", config], log, env)
        eventually(f"{name}: the agent's /healthz to answer 200", 90,
                   lambda: get(health, "/healthz")[0] == 200, [agent])
        return config, health, agent, log

    def berth_upgrade(self, config, release):
        wall, done = run([BERTH, "upgrade", "--config", config, "--release", release], check=False)
        if done.returncode != 0:
            raise BenchError(f"berth upgrade --config {config} --release {release} exited {done.returncode}:\n"
                             f"{done.stdout}{done.stderr}")
        try:
            out = json.loads(done.stdout)
        except ValueError:
            raise BenchError(f"berth upgrade printed no JSON:\n{done.stdout}{done.stderr}")
        return wall, out

    # -- b. the proxy strategy ----------------------------------------------------------------
    def proxy(self):
        name = "berth-bench-proxy"
        port = free_port()
        d = os.path.join(self.tmp, "proxy")
        os.makedirs(d)
        control = os.path.join(d, "proxy.sock")
        proxy = self.start("berth proxy", [BERTH, "proxy", "--listen", f"127.0.0.1:{port}", "--control", control],
                           os.path.join(d, "proxy.log"))
        eventually("berth proxy's control socket", 10, lambda: os.path.exists(control), [proxy])
        settings = (f'[upgrade]\nstrategy = "proxy"\nverify_secs = {VERIFY}\n'
                    f'[proxy]\ncontrol = "{control}"\nport = {port}\nhealth_path = "/healthz"\n')
        config, _, agent, log = self.berth_project(name, port, settings)
        print(f"  proxy:   berth proxy on 127.0.0.1:{port}, berth agent --config {config}", flush=True)
        eventually("the proxy to answer 1", 30, lambda: answers(port, "1"), [proxy, agent])
        for rnd in range(ROUNDS):
            old, new = releases(rnd)

            def upgrade():
                wall, out = self.berth_upgrade(config, new)
                return {"wall": wall, "out": out}

            samples, s, e, c, extra = under_load(port, upgrade)
            r = self.record("proxy", rnd, samples, s, e, c, extra, old, new)
            out = r["out"]
            tsw = out.get("to_switch_secs")
            print(f"      berth upgrade: how {out.get('how')!r}, to_switch_secs "
                  f"{'-' if tsw is None else f'{tsw:.2f}'}, command {r['wall']:.2f} s", flush=True)
            if out.get("how") != "switched" or tsw is None:
                raise BenchError(f"berth upgrade did not switch: {json.dumps(out)}")
            self.switch.append((tsw, r["wall"]))
            if r["old_after_new"]:
                print(f"      {r['old_after_new']} requests answered by the old release after the new one "
                      f"had answered (the switch is not atomic)", flush=True)
            if r["failed"] or r["stale"] or r["old_after_new"]:
                self.keep_logs = True
                print(f"      agent log (tail):\n{tail_of(log, 15)}", flush=True)

    # -- c. the drain strategy behind HAProxy -------------------------------------------------
    def drain(self):
        settings = ('[upgrade]\nstrategy = "drain"\n'
                    '[load_balancer]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n')
        instances = []
        for which in ("a", "b"):
            web = free_port()
            config, health, agent, log = self.berth_project(f"berth-bench-drain-{which}", web, settings)
            instances.append({"name": which, "web": web, "health": health, "config": config,
                              "agent": agent, "log": log})
        lb = free_port()
        d = os.path.join(self.tmp, "haproxy")
        os.makedirs(d)
        cfg = os.path.join(d, "haproxy.cfg")
        servers = "".join(f"  server {i['name']} 127.0.0.1:{i['web']} check port {i['health']} "
                          f"inter 1s fall 2 rise 2\n" for i in instances)
        with open(cfg, "w") as f:
            f.write("global\n  log stderr format short local0 notice\n"
                    "defaults\n  mode http\n  log global\n  timeout connect 2s\n  timeout client 30s\n"
                    "  timeout server 30s\n  retries 0\n"
                    f"frontend web\n  bind 127.0.0.1:{lb}\n  default_backend app\n"
                    "backend app\n  balance roundrobin\n  option httpchk\n"
                    "  http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host instance "
                    "hdr User-Agent ELB-HealthChecker/2.0\n"
                    "  http-check expect status 200\n" + servers)
        haproxy = self.start("haproxy", [HAPROXY, "-db", "-f", cfg], os.path.join(d, "haproxy.log"))
        agents = [i["agent"] for i in instances]
        # Both instances in: HAProxy's answers come from two containers (GET /hostname).
        seen = set()

        def both_in():
            status, body = get(lb, "/hostname")
            if status == 200:
                seen.add(body)
            return len(seen) == 2

        eventually("HAProxy to send to both instances", 30, both_in, [haproxy, *agents])
        eventually("HAProxy to answer 1", 30, lambda: answers(lb, "1"), [haproxy, *agents])
        # Each agent in service (it counted HAProxy's passing checks) and holding its control
        # socket: an upgrade sent before that would run in-process, without the drain.
        for i in instances:
            eventually(f"instance {i['name']} in service", 30,
                       lambda i=i: '"in_service": true' in get(i["health"], "/status")[1],
                       [haproxy, *agents])
        print(f"  drain:   HAProxy on 127.0.0.1:{lb} -> instance a (web {instances[0]['web']}, health "
              f"{instances[0]['health']}), b (web {instances[1]['web']}, health {instances[1]['health']})",
              flush=True)
        for rnd in range(ROUNDS):
            old, new = releases(rnd)

            def upgrade():
                walls = []
                for i in instances:
                    wall, out = self.berth_upgrade(i["config"], new)
                    if out.get("how") != "in place":
                        raise BenchError(f"instance {i['name']}: berth upgrade: {json.dumps(out)}")
                    walls.append(wall)
                return {"walls": walls, "wall": sum(walls)}

            samples, s, e, c, extra = under_load(lb, upgrade)
            r = self.record("drain", rnd, samples, s, e, c, extra, old, new)
            self.drain_walls.extend(r["walls"])
            print(f"      berth upgrade: instance a {r['walls'][0]:.2f} s, then b {r['walls'][1]:.2f} s", flush=True)
            for i in instances:
                with open(i["log"], errors="replace") as f:
                    if 'phase="draining"' not in f.read():
                        raise BenchError(f"instance {i['name']}: no draining phase in its log")
            if r["failed"] or r["stale"]:
                self.keep_logs = True
                print(f"      HAProxy log (tail):\n{tail_of(haproxy.log_path, 12)}", flush=True)
                for i in instances:
                    print(f"      instance {i['name']}'s agent log (tail):\n{tail_of(i['log'], 15)}", flush=True)

    # -- cleanup ------------------------------------------------------------------------------
    def cleanup(self):
        agents = [p for p in self.procs if p.name.startswith("berth agent")]
        for p in agents:
            p.kill()
        for name, kind, path in self.projects:
            try:
                if kind == "compose":
                    run([COMPOSE, "-p", name, "-f", path, "down", "-v"], timeout=120, check=False,
                        env=dict(os.environ, RELEASE="1"))
                else:
                    run([BERTH, "down", "-p", name, "-v", "-q"], timeout=120, check=False)
            except BenchError as e:
                print(f"  cleanup: {e}", file=sys.stderr)
            sweep(name)
        for p in reversed(self.procs):
            if p not in agents:
                p.kill()


# ---------------------------------------------------------------------------------------------
# Report


def median(xs):
    return statistics.median(xs) if xs else None


def report(bench):
    labels = {"compose": "docker-compose up -d", "proxy": "berth, proxy strategy",
              "drain": "berth, drain + HAProxy (2 inst.)"}
    totals = {}
    print()
    print(f"Failed requests during an upgrade under load ({CLIENTS} keep-alive clients, "
          f"{ROUNDS} upgrade(s) per method):")
    print(f"  {'method':<34} {'upgrades':>8} {'requests':>9} {'req/s':>6} {'failed':>7} {'per upgrade':>12} "
          f"{'max no-2xx gap':>15} {'stale':>6}")
    for m in METHODS:
        rs = bench.rounds[m]
        if not rs:
            print(f"  {labels[m]:<34} {'did not run':>8}")
            continue
        t = {"n": len(rs), "requests": sum(r["requests"] for r in rs), "failed": sum(r["failed"] for r in rs),
             "gap": max(r["gap"] for r in rs), "stale": sum(r["stale"] for r in rs),
             "secs": sum(r["secs"] for r in rs)}
        totals[m] = t
        print(f"  {labels[m]:<34} {t['n']:>8} {t['requests']:>9} {t['requests'] / t['secs']:>6.0f} {t['failed']:>7} "
              f"{t['failed'] / t['n']:>12.1f} {t['gap'] * 1000:>12.0f} ms {t['stale']:>6}")
    print("  (failed: refused/reset connections, timeouts and non-2xx; max no-2xx gap: the longest time no")
    print("  request got a 2xx; stale: requests begun after the upgrade command returned, answered by the old release)")
    if "compose" in totals:
        c = totals["compose"]
        print()
        for m in ("proxy", "drain"):
            if m not in totals:
                continue
            f = totals[m]["failed"] / totals[m]["n"]
            base = c["failed"] / c["n"]
            ratio = f"{f / base:.3f}" if base else "n/a (compose lost nothing)"
            verdict = "PASS" if totals[m]["failed"] == 0 else "MISS"
            print(f"  {labels[m] + ' / compose, failed per upgrade':<66} {ratio:>6}   target 0   {verdict}")
    elif totals:
        print()
        for m in ("proxy", "drain"):
            if m in totals:
                print(f"  {labels[m]}: {totals[m]['failed']} failed   target 0   "
                      f"{'PASS' if totals[m]['failed'] == 0 else 'MISS'}")

    comp = [r["wall"] for r in bench.rounds.get("compose", [])]
    rows = []
    if bench.switch:
        rows.append(("to_switch_secs (start -> switch)", [x[0] for x in bench.switch]))
        rows.append((f"berth upgrade, whole command (verify {VERIFY} s)", [x[1] for x in bench.switch]))
    if comp:
        rows.append(("docker-compose up -d, whole command", comp))
    if bench.drain_walls:
        rows.append(("berth upgrade, drain, one instance", bench.drain_walls))
    if rows:
        print()
        print("Time from `berth upgrade` to the switch (proxy strategy), and each upgrade command's wall time;")
        print("images already pulled, under the load above:")
        print(f"  {'seconds':<42} {'min':>7} {'median':>7} {'max':>7} {'runs':>5}")
        for label, xs in rows:
            print(f"  {label:<42} {min(xs):>7.2f} {median(xs):>7.2f} {max(xs):>7.2f} {len(xs):>5}")


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    unknown = [m for m in METHODS if m not in ("compose", "proxy", "drain")]
    if unknown or not METHODS:
        print(f"BENCH_METHODS: unknown {unknown} (compose, proxy, drain)", file=sys.stderr)
        return 2
    if ROUNDS < 1:
        print("BENCH_ROUNDS must be at least 1", file=sys.stderr)
        return 2
    needed = [(BERTH, "cargo build --release -p berth, or BERTH_BIN=...")]
    if "compose" in METHODS:
        needed.append((COMPOSE, "apt-get install -y docker-compose (tests/setup.sh)"))
    if "drain" in METHODS:
        needed.append((HAPROXY, "apt-get install -y haproxy (tests/setup.sh)"))
    for tool, hint in needed:
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}: {hint}", file=sys.stderr)
            return 2
    for tag in ("1", "2"):
        if not docker("images", "-q", f"berth-test/web:{tag}", check=False).strip():
            print(f"missing image berth-test/web:{tag}: run tests/setup.sh", file=sys.stderr)
            return 2

    print("upgrade benchmark: berth-test/web (busybox httpd) from one release to the next under load")
    print(f"  load: {CLIENTS} threads, keep-alive GET /version, {PAUSE * 1000:.0f} ms pause, every failure "
          f"counted; {WARMUP:g} s before the upgrade, {AFTER:g} s after it returns")
    print("  compose: RELEASE=<new> docker-compose up -d (1.29.2), web published on the load's port")
    print(f"  proxy:   berth upgrade --release <new>, proxy strategy (berth proxy on the load's port), "
          f"verify_secs {VERIFY}")
    print("  drain:   berth upgrade --release <new> on instance a, then b; HAProxy in front: roundrobin,")
    print("           httpchk GET /healthz (User-Agent ELB-HealthChecker/2.0) on each agent's health port,")
    print("           inter 1s fall 2 rise 2, retries 0, no redispatch; agents: healthy/unhealthy_threshold 2")
    print(f"  berth: {BERTH}; {os.cpu_count()} CPUs; {ROUNDS} rounds per method (1 -> 2, 2 -> 1, ...)", flush=True)

    tmp = tempfile.mkdtemp(prefix="berth-bench-upgrade-")
    bench = Bench(tmp)
    try:
        for m in METHODS:
            print(f"\n  {m}:", flush=True)
            try:
                getattr(bench, m)()
            except BenchError as e:
                bench.failures.append(f"{m}: {e}")
                bench.keep_logs = True
                print(f"    FAILED: {e}", flush=True)
    finally:
        bench.cleanup()
        if bench.keep_logs:
            print(f"\n  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report(bench)
    return conclude(bench.failures)


if __name__ == "__main__":
    sys.exit(main())
