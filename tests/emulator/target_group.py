#!/usr/bin/env python3
"""A stand-in for an ELBv2 target group whose data plane is a real HAProxy, for berth's tests.

moto's ELBv2 says "healthy" for every registered target and drives no traffic, so a test cannot
see that deregistering a target really stops the load balancer sending to it. This server is the
ELBv2 endpoint berth talks to (through AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2) and answers
RegisterTargets, DeregisterTargets and DescribeTargetHealth by driving HAProxy (the tests' ALB)
through its admin runtime socket: a target is a server of one HAProxy backend, deregistering it
puts that server in maintenance (HAProxy sends it no new requests, the ones in flight finish),
registering it makes it ready again, and its health is what HAProxy's own checks say, told the way
an ALB tells it (initial, healthy, unhealthy, draining, unused).

Standard library only. Usage:

    python3 target_group.py --port 0 --haproxy-socket PATH --backend app \
        --target-group-arn ARN [--deregistration-delay SECS] [--exit-with-stdin]

It prints "ready <port>" once it listens on 127.0.0.1. Control API (JSON) under /_target_group/:
POST targets {"i-...": {"server": "i0", "port": 8080}} maps instance ids to the backend's
servers (they start registered, as an ASG registers its instances); GET targets lists them;
GET calls lists the ELBv2 calls received; GET events lists each target's registration changes.
"""

import argparse
import csv
import io
import json
import re
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import serving  # tests/emulator/serving.py, beside this script

ELB_NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

# The reason AWS gives with each target health state (healthy has none).
TARGET_REASONS = {
    "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "unhealthy": ("Target.FailedHealthChecks", "Health checks failed"),
    "healthy": (None, None),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
    "unused": ("Target.NotRegistered", "Target is not registered to the target group"),
}

# HAProxy's default check interval; see Target.observe (only used for servers with `fall 1`).
DEFAULT_INTER = 2.0
POLL_SECONDS = 0.1


class HAProxyError(Exception):
    pass


