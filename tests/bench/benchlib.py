"""Helpers the benchmark scripts share."""

import ctypes
import http.client
import os
import signal
import socket
import threading
import time


class BenchError(Exception):
    pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent():
    """In the child: SIGKILL when this script dies, whatever the way (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


class Load:
    """`clients` keep-alive connections sending GET `path` until stopped, `pause` seconds apart
    per client. Each request is
    recorded as (started, ended, ok, what); a failed connection is opened again (the failure
    recorded), and so is one the server closed after its answer (not a failure)."""

    def __init__(self, port, path="/version", clients=4, pause=0.002):
        self.port = port
        self.path = path
        self.pause = pause
        self.samples = []  # list.append is atomic: the threads share it
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def client(self):
        conn = None
        while not self.stopping.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                r = conn.getresponse()
                body = r.read()
                ok = 200 <= r.status < 300
                what = body.decode(errors="replace").strip() if ok else f"{r.status} {body[:80]!r}"
                if r.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                ok, what = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = None
            self.samples.append((started, time.monotonic(), ok, what))
            time.sleep(self.pause)
        if conn is not None:
            conn.close()

    def count(self):
        return len(self.samples)

    def wait_for(self, n, timeout=30):
        """Until n more requests have ended."""
        target = self.count() + n
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline:
                raise BenchError(f"the load made {self.count()} of {target} requests in {timeout} s")
            time.sleep(0.01)

    def stop(self, wait=25):
        self.stopping.set()
        deadline = time.monotonic() + wait
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return list(self.samples)


def rustc_running():
    """How many rustc processes run now (a build would move every figure)."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == "rustc":
                        n += 1
            except OSError:
                pass
    return n


def wait_quiet(quiet_secs):
    """Waits (up to quiet_secs, looking every 10 s) while rustc runs; returns a note for the
    header when it gave up waiting, else None."""
    deadline = time.monotonic() + quiet_secs
    announced = False
    while True:
        n = rustc_running()
        if not n:
            return None
        if time.monotonic() >= deadline:
            return f"{n} rustc process(es) were running: the figures may be disturbed"
        if not announced:
            print(f"  waiting for a build to finish ({n} rustc running; up to {quiet_secs} s)", flush=True)
            announced = True
        time.sleep(10)


def conclude(failures):
    """The exit status once the figures are printed: 0, or 1 after naming what failed to run."""
    if not failures:
        return 0
    print(f"\n{len(failures)} failure(s), figures above are incomplete:")
    for f in failures:
        print(f"  {f}")
    return 1
