"""Long-lived traffic for the proxy's restart test (box_test.py): a backend that streams
server-sent events and echoes WebSocket messages, and the clients that hold them open across
`systemctl restart berth-proxy`, each recording what it got and when.

The WebSocket framing is RFC 6455's, by hand: the standard library has none, and the test only
needs short text frames (client frames masked, server frames not)."""

import base64
import hashlib
import os
import socket
import socketserver
import struct
import threading
import time

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload, masked):
    """One final text frame carrying `payload` (under 126 bytes)."""
    assert len(payload) < 126
    head = bytes([0x81, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError(f"the connection ended {n - len(data)} bytes short of a frame")
    return data


def skip_head(f, expect):
    """Reads a response head from the file `f`; fails unless its status line has `expect`."""
    status = f.readline()
    if expect not in status:
        raise RuntimeError(f"status {status!r}")
    while f.readline() not in (b"\r\n", b""):
        pass


def ws_read(f):
    """(opcode, payload) of the next frame from the file `f`."""
    b0, b1 = read_exact(f, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(f, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(f, 8))[0]
    mask = read_exact(f, 4) if b1 & 0x80 else None
    data = read_exact(f, n)
    if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return b0 & 0x0F, data


class Backend(socketserver.ThreadingTCPServer):
    """HTTP/1.1 on 127.0.0.1: `GET /events` streams `events` SSE events `every` seconds apart
    (chunked, then the last chunk), `GET /ws` is a WebSocket that echoes each text frame with
    "echo " in front, `GET /poll` answers "polled" after `poll` seconds (a long poll), anything
    else is a keep-alive 200 "ok"."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, events=12, every=0.25, poll=1.5):
        self.events = events
        self.every = every
        self.poll = poll
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        while True:
            line = self.rfile.readline()
            if not line:
                return
            target = line.split()[1].decode() if len(line.split()) > 1 else "/"
            headers = {}
            while True:
                h = self.rfile.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            if target == "/events":
                self.events()
                continue
            if target == "/ws":
                return self.websocket(headers)
            if target == "/poll":
                # A long poll: nothing, then the answer.
                time.sleep(self.server.poll)
                self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\npolled\n")
                continue
            self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")

    def events(self):
        self.wfile.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
        self.wfile.flush()
        for i in range(self.server.events):
            data = f"id: {i}\ndata: event {i}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            time.sleep(self.server.every)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def websocket(self, headers):
        key = headers["sec-websocket-key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        self.wfile.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                         b"connection: upgrade\r\nsec-websocket-accept: " + accept + b"\r\n\r\n")
        self.wfile.flush()
        while True:
            try:
                op, data = ws_read(self.rfile)
            except (EOFError, OSError):
                return
            if op == 8:  # close
                return
            self.wfile.write(ws_frame(b"echo " + data, masked=False))
            self.wfile.flush()


class Events(threading.Thread):
    """One SSE stream through the proxy, read to its end: the events and when each came, and
    whether it ended with the last chunk."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.events = []  # (monotonic time, event text)
        self.clean_end = False
        self.error = None

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            s.sendall(b"GET /events HTTP/1.1\r\nhost: app\r\naccept: text/event-stream\r\n\r\n")
            f = s.makefile("rb")
            skip_head(f, b" 200 ")
            while True:
                size = int(f.readline().split(b";")[0], 16)
                if size == 0:
                    self.clean_end = f.readline() == b"\r\n"
                    break
                data = read_exact(f, size)
                f.readline()
                self.events.append((time.monotonic(), data.decode()))
            s.close()
        except Exception as e:  # recorded, asserted by the test
            self.error = f"{type(e).__name__}: {e}"


class Socket(threading.Thread):
    """One WebSocket through the proxy: a message every `every` seconds until stopped, each
    echo checked. Records (sent time, ok) per message on the one connection."""

    def __init__(self, port, every=0.2):
        super().__init__(daemon=True)
        self.port = port
        self.every = every
        self.samples = []
        self.error = None
        self.stopping = threading.Event()

    def run(self):
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            key = base64.b64encode(os.urandom(16))
            s.sendall(b"GET /ws HTTP/1.1\r\nhost: app\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                      b"sec-websocket-version: 13\r\nsec-websocket-key: " + key + b"\r\n\r\n")
            f = s.makefile("rb")
            skip_head(f, b" 101 ")
            n = 0
            while not self.stopping.is_set():
                text = f"message {n}".encode()
                sent = time.monotonic()
                s.sendall(ws_frame(text, masked=True))
                _, echo = ws_read(f)
                self.samples.append((sent, echo == b"echo " + text))
                n += 1
                self.stopping.wait(self.every)
            s.close()
        except Exception as e:  # recorded, asserted by the test
            self.error = f"{type(e).__name__}: {e}"


class Probe(threading.Thread):
    """A new connection every `every` seconds, each GET / on it: how long each took to be
    answered (connect and response), and which failed."""

    def __init__(self, port, every=0.05):
        super().__init__(daemon=True)
        self.port = port
        self.every = every
        self.samples = []  # (started, seconds, ok, what)
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                s.sendall(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                answer = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                s.close()
                ok, what = answer.startswith(b"HTTP/1.1 200"), answer[:40]
            except OSError as e:
                ok, what = False, f"{type(e).__name__}: {e}"
            self.samples.append((started, time.monotonic() - started, ok, what))
            self.stopping.wait(self.every)


class Polls(threading.Thread):
    """Long polls one after another on one keep-alive connection until stopped: (started,
    ended, ok) of each."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port = port
        self.samples = []
        self.error = None
        self.stopping = threading.Event()

    def run(self):
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                conn.request("GET", "/poll")
                r = conn.getresponse()
                body = r.read()
                self.samples.append((started, time.monotonic(), r.status == 200 and body == b"polled\n"))
                if r.will_close:
                    raise RuntimeError("the proxy closed the polling connection")
        except Exception as e:  # recorded, asserted by the test
            self.error = f"{type(e).__name__}: {e}"
        conn.close()
