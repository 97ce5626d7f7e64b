"""moto in server mode on a 127.0.0.1 port of its own, for the tests and the box.

Prints `ready <port>` once it serves, logs only warnings unless BERTH_TEST_VERBOSE is set, and
exits when its stdin (a pipe from whoever started it) closes, so that it never outlives them.
"""
import logging
import os
import sys

from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(
    logging.INFO if os.environ.get("BERTH_TEST_VERBOSE") else logging.WARNING
)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("ready %d" % server.get_host_and_port()[1], flush=True)
while sys.stdin.buffer.read(4096):
    pass
os._exit(0)
