#!/usr/bin/env python3
"""The release judge after the switch (`[upgrade.analysis]`), measured both ways: false alarms
(good releases rolled back) and catches (bad releases rolled back, and how fast), for each
judge method in the same run. Prints figures; not a test.

  tests/bench/judge.sh            (builds berth --release unless BERTH_BIN is set, runs this)
  BERTH_BIN=... BENCH_UPGRADES=20 python3 tests/bench/judge.py

For each method (BENCH_METHODS, default "sequential,fixed"), a fresh stack: `berth proxy` on a
free traffic port and `berth agent` (local mode, BERTH_LOG=info) holding a project of one
service, berth-test/web:1 (busybox httpd, the integration tests' healthcheck: wget of /healthz,
interval 1s, timeout 2s, retries 1, start_period 30s), with

  [upgrade]            strategy = "proxy", verify_secs = BENCH_VERIFY_SECS (2)
  [upgrade.analysis]   method = <the method>, bake_secs = BENCH_BAKE_SECS (3),
                       min_requests = BENCH_MIN_REQUESTS (100), warmup_secs = BENCH_WARMUP_SECS
                       (5), max_secs = BENCH_MAX_SECS (60); the other keys at their defaults
                       (max_5xx_percent 1.0, max_5xx_factor 2.0, max_p99_factor 1.5,
                       p99_floor_ms 50)

Releases differ by environment only, same image: the compose file sets `VERSION: ${RELEASE}`
(so each release is a new container, and GET /cgi-bin/api answers "api <release>": the clients
see which release answered) and `env_file: releases/${RELEASE}.env`, written before each
upgrade with the release's ERROR_EVERY and DELAY_MS (tests/images/web/web.sh). The project
has no release store: each release is read as the files are then.

The load: BENCH_CLIENTS (4) keep-alive HTTP/1.1 clients (benchlib.Load) doing GET /cgi-bin/api
through berth's proxy with a 2 ms pause, from before the first upgrade to after the last, and
BENCH_NOISE (2) busy loops (`python3 -c 'while 1: pass'`, one per core on a 2-core machine)
over the same time: the bad releases are judged under the same noise as the good ones. Each
method, in turn:

  1. BENCH_UPGRADES (20) upgrades to a good release (ERROR_EVERY=0, DELAY_MS=0, only VERSION
     changes), BENCH_GAP_SECS (1) apart. Any rollback is a false alarm (its cause printed).
     Reported: each verdict (the agent's /status `analysis.verdict` after the upgrade: passed,
     too few requests, failed: ...), and the watch time: the agent's own `watched_secs` (its
     log line "the release passed its analysis"), from the watch's start (the switch) to the
     verdict; where the log has none (too few requests, or rolled back), from the switch (the
     clients' first answer from the release) to the verdict as the /status poller saw it.
  2. A release answering 1 in BENCH_ERROR_EVERY (20: 5 %) of its API requests with 500.
  3. A release adding BENCH_DELAY_MS (60) ms to every API answer (its /healthz stays instant).
     Each bad release must be rolled back (`berth upgrade` exits 1, "failed right after the
     switch"). After a miss, an uncounted good release is deployed so that the next bad one
     is compared with a good one.

Detection time (a caught release): as the clients saw it, from the switch to the switch back:
from the start of the first request the bad release answered to the start of the first
request the previous release answered after the bad one's last. Each request names the
release that answered it, so this needs no clock but the clients' and no polling; it is the
judge's time plus the switch back (milliseconds), with a resolution of one request (about
2 ms; up to one answer's time, 60 ms, for the slow release). Printed beside it: the time from
that switch to the first `/status` whose analysis says "failed" (polled every 50 ms), and the
bad release's requests and 5xx, and its figures as the agent judged them.

A good upgrade takes about 7 s (start and health gate, the watch, the old color's drain and
stop) and 1 s apart: the default run takes some 7 minutes for both methods.

Before measuring, it waits (up to BENCH_QUIET_SECS, default 600, polling every 10 s) while a
`rustc` runs on the machine (a build would move every figure), and says so in the header if
it gave up waiting.

Exit status: 0 when every upgrade ran (whatever the figures: a false alarm or a miss is a
figure); 1 when something failed to run (a process did not start, `berth upgrade` failed in
another way than a rollback after the switch): said why, the figures gathered printed anyway,
logs kept; 2 when the binary or the image is missing. Logs (agent, proxy) are kept in the
temp dir on failure, after a false alarm or a miss, or with BENCH_KEEP_LOGS=1.
"""

