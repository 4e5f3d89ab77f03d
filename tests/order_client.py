"""A job process for tests/test_spool_order.py: runs a few calls and prints what happened.

    python tests/order_client.py DB_PATH ACTION [ARGS...]

With ORDER_GO=FILE in the environment, the calls wait (at most 120 s) until FILE exists, so
that a test can start the process ahead and let it send at a chosen moment.

Actions (settings come from the environment, e.g. BALSAMDB_REQUIRE_SERVER=1):
    fill N            create N jobs (no working directories)
    create ID         create job ID
    state ID STATE    move job ID to STATE
    modify ID VALUE   set job ID's data to {"result": VALUE}

Prints one JSON line: {"route": where the last call went, "seconds": how long the calls took,
"spooled": how many calls were spooled, "holding": the holding replies received, "left": the
most spooled writes one of them said were still to apply first, "fresh_sockets": how many times
a request was resent on a fresh socket}.  Exits 1 with the error on stderr if a call raised.
"""

import json
import logging
import os
import re
import sys
import time

import balsamdb


class Seen(logging.Handler):
    """Counts what the client logs: holding replies, and resends on a fresh socket."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.holding, self.left, self.fresh = 0, 0, 0

    def emit(self, record):
        text = record.getMessage()
        found = re.search(r"drains the spool first \((\d+) left\)", text)
        if found:
            self.holding += 1
            self.left = max(self.left, int(found.group(1)))
        elif "retrying" in text:
            self.fresh += 1


def main():
    path, action, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    seen = Seen()
    client_log = logging.getLogger("balsamdb.client")
    client_log.addHandler(seen)
    client_log.setLevel(logging.DEBUG)
    db = balsamdb.connect(path)
    go = os.environ.get("ORDER_GO")
    if go:
        deadline = time.monotonic() + 120
        while not os.path.exists(go):
            if time.monotonic() > deadline:
                sys.exit("order_client: the go file never appeared")
            time.sleep(0.002)  # wait-ok: poll interval of the go-file wait (120 s deadline)
    started = time.monotonic()
    spooled = 0
    if action == "fill":
        for i in range(int(args[0])):
            spooled += bool(getattr(db.jobs.create(name=f"fill-{i}", make_workdir=False), "spooled", False))
    else:
        if action == "create":
            result = db.call("job_create", job={"id": args[0], "name": "j"})
        elif action == "state":
            result = db.call("job_update_state", job_id=args[0], state=args[1])
        elif action == "modify":
            result = db.call("job_modify", job_id=args[0], changes={"data": {"result": args[1]}})
        else:
            sys.exit(f"unknown action {action!r}")
        spooled += bool(getattr(result, "spooled", False))
    print(json.dumps({"route": db.last_route, "seconds": time.monotonic() - started, "spooled": spooled,
                      "holding": seen.holding, "left": seen.left, "fresh_sockets": seen.fresh}))


if __name__ == "__main__":
    main()
