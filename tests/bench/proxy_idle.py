#!/usr/bin/env python3
"""What a proxy keeps for idle connections: 1,000 keep-alive client connections (an ALB's)
each fetch one 1 MiB answer through it, then stay open and idle; 10 s later, the proxy's
resident memory and open descriptors, berth's proxy against nginx (one worker each, pinned
to BENCH_PROXY_CPU, default 0). Prints figures and ratios; not a test.

  tests/bench/proxy.sh runs it after proxy.py; alone:
  BERTH_BIN=target/release/berth python3 tests/bench/proxy_idle.py

The backend is an nginx serving a 1 MiB file. Target: berth's RSS <= nginx's (the worker's,
and master+worker). BENCH_IDLE_CONNECTIONS (1000) and BENCH_IDLE_SECS (10) change the load.
Exit status: 0 when both were measured, 1 when a run failed, 2 when a tool is missing.
"""

import os
import resource
import shutil
import socket
import sys
import tempfile
import time

from benchlib import BenchError, free_port
from proxy import BERTH, NGINX, PROXY_CONF, Proc, children, parse_cpus, pin, start_nginx

CONNECTIONS = int(os.environ.get("BENCH_IDLE_CONNECTIONS", "1000"))
IDLE_SECS = float(os.environ.get("BENCH_IDLE_SECS", "10"))
_CPU = os.environ.get("BENCH_PROXY_CPU", "0").strip()
PROXY_CPUS = parse_cpus(_CPU) if _CPU else None
SIZE = 1 << 20


def pids_of(proc):
    """The process (taskset execs it) and its children (nginx's worker; berth has none)."""
    return [proc.p.pid, *children(proc.p.pid)]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def fetch(sock, port):
    """One GET /big on `sock`, read whole (keep-alive)."""
    sock.sendall(f"GET /big HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError("closed before the head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200"):
        raise BenchError(f"answered {head[:40]!r}")
    lines = head.decode("latin-1").lower().split("\r\n")
    length = next((int(l.split(":", 1)[1]) for l in lines if l.startswith("content-length:")), None)
    if length is None:
        raise BenchError(f"no content-length in {head!r}")
    left = length - len(rest)
    while left > 0:
        chunk = sock.recv(min(left, 1 << 18))
        if not chunk:
            raise BenchError("closed in the body")
        left -= len(chunk)


def measure(name, proc, port):
    """Opens the connections, one 1 MiB answer each, then idles; the proxy's figures."""
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise BenchError(f"{name} does not listen on {port}")
            time.sleep(0.05)
    socks = []
    started = time.monotonic()
    try:
        for _ in range(CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", port), timeout=20)
            fetch(s, port)
            socks.append(s)
        took = time.monotonic() - started
        time.sleep(IDLE_SECS)
        pids = pids_of(proc)
        figures = {
            "rss_kib": sum(rss_kib(p) for p in pids),
            "worker_rss_kib": rss_kib(pids[-1]),
            "fds": sum(fds(p) for p in pids),
            "took": took,
        }
        # Still served after idling: the connections are alive.
        fetch(socks[0], port)
        return figures
    finally:
        for s in socks:
            s.close()


def main():
    for tool in (NGINX, BERTH):
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 4 * CONNECTIONS + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    tmp = tempfile.mkdtemp(prefix="berth-bench-idle-")
    os.chmod(tmp, 0o755)
    with open(os.path.join(tmp, "big"), "wb") as f:
        f.write(bytes(i % 251 for i in range(SIZE)))
    os.chmod(os.path.join(tmp, "big"), 0o644)
    procs = []
    results = {}
    failed = []
    print(f"idle connections: {CONNECTIONS} keep-alive clients each fetch 1 MiB through the proxy, then "
          f"idle {IDLE_SECS:g} s; one worker each, " + (f"pinned to CPU {_CPU}" if PROXY_CPUS else "not pinned"))
    try:
        backend_port = free_port()
        procs.append(start_nginx(tmp, "backend", 1, f"    server {{ listen 127.0.0.1:{backend_port}; root {tmp}; }}",
                                 None))
        targets = {}
        port = free_port()
        procs.append(start_nginx(tmp, "nginx-proxy", 1, PROXY_CONF.format(port=port, backend=backend_port),
                                 PROXY_CPUS))
        targets["nginx"] = (procs[-1], port)
        port = free_port()
        argv = [BERTH, "proxy", "--listen", f"127.0.0.1:{port}", "--control", os.path.join(tmp, "proxy.sock"),
                "--backend", f"127.0.0.1:{backend_port}"]
        procs.append(Proc("berth", pin(argv, PROXY_CPUS), os.path.join(tmp, "berth.log")))
        targets["berth"] = (procs[-1], port)
        for name, (proc, port) in targets.items():
            try:
                results[name] = r = measure(name, proc, port)
                print(f"  {name:<6} RSS {r['rss_kib'] / 1024:6.1f} MiB (worker {r['worker_rss_kib'] / 1024:.1f}), "
                      f"{r['fds']} open descriptors, {IDLE_SECS:g} s after {CONNECTIONS} x 1 MiB "
                      f"(fetched in {r['took']:.1f} s)", flush=True)
            except (BenchError, OSError) as e:
                failed.append(f"{name}: {e}")
                print(f"  {name}: FAILED: {e}", flush=True)
    finally:
        for p in procs:
            p.stop()
        if failed:
            print(f"  logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if "berth" in results and "nginx" in results:
        b, n = results["berth"], results["nginx"]
        print(f"  berth/nginx RSS {b['rss_kib'] / n['rss_kib']:.2f}x (target <= 1.0; worker "
              f"{b['worker_rss_kib'] / n['worker_rss_kib']:.2f}x), descriptors {b['fds']} vs {n['fds']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
