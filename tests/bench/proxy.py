#!/usr/bin/env python3
"""The traffic proxy's cost: requests/s and p99 latency through `berth proxy` against nginx
(Debian's) as a reverse proxy and against the backend directly. Prints figures and ratios
against the targets; not a test.

  tests/bench/proxy.sh           (builds berth --release, runs this)
  BERTH_BIN=... BENCH_SECONDS=10 BENCH_CONNECTIONS=64 python3 tests/bench/proxy.py

Everything listens on 127.0.0.1, on ports picked free at run time. The backend is an nginx
with one worker answering `return 200 "ok\\n"` (fast, unlike busybox httpd). The targets:

  direct  wrk -> backend
  nginx   wrk -> nginx (proxy_pass to an upstream with keepalive, HTTP/1.1; as many
          workers as CPUs, which is as many worker threads as berth's runtime has) -> backend
  berth   wrk -> berth proxy --listen ... --control <tmp>/proxy.sock --backend ... -> backend

The load is the same wrk invocation for each (keep-alive, bounded in time):
`wrk -t BENCH_THREADS -c BENCH_CONNECTIONS -d BENCH_SECONDS --latency`. Each target is run
BENCH_ROUNDS times (default 2), the order reversed each round, and the better run (the one
with more requests/s, with its own p99) is reported. Targets: berth/nginx requests/s >= 1.0,
berth/nginx p99 <= 1.0.

Exit status: 0 when every run completed cleanly, whether or not a target was missed; 1 when
a run failed (a process did not start or answer, wrk failed, or any socket error or non-2xx
answer was counted: they are printed). BENCH_TARGETS=direct,nginx leaves berth out.
"""

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import BenchError, die_with_parent, free_port

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BERTH = os.environ.get("BERTH_BIN", os.path.join(ROOT, "target", "release", "berth"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "64"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))
TARGETS = [t for t in os.environ.get("BENCH_TARGETS", "direct,nginx,berth").split(",") if t]
CPUS = os.cpu_count() or 1
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
BODY = b"ok\n"


class Proc:
    """A server this script started, its output in a log file in the temp dir."""

    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            env=env, preexec_fn=die_with_parent,
        )

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join("    " + line for line in lines[-n:])
        except OSError:
            return ""

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"  {self.name}: still running 10 s after SIGTERM, killing it", file=sys.stderr)
                self.p.kill()
                self.p.wait()
        self.log.close()


def get(port):
    """One GET /; returns (status, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_ready(proc, port, timeout=15):
    """Until GET / on the port answers 200 "ok\\n" (the backend's answer, so through a proxy
    the path to the backend works too)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.p.poll() is not None:
            raise BenchError(f"{proc.name} exited with status {proc.p.returncode} before answering:\n{proc.tail()}")
        try:
            status, body = get(port)
            if status == 200 and body == BODY:
                return
            last = f"answered {status} {body[:80]!r}"
        except OSError as e:
            last = str(e)
        time.sleep(0.05)
    raise BenchError(f"{proc.name} on 127.0.0.1:{port} not ready after {timeout} s ({last}):\n{proc.tail()}")


NGINX_COMMON = """\
pid {tmp}/{name}.pid;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    error_log {tmp}/{name}-error.log error;
    client_body_temp_path {tmp}/{name}-temp/body;
    proxy_temp_path {tmp}/{name}-temp/proxy;
    fastcgi_temp_path {tmp}/{name}-temp/fastcgi;
    uwsgi_temp_path {tmp}/{name}-temp/uwsgi;
    scgi_temp_path {tmp}/{name}-temp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{body}
}}
"""

