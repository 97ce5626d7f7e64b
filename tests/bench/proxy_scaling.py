#!/usr/bin/env python3
"""How the proxy scales past one core: berth's proxy with 1 and 2 workers (`--workers`) and
nginx with 1 and 2 worker processes, unpinned on this machine's cores with wrk and the
backend beside them (the same wrk run as proxy.py), each BENCH_ROUNDS times in alternating
order; requests/s, p99 and CPU per request of each, and each proxy's scaling factor (2
workers' requests/s over 1 worker's). Prints figures and ratios; not a test.

  tests/bench/proxy.sh runs it after proxy.py; alone:
  BERTH_BIN=target/release/berth python3 tests/bench/proxy_scaling.py

With wrk and the backend on the same two cores, no proxy can reach 2x; the factors compare
the two proxies under the same conditions. Exit status: 0 when every run completed cleanly,
1 when one failed, 2 when a tool is missing.
"""

import os
import shutil
import sys
import tempfile

from benchlib import BenchError, free_port
from proxy import (BACKEND_CONF, BERTH, NGINX, PROXY_CONF, ROUNDS, WRK, Proc, fmt_run, run_wrk, start_nginx,
                   wait_ready)

WORKERS = (1, 2)


def main():
    for tool in (NGINX, WRK, BERTH):
        if not os.access(tool, os.X_OK):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    cpus = len(os.sched_getaffinity(0))
    print(f"scaling: berth proxy --workers N and nginx worker_processes N, N in {WORKERS}, unpinned on "
          f"{cpus} CPUs with wrk and a 2-worker nginx backend; {ROUNDS} rounds")
    tmp = tempfile.mkdtemp(prefix="berth-bench-scaling-")
    os.chmod(tmp, 0o755)
    procs, ports, failures = {}, {}, []
    runs = {}
    try:
        backend_port = free_port()
        procs["backend"] = start_nginx(tmp, "backend", 2, BACKEND_CONF.format(port=backend_port), None)
        wait_ready(procs["backend"], backend_port)
        for n in WORKERS:
            name = f"nginx-{n}w"
            ports[name] = free_port()
            procs[name] = start_nginx(tmp, name, n, PROXY_CONF.format(port=ports[name], backend=backend_port), None)
            name = f"berth-{n}w"
            ports[name] = free_port()
            argv = [BERTH, "proxy", "--listen", f"127.0.0.1:{ports[name]}", "--control",
                    os.path.join(tmp, f"{name}.sock"), "--backend", f"127.0.0.1:{backend_port}",
                    "--workers", str(n)]
            procs[name] = Proc(name, argv, os.path.join(tmp, f"{name}.log"))
        targets = [t for t in ports]
        for t in targets:
            wait_ready(procs[t], ports[t])
            runs[t] = []
        for rnd in range(ROUNDS):
            order = targets if rnd % 2 == 0 else list(reversed(targets))
            for t in order:
                r = run_wrk(t, ports[t], procs[t], None, None)
                runs[t].append(r)
                print(f"  round {rnd + 1} {t:<9} {fmt_run(r)}", flush=True)
                if "failure" in r:
                    failures.append(f"{t}, round {rnd + 1}: {r['failure']}")
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
            best[t] = max(ok, key=lambda r: r["rps"])
    print("  best of each (requests/s, p99, CPU per request):")
    for t, r in best.items():
        print(f"    {t:<9} {r['rps']:9.0f} req/s  p99 {r['p99_ms']:.2f} ms  "
              f"{r.get('cpu_us_per_req', float('nan')):.1f} us CPU/req")
    for proxy in ("nginx", "berth"):
        one, two = best.get(f"{proxy}-1w"), best.get(f"{proxy}-2w")
        if one and two:
            print(f"  {proxy} scaling 2 workers / 1: {two['rps'] / one['rps']:.2f}x req/s, CPU per request "
                  f"{two['cpu_us_per_req'] / one['cpu_us_per_req']:.2f}x")
    for n in WORKERS:
        b, g = best.get(f"berth-{n}w"), best.get(f"nginx-{n}w")
        if b and g:
            print(f"  berth/nginx at {n} worker(s): req/s {b['rps'] / g['rps']:.2f}x, p99 "
                  f"{b['p99_ms'] / g['p99_ms']:.2f}x, CPU per request {b['cpu_us_per_req'] / g['cpu_us_per_req']:.2f}x "
                  "(targets: >= ~1, <= 1, <= 1)")
    for f in failures:
        print(f"  FAILED: {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
