#!/usr/bin/env python3
"""The traffic proxy's cost: requests/s, p99 latency, resident memory and CPU per request
through `berth proxy` against nginx (Debian's) and HAProxy as reverse proxies and against
the backend directly, and what berth's metrics cost. Prints figures and ratios against the
targets; not a test.

  tests/bench/proxy.sh           (builds berth --release, runs this)
  BERTH_BIN=... BENCH_SECONDS=10 BENCH_CONNECTIONS=64 python3 tests/bench/proxy.py

Everything listens on 127.0.0.1, on ports picked free at run time. The backend is an nginx
with one worker answering `return 200 "ok\\n"` (fast, unlike busybox httpd). The targets:

  direct           wrk -> backend
  nginx            wrk -> nginx (proxy_pass to an upstream with keepalive 64, HTTP/1.1,
                   one worker per proxy CPU) -> backend
  haproxy          wrk -> haproxy -f <tmp>/haproxy.cfg -db (mode http, option
                   http-keep-alive, http-reuse always, one thread per proxy CPU) -> backend
  berth            wrk -> berth proxy --listen ... --control <tmp>/proxy.sock --backend ...
                   -> backend (one worker per CPU in its affinity mask: it picks itself)
  berth-nometrics  the same with --no-metrics

Pinning: the proxies run under `taskset -c BENCH_PROXY_CPU` (default 0), and wrk and the
backend under `taskset -c BENCH_LOAD_CPU` (default 1), so that the proxy has a core of its
own and the ratios are the proxy's own cost: with one proxy CPU nginx has one worker, HAProxy
one thread and berth one worker. Either may be a taskset list ("2,3"); they must not overlap.
On a machine with one CPU, or with BENCH_PROXY_CPU= (empty), nothing is pinned (the proxies
then get as many workers/threads as there are CPUs) and the header says so.

The load is the same wrk invocation for each (keep-alive, bounded in time):
`wrk -t BENCH_THREADS -c BENCH_CONNECTIONS -d BENCH_SECONDS --latency`; GETs, or with
BENCH_POST_BYTES=N, POSTs of N bytes each (a wrk script). During each run:

  memory   VmRSS and VmHWM (/proc/PID/status) of the proxy, sampled every 0.25 s while wrk
           runs; the last sample (the end of the run) is reported (BENCH_SMAPS=DIR keeps
           its /proc/PID/smaps there). For nginx the worker (the
           master's children), and master+worker on a line of its own; and PSS summed over
           all the server's processes (shared pages counted once), for a like-for-like total.
  CPU      the proxy's CPU time (utime+stime of all its processes) over the run: per request
           (us/req), and as a share of one core; and how busy the proxy's and the load's
           cores were (/proc/stat, every process), which shows which side was the limit. A
           run in which other processes had more than 15 % of the proxy's core is flagged as
           disturbed (another build, say): its figures say little.

Each target is run BENCH_ROUNDS times (default 2), the order reversed each round, and the
better run (the one with more requests/s, with its own p99, memory and CPU) is reported; and,
less moved by a neighbour's load, the median over rounds of the ratios within a round.
Targets: berth/nginx requests/s >= 1.0, berth/nginx p99 <= 1.0, berth/nginx worker RSS
<= 1.0, berth/berth-nometrics requests/s >= 0.98 (metrics cost at most 2 %); berth/haproxy
and the rest are for information.

Exit status: 0 when every run completed cleanly, whether or not a target was missed; 1 when
a run failed (a process did not start or answer, wrk failed, or any socket error or non-2xx
answer was counted: they are printed); 2 when the settings or tools are wrong.
BENCH_TARGETS (default direct,nginx,haproxy,berth,berth-nometrics) selects targets.
"""

import http.client
import os
import re
import shutil
import signal
import statistics
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
# Requests with a body: each a POST of this many bytes (by Content-Length); 0: GETs.
POST_BYTES = int(os.environ.get("BENCH_POST_BYTES", "0"))
ALL_TARGETS = ("direct", "nginx", "haproxy", "berth", "berth-nometrics")
TARGETS = [t for t in os.environ.get("BENCH_TARGETS", ",".join(ALL_TARGETS)).split(",") if t]
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0").strip()
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1").strip()
ALLOWED_CPUS = os.sched_getaffinity(0)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"ok\n"
OTHERS_WARN = 0.15  # a run is flagged when other processes had more of the proxy core than this


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

    def text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, n=20):
        return "\n".join("    " + line for line in self.text().splitlines()[-n:])

    def workers(self):
        """The processes that serve: nginx's workers (the master's children), else the process
        itself (taskset execs the program, so the pid is the program's)."""
        return children(self.p.pid) or [self.p.pid]

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


