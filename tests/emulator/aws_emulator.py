#!/usr/bin/env python3
"""berth's test emulator for the AWS parts that no installable emulator covers.

One HTTP server on 127.0.0.1 that answers:

* IMDSv2, the way EC2's instance metadata service does (token PUT with a TTL, 401 without a
  valid token, IMDSv1 refused), with the paths berth reads: identity, placement, the ASG target
  lifecycle state, instance tags, user-data, spot notices, instance-profile credentials and the
  instance identity document.
* The AutoScaling actions moto does not implement (CompleteLifecycleAction,
  RecordLifecycleActionHeartbeat) plus DescribeAutoScalingInstances, in AWS's query protocol.
* ELBv2 DescribeTargetHealth, from a scripted list of states, for health transitions that moto
  (which always says "healthy") cannot play.
* Every other AutoScaling action (SetInstanceHealth, DescribeAutoScalingGroups, ...) passed on
  as it came to moto when `autoscaling_upstream` names moto's URL, so that berth sees one
  AutoScaling endpoint as on AWS; refused (InvalidAction) when it does not.
* A JSON control API under /_emulator/ for the tests: set the state, read the recorded calls.

Standard library only. Usage:

    python3 aws_emulator.py --port N [--state-file F] [--verbose] [--exit-with-stdin]

It prints "ready <port>" on stdout once it listens (--port 0 picks a free port).
"""

import argparse
import base64
import copy
import json
import re
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

import serving  # tests/emulator/serving.py, beside this script

ASG_NS = "http://autoscaling.amazonaws.com/doc/2011-01-01/"
ELB_NS = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

FAIL_MODES = (None, "imds_down", "token_401", "token_403", "imds_slow", "imds_429")
IMDS_SLOW_SECONDS = 5.0

# The reason AWS gives with each target health state (healthy has none).
TARGET_REASONS = {
    "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "unhealthy": ("Target.FailedHealthChecks", "Health checks failed"),
    "healthy": (None, None),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
    "unused": ("Target.NotRegistered", "Target is not registered to the target group"),
    "unavailable": ("Elb.InternalError", "Health checks failed due to an internal error"),
}


def default_state():
    return {
        "instance_id": "i-0123456789abcdef0",
        "instance_type": "t3.micro",
        "region": "us-east-1",
        "az": "us-east-1a",
        "account_id": "123456789012",
        "lifecycle_state": "InService",
        "tags": {"aws:autoscaling:groupName": "berth-asg"},
        "user_data": None,
        "spot_action": None,
        "iam_role": "berth-instance-role",
        "target_health": ["healthy"],
        "target_port": 8080,
        "fail": None,
        # How many IMDS requests `fail` applies to; None: all of them.
        "fail_times": None,
        # ECR's GetAuthorizationToken (with AWS_ENDPOINT_URL_ECR here): the password its token
        # carries (user AWS), and how long the token lasts: short, to see it renewed.
        "ecr_password": None,
        "ecr_token_secs": 43200,
        "asg_error": None,
        "lifecycle_schedule": [],
        # moto's URL: AutoScaling actions not answered here go there, as they came.
        "autoscaling_upstream": None,
    }


STATE_KEYS = set(default_state())


def now_utc():
    return datetime.now(timezone.utc)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class BadState(ValueError):
    pass