import collections
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time

from benchlib import BenchError, Load, conclude, free_port, wait_quiet
from upgrade import HEALTHCHECK, Proc, docker, eventually, get, run, sweep, tail_of

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BERTH = os.environ.get("BERTH_BIN", os.path.join(ROOT, "target", "release", "berth"))
METHODS = [m for m in os.environ.get("BENCH_METHODS", "sequential,fixed").split(",") if m]
UPGRADES = int(os.environ.get("BENCH_UPGRADES", "20"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "4"))
NOISE = int(os.environ.get("BENCH_NOISE", "2"))
VERIFY = int(os.environ.get("BENCH_VERIFY_SECS", "2"))
BAKE = int(os.environ.get("BENCH_BAKE_SECS", "3"))
MIN_REQUESTS = int(os.environ.get("BENCH_MIN_REQUESTS", "100"))
WARMUP = int(os.environ.get("BENCH_WARMUP_SECS", "5"))
MAX_SECS = int(os.environ.get("BENCH_MAX_SECS", "60"))
ERROR_EVERY = int(os.environ.get("BENCH_ERROR_EVERY", "20"))
DELAY_MS = int(os.environ.get("BENCH_DELAY_MS", "60"))
GAP = float(os.environ.get("BENCH_GAP_SECS", "1"))
QUIET_SECS = int(os.environ.get("BENCH_QUIET_SECS", "600"))
IMAGE = "berth-test/web:1"
API = "/cgi-bin/api"
PAUSE = 0.002  # after each answer, per client
POLL = 0.05  # the agent's /status
# The longest an upgrade may take: start and health gate, the watch (up to max_secs while the
# sequential test is undecided), the drain and the stop of the old color.
UPGRADE_TIMEOUT = 120 + VERIFY + BAKE + MAX_SECS
# "api <release>" (2xx) or "500 b'error <release>\n'" (benchlib.Load's note of a non-2xx).
ANSWERED_BY = re.compile(r"\b(?:api|error) ([A-Za-z0-9._-]+)")


def answered_by(what):
    m = ANSWERED_BY.search(what)
    return m.group(1) if m else None



class StatusPoller:
    """GET the agent's /status every POLL s on a thread; records (monotonic time, release,
    verdict, analysis) each time the analysis' (release, verdict) changes."""

    def __init__(self, port):
        self.port = port
        self.changes = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        last = None
        while not self.stopping.is_set():
            a = analysis_now(self.port)
            if a is not None:
                key = (a.get("release"), a.get("verdict"))
                if key != last:
                    self.changes.append((time.monotonic(), key[0], key[1], a))
                    last = key
            self.stopping.wait(POLL)

    def first(self, release, since, prefix):
        """The first change seen after `since` to a verdict of `release` starting with `prefix`."""
        return next((c for c in list(self.changes) if c[0] >= since and c[1] == release and c[2].startswith(prefix)),
                    None)

    def stop(self):
        self.stopping.set()
        self.thread.join(5)


def analysis_now(port):
    """The analysis in the agent's /status, or None (none yet, or no answer)."""
    try:
        status, body = get(port, "/status")
        if status != 200:
            return None
        return json.loads(body).get("analysis")
    except (OSError, ValueError, http.client.HTTPException):  # the next poll tries again
        return None


def compose_yaml(port):
    return (f"services:\n  web:\n    image: {IMAGE}\n"
            f"    ports: [\"127.0.0.1:{port}:8080\"]\n"
            f"    environment:\n      VERSION: \"${{RELEASE}}\"\n"
            f"    env_file: releases/${{RELEASE}}.env\n"
            f"    healthcheck:\n      test: {HEALTHCHECK}\n      interval: 1s\n      timeout: 2s\n"
            f"      retries: 1\n      start_period: 30s\n")


def analysis_toml(method):
    return (f'[upgrade.analysis]\nmethod = "{method}"\nbake_secs = {BAKE}\nmin_requests = {MIN_REQUESTS}\n'
            f'warmup_secs = {WARMUP}\nmax_secs = {MAX_SECS}\n')