BACKEND_CONF = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
    }}"""

PROXY_CONF = """\
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def start_nginx(tmp, name, workers, body):
    os.makedirs(os.path.join(tmp, f"{name}-temp"), exist_ok=True)
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"daemon off;\nworker_processes {workers};\n")
        f.write(NGINX_COMMON.format(tmp=tmp, name=name, body=body))
    # -e: the error log of the main context (the http context's is set in the config).
    return Proc(name, [NGINX, "-p", tmp, "-e", os.path.join(tmp, f"{name}-error.log"), "-c", conf],
                os.path.join(tmp, f"{name}.log"))


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        return None
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(out):
    """wrk's report -> dict(rps, p99_ms, p50_ms, requests, non2xx, socket_errors)."""
    r = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    r["rps"] = float(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        r[f"p{pct}_ms"] = parse_ms(m.group(1)) if m else None
    m = re.search(r"^\s+(\d+) requests in", out, re.M)
    r["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return r


def run_wrk(name, port):
    argv = [WRK, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", f"http://127.0.0.1:{port}/"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=SECONDS + 60)
    except subprocess.TimeoutExpired:
        return {"name": name, "failure": f"wrk did not finish within {SECONDS + 60} s"}
    r = parse_wrk(done.stdout)
    r["name"] = name
    problems = []
    if done.returncode != 0:
        problems.append(f"wrk exited {done.returncode}: {done.stderr.strip()}")
    if r["rps"] is None or r["p99_ms"] is None or r["requests"] is None:
        problems.append("cannot read wrk's report")
    if r["non2xx"]:
        problems.append(f"{r['non2xx']} non-2xx answers")
    errs = {k: v for k, v in r["socket_errors"].items() if v}
    if errs:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
    if problems:
        r["failure"] = "; ".join(problems)
        r["report"] = "\n".join("      " + line for line in (done.stdout + done.stderr).splitlines())
    return r


def fmt_run(r):
    if r.get("rps") is None:
        return "no figures"
    return f"{r['rps']:>10.0f} req/s   p50 {r['p50_ms']:.2f} ms   p99 {r['p99_ms']:.2f} ms   ({r['requests']} requests)"


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    unknown = [t for t in TARGETS if t not in ("direct", "nginx", "berth")]
    if unknown:
        print(f"BENCH_TARGETS: unknown {unknown} (direct, nginx, berth)", file=sys.stderr)
        return 2
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}: apt-get install -y nginx-light wrk (tests/setup.sh)", file=sys.stderr)
            return 2
    if "berth" in TARGETS and not os.access(BERTH, os.X_OK):
        print(f"missing {BERTH}: cargo build --release -p berth, or BERTH_BIN=...", file=sys.stderr)
        return 2

    print(f"proxy benchmark: wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency, keep-alive, "
          f"{CPUS} CPUs, {ROUNDS} rounds, order reversed each round")
    tmp = tempfile.mkdtemp(prefix="berth-bench-proxy-")
    os.chmod(tmp, 0o755)  # nginx's workers run as nobody when started by root
    procs = []
    failures = []
    runs = {t: [] for t in TARGETS}
    try:
        backend_port = free_port()
        backend = start_nginx(tmp, "backend", 1, BACKEND_CONF.format(port=backend_port))
        procs.append(backend)
        wait_ready(backend, backend_port)
        ports = {"direct": backend_port}
        print(f"  backend: nginx, 1 worker, return 200 \"ok\\n\", 127.0.0.1:{backend_port}")

        def start(name, launch):
            # A proxy that does not start is a failure; the other targets are still measured.
            if name not in TARGETS:
                return
            try:
                ports[name] = free_port()
                p, line = launch(ports[name])
                procs.append(p)
                wait_ready(p, ports[name])
                print(line)
            except BenchError as e:
                failures.append(str(e))
                print(f"  FAILED: {e}", flush=True)
                del ports[name]

        def nginx(port):
            p = start_nginx(tmp, "nginx-proxy", CPUS, PROXY_CONF.format(port=port, backend=backend_port))
            return p, f"  nginx:   reverse proxy, {CPUS} workers, upstream keepalive 64, 127.0.0.1:{port}"

        def berth(port):
            argv = [BERTH, "proxy", "--listen", f"127.0.0.1:{port}",
                    "--control", os.path.join(tmp, "proxy.sock"), "--backend", f"127.0.0.1:{backend_port}"]
            return Proc("berth proxy", argv, os.path.join(tmp, "berth-proxy.log")), f"  berth:   {' '.join(argv)}"

        start("nginx", nginx)
        start("berth", berth)

        targets = [t for t in TARGETS if t in ports]
        for rnd in range(ROUNDS):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                r = run_wrk(t, ports[t])
                runs[t].append(r)
                print(f"  round {rnd + 1} {t:<6} {fmt_run(r)}", flush=True)
                if "failure" in r:
                    failures.append(f"{t}, round {rnd + 1}: {r['failure']}; wrk said:\n{r.get('report', '')}")
                    print(f"    FAILED: {r['failure']}", flush=True)
    except BenchError as e:
        failures.append(str(e))
        print(f"  FAILED: {e}", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
        if failures:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    best = {}
    for t, rs in runs.items():
        ok = [r for r in rs if "failure" not in r]
        if ok:
            best[t] = max(ok, key=lambda r: r["rps"])
    if best:
        print()
        print("Better of each target's runs (the one with more requests/s, with its own p99):")
        print(f"  {'target':<8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
        for t in TARGETS:
            if t in best:
                r = best[t]
                print(f"  {t:<8} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}")
            else:
                print(f"  {t:<8} {'failed':>10}")
        print("  (wrk's non-2xx count is its \"Non-2xx or 3xx responses\"; the backend only answers 200)")
        print()

    def ratio(label, a, b, key, target, higher_better):
        if a not in best or b not in best:
            return
        x = best[a][key] / best[b][key] if best[b][key] else float("inf")
        if target is None:
            print(f"  {label:<28} {x:6.3f}")
            return
        ok = x >= target if higher_better else x <= target
        sign = ">=" if higher_better else "<="
        print(f"  {label:<28} {x:6.3f}   target {sign} {target:.1f}   {'PASS' if ok else 'MISS'}")

    ratio("berth/nginx requests/s", "berth", "nginx", "rps", 1.0, True)
    ratio("berth/nginx p99", "berth", "nginx", "p99_ms", 1.0, False)
    ratio("berth/direct requests/s", "berth", "direct", "rps", None, True)
    ratio("nginx/direct requests/s", "nginx", "direct", "rps", None, True)

    if failures:
        print(f"\n{len(failures)} failure(s), figures above are incomplete:")
        for f in failures:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
