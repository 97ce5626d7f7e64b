#!/usr/bin/env python3
"""A stand-in for SSM Run Command, for berth's fleet tests.

moto accepts SendCommand but runs nothing, so a rollout could never see an instance's verdict.
This server is the SSM endpoint the rollout talks to (through AWS_ENDPOINT_URL_SSM): it answers
SendCommand, ListCommands, ListCommandInvocations and GetCommandInvocation as SSM does, and
passes every other SSM call (the release parameter, the rollout's lock) to moto unchanged.

A command runs the named document's aws:runShellScript lines, rendered as SSM renders them
({{ name }} replaced by the parameter's value or its default), with `sh` on each named instance
of this machine: an instance is a berth binary, its config and its environment (its AWS
endpoints), and `/usr/bin/berth` in the script runs that binary with that config. MaxConcurrency
and MaxErrors are applied as SSM applies them: at most N invocations at once, and once more than
MaxErrors have failed no new invocation starts (those read Cancelled).

Output as amazon-ssm-agent reports it (agent/framework/processor/executer/iohandler): stdout and
stderr kept apart; a non-zero exit appends "failed to run commands: exit status N" to stderr; a
plugin's Output in ListCommandInvocations is stdout, "\n----------ERROR-------\n" and stderr
cut to 2,500 characters by the agent's TruncateOutput (each kept from its start); and
GetCommandInvocation gives the first 24,000 characters of stdout and 8,000 of stderr.
ListCommandInvocations answers at most --page-size invocations (SSM: 50) with a NextToken.

Standard library, and PyYAML for the document (moto brings it). Usage:

    python3 run_command.py --port 0 --moto URL --documents NAME=PATH ... [--page-size N] [--exit-with-stdin]

It prints "ready <port>" once it listens. Control API (JSON) under /_run_command/:
POST instances {"i-...": {"berth": PATH, "config": PATH, "env": {...}}} adds instances;
GET calls lists the SendCommand requests received.
"""

import argparse
import json
import os
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import serving  # tests/emulator/serving.py, beside this script

import yaml

TERMINAL = ("Success", "Failed", "TimedOut", "Cancelled")

# amazon-ssm-agent's limits and markers (iohandler.go, appconfig/constants.go).
MAX_PLUGIN_OUTPUT = 2500
MAX_STDOUT = 24000
MAX_STDERR = 8000
ERR_TITLE = "\n----------ERROR-------\n"
TRUNCATE_OUT = "\n---Output truncated---"
TRUNCATE_ERR = "\n---Error truncated----"


