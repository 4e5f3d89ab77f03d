"""One of two job processes that hand a record over causally while no server runs (every write
is spooled): ``python handover_client.py PATH ROLE COUNT WORKDIR``.  Saves number i (1..COUNT)
are this client's when ``i % 2 == ROLE``; before each, it waits until ``WORKDIR/done-(i-1)``
exists (the other's call for save i-1 has returned), then saves ``{"label": "r", "v": i}`` and
makes ``WORKDIR/done-i``.  Its clock may be skewed by the environment (see test_spool_clocks.py)."""

import json
import sys
import time
from pathlib import Path

import balsamdb

DEADLINE = 120.0


def main(path, role, count, workdir):
    workdir = Path(workdir)
    spooled = 0
    with balsamdb.connect(path) as db:
        for i in range(1, count + 1):
            if i % 2 != role:
                continue
            if i > 1:
                end = time.monotonic() + DEADLINE
                while not (workdir / f"done-{i - 1}").exists():
                    if time.monotonic() > end:
                        sys.exit(f"save {i - 1} of the other client never came")
                    time.sleep(0.001)  # wait-ok: polls the other client's hand-over file, with a deadline
            result = db.records.save("P", {"label": "r", "v": i})
            spooled += bool(getattr(result, "spooled", False))
            (workdir / f"done-{i}").write_text("")
    print(json.dumps({"spooled": spooled}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