# --- CPU sets and /proc ---------------------------------------------------------------------

def parse_cpus(text):
    """A taskset CPU list ("0", "0,2", "2-3") -> a set of CPU numbers; ValueError if malformed."""
    cpus = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        lo = int(lo)
        hi = int(hi) if dash else lo
        if hi < lo:
            raise ValueError(part)
        cpus.update(range(lo, hi + 1))
    return cpus


def cpu_list(cpus):
    return ",".join(str(c) for c in sorted(cpus))


def pinning():
    """-> (proxy CPUs, load CPUs, header line); the sets are None when nothing is pinned.
    BenchError when the settings cannot be honoured."""
    if len(ALLOWED_CPUS) < 2:
        return None, None, (f"not pinned: {len(ALLOWED_CPUS)} CPU available, so the proxy shares it with "
                            "wrk and the backend (its figures include their cost)")
    if not PROXY_CPU or not LOAD_CPU:
        return None, None, "not pinned (BENCH_PROXY_CPU or BENCH_LOAD_CPU is empty)"
    try:
        proxy, load = parse_cpus(PROXY_CPU), parse_cpus(LOAD_CPU)
    except ValueError:
        raise BenchError(f"BENCH_PROXY_CPU={PROXY_CPU!r} BENCH_LOAD_CPU={LOAD_CPU!r}: not taskset CPU lists")
    outside = (proxy | load) - ALLOWED_CPUS
    if outside:
        raise BenchError(f"CPU {cpu_list(outside)} not in this process's affinity mask ({cpu_list(ALLOWED_CPUS)})")
    if proxy & load:
        raise BenchError(f"BENCH_PROXY_CPU and BENCH_LOAD_CPU overlap (CPU {cpu_list(proxy & load)})")
    if not os.access(TASKSET, os.X_OK):
        raise BenchError(f"missing {TASKSET} (util-linux)")
    return proxy, load, (f"pinned: proxies on CPU {cpu_list(proxy)}, wrk and the backend on CPU {cpu_list(load)} "
                         "(taskset -c)")


def pin(argv, cpus):
    return [TASKSET, "-c", cpu_list(cpus), *argv] if cpus else argv


def children(pid):
    """The pids whose parent is pid (a scan of /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_ticks(pids):
    """utime + stime of the processes (all their threads), in clock ticks."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
        except (OSError, IndexError, ValueError):
            pass
    return total