class HAProxy:
    """HAProxy's runtime API on its admin socket: one command per connection, answer until EOF."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()

    def command(self, line):
        with self.lock:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(5)
                s.connect(self.path)
                s.sendall(line.encode() + b"\n")
                chunks = []
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    chunks.append(data)
            except OSError as e:
                raise HAProxyError("haproxy socket %s: %s" % (self.path, e))
            finally:
                s.close()
        return b"".join(chunks).decode("utf-8", "replace")

    def set_state(self, backend, server, state):
        # `set server` answers an empty line when it did it, else the reason it did not.
        out = self.command("set server %s/%s state %s" % (backend, server, state)).strip()
        if out:
            raise HAProxyError("set server %s/%s state %s: %s" % (backend, server, state, out))

    def servers(self, backend):
        """`show stat`'s rows for the backend's servers, by server name."""
        text = self.command("show stat")
        if not text.startswith("# "):
            raise HAProxyError("show stat: %s" % text.strip())
        rows = {}
        for row in csv.DictReader(io.StringIO(text[2:])):
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
        return rows


class Target:
    def __init__(self, tid, server, port):
        self.id = tid
        self.server = server
        self.port = port
        self.registered = True
        self.changed = time.time()
        # Whether one HAProxy check has completed since the registration (see observe).
        self.checked = False
        # The event the next DescribeTargetHealth answer of that state records ("healthy" after
        # a registration, "unused" after a deregistration), None once recorded.
        self.awaiting = None

    def observe(self, row, now):
        """Notes, from a `show stat` row, whether a check has completed since the registration.

        What HAProxy 2.x does (seen with 2.6, `check inter 500ms fall 2 rise 2`): `set server
        ... state ready` takes a server out of maint at once to "UP 1/2", whatever it was before
        (even DOWN, even with its application dead), with check_health set to exactly
        check_rise and check_status/check_desc still showing the result from before the maint
        (stale: L7OK, or L4CON). HAProxy sends it traffic from then on. The first check after
        that (within one `inter`) moves check_health off check_rise: a pass raises it (rise+1,
        "UP" when fall is 2), a failure drops it below rise (to 0, "DOWN"). So check_health !=
        check_rise, read while the server is out of maint, means a check has completed since the
        registration; check_status, last_chk and check_duration cannot tell a fresh result from
        a stale one. It is latched, since pass-then-fail brings check_health back to rise.

        With `fall 1` check_health is already at its top (rise + fall - 1) and a pass does not
        move it; HAProxy does not say its `inter`, so then a registration older than HAProxy's
        default inter (2 s) with the server UP counts as checked.
        """
        if self.checked or not self.registered:
            return
        status = row.get("status", "")
        if status.startswith("MAINT") or status == "no check":
            return
        try:
            health = int(row["check_health"])
            rise = int(row["check_rise"])
            fall = int(row["check_fall"])
        except (KeyError, ValueError):
            return
        if health != rise:
            self.checked = True
        elif fall <= 1 and status.startswith("UP") and now - self.changed >= DEFAULT_INTER:
            self.checked = True

    def public(self):
        return {
            "server": self.server,
            "port": self.port,
            "registered": self.registered,
            "changed": self.changed,
            "checked": self.checked,
        }


class State:
    """Everything the stand-in knows. The lock is held across each HAProxy read or change and
    the bookkeeping that goes with it, so that a `show stat` row is never matched with a
    registration it predates (this lock is always taken before HAProxy's)."""

    def __init__(self, haproxy, backend, arn, delay):
        self.lock = threading.Lock()
        self.haproxy = haproxy
        self.backend = backend
        self.arn = arn
        self.delay = delay
        self.targets = {}
        self.calls = []
        self.events = []

    def event(self, target, name, now):
        self.events.append({"target": target.id, "event": name, "time": now})

    def poll(self):
        """Watches HAProxy while a registered target awaits its first check, so that a check
        completing between two DescribeTargetHealth calls is not missed."""
        while True:
            time.sleep(POLL_SECONDS)
            with self.lock:
                waiting = [t for t in self.targets.values() if t.registered and not t.checked]
                if not waiting:
                    continue
                try:
                    rows = self.haproxy.servers(self.backend)
                except HAProxyError:
                    continue
                now = time.time()
                for t in waiting:
                    if t.server in rows:
                        t.observe(rows[t.server], now)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, content_type, headers=None):
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_json(self, status, value):
        self.send(status, json.dumps(value, indent=1), "application/json")

    def send_xml(self, status, body):
        # The header carries the same request id as the body, as AWS's do.
        match = re.search(r"<RequestId>([^<]*)</RequestId>", body)
        self.send(status, body, "text/xml", {"x-amzn-RequestId": match.group(1)})

    def error(self, status, code, message):
        self.send_xml(status, error_xml(code, message, sender=status < 500))

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    # ----- control API -----

    def do_GET(self):
        state = self.server.state
        path = urlsplit(self.path).path
        with state.lock:
            if path == "/_target_group/calls":
                return self.send_json(200, state.calls)
            if path == "/_target_group/events":
                return self.send_json(200, state.events)
            if path == "/_target_group/targets":
                return self.send_json(200, {k: t.public() for k, t in state.targets.items()})
        self.send_json(404, {"message": "not found"})

    def do_POST(self):
        path = urlsplit(self.path).path
        raw = self.body()
        if path == "/_target_group/targets":
            return self.add_targets(raw)
        if path == "/":
            return self.query_api(raw)
        self.send_json(404, {"message": "not found"})

    def add_targets(self, raw):
        state = self.server.state
        try:
            spec = json.loads(raw or b"{}")
            added = {
                tid: (str(v["server"]), int(v["port"])) for tid, v in spec.items()
            }
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            return self.send_json(400, {"message": "want {id: {server, port}}: %s" % e})
        with state.lock:
            try:
                rows = state.haproxy.servers(state.backend)
                missing = sorted(s for s, _ in added.values() if s not in rows)
                if missing:
                    return self.send_json(
                        400,
                        {"message": "no such server in backend %s: %s" % (state.backend, missing)},
                    )
                # Registered means ready in HAProxy (a no-op for a server that already is).
                for server, _ in added.values():
                    state.haproxy.set_state(state.backend, server, "ready")
            except HAProxyError as e:
                return self.send_json(502, {"message": str(e)})
            for tid, (server, port) in added.items():
                state.targets[tid] = Target(tid, server, port)
            answer = {k: t.public() for k, t in state.targets.items()}
        self.send_json(200, answer)

    # ----- ELBv2 -----

    def query_api(self, raw):
        state = self.server.state
        params = {}
        for source in (urlsplit(self.path).query, raw.decode("utf-8", "replace")):
            for key, values in parse_qs(source, keep_blank_values=True).items():
                params[key] = values[-1]
        action = params.get("Action")
        targets = []
        i = 1
        while "Targets.member.%d.Id" % i in params:
            targets.append(
                (params["Targets.member.%d.Id" % i], params.get("Targets.member.%d.Port" % i))
            )
            i += 1
        with state.lock:
            state.calls.append(
                {"action": action, "targets": [t for t, _ in targets], "time": time.time()}
            )
        handler = {
            "RegisterTargets": self.register,
            "DeregisterTargets": self.deregister,
            "DescribeTargetHealth": self.describe,
        }.get(action)
        if handler is None:
            return self.error(
                400, "InvalidAction", "The action %s is not valid for this web service." % action
            )
        arn = params.get("TargetGroupArn")
        if not arn:
            return self.error(400, "ValidationError", "A target group ARN must be specified")
        if arn != state.arn:
            return self.error(400, "TargetGroupNotFound", "One or more target groups not found")
        try:
            handler(targets)
        except HAProxyError as e:
            sys.stderr.write("target_group: %s\n" % e)
            self.error(500, "InternalFailure", str(e))

    def known(self, action, targets):
        """The targets named, all known; else answers the error and returns None."""
        state = self.server.state
        if not targets:
            self.error(
                400,
                "ValidationError",
                "1 validation error detected: Value null at 'targets' failed to satisfy "
                "constraint: Member must not be null",
            )
            return None
        with state.lock:
            unknown = [tid for tid, _ in targets if tid not in state.targets]
            found = [state.targets[tid] for tid, _ in targets if tid in state.targets]
        if unknown:
            self.error(
                400,
                "InvalidTarget",
                "The following targets are not in a running state and cannot be %s: %s"
                % (action, ", ".join("'%s'" % t for t in unknown)),
            )
            return None
        return found

    def register(self, targets):
        state = self.server.state
        found = self.known("registered", targets)
        if found is None:
            return
        with state.lock:
            for t in found:
                # As on an ALB, registering a registered target changes nothing.
                if t.registered:
                    continue
                state.haproxy.set_state(state.backend, t.server, "ready")
                now = time.time()
                t.registered, t.changed, t.checked, t.awaiting = True, now, False, "healthy"
                state.event(t, "registered", now)
        self.send_xml(200, empty_result("RegisterTargets"))

    def deregister(self, targets):
        state = self.server.state
        found = self.known("deregistered", targets)
        if found is None:
            return
        with state.lock:
            for t in found:
                if not t.registered:
                    continue
                # maint: no new requests go to the server; those in flight finish.
                state.haproxy.set_state(state.backend, t.server, "maint")
                now = time.time()
                t.registered, t.changed, t.checked, t.awaiting = False, now, False, "unused"
                state.event(t, "deregistered", now)
        self.send_xml(200, empty_result("DeregisterTargets"))

    def describe(self, targets):
        state = self.server.state
        members = []
        with state.lock:
            rows = state.haproxy.servers(state.backend)
            now = time.time()
            asked = targets or [(tid, None) for tid in state.targets]
            for tid, port in asked:
                t = state.targets.get(tid)
                if t is None:
                    members.append((tid, port, port, "unused"))
                    continue
                row = rows.get(t.server)
                if row is None:
                    raise HAProxyError("no server %s in backend %s" % (t.server, state.backend))
                health = self.health_of(t, row, now)
                if health == t.awaiting:
                    state.event(t, health, now)
                    t.awaiting = None
                members.append((tid, port or str(t.port), str(t.port), health))
        xml = "".join(member_xml(*m) for m in members)
        self.send_xml(
            200,
            '<DescribeTargetHealthResponse xmlns="%s"><DescribeTargetHealthResult>'
            "<TargetHealthDescriptions>%s</TargetHealthDescriptions></DescribeTargetHealthResult>"
            "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
            "</DescribeTargetHealthResponse>" % (ELB_NS, xml, request_id()),
        )

    def health_of(self, t, row, now):
        """The ALB's word for HAProxy's view of the server (state.lock held)."""
        if not t.registered:
            # An ALB completes a deregistration at once when the target has nothing in flight,
            # else when the last request finishes or the deregistration delay runs out.
            try:
                in_flight = int(row.get("scur") or 0)
            except ValueError:
                in_flight = 0
            if in_flight > 0 and now - t.changed < self.server.state.delay:
                return "draining"
            return "unused"
        status = row.get("status", "")
        if status == "no check":
            return "healthy"
        if status.startswith("UP"):
            t.observe(row, now)
            return "healthy" if t.checked else "initial"
        # DOWN (a check failed), or put in MAINT/DRAIN by someone else.
        return "unhealthy"