class Emulator:
    """All mutable state, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state = default_state()
        self.schedule = []  # [(monotonic deadline, lifecycle state)], sorted
        self.target_cursor = 0
        self.calls = []
        self.imds_log = []
        self.tokens = {}  # token -> monotonic expiry

    # ----- state -----

    def merge(self, update):
        if not isinstance(update, dict):
            raise BadState("the state must be a JSON object")
        unknown = sorted(set(update) - STATE_KEYS)
        if unknown:
            raise BadState("unknown state keys: " + ", ".join(unknown))
        if "fail" in update and update["fail"] not in FAIL_MODES:
            raise BadState("fail must be one of %r" % (FAIL_MODES,))
        if "tags" in update and not isinstance(update["tags"], dict):
            raise BadState("tags must be an object")
        if "target_health" in update:
            th = update["target_health"]
            if not isinstance(th, list) or not th:
                raise BadState("target_health must be a non-empty list")
            for entry in th:
                st = entry.get("state") if isinstance(entry, dict) else entry
                if not isinstance(st, str):
                    raise BadState("target_health entries are states or objects with a state")
        schedule = None
        if "lifecycle_schedule" in update:
            sched = update["lifecycle_schedule"]
            if not isinstance(sched, list):
                raise BadState("lifecycle_schedule must be a list of [seconds, state]")
            schedule = []
            start = time.monotonic()
            for item in sched:
                if (
                    not isinstance(item, list)
                    or len(item) != 2
                    or not isinstance(item[0], (int, float))
                    or not isinstance(item[1], str)
                ):
                    raise BadState("lifecycle_schedule entries are [seconds, state]")
                schedule.append((start + float(item[0]), item[1]))
            schedule.sort(key=lambda e: e[0])
        spot = update.get("spot_action")
        if spot is not None:
            if not isinstance(spot, dict):
                raise BadState("spot_action must be an object or null")
            # The notice's time is fixed when it is set, two minutes ahead as AWS gives it.
            update = dict(update)
            update["spot_action"] = {
                "action": spot.get("action", "terminate"),
                "time": spot.get("time") or iso(now_utc() + timedelta(minutes=2)),
            }
        with self.lock:
            for key, value in update.items():
                if key != "lifecycle_schedule":
                    self.state[key] = copy.deepcopy(value)
            if "target_health" in update:
                self.target_cursor = 0
            if schedule is not None:
                self.schedule = schedule
                self._apply_schedule()

    def _apply_schedule(self):
        now = time.monotonic()
        while self.schedule and self.schedule[0][0] <= now:
            self.state["lifecycle_state"] = self.schedule.pop(0)[1]

    def snapshot(self):
        with self.lock:
            self._apply_schedule()
            out = copy.deepcopy(self.state)
            now = time.monotonic()
            out["lifecycle_schedule"] = [[round(t - now, 3), s] for t, s in self.schedule]
            return out

    def reset(self):
        with self.lock:
            self.state = default_state()
            self.schedule = []
            self.target_cursor = 0
            self.calls = []
            self.imds_log = []

    def record(self, service, action, params):
        with self.lock:
            self.calls.append(
                {
                    "service": service,
                    "action": action,
                    "params": params,
                    "time": time.time(),
                }
            )

    def next_target_health(self):
        with self.lock:
            seq = self.state["target_health"]
            entry = seq[min(self.target_cursor, len(seq) - 1)]
            self.target_cursor += 1
            return entry

    # ----- tokens -----

    def new_token(self, ttl):
        token = "AQAEA" + base64.urlsafe_b64encode(secrets.token_bytes(36)).decode().rstrip("=")
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def token_valid(self, token):
        if not token:
            return False
        with self.lock:
            expiry = self.tokens.get(token)
            return expiry is not None and expiry > time.monotonic()

    def expire_tokens(self):
        with self.lock:
            self.tokens.clear()


EMU = Emulator()
VERBOSE = False


def request_id():
    return str(uuid.uuid4())


MAC = "0e:12:34:56:78:9a"


def metadata_tree(state):
    """The metadata under /latest/meta-data/ as nested dicts; leaves are strings."""
    tags = state.get("tags") or {}
    tree = {
        "ami-id": "ami-0abcdef1234567890",
        "hostname": "ip-10-0-0-10.ec2.internal",
        "instance-id": state["instance_id"],
        "instance-type": state["instance_type"],
        "local-hostname": "ip-10-0-0-10.ec2.internal",
        "local-ipv4": "10.0.0.10",
        "mac": MAC,
        # The VPC's ranges, one a line, as EC2 lists them for the primary interface.
        "network": {"interfaces": {"macs": {MAC: {
            "vpc-id": "vpc-0123456789abcdef0",
            "vpc-ipv4-cidr-blocks": "10.0.0.0/16",
            "local-ipv4s": "10.0.0.10",
        }}}},
        "placement": {
            "availability-zone": state["az"],
            "region": state["region"],
        },
        "tags": {"instance": {k: str(v) for k, v in tags.items()}},
    }
    if state.get("lifecycle_state") is not None:
        tree["autoscaling"] = {"target-lifecycle-state": state["lifecycle_state"]}
    spot = state.get("spot_action")
    if spot is not None:
        tree["spot"] = {
            "instance-action": json.dumps(spot),
            "termination-time": spot["time"],
        }
    role = state.get("iam_role")
    if role:
        expiration = now_utc() + timedelta(hours=6)
        creds = {
            "Code": "Success",
            "LastUpdated": iso(now_utc()),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIATESTINGIMDS00000",
            "SecretAccessKey": "testing",
            "Token": "testing-imds-session-token",
            "Expiration": iso(expiration),
        }
        tree["iam"] = {
            "info": json.dumps(
                {
                    "Code": "Success",
                    "LastUpdated": iso(now_utc()),
                    "InstanceProfileArn": "arn:aws:iam::%s:instance-profile/%s"
                    % (state["account_id"], role),
                    "InstanceProfileId": "AIPATESTINGPROFILE00",
                },
                indent=2,
            ),
            "security-credentials": {role: json.dumps(creds, indent=2)},
        }
    return tree


def identity_document(state):
    return json.dumps(
        {
            "accountId": state["account_id"],
            "architecture": "x86_64",
            "availabilityZone": state["az"],
            "imageId": "ami-0abcdef1234567890",
            "instanceId": state["instance_id"],
            "instanceType": state["instance_type"],
            "pendingTime": "2026-01-01T00:00:00Z",
            "privateIp": "10.0.0.10",
            "region": state["region"],
            "version": "2017-09-30",
        },
        indent=2,
    )


def lookup(tree, parts):
    """Walks the tree; returns (text, found). A directory answers its listing."""
    node = tree
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return None, False
        node = node[part]
    if isinstance(node, dict):
        names = [k + "/" if isinstance(v, dict) else k for k, v in node.items()]
        return "\n".join(sorted(names)), True
    return node, True


def asg_error_xml(code, message, sender=True):
    return (
        '<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code>'
        "<Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>"
        % (ASG_NS, "Sender" if sender else "Receiver", escape(code), escape(message), request_id())
    )


def elb_error_xml(code, message):
    return (
        '<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code>'
        "<Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>"
        % (ELB_NS, escape(code), escape(message), request_id())
    )


def empty_result(action, ns):
    return (
        '<%sResponse xmlns="%s"><%sResult/><ResponseMetadata><RequestId>%s</RequestId>'
        "</ResponseMetadata></%sResponse>" % (action, ns, action, request_id(), action)
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    sys_version = ""

    def log_message(self, fmt, *args):
        if VERBOSE:
            sys.stderr.write("emulator: %s %s\n" % (self.address_string(), fmt % args))

    # ----- plumbing -----

    def header(self, name):
        # http.client's message lookups are case-insensitive already; be explicit anyway.
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def read_body(self):
        length = int(self.header("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def send(self, status, body, content_type="text/plain", headers=None):
        data = body.encode() if isinstance(body, str) else body
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def pass_on(self, upstream, body):
        """The request as it came (moto reads the service from the signature's scope and
        checks nothing else of it), moto's answer as it went."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(
            upstream.rstrip("/") + self.path,
            data=body,
            method=self.command,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, data = answer.status, answer.read()
                content_type = answer.headers.get("Content-Type", "text/xml")
        except urllib.error.HTTPError as e:
            status, data = e.code, e.read()
            content_type = e.headers.get("Content-Type", "text/xml")
        self.send(status, data, content_type)

    def send_json(self, status, value):
        self.send(status, json.dumps(value, indent=1), "application/json")

    def send_xml(self, status, body):
        # The header carries the same request id as the body, as AWS's do.
        match = re.search(r"<RequestId>([^<]*)</RequestId>", body)
        rid = match.group(1) if match else request_id()
        self.send(status, body, "text/xml", {"x-amzn-RequestId": rid})

    # ----- dispatch -----

    def do_GET(self):
        self.route()

    def do_PUT(self):
        self.route()

    def do_POST(self):
        self.route()

    def do_HEAD(self):
        self.route()

    def do_DELETE(self):
        self.route()

    def route(self):
        path = urlsplit(self.path).path
        if path.startswith("/_emulator/"):
            return self.control(path)
        if path == "/latest" or path.startswith("/latest/"):
            return self.imds(path)
        target = self.header("X-Amz-Target") or ""
        if path == "/" and target.endswith(".GetAuthorizationToken"):
            return self.ecr_token()
        if path == "/" and self.command in ("POST", "GET"):
            return self.query_api()
        self.send(404, "Not Found")

    # ----- control API -----

    def control(self, path):
        body = self.read_body()
        if path == "/_emulator/state" and self.command == "GET":
            return self.send_json(200, EMU.snapshot())
        if path == "/_emulator/state" and self.command == "POST":
            try:
                update = json.loads(body or b"{}")
                EMU.merge(update)
            except (ValueError, BadState) as e:
                return self.send_json(400, {"error": str(e)})
            return self.send_json(200, EMU.snapshot())
        if path == "/_emulator/calls" and self.command == "GET":
            with EMU.lock:
                return self.send_json(200, list(EMU.calls))
        if path == "/_emulator/imds" and self.command == "GET":
            with EMU.lock:
                return self.send_json(200, list(EMU.imds_log))
        if path == "/_emulator/reset" and self.command == "POST":
            EMU.reset()
            return self.send_json(200, EMU.snapshot())
        if path == "/_emulator/expire-tokens" and self.command == "POST":
            EMU.expire_tokens()
            return self.send_json(200, {})
        self.send_json(404, {"error": "no such control endpoint: %s %s" % (self.command, path)})

    # ----- IMDS -----

    def imds(self, path):
        self.read_body()
        state = EMU.snapshot()
        fail = state.get("fail")
        if fail is not None and state.get("fail_times") is not None:
            with EMU.lock:
                left = EMU.state["fail_times"]
                if left > 0:
                    EMU.state["fail_times"] = left - 1
                else:
                    fail = None
        token = self.header(TOKEN_HEADER)
        entry = {
            "method": self.command,
            "path": path,
            "token": token is not None,
            "time": time.time(),
        }
        status = self.imds_answer(path, state, fail, token)
        entry["status"] = status
        with EMU.lock:
            EMU.imds_log.append(entry)

    def imds_answer(self, path, state, fail, token):
        if fail == "imds_down":
            # Like an instance whose metadata service does not answer: drop the connection.
            self.close_connection = True
            return 0
        if fail == "imds_slow":
            time.sleep(IMDS_SLOW_SECONDS)
        if fail == "imds_429":
            # Throttled, as IMDS answers a client over its request rate.
            self.send(429, "Too Many Requests")
            return 429
        if path == "/latest/api/token":
            if self.command != "PUT":
                self.send(405, "Method Not Allowed", headers={"Allow": "PUT"})
                return 405
            if self.header("X-Forwarded-For") is not None:
                self.send(403, "Forbidden")
                return 403
            if fail == "token_403":
                self.send(403, "Forbidden")
                return 403
            raw = self.header(TOKEN_TTL_HEADER)
            try:
                ttl = int(raw)
            except (TypeError, ValueError):
                ttl = 0
            if not 1 <= ttl <= 21600:
                self.send(400, "Bad Request")
                return 400
            self.send(200, EMU.new_token(ttl), headers={TOKEN_TTL_HEADER: str(ttl)})
            return 200
        if self.command not in ("GET", "HEAD"):
            self.send(405, "Method Not Allowed", headers={"Allow": "GET"})
            return 405
        # IMDSv2 only: no valid token, no answer (IMDSv1 requests carry none).
        if fail == "token_401" or not EMU.token_valid(token):
            self.send(401, "Unauthorized")
            return 401
        text, found = self.metadata(path, state)
        if not found:
            self.send(404, "Not Found")
            return 404
        self.send(200, text)
        return 200

    def metadata(self, path, state):
        rest = path[len("/latest") :].strip("/")
        if rest == "":
            return "dynamic\nmeta-data\nuser-data", True
        if rest == "user-data":
            ud = state.get("user_data")
            return (ud, True) if ud is not None else (None, False)
        if rest.startswith("dynamic"):
            tree = {"instance-identity": {"document": identity_document(state)}}
            parts = [p for p in rest.split("/")[1:] if p]
            return lookup(tree, parts)
        if rest == "meta-data" or rest.startswith("meta-data/"):
            parts = [p for p in rest.split("/")[1:] if p]
            tags_prefix = ["tags", "instance"]
            if parts[:2] == tags_prefix and len(parts) == 2:
                # tags/instance lists the keys, which are leaves (no trailing slash).
                return "\n".join(sorted((state.get("tags") or {}).keys())), True
            return lookup(metadata_tree(state), parts)
        return None, False

    # ----- AWS query protocol (AutoScaling, ELBv2) -----

    def ecr_token(self):
        """ECR's GetAuthorizationToken (JSON protocol): a token for user AWS that lasts
        `ecr_token_secs`, each call recorded."""
        self.read_body()
        state = EMU.snapshot()
        EMU.record("ecr", "GetAuthorizationToken", {})
        password = state.get("ecr_password") or "emulator-token"
        token = base64.b64encode(("AWS:" + password).encode()).decode()
        answer = {
            "authorizationData": [
                {
                    "authorizationToken": token,
                    "expiresAt": time.time() + float(state.get("ecr_token_secs") or 43200),
                    "proxyEndpoint": "https://%s.dkr.ecr.%s.amazonaws.com"
                    % (state["account_id"], state["region"]),
                }
            ]
        }
        self.send(200, json.dumps(answer), "application/x-amz-json-1.1")

    def query_api(self):
        body = self.read_body()
        params = {}
        query = urlsplit(self.path).query
        for source in (query, body.decode("utf-8", "replace")):
            for key, values in parse_qs(source, keep_blank_values=True).items():
                params[key] = values[-1]
        action = params.get("Action")
        handler = {
            "CompleteLifecycleAction": self.complete_lifecycle_action,
            "RecordLifecycleActionHeartbeat": self.record_heartbeat,
            "DescribeAutoScalingInstances": self.describe_asg_instances,
            "DescribeTargetHealth": self.describe_target_health,
        }.get(action)
        recorded = {k: v for k, v in params.items() if k not in ("Action", "Version")}
        upstream = EMU.snapshot().get("autoscaling_upstream")
        if handler is None and upstream and params.get("Version") != "2015-12-01":
            EMU.record("autoscaling", action, recorded)
            return self.pass_on(upstream, body)
        if handler is None:
            EMU.record("unknown", action, recorded)
            ns = ELB_NS if params.get("Version") == "2015-12-01" else ASG_NS
            return self.send_xml(
                400,
                '<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>InvalidAction</Code>'
                "<Message>The action %s is not valid for this web service.</Message></Error>"
                "<RequestId>%s</RequestId></ErrorResponse>"
                % (ns, escape(str(action)), request_id()),
            )
        service = "elasticloadbalancing" if action == "DescribeTargetHealth" else "autoscaling"
        EMU.record(service, action, recorded)
        handler(params)

    def asg_failure(self):
        err = EMU.snapshot().get("asg_error")
        if not err:
            return False
        if isinstance(err, str):
            err = {"code": err}
        status = int(err.get("status", 400))
        self.send_xml(
            status,
            asg_error_xml(
                err.get("code", "ValidationError"),
                err.get("message", "No active Lifecycle Action found"),
                sender=status < 500,
            ),
        )
        return True

    def lifecycle_common(self, params):
        missing = [
            k
            for k in ("AutoScalingGroupName", "LifecycleHookName")
            if not params.get(k)
        ]
        if missing:
            self.send_xml(
                400,
                asg_error_xml("ValidationError", "Missing required parameter " + missing[0]),
            )
            return False
        if not params.get("InstanceId") and not params.get("LifecycleActionToken"):
            self.send_xml(
                400,
                asg_error_xml(
                    "ValidationError",
                    "Either InstanceId or LifecycleActionToken must be given",
                ),
            )
            return False
        return not self.asg_failure()

    def complete_lifecycle_action(self, params):
        if not self.lifecycle_common(params):
            return
        result = params.get("LifecycleActionResult")
        if result not in ("CONTINUE", "ABANDON"):
            return self.send_xml(
                400,
                asg_error_xml(
                    "ValidationError",
                    "LifecycleActionResult must be CONTINUE or ABANDON, not %r" % (result,),
                ),
            )
        self.send_xml(200, empty_result("CompleteLifecycleAction", ASG_NS))

    def record_heartbeat(self, params):
        if not self.lifecycle_common(params):
            return
        self.send_xml(200, empty_result("RecordLifecycleActionHeartbeat", ASG_NS))

    def describe_asg_instances(self, params):
        state = EMU.snapshot()
        wanted = [v for k, v in sorted(params.items()) if k.startswith("InstanceIds.member.")]
        members = ""
        group = (state.get("tags") or {}).get("aws:autoscaling:groupName")
        if group and (not wanted or state["instance_id"] in wanted):
            members = (
                "<member><InstanceId>%s</InstanceId><InstanceType>%s</InstanceType>"
                "<AutoScalingGroupName>%s</AutoScalingGroupName>"
                "<AvailabilityZone>%s</AvailabilityZone><LifecycleState>%s</LifecycleState>"
                "<HealthStatus>HEALTHY</HealthStatus>"
                "<ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>"
                % tuple(
                    escape(str(x))
                    for x in (
                        state["instance_id"],
                        state["instance_type"],
                        group,
                        state["az"],
                        state.get("lifecycle_state") or "InService",
                    )
                )
            )
        self.send_xml(
            200,
            '<DescribeAutoScalingInstancesResponse xmlns="%s"><DescribeAutoScalingInstancesResult>'
            "<AutoScalingInstances>%s</AutoScalingInstances></DescribeAutoScalingInstancesResult>"
            "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
            "</DescribeAutoScalingInstancesResponse>" % (ASG_NS, members, request_id()),
        )

    def describe_target_health(self, params):
        if not params.get("TargetGroupArn"):
            return self.send_xml(
                400, elb_error_xml("ValidationError", "A target group ARN must be specified")
            )
        state = EMU.snapshot()
        targets = []
        i = 1
        while "Targets.member.%d.Id" % i in params:
            targets.append(
                (
                    params["Targets.member.%d.Id" % i],
                    params.get("Targets.member.%d.Port" % i) or str(state["target_port"]),
                )
            )
            i += 1
        if not targets:
            targets = [(state["instance_id"], str(state["target_port"]))]
        entry = EMU.next_target_health()
        if isinstance(entry, dict):
            st = entry["state"]
            reason, desc = TARGET_REASONS.get(st, (None, None))
            reason = entry.get("reason", reason)
            desc = entry.get("description", desc)
        else:
            st = entry
            reason, desc = TARGET_REASONS.get(st, (None, None))
        health = "<State>%s</State>" % escape(st)
        if reason:
            health += "<Reason>%s</Reason>" % escape(reason)
        if desc:
            health += "<Description>%s</Description>" % escape(desc)
        members = "".join(
            "<member><Target><Id>%s</Id><Port>%s</Port></Target>"
            "<HealthCheckPort>%s</HealthCheckPort><TargetHealth>%s</TargetHealth></member>"
            % (escape(tid), escape(port), escape(port), health)
            for tid, port in targets
        )
        self.send_xml(
            200,
            '<DescribeTargetHealthResponse xmlns="%s"><DescribeTargetHealthResult>'
            "<TargetHealthDescriptions>%s</TargetHealthDescriptions></DescribeTargetHealthResult>"
            "<ResponseMetadata><RequestId>%s</RequestId></ResponseMetadata>"
            "</DescribeTargetHealthResponse>" % (ELB_NS, members, request_id()),
        )


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    global VERBOSE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--state-file", help="JSON object merged into the initial state")
    parser.add_argument("--verbose", action="store_true", help="log requests to stderr")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin reaches end of file (the parent test process is gone)",
    )
    args = parser.parse_args()
    VERBOSE = args.verbose
    if args.state_file:
        with open(args.state_file, encoding="utf-8") as f:
            EMU.merge(json.load(f))
    server = Server((args.host, args.port), Handler)
    serving.serve(server, args.exit_with_stdin)


if __name__ == "__main__":
    main()
