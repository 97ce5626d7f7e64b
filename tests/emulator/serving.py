"""How each stand-in here serves: it says `ready <port>` once it listens (the tests wait for
that line), and with --exit-with-stdin it exits when its stdin closes, so that it never
outlives the test process that started it (and holds its pipe)."""

import os
import sys
import threading


def serve(server, exit_with_stdin):
    """Announces `server`'s port, then serves until interrupted (or stdin closes)."""
    if exit_with_stdin:

        def watch():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            finally:
                os._exit(0)

        threading.Thread(target=watch, daemon=True).start()
    print("ready %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
