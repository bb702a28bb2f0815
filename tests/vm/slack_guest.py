"""Runs tests/slack_standin.py in the guest (copied beside it into the job share):
    python3 slack_guest.py PORT PATH SECONDS COUNT OUTFILE
listens on 127.0.0.1:PORT with the webhook at PATH until COUNT posts were accepted and 5 s more
have passed (a duplicate would come then), or SECONDS; writes what it received to OUTFILE (JSON).

The port and path are fixed beforehand because the daemon is configured with the webhook before
the stand-in exists (the reboot and upgrade scenarios: delivery pending while nothing listens).
"""
import json
import sys
import time
from http.server import ThreadingHTTPServer

import slack_standin

port, path, seconds, count, outfile = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]


class FixedPortServer(ThreadingHTTPServer):
    # SlackStandin.start() binds ("127.0.0.1", 0); here the port is the configured one.
    def __init__(self, address, handler):
        super().__init__((address[0], port), handler)


slack_standin.ThreadingHTTPServer = FixedPortServer
standin = slack_standin.SlackStandin()
standin.path = path
standin.start()
deadline = time.monotonic() + seconds
enough_at = None
while time.monotonic() < deadline:
    if enough_at is None and len(standin.accepted()) >= count:
        enough_at = time.monotonic()
    if enough_at is not None and time.monotonic() - enough_at > 5:
        break
    time.sleep(0.2)
standin.stop()
with open(outfile, "w") as f:
    json.dump([{"path": r.path, "status": r.status, "answer": r.answer, "payload": r.payload,
                "body": r.body.decode("utf-8", "replace")} for r in standin.received], f)
print(f"received {len(standin.received)}, accepted {len(standin.accepted())}")