def truncate_output(stdout, stderr, capacity=MAX_PLUGIN_OUTPUT):
    """The agent's TruncateOutput: stdout, the error title and stderr in `capacity`."""
    title = ERR_TITLE if stderr else ""
    available = capacity - len(title)
    if len(stdout) + len(stderr) < available:
        return stdout + title + stderr
    if len(stdout) > available // 2 and len(stderr) > available // 2:
        size = available - len(TRUNCATE_ERR) - len(TRUNCATE_OUT)
        return stdout[: size // 2] + TRUNCATE_OUT + title + stderr[: size // 2] + TRUNCATE_ERR
    if len(stdout) <= available // 2:
        size = available - len(TRUNCATE_ERR)
        return stdout + title + stderr[: size - len(stdout)] + TRUNCATE_ERR
    size = available - len(TRUNCATE_OUT)
    return stdout[: size - len(stderr)] + TRUNCATE_OUT + title + stderr


class State:
    def __init__(self, moto, documents, page_size=50):
        self.page_size = page_size
        self.lock = threading.Lock()
        self.moto = moto
        self.documents = documents
        self.instances = {}
        self.commands = {}
        self.calls = []
        self.wrappers = tempfile.mkdtemp(prefix="berth-run-command-")

    def add_instances(self, instances):
        with self.lock:
            for iid, spec in instances.items():
                # /usr/bin/berth in the document becomes this instance's berth and config.
                path = os.path.join(self.wrappers, iid)
                with open(path, "w") as f:
                    f.write(
                        "#!/bin/sh\nexec %s \"$@\" --config %s\n"
                        % (sh_quote(spec["berth"]), sh_quote(spec["config"]))
                    )
                os.chmod(path, stat.S_IRWXU)
                self.instances[iid] = dict(spec, wrapper=path)


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def limit_of(value, total):
    """MaxConcurrency / MaxErrors: a number, or a percentage of the targets."""
    value = str(value or "")
    if value.endswith("%"):
        return max(int(total * int(value[:-1]) / 100), 0 if value == "0%" else 1)
    return int(value) if value else total


def render(document, parameters):
    with open(document) as f:
        doc = yaml.safe_load(f)
    values = {k: str(v.get("default", "")) for k, v in doc.get("parameters", {}).items()}
    for k, v in parameters.items():
        values[k] = v[0] if isinstance(v, list) else str(v)
    lines = []
    for step in doc["mainSteps"]:
        for line in step["inputs"]["runCommand"]:
            for k, v in values.items():
                line = line.replace("{{ %s }}" % k, v)
            lines.append(line)
    return "\n".join(lines) + "\n"


def run_command(state, command):
    """Runs `command`'s invocations, MaxConcurrency at once, stopping after MaxErrors."""
    ids = command["InstanceIds"]
    concurrency = max(limit_of(command["MaxConcurrency"], len(ids)), 1)
    max_errors = limit_of(command["MaxErrors"], len(ids))
    script = render(state.documents[command["DocumentName"]], command["Parameters"])
    errors = 0
    pending = list(ids)
    running = []

    def invoke(iid):
        inv = command["invocations"][iid]
        spec = state.instances.get(iid)
        if spec is None:
            # SSM would not deliver it: Undeliverable, with nothing run.
            inv.update(Status="Failed", Stdout="", Stderr="no such instance on this machine", ResponseCode=-1)
            return
        inv["Status"] = "InProgress"
        env = dict(os.environ)
        env.update(spec.get("env", {}))
        body = script.replace("/usr/bin/berth", spec["wrapper"])
        try:
            done = subprocess.run(
                ["sh", "-c", body],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=command["TimeoutSeconds"],
            )
            code = done.returncode
            out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
            status = "Success" if code == 0 else "Failed"
        except subprocess.TimeoutExpired as e:
            code, status = -1, "TimedOut"
            out = (e.stdout or b"").decode(errors="replace")
            err = (e.stderr or b"").decode(errors="replace")
        if code != 0:
            # The runscript plugin's MarkAsFailed: appended as a line of its own.
            err = (err + "\n" if err else "") + "failed to run commands: exit status %d" % code
        inv.update(Status=status, Stdout=out, Stderr=err, ResponseCode=code)

    while pending or running:
        running = [t for t in running if t.is_alive()]
        with state.lock:
            errors = sum(
                1 for i in command["invocations"].values() if i["Status"] in ("Failed", "TimedOut")
            )
        if errors > max_errors:
            for iid in pending:
                command["invocations"][iid]["Status"] = "Cancelled"
            pending = []
        while pending and len(running) < concurrency:
            t = threading.Thread(target=invoke, args=(pending.pop(0),), daemon=True)
            t.start()
            running.append(t)
        time.sleep(0.05)
    statuses = [i["Status"] for i in command["invocations"].values()]
    command["Status"] = "Success" if all(s == "Success" for s in statuses) else "Failed"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body, content_type="application/x-amz-json-1.1"):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        state = self.server.state
        if self.path == "/_run_command/calls":
            with state.lock:
                return self.send(200, state.calls, "application/json")
        self.send(404, {"message": "not found"}, "application/json")

    def do_POST(self):
        state = self.server.state
        raw = self.body()
        if self.path == "/_run_command/instances":
            state.add_instances(json.loads(raw))
            return self.send(200, {"ok": True}, "application/json")
        target = self.headers.get("X-Amz-Target", "")
        action = target.rsplit(".", 1)[-1]
        handler = {
            "SendCommand": self.send_command,
            "ListCommands": self.list_commands,
            "ListCommandInvocations": self.list_invocations,
            "GetCommandInvocation": self.get_invocation,
        }.get(action)
        if handler is None:
            return self.forward(raw)
        handler(json.loads(raw or b"{}"))

    def forward(self, raw):
        """Any other SSM call goes to moto as it came."""
        state = self.server.state
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() not in ("host", "content-length", "connection")
        }
        req = urllib.request.Request(state.moto + self.path, data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, body, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        self.send(status, body, ctype or "application/x-amz-json-1.1")

    def error(self, code, message):
        self.send(400, {"__type": code, "message": message})

    def send_command(self, req):
        state = self.server.state
        name = req.get("DocumentName")
        if name not in state.documents:
            return self.error("InvalidDocument", "document %s does not exist" % name)
        ids = req.get("InstanceIds") or []
        if not ids:
            return self.error("InvalidInstanceId", "no instance ids (this stand-in takes InstanceIds only)")
        now = time.time()
        command = {
            "CommandId": str(uuid.uuid4()),
            "DocumentName": name,
            "Comment": req.get("Comment", ""),
            "Parameters": req.get("Parameters", {}),
            "InstanceIds": ids,
            "MaxConcurrency": req.get("MaxConcurrency", "50"),
            "MaxErrors": req.get("MaxErrors", "0"),
            "TimeoutSeconds": int(req.get("TimeoutSeconds", 3600)),
            "RequestedDateTime": now,
            "Status": "InProgress",
            "invocations": {
                iid: {"InstanceId": iid, "Status": "Pending", "Stdout": "", "Stderr": "", "ResponseCode": -1}
                for iid in ids
            },
        }
        with state.lock:
            state.commands[command["CommandId"]] = command
            state.calls.append(
                {k: command[k] for k in ("CommandId", "DocumentName", "Parameters", "InstanceIds",
                                         "MaxConcurrency", "MaxErrors")}
            )
        threading.Thread(target=run_command, args=(state, command), daemon=True).start()
        self.send(200, {"Command": public(command)})

    def command_of(self, req):
        return self.server.state.commands.get(req.get("CommandId"))

    def list_commands(self, req):
        c = self.command_of(req)
        if c is None:
            return self.error("InvalidCommandId", "no such command")
        self.send(200, {"Commands": [public(c)]})

    def list_invocations(self, req):
        c = self.command_of(req)
        if c is None:
            return self.error("InvalidCommandId", "no such command")
        details = req.get("Details", False)
        page = min(int(req.get("MaxResults") or 50), self.server.state.page_size)
        start = int(req.get("NextToken") or 0)
        everyone = list(c["invocations"].items())
        out = []
        for iid, inv in everyone[start : start + page]:
            entry = {
                "CommandId": c["CommandId"],
                "InstanceId": iid,
                "DocumentName": c["DocumentName"],
                "RequestedDateTime": c["RequestedDateTime"],
                "Status": inv["Status"],
                "StatusDetails": inv["Status"],
            }
            if details:
                entry["CommandPlugins"] = [
                    {
                        "Name": "berth",
                        "Status": inv["Status"],
                        "ResponseCode": inv["ResponseCode"],
                        "Output": truncate_output(inv.get("Stdout", ""), inv.get("Stderr", "")),
                    }
                ]
            out.append(entry)
        answer = {"CommandInvocations": out}
        if start + page < len(everyone):
            answer["NextToken"] = str(start + page)
        self.send(200, answer)

    def get_invocation(self, req):
        c = self.command_of(req)
        inv = c and c["invocations"].get(req.get("InstanceId"))
        if not inv:
            return self.error("InvocationDoesNotExist", "no such invocation")
        self.send(
            200,
            {
                "CommandId": c["CommandId"],
                "InstanceId": inv["InstanceId"],
                "Status": inv["Status"],
                "StatusDetails": inv["Status"],
                "ResponseCode": inv["ResponseCode"],
                "StandardOutputContent": inv.get("Stdout", "")[:MAX_STDOUT],
                "StandardErrorContent": inv.get("Stderr", "")[:MAX_STDERR],
            },
        )


def public(c):
    counts = [i["Status"] for i in c["invocations"].values()]
    return {
        "CommandId": c["CommandId"],
        "DocumentName": c["DocumentName"],
        "Comment": c["Comment"],
        "Parameters": c["Parameters"],
        "InstanceIds": c["InstanceIds"],
        "MaxConcurrency": c["MaxConcurrency"],
        "MaxErrors": c["MaxErrors"],
        "TimeoutSeconds": c["TimeoutSeconds"],
        "RequestedDateTime": c["RequestedDateTime"],
        "Status": c["Status"],
        "StatusDetails": c["Status"],
        "TargetCount": len(counts),
        "CompletedCount": sum(1 for s in counts if s in TERMINAL),
        "ErrorCount": sum(1 for s in counts if s in ("Failed", "TimedOut")),
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--moto", required=True)
    p.add_argument("--documents", nargs="*", default=[], help="NAME=PATH")
    p.add_argument("--exit-with-stdin", action="store_true")
    p.add_argument("--page-size", type=int, default=50, help="ListCommandInvocations' page (SSM: 50)")
    a = p.parse_args()
    documents = dict(d.split("=", 1) for d in a.documents)
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    server.daemon_threads = True
    server.state = State(a.moto.rstrip("/"), documents, a.page_size)
    serving.serve(server, a.exit_with_stdin)


if __name__ == "__main__":
    main()