class Stack:
    """One method's `berth proxy` and `berth agent`, the project serving release g0."""

    def __init__(self, tmp, method):
        self.method = method
        self.name = f"berth-bench-judge-{method}-{os.getpid()}"
        self.dir = os.path.join(tmp, method)
        os.makedirs(os.path.join(self.dir, "releases"))
        self.procs = []
        self.port = free_port()
        self.health = free_port()
        self.config = os.path.join(self.dir, "berth.toml")
        self.agent_log = os.path.join(self.dir, "agent.log")
        self.proxy_log = os.path.join(self.dir, "proxy.log")
        self.agent = None

    def start_proc(self, name, argv, log, env=None):
        p = Proc(name, argv, log, env)
        self.procs.append(p)
        return p

    def write_release(self, release, error_every=0, delay_ms=0):
        with open(os.path.join(self.dir, "releases", f"{release}.env"), "w") as f:
            f.write(f"ERROR_EVERY={error_every}\nDELAY_MS={delay_ms}\n")

    def start(self):
        control = os.path.join(self.dir, "proxy.sock")
        run_dir = os.path.join(self.dir, "run")
        proxy = self.start_proc("berth proxy", [BERTH, "proxy", "--listen", f"127.0.0.1:{self.port}",
                                                "--control", control], self.proxy_log)
        eventually("berth proxy's control socket", 10, lambda: os.path.exists(control), [proxy])
        with open(os.path.join(self.dir, "compose.yaml"), "w") as f:
            f.write(compose_yaml(self.port))
        with open(os.path.join(self.dir, "release"), "w") as f:
            f.write("g0\n")
        self.write_release("g0")
        with open(self.config, "w") as f:
            f.write(f'project = "{self.name}"\ncompose = "compose.yaml"\nrelease = "release"\nlocal = true\n'
                    f'run_dir = "{run_dir}"\n'
                    f'[health]\nlisten = "127.0.0.1:{self.health}"\n'
                    f'[timeouts]\nready_secs = 60\nin_service_secs = 60\n'
                    f'[upgrade]\nstrategy = "proxy"\nverify_secs = {VERIFY}\n'
                    f'{analysis_toml(self.method)}'
                    f'[proxy]\ncontrol = "{control}"\nport = {self.port}\nhealth_path = "/healthz"\n')
        sweep(self.name)
        env = dict(os.environ, BERTH_LOG="info")
        self.agent = self.start_proc(f"berth agent ({self.name})", [BERTH, "agent", "--config", self.config],
                                     self.agent_log, env)
        both = [proxy, self.agent]
        eventually(f"{self.name}: the agent's /healthz to answer 200", 90,
                   lambda: get(self.health, "/healthz")[0] == 200, both)
        eventually("the proxy to answer g0", 30, lambda: get(self.port, API) == (200, "api g0"), both)
        # The agent's control socket: an upgrade sent before it exists would run in-process,
        # out of the agent's /status and log.
        eventually("the agent's control socket", 30,
                   lambda: os.path.exists(os.path.join(run_dir, "control.sock")), both)

    def log_since(self, offset):
        with open(self.agent_log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def log_size(self):
        return os.path.getsize(self.agent_log)

    def upgrade(self, release, error_every=0, delay_ms=0):
        """`berth upgrade --release release`: a dict of what happened. Raises BenchError when
        the upgrade failed otherwise than by a rollback after the switch."""
        self.write_release(release, error_every, delay_ms)
        offset = self.log_size()
        started = time.monotonic()
        wall, done = run([BERTH, "upgrade", "--config", self.config, "--release", release],
                         timeout=UPGRADE_TIMEOUT, check=False)
        ended = time.monotonic()
        text = done.stdout + done.stderr
        log = self.log_since(offset)
        r = {"release": release, "started": started, "ended": ended, "wall": wall, "rolled_back": False,
             "cause": None, "watched": None}
        if done.returncode == 0:
            try:
                out = json.loads(done.stdout)
            except ValueError:
                raise BenchError(f"berth upgrade --release {release} printed no JSON:\n{text}")
            if out.get("how") != "switched":
                raise BenchError(f"berth upgrade --release {release} did not switch: {json.dumps(out)}")
            r["to_switch"] = out.get("to_switch_secs")
        elif done.returncode == 1 and "failed right after the switch" in text:
            r["rolled_back"] = True
            r["cause"] = cause_of(done.stdout, done.stderr)
        else:
            raise BenchError(f"berth upgrade --config {self.config} --release {release} exited "
                             f"{done.returncode}:\n{text}\n  agent log (tail):\n{tail_of(self.agent_log, 15)}")
        rel = re.escape(release)
        if not re.search(rf'\bswitched release="?{rel}"?\s', log):
            raise BenchError(f"no 'switched' line for {release} in the agent's log: did the upgrade run in "
                             f"the agent?\n{tail_of(self.agent_log, 15)}")
        m = re.search(rf'passed its analysis release="?{rel}"?\s.*?watched_secs=([0-9.]+)', log)
        if m:
            r["watched"] = float(m.group(1))
        r["analysis"] = analysis_now(self.health)
        return r

    def close(self):
        if self.agent is not None:
            self.agent.kill()
        try:
            run([BERTH, "down", "-p", self.name, "-v", "-q"], timeout=120, check=False)
        except BenchError as e:
            print(f"  cleanup: {e}", file=sys.stderr)
        sweep(self.name)
        for p in reversed(self.procs):
            p.kill()


def cause_of(stdout, stderr):
    """Why a release was rolled back, on one line: what the error (stdout's JSON `error`, else
    stderr) says after "which serves again: " ("judged by its traffic: ...", or its health)."""
    try:
        error = json.loads(stdout).get("error") or ""
    except (ValueError, AttributeError):
        error = ""
    one = " ".join((error or stderr).split())
    m = re.search(r"which serves again[:,]?\s*(.*)", one)
    return (m.group(1) if m and m.group(1) else one)[:300]


def by_release(samples, release, since, until):
    """The client's view of one upgrade: the bad release's requests and 5xx, and when it
    served (first request it answered to the first the others answered after its last)."""
    window = [s for s in samples if since <= s[0] <= until]
    mine = [s for s in window if answered_by(s[3]) == release]
    if not mine:
        return {"requests": 0, "errors": 0, "first": None, "back": None}
    first = min(s[0] for s in mine)
    last = max(s[0] for s in mine)
    back = min((s[0] for s in window if s[0] > last and answered_by(s[3]) not in (None, release)), default=None)
    return {"requests": len(mine), "errors": sum(1 for s in mine if s[3].startswith("500")),
            "first": first, "back": back}


def figures(a):
    """A release's figures as /status shows them: '1650 req, 0 5xx, p99 10 ms'."""
    if not a:
        return "-"
    p99 = a.get("p99_ms")
    return (f"{a.get('requests', 0)} req, {a.get('errors_5xx', 0)} 5xx ({a.get('percent_5xx', 0):g} %), "
            f"p99 {'-' if p99 is None else p99} ms")


def short_verdict(v):
    if v is None:
        return "(no analysis)"
    return "failed" if v.startswith("failed") else v


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.failures = []
        self.results = {m: {"good": [], "bad": {}} for m in METHODS}
        self.keep_logs = os.environ.get("BENCH_KEEP_LOGS") == "1"
        self.failed_requests = {m: [0, 0] for m in METHODS}  # during the good upgrades: failed, all

    def method(self, method):
        stack = Stack(self.tmp, method)
        noise = []
        load = poller = None
        try:
            stack.start()
            print(f"    berth proxy on 127.0.0.1:{stack.port}, agent health 127.0.0.1:{stack.health}, "
                  f"project {stack.name}", flush=True)
            load = Load(stack.port, path=API, clients=CLIENTS, pause=PAUSE)
            poller = StatusPoller(stack.health)
            for i in range(NOISE):
                noise.append(stack.start_proc(f"noise {i}", [sys.executable, "-c", "while 1: pass"],
                                              os.path.join(stack.dir, f"noise-{i}.log")))
            # A baseline for the first upgrade: the load has run a while, under the noise.
            time.sleep(2)
            load.wait_for(2 * MIN_REQUESTS, timeout=30)
            res = self.results[method]
            for i in range(1, UPGRADES + 1):
                for p in stack.procs:
                    p.check_alive()
                release = f"g{i}"
                r = stack.upgrade(release)
                samples = load.samples
                window = [s for s in samples if r["started"] <= s[0] <= r["ended"]]
                self.failed_requests[method][0] += sum(1 for s in window if not s[2])
                self.failed_requests[method][1] += len(window)
                verdict = (r["analysis"] or {}).get("verdict") if (r["analysis"] or {}).get("release") == release \
                    else None
                if r["watched"] is None:
                    # Too few requests (no log line) or rolled back: from the switch to the verdict.
                    seen = by_release(samples, release, r["started"], r["ended"])
                    end = poller.first(release, r["started"], "failed" if r["rolled_back"] else "too few") \
                        or poller.first(release, r["started"], "passed")
                    if seen["first"] is not None and end is not None:
                        r["watched"] = end[0] - seen["first"]
                r["verdict"] = verdict
                res["good"].append(r)
                a = r["analysis"] or {}
                line = (f"    good {i:>2}/{UPGRADES} {release}: {short_verdict(verdict):<17} "
                        f"watched {secs(r['watched'])}, command {r['wall']:.1f} s; "
                        f"it: {figures(a.get('candidate'))}; previous: {figures(a.get('baseline'))}")
                print(line, flush=True)
                if r["rolled_back"]:
                    self.keep_logs = True
                    print(f"      FALSE ALARM, rolled back: {r['cause']}", flush=True)
                time.sleep(GAP)
            bad = [("5xx", f"e{ERROR_EVERY}", ERROR_EVERY, 0), ("slow", f"d{DELAY_MS}", 0, DELAY_MS)]
            for n, (key, release, error_every, delay_ms) in enumerate(bad):
                r = stack.upgrade(release, error_every, delay_ms)
                seen = by_release(load.samples, release, r["started"], r["ended"])
                r.update(seen)
                r["served"] = None if seen["first"] is None or seen["back"] is None else seen["back"] - seen["first"]
                failed = poller.first(release, r["started"], "failed")
                r["judged"] = None if failed is None or seen["first"] is None else failed[0] - seen["first"]
                a = r["analysis"] or {}
                res["bad"][key] = r
                what = (f"1 in {error_every} API answers 500" if error_every else f"+{delay_ms} ms on every API answer")
                if r["rolled_back"]:
                    print(f"    bad  {release} ({what}): caught, served {secs(r['served'])} from the switch to the "
                          f"switch back ({r['requests']} requests, {r['errors']} of them 500); /status "
                          f"'failed' {secs(r['judged'])} after the switch", flush=True)
                    print(f"      it: {figures(a.get('candidate'))}; previous: {figures(a.get('baseline'))}",
                          flush=True)
                    print(f"      cause: {r['cause']}", flush=True)
                else:
                    self.keep_logs = True
                    print(f"    bad  {release} ({what}): MISSED, it serves (verdict {(a.get('verdict'))!r}, "
                          f"watched {secs(r['watched'])}; {r['requests']} requests, {r['errors']} of them 500)",
                          flush=True)
                    print(f"      it: {figures(a.get('candidate'))}; previous: {figures(a.get('baseline'))}",
                          flush=True)
                    if n + 1 < len(bad):
                        # The next bad release is compared with a good one.
                        reset = f"r{n + 1}"
                        stack.upgrade(reset)
                        print(f"      {reset}: a good release again (not counted)", flush=True)
                time.sleep(GAP)
        finally:
            for p in noise:
                p.kill()
            if poller is not None:
                poller.stop()
            if load is not None:
                load.stop()
            stack.close()


def secs(x):
    return "-" if x is None else f"{x:.2f} s"


def report(bench):
    print()
    print(f"The release judge after the switch: {UPGRADES} good upgrades per method, then a bad release of each kind;")
    print(f"{CLIENTS} keep-alive clients on GET {API} through berth's proxy, {NOISE} busy loop(s) on {os.cpu_count()} "
          f"CPUs; verify_secs {VERIFY}, bake_secs {BAKE}, min_requests {MIN_REQUESTS}, warmup_secs {WARMUP}, "
          f"max_secs {MAX_SECS}")
    print(f"  {'method':<11} {'false alarms':>12}  {f'caught 5xx (1/{ERROR_EVERY})':<22} "
          f"{f'caught +{DELAY_MS} ms':<22} good: median watch (min-max)")
    for m in METHODS:
        res = bench.results[m]
        good = res["good"]
        if not good and not res["bad"]:
            print(f"  {m:<11} {'did not run':>12}")
            continue
        alarms = sum(1 for r in good if r["rolled_back"])
        watched = [r["watched"] for r in good if not r["rolled_back"] and r["watched"] is not None]
        cols = []
        for key in ("5xx", "slow"):
            r = res["bad"].get(key)
            if r is None:
                cols.append("did not run")
            elif r["rolled_back"]:
                cols.append(f"yes, {secs(r['served'])}")
            else:
                cols.append("NO")
        watch = (f"{statistics.median(watched):.2f} s ({min(watched):.2f}-{max(watched):.2f})" if watched else "-")
        print(f"  {m:<11} {f'{alarms}/{len(good)}':>12}  {cols[0]:<22} {cols[1]:<22} {watch}")
    print("  (false alarms: good releases rolled back; caught: rolled back, in how long it served from the switch")
    print("  to the switch back as the clients saw it; watch: from the switch to the verdict, the agent's watched_secs)")
    print()
    for m in METHODS:
        good = bench.results[m]["good"]
        if not good:
            continue
        verdicts = collections.Counter(short_verdict(r.get("verdict")) for r in good)
        failed, total = bench.failed_requests[m]
        print(f"  {m}: verdicts of the good upgrades: "
              + ", ".join(f"{k} {v}" for k, v in verdicts.most_common())
              + f"; requests failed during them: {failed} of {total}")
        for r in good:
            if r["rolled_back"]:
                print(f"    {r['release']} rolled back: {r['cause']}")


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    unknown = [m for m in METHODS if m not in ("sequential", "fixed")]
    if unknown or not METHODS:
        print(f"BENCH_METHODS: unknown {unknown} (sequential, fixed)", file=sys.stderr)
        return 2
    if UPGRADES < 1:
        print("BENCH_UPGRADES must be at least 1", file=sys.stderr)
        return 2
    if not os.access(BERTH, os.X_OK):
        print(f"missing {BERTH}: cargo build --release -p berth, or BERTH_BIN=...", file=sys.stderr)
        return 2
    if not docker("images", "-q", IMAGE, check=False).strip():
        print(f"missing image {IMAGE}: run tests/setup.sh", file=sys.stderr)
        return 2
    _, probe = run(["docker", "run", "--rm", "--entrypoint", "/bin/grep", IMAGE, "-q", "DELAY_MS", "/bin/web"],
                   timeout=60, check=False)
    if probe.returncode != 0:
        print(f"{IMAGE} predates DELAY_MS (tests/images/web/web.sh): run tests/setup.sh", file=sys.stderr)
        return 2

    note = wait_quiet(QUIET_SECS)
    print("judge benchmark: berth's release judge after the switch, false alarms and catches, per method")
    print(f"  stack: berth proxy + berth agent (local), {IMAGE} (busybox httpd), releases differing by environment")
    print(f"  load: {CLIENTS} keep-alive clients, GET {API}, {PAUSE * 1000:.0f} ms pause; noise: {NOISE} busy "
          f"loop(s) on {os.cpu_count()} CPUs, from before the first upgrade to after the last")
    print(f"  [upgrade] verify_secs {VERIFY}; [upgrade.analysis] bake_secs {BAKE}, min_requests {MIN_REQUESTS}, "
          f"warmup_secs {WARMUP}, max_secs {MAX_SECS}")
    print(f"  per method: {UPGRADES} good upgrades, then 1 in {ERROR_EVERY} API answers 500, then +{DELAY_MS} ms")
    print(f"  berth: {BERTH}; methods: {', '.join(METHODS)}", flush=True)
    if note:
        print(f"  NOTE: {note}", flush=True)

    tmp = tempfile.mkdtemp(prefix="berth-bench-judge-")
    bench = Bench(tmp)
    try:
        for m in METHODS:
            print(f"\n  {m}:", flush=True)
            try:
                bench.method(m)
            except BenchError as e:
                bench.failures.append(f"{m}: {e}")
                bench.keep_logs = True
                print(f"    FAILED: {e}", flush=True)
    finally:
        if bench.keep_logs:
            print(f"\n  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report(bench)
    return conclude(bench.failures)


if __name__ == "__main__":
    sys.exit(main())
