#!/usr/bin/env python3
"""User-space instructions per proxied request, berth's proxy against nginx, under valgrind's
callgrind: a count that does not move with this machine's load, where CPU time per request
swings by 10 % between rounds. Each proxy (one worker, same nginx backend) takes 1,000 keep-alive
GETs to warm up, then its counters are zeroed and BENCH_INSTR_REQUESTS (4,000) more are sent
over 4 connections; the instructions counted over those, divided by their number. The kernel's
share (the sockets: about three quarters of the proxy's time under tests/bench/proxy.py) is not
in it. Prints figures and the ratio; not a test.

  tests/bench/proxy.sh runs it; alone:
  BERTH_BIN=target/release/berth python3 tests/bench/proxy_instructions.py

Exit status: 0 when both were measured, 1 when a run failed, 2 when valgrind is missing.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import BenchError, free_port
from proxy import BACKEND_CONF, BERTH, NGINX, NGINX_COMMON, PROXY_CONF, Proc, start_nginx, wait_ready

REQUESTS = int(os.environ.get("BENCH_INSTR_REQUESTS", "4000"))
CLIENTS = 4
VALGRIND = shutil.which("valgrind")
CONTROL = shutil.which("callgrind_control")


def send(port, n):
    """`n` keep-alive GETs on `CLIENTS` connections, each answer read whole (3-byte bodies)."""
    errors = []

    def client(count):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                for _ in range(count):
                    s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
                    got = b""
                    while not (b"\r\n\r\n" in got and got.endswith(b"ok\n")):
                        chunk = s.recv(4096)
                        if not chunk:
                            raise OSError("closed before the answer's end")
                        got += chunk
                    if not got.startswith(b"HTTP/1.1 200"):
                        raise OSError(f"answered {got[:40]!r}")
        except OSError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=client, args=(n // CLIENTS,)) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"port {port}: {errors[0]}")
    return n // CLIENTS * CLIENTS


def dumped_total(out_dir, before):
    """The instruction total of the dump callgrind_control -d wrote (a file not in `before`)."""
    deadline = time.time() + 30
    while time.time() < deadline:
        for name in sorted(set(os.listdir(out_dir)) - before):
            with open(os.path.join(out_dir, name)) as f:
                for line in f:
                    if line.startswith(("summary:", "totals:")):
                        return int(line.split()[1])
        time.sleep(0.2)
    raise BenchError(f"no callgrind dump in {out_dir}")


def measure(name, argv, port, tmp):
    out_dir = os.path.join(tmp, f"{name}-callgrind")
    os.makedirs(out_dir)
    vg = [VALGRIND, "--tool=callgrind", f"--callgrind-out-file={out_dir}/out.%p", *argv]
    proc = Proc(name, vg, os.path.join(tmp, f"{name}.log"))
    try:
        wait_ready(proc, port, timeout=60)
        send(port, 1000)
        pid = str(proc.p.pid)
        subprocess.run([CONTROL, "-z", pid], check=True, capture_output=True)
        n = send(port, REQUESTS)
        before = set(os.listdir(out_dir))
        subprocess.run([CONTROL, "-d", pid], check=True, capture_output=True)
        return dumped_total(out_dir, before) / n
    finally:
        proc.stop()


def main():
    if not VALGRIND or not CONTROL:
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="berth-bench-instr-")
    print(f"instructions per request (callgrind, user space only): {REQUESTS} keep-alive GETs "
          f"on {CLIENTS} connections after 1,000 to warm up; one worker each", flush=True)
    backend = None
    figures = {}
    try:
        backend_port = free_port()
        backend = start_nginx(tmp, "backend", 1, BACKEND_CONF.format(port=backend_port), None)
        wait_ready(backend, backend_port)
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        os.makedirs(os.path.join(tmp, "nginx-temp"), exist_ok=True)
        with open(conf, "w") as f:
            # One process: callgrind follows it without tracing children.
            f.write("daemon off;\nmaster_process off;\nworker_processes 1;\n")
            f.write(NGINX_COMMON.format(tmp=tmp, name="nginx",
                                        body=PROXY_CONF.format(port=port, backend=backend_port)))
        figures["nginx"] = measure(
            "nginx", [NGINX, "-p", tmp, "-e", os.path.join(tmp, "nginx-error.log"), "-c", conf], port, tmp)
        port = free_port()
        figures["berth"] = measure(
            "berth", [BERTH, "proxy", "--listen", f"127.0.0.1:{port}", "--control",
                      os.path.join(tmp, "berth.sock"), "--backend", f"127.0.0.1:{backend_port}",
                      "--workers", "1"], port, tmp)
    except (BenchError, OSError, subprocess.CalledProcessError) as e:
        print(f"  FAILED: {e} (logs kept in {tmp})")
        return 1
    finally:
        if backend:
            backend.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    for name, per in figures.items():
        print(f"  {name:<6} {per:9,.0f} instructions per request")
    print(f"  berth/nginx {figures['berth'] / figures['nginx']:.2f}x (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
