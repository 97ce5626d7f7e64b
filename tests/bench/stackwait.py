#!/usr/bin/env python3
"""Run a command, then poll the Docker Engine until a compose project is up.

    stackwait.py --project P --services db,migrate,api [--timeout 120] [--log F] [-- CMD...]

The clock starts just before CMD is spawned. When CMD has exited (it must exit 0), the
project's containers are polled every --interval seconds (50 ms) through the Engine API
(the same data as `docker inspect`) until every listed service has a container and every
container of those services is ready: running and healthy (or running with no
healthcheck), or exited with code 0 (a one-shot job). It prints one line:

    cmd=SECONDS ready=SECONDS first_poll_ready=0|1

`ready` is when the stack was first seen ready; first_poll_ready=1 means it already was
at the first poll after CMD returned (as it must be for `berth up`, which waits itself).
Exit codes: 0 ready, 1 CMD failed, 2 a container failed (exited non-zero, unhealthy),
3 timed out. Only the Python standard library is used.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10.0):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


class Engine:
    def __init__(self):
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        if not host.startswith("unix://"):
            sys.exit(f"stackwait: only unix:// DOCKER_HOST is supported, not {host}")
        self.path = host[len("unix://"):]
        self.conn = UnixConnection(self.path)

    def get(self, url):
        for attempt in (0, 1):
            try:
                self.conn.request("GET", "/v1.41" + url)
                resp = self.conn.getresponse()
                body = resp.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = UnixConnection(self.path)
                if attempt:
                    raise
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {resp.status}: {body[:200]!r}")
        return json.loads(body)

    def project_containers(self, project):
        filters = json.dumps({"label": [f"com.docker.compose.project={project}"]})
        return self.get("/containers/json?all=1&filters=" + urllib.parse.quote(filters))


def check(engine, project, services):
    """Returns (state, detail): state is 'ready', 'waiting' or 'failed'."""
    by_service = {s: [] for s in services}
    for summary in engine.project_containers(project):
        service = summary.get("Labels", {}).get("com.docker.compose.service")
        if service not in by_service:
            continue
        info = engine.get(f"/containers/{summary['Id']}/json")
        if info is not None:  # gone between the list and the inspect
            by_service[service].append(info)
    waiting = []
    for service, infos in by_service.items():
        if not infos:
            waiting.append(f"{service}: no container")
            continue
        for info in infos:
            state = info["State"]
            health = (state.get("Health") or {}).get("Status")
            name = info["Name"].lstrip("/")
            if state["Status"] == "running" and health in (None, "healthy"):
                continue
            if state["Status"] == "exited" and state["ExitCode"] == 0:
                continue
            if state["Status"] == "exited" and not state.get("Restarting"):
                # A container with a restart policy may come back; one without will not.
                policy = info["HostConfig"].get("RestartPolicy", {}).get("Name", "")
                if policy in ("", "no"):
                    return "failed", f"{name} exited with code {state['ExitCode']}"
            if health == "unhealthy":
                return "failed", f"{name} is unhealthy"
            waiting.append(f"{name}: {state['Status']}" + (f" ({health})" if health else ""))
    if waiting:
        return "waiting", "; ".join(waiting)
    return "ready", ""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", required=True)
    parser.add_argument("--services", required=True, help="comma-separated")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--log", help="where CMD's output goes (default: inherited)")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    services = [s for s in args.services.split(",") if s]

    engine = Engine()
    out = open(args.log, "ab") if args.log else None
    start = time.monotonic()
    if cmd:
        rc = subprocess.call(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
        cmd_s = time.monotonic() - start
        if rc != 0:
            print(f"stackwait: {' '.join(cmd)} exited with {rc} after {cmd_s:.2f}s",
                  file=sys.stderr)
            return 1
    else:
        cmd_s = 0.0
    first = True
    while True:
        state, detail = check(engine, args.project, services)
        now = time.monotonic()
        if state == "ready":
            print(f"cmd={cmd_s:.3f} ready={now - start:.3f} first_poll_ready={int(first)}")
            return 0
        if state == "failed":
            print(f"stackwait: {args.project}: {detail}", file=sys.stderr)
            return 2
        if now - start > args.timeout:
            print(f"stackwait: {args.project} not ready after {args.timeout:.0f}s: {detail}",
                  file=sys.stderr)
            return 3
        first = False
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