def member_xml(tid, port, health_port, health):
    reason, desc = TARGET_REASONS[health]
    target = "<Id>%s</Id>" % escape(tid)
    if port:
        target += "<Port>%s</Port>" % escape(port)
    out = "<member><Target>%s</Target>" % target
    if health_port:
        out += "<HealthCheckPort>%s</HealthCheckPort>" % escape(health_port)
    out += "<TargetHealth><State>%s</State>" % health
    if reason:
        out += "<Reason>%s</Reason><Description>%s</Description>" % (reason, escape(desc))
    return out + "</TargetHealth></member>"


def request_id():
    return str(uuid.uuid4())


def error_xml(code, message, sender=True):
    return (
        '<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code>'
        "<Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>"
        % (ELB_NS, "Sender" if sender else "Receiver", escape(code), escape(message), request_id())
    )


def empty_result(action):
    return (
        '<%sResponse xmlns="%s"><%sResult/><ResponseMetadata><RequestId>%s</RequestId>'
        "</ResponseMetadata></%sResponse>" % (action, ELB_NS, action, request_id(), action)
    )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    p.add_argument("--haproxy-socket", required=True, help="HAProxy's admin-level stats socket")
    p.add_argument("--backend", required=True, help="the HAProxy backend that is the group")
    p.add_argument("--target-group-arn", required=True)
    p.add_argument(
        "--deregistration-delay",
        type=float,
        default=300,
        help="seconds a deregistered target with requests in flight stays draining",
    )
    p.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin reaches end of file (the parent test process is gone)",
    )
    a = p.parse_args()
    server = Server(("127.0.0.1", a.port), Handler)
    server.state = State(
        HAProxy(a.haproxy_socket), a.backend, a.target_group_arn, a.deregistration_delay
    )
    threading.Thread(target=server.state.poll, daemon=True).start()
    serving.serve(server, a.exit_with_stdin)


if __name__ == "__main__":
    main()