def core_times():
    """{cpu: (busy, total)} in ticks, from /proc/stat (busy: all but idle and iowait)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                out[int(m.group(1))] = (sum(v[:8]) - v[3] - v[4], sum(v[:8]))
    return out


def busy_share(before, after, cpus):
    busy = sum(after[c][0] - before[c][0] for c in cpus)
    total = sum(after[c][1] - before[c][1] for c in cpus)
    return busy / total if total else None


def memory(proc):
    """The serving processes' VmRSS and VmHWM and all the proxy's processes' VmRSS, in KiB
    (None if a process had gone)."""
    workers = proc.workers()
    rss = [status_kib(pid, "VmRSS") for pid in workers]
    hwm = [status_kib(pid, "VmHWM") for pid in workers]
    master = status_kib(proc.p.pid, "VmRSS") if workers != [proc.p.pid] else 0
    everyone = sorted(set(workers) | {proc.p.pid})
    pss = [pss_kib(pid) for pid in everyone]
    if None in rss or None in hwm or master is None or None in pss:
        return None
    return {"rss_kib": sum(rss), "hwm_kib": sum(hwm), "all_kib": sum(rss) + master,
            "pss_kib": sum(pss), "nworkers": len(workers)}


def keep_smaps(name, proc):
    """With BENCH_SMAPS=DIR, the serving processes' /proc/PID/smaps under load, as
    DIR/NAME-PID.smaps (the last sample of the run): where the memory is, mapping by mapping."""
    where = os.environ.get("BENCH_SMAPS")
    if not where:
        return
    for pid in proc.workers():
        try:
            with open(f"/proc/{pid}/smaps") as f, open(os.path.join(where, f"{name}-{pid}.smaps"), "w") as out:
                out.write(f.read())
        except OSError:
            pass


def pss_kib(pid):
    """The process's proportional set size (/proc/PID/smaps_rollup), in KiB: its share of
    the pages it shares (an nginx worker's with its master), so that summed over a server's
    processes it counts each page once."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# --- the servers ----------------------------------------------------------------------------

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

# maxconn as nginx's worker_connections: unset, HAProxy sizes it (and its tables) from ulimit -n.
HAPROXY_CONF = """\
global
    nbthread {threads}
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 75s
    timeout server 75s

frontend proxy
    bind 127.0.0.1:{port}
    default_backend backend

backend backend
    server backend 127.0.0.1:{backend}
"""


def start_nginx(tmp, name, workers, body, cpus):
    os.makedirs(os.path.join(tmp, f"{name}-temp"), exist_ok=True)
    conf = os.path.join(tmp, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"daemon off;\nworker_processes {workers};\n")
        f.write(NGINX_COMMON.format(tmp=tmp, name=name, body=body))
    # -e: the error log of the main context (the http context's is set in the config).
    argv = [NGINX, "-p", tmp, "-e", os.path.join(tmp, f"{name}-error.log"), "-c", conf]
    return Proc(name, pin(argv, cpus), os.path.join(tmp, f"{name}.log"))


# --- wrk ------------------------------------------------------------------------------------

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


def run_wrk(name, port, proc, proxy_cpus, load_cpus):
    """One wrk run against the port; proc is the proxy (None for direct), sampled meanwhile."""
    script = []
    if POST_BYTES:
        lua = os.path.join(tempfile.gettempdir(), f"berth-bench-post-{POST_BYTES}.lua")
        with open(lua, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = string.rep("x", {POST_BYTES})\n')
        script = ["-s", lua]
    argv = pin([WRK, f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", *script,
                f"http://127.0.0.1:{port}/"], load_cpus)
    pids = [proc.p.pid, *children(proc.p.pid)] if proc else []
    cores0, ticks0, t0 = core_times(), cpu_ticks(pids), time.monotonic()
    w = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=die_with_parent)
    mem = None
    # Memory while the load is on: the last sample is within 0.25 s of the run's end. (wrk's
    # report is a few KiB, well within the pipes' buffers, so it is read only at the end.)
    while w.poll() is None:
        if time.monotonic() - t0 > SECONDS + 60:
            w.kill()
            w.communicate()
            return {"name": name, "failure": f"wrk did not finish within {SECONDS + 60} s"}
        if proc:
            mem = memory(proc) or mem
            keep_smaps(name, proc)
        time.sleep(0.25)
    out, err = w.communicate()
    wall = time.monotonic() - t0
    cores1, ticks1 = core_times(), cpu_ticks(pids)

    r = parse_wrk(out)
    r["name"] = name
    r["mem"] = mem
    if proc and r["requests"]:
        cpu_s = (ticks1 - ticks0) / CLK_TCK
        r["cpu_us_per_req"] = cpu_s * 1e6 / r["requests"]
        r["cpu_share"] = cpu_s / wall
    # Not pinned: one figure, all the CPUs this script may use, in proxy_core.
    r["proxy_core"] = busy_share(cores0, cores1, proxy_cpus or ALLOWED_CPUS)
    r["load_core"] = busy_share(cores0, cores1, load_cpus) if load_cpus else None
    if proxy_cpus and r["proxy_core"] is not None:
        # What else ran on the proxy's cores: their busy share less the proxy's own (the rest,
        # a few %, is mostly the loopback's softirq time).
        r["others"] = r["proxy_core"] - r.get("cpu_share", 0.0) / len(proxy_cpus)
    problems = []
    if w.returncode != 0:
        problems.append(f"wrk exited {w.returncode}: {err.strip()}")
    if r["rps"] is None or r["p99_ms"] is None or r["requests"] is None:
        problems.append("cannot read wrk's report")
    if r["non2xx"]:
        problems.append(f"{r['non2xx']} non-2xx answers")
    errs = {k: v for k, v in r["socket_errors"].items() if v}
    if errs:
        problems.append("socket errors " + ", ".join(f"{k} {v}" for k, v in errs.items()))
    if proc and mem is None:
        problems.append(f"could not read {proc.name}'s memory from /proc")
    if problems:
        r["failure"] = "; ".join(problems)
        r["report"] = "\n".join("      " + line for line in (out + err).splitlines())
    return r


def mib(kib):
    return kib / 1024


def fmt_run(r):
    if r.get("rps") is None:
        return "no figures"
    line = f"{r['rps']:>10.0f} req/s   p50 {r['p50_ms']:.2f} ms   p99 {r['p99_ms']:.2f} ms   ({r['requests']} requests)"
    pad = "\n" + " " * 26
    m = r.get("mem")
    if m:
        if m["nworkers"] > 1 or m["all_kib"] != m["rss_kib"]:
            line += (f"{pad}RSS worker{'s' if m['nworkers'] > 1 else ''} {mib(m['rss_kib']):.1f} MiB "
                     f"(peak {mib(m['hwm_kib']):.1f}), master+worker{'s' if m['nworkers'] > 1 else ''} "
                     f"{mib(m['all_kib']):.1f} MiB")
        else:
            line += f"{pad}RSS {mib(m['rss_kib']):.1f} MiB (peak {mib(m['hwm_kib']):.1f})"
    cpu = ""
    if r.get("cpu_us_per_req") is not None:
        cpu = f"CPU {r['cpu_us_per_req']:.1f} us/req, {100 * r['cpu_share']:.0f}% of a core;   "
    if r.get("load_core") is not None:
        cpu += f"busy: proxy core {100 * r['proxy_core']:.0f}%, load core {100 * r['load_core']:.0f}%"
    elif r.get("proxy_core") is not None:
        cpu += f"busy: CPUs {100 * r['proxy_core']:.0f}% (not pinned)"
    if cpu:
        line += pad + cpu
    if r.get("others", 0) > OTHERS_WARN:
        line += f"{pad}(other processes had {100 * r['others']:.0f}% of the proxy core: this run is disturbed)"
    return line


def on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main():
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGHUP, on_sigterm)
    unknown = [t for t in TARGETS if t not in ALL_TARGETS]
    if unknown:
        print(f"BENCH_TARGETS: unknown {unknown} ({', '.join(ALL_TARGETS)})", file=sys.stderr)
        return 2
    for tool in (NGINX, WRK):
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}: apt-get install -y nginx-light wrk (tests/setup.sh)", file=sys.stderr)
            return 2
    if "haproxy" in TARGETS and not os.access(HAPROXY, os.X_OK):
        print(f"missing {HAPROXY}: apt-get install -y haproxy (tests/setup.sh)", file=sys.stderr)
        return 2
    if {"berth", "berth-nometrics"} & set(TARGETS) and not os.access(BERTH, os.X_OK):
        print(f"missing {BERTH}: cargo build --release -p berth, or BERTH_BIN=...", file=sys.stderr)
        return 2
    try:
        proxy_cpus, load_cpus, pin_line = pinning()
    except BenchError as e:
        print(f"pinning: {e}", file=sys.stderr)
        return 2
    # One nginx worker / HAProxy thread per CPU the proxies may use (berth counts them itself).
    proxy_workers = len(proxy_cpus or ALLOWED_CPUS)

    print(f"proxy benchmark: wrk -t{THREADS} -c{CONNECTIONS} -d{SECONDS}s --latency, keep-alive, "
          f"{len(ALLOWED_CPUS)} CPUs, {ROUNDS} rounds, order reversed each round")
    print(f"  {pin_line}")
    tmp = tempfile.mkdtemp(prefix="berth-bench-proxy-")
    os.chmod(tmp, 0o755)  # nginx's workers run as nobody when started by root
    procs = {}
    failures = []
    runs = {t: [] for t in TARGETS}
    try:
        backend_port = free_port()
        backend = start_nginx(tmp, "backend", 1, BACKEND_CONF.format(port=backend_port), load_cpus)
        procs["backend"] = backend
        wait_ready(backend, backend_port)
        ports = {"direct": backend_port}
        print(f"  backend:         nginx, 1 worker, return 200 \"ok\\n\", 127.0.0.1:{backend_port}")

        def start(name, launch):
            # A proxy that does not start is a failure; the other targets are still measured.
            if name not in TARGETS:
                return
            try:
                ports[name] = free_port()
                p, describe = launch(ports[name])
                procs[name] = p
                wait_ready(p, ports[name])
                print(f"  {name + ':':<16} {describe(p)}")
            except BenchError as e:
                msg = str(e)
                if name == "berth-nometrics" and "--no-metrics" in procs[name].text():
                    msg += "\n    (this berth has no --no-metrics yet: leave berth-nometrics out of BENCH_TARGETS)"
                failures.append(msg)
                print(f"  FAILED: {msg}", flush=True)
                del ports[name]

        def nginx(port):
            p = start_nginx(tmp, "nginx-proxy", proxy_workers, PROXY_CONF.format(port=port, backend=backend_port),
                            proxy_cpus)
            return p, lambda p: f"reverse proxy, {proxy_workers} worker(s), upstream keepalive 64, 127.0.0.1:{port}"

        def haproxy(port):
            conf = os.path.join(tmp, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(HAPROXY_CONF.format(threads=proxy_workers, port=port, backend=backend_port))
            p = Proc("haproxy", pin([HAPROXY, "-f", conf, "-db"], proxy_cpus), os.path.join(tmp, "haproxy.log"))
            return p, lambda p: f"haproxy -f {conf} -db, nbthread {proxy_workers}, http-reuse always, 127.0.0.1:{port}"

        def berth(name, sock, extra):
            def launch(port):
                argv = [BERTH, "proxy", "--listen", f"127.0.0.1:{port}", "--control", os.path.join(tmp, sock),
                        "--backend", f"127.0.0.1:{backend_port}", *extra]
                p = Proc(name, pin(argv, proxy_cpus), os.path.join(tmp, f"{name}.log"))

                def describe(p):
                    m = re.search(r"\bworkers=(\d+)", p.text())
                    return f"{' '.join(argv)}   (workers={m.group(1) if m else '?'})"
                return p, describe
            return launch

        start("nginx", nginx)
        start("haproxy", haproxy)
        start("berth", berth("berth", "proxy.sock", []))
        start("berth-nometrics", berth("berth-nometrics", "proxy-nometrics.sock", ["--no-metrics"]))

        targets = [t for t in TARGETS if t in ports]
        for rnd in range(ROUNDS):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                r = run_wrk(t, ports[t], procs.get(t) if t != "direct" else None, proxy_cpus, load_cpus)
                runs[t].append(r)
                print(f"  round {rnd + 1} {t:<15} {fmt_run(r)}", flush=True)
                if "failure" in r:
                    failures.append(f"{t}, round {rnd + 1}: {r['failure']}; wrk said:\n{r.get('report', '')}")
                    print(f"    FAILED: {r['failure']}", flush=True)
    except BenchError as e:
        failures.append(str(e))
        print(f"  FAILED: {e}", flush=True)
    finally:
        for p in reversed(list(procs.values())):
            p.stop()
        if failures:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    best = {}
    for t, rs in runs.items():
        ok = [r for r in rs if "failure" not in r]
        if ok:
            b = dict(max(ok, key=lambda r: r["rps"]))
            if b.get("mem"):
                b["rss_kib"] = b["mem"]["rss_kib"]
                b["pss_kib"] = b["mem"]["pss_kib"]
            best[t] = b

    def pct(share):
        return None if share is None else 100 * share

    def col(v, width, fmt):
        return f"{v:>{width}{fmt}}" if v is not None else f"{'-':>{width}}"

    if best:
        print()
        print("Better of each target's runs (the one with more requests/s, with its own p99, memory, CPU):")
        print(f"  {'target':<15} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8} {'peak MiB':>9}"
              f" {'us/req':>7} {'proxy%':>7} {'core%':>6} {'load%':>6}")
        for t in TARGETS:
            if t not in best:
                print(f"  {t:<15} {'failed':>10}")
                continue
            r = best[t]
            m = r.get("mem")
            rss, hwm = (mib(m["rss_kib"]), mib(m["hwm_kib"])) if m else (None, None)
            print(f"  {t:<15} {r['rps']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                  f" {col(rss, 8, '.1f')} {col(hwm, 9, '.1f')}"
                  f" {col(r.get('cpu_us_per_req'), 7, '.1f')} {col(pct(r.get('cpu_share')), 7, '.0f')}"
                  f" {col(pct(r['proxy_core']), 6, '.0f')} {col(pct(r['load_core']), 6, '.0f')}")
        disturbed = [t for t in TARGETS if best.get(t, {}).get("others", 0) > OTHERS_WARN]
        if disturbed:
            print(f"  disturbed (other processes had > {100 * OTHERS_WARN:.0f}% of the proxy core): {', '.join(disturbed)}")
        m = (best.get("nginx") or {}).get("mem")
        if m:
            print(f"  nginx's RSS and peak are its worker's; master+worker: {mib(m['all_kib']):.1f} MiB")
        pss = [f"{t} {mib(best[t]['pss_kib']):.1f}" for t in TARGETS if best.get(t, {}).get("pss_kib")]
        if pss:
            print(f"  PSS MiB, every process of the server (shared pages counted once): {', '.join(pss)}")
        print("  RSS, peak: VmRSS and VmHWM at the end of the run. us/req, proxy%: the proxy's CPU time per")
        print("  request and as a share of one core. core%, load%: how busy the proxy's and the load's cores")
        print("  were (every process; not pinned: core% is all the CPUs). wrk's non-2xx count is its")
        print("  \"Non-2xx or 3xx responses\"; the backend only answers 200.")
        print()

    def ratio(label, a, b, key, target, higher_better):
        if a not in best or b not in best or best[a].get(key) is None or best[b].get(key) is None:
            return
        x = best[a][key] / best[b][key] if best[b][key] else float("inf")
        if target is None:
            print(f"  {label:<40} {x:6.3f}")
            return
        ok = x >= target if higher_better else x <= target
        sign = ">=" if higher_better else "<="
        print(f"  {label:<40} {x:6.3f}   target {sign} {target:.2f}   {'PASS' if ok else 'MISS'}")

    def per_round(label, a, b, key):
        """The median over rounds of a/b from the same round: the two ran a few seconds apart,
        so a neighbour's load that comes and goes moves both, where best-of compares runs
        from different moments."""
        xs = [ra[key] / rb[key] for ra, rb in zip(runs.get(a, []), runs.get(b, []))
              if "failure" not in ra and "failure" not in rb and ra.get(key) and rb.get(key)]
        if xs:
            each = " ".join(f"{x:.3f}" for x in xs)
            print(f"  {label:<40} {statistics.median(xs):6.3f}   median of rounds ({each})")

    ratio("berth/nginx requests/s", "berth", "nginx", "rps", 1.0, True)
    per_round("berth/nginx requests/s, same round", "berth", "nginx", "rps")
    per_round("berth/nginx p99, same round", "berth", "nginx", "p99_ms")
    per_round("berth/nginx CPU per request, same round", "berth", "nginx", "cpu_us_per_req")
    per_round("berth/berth-nometrics req/s, same round", "berth", "berth-nometrics", "rps")
    ratio("berth/nginx p99", "berth", "nginx", "p99_ms", 1.0, False)
    ratio("berth/nginx worker RSS", "berth", "nginx", "rss_kib", 1.0, False)
    ratio("berth/nginx PSS, all processes", "berth", "nginx", "pss_kib", None, False)
    ratio("berth/berth-nometrics requests/s", "berth", "berth-nometrics", "rps", 0.98, True)
    ratio("berth/haproxy requests/s", "berth", "haproxy", "rps", None, True)
    ratio("berth/haproxy p99", "berth", "haproxy", "p99_ms", None, False)
    ratio("berth/nginx CPU per request", "berth", "nginx", "cpu_us_per_req", None, False)
    ratio("berth/haproxy CPU per request", "berth", "haproxy", "cpu_us_per_req", None, False)
    ratio("berth/direct requests/s", "berth", "direct", "rps", None, True)
    ratio("nginx/direct requests/s", "nginx", "direct", "rps", None, True)
    ratio("haproxy/direct requests/s", "haproxy", "direct", "rps", None, True)

    if failures:
        print(f"\n{len(failures)} failure(s), figures above are incomplete:")
        for f in failures:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
