"""A launcher process for the claim tests: acquires jobs until none is left, logging each claim.

    python tests/launcher.py DB_PATH OUT_FILE GO_FILE N_PER_ACQUIRE [LEASE]

Waits (at most 60 s) for GO_FILE, then calls ``db.jobs.acquire(N)`` with owner
``launcher-<pid>`` until it returns nothing, appending each claimed job id to OUT_FILE
(flushed) once the call returned.  A :class:`ServerUnavailable` (the server restarts for
longer than the client's deadline) is retried.  Prints ``acquires=A claimed=C retries=R``.
"""

import os
import sys
import time

import balsamdb
from balsamdb.exceptions import ServerUnavailable


def main():
    path, out_file, go_file, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    lease = float(sys.argv[5]) if len(sys.argv) > 5 else 600.0
    db = balsamdb.connect(path)
    owner = f"launcher-{os.getpid()}"
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            sys.exit("launcher: the go file never appeared (60 s)")
        time.sleep(0.005)  # wait-ok: poll interval of a file wait with the deadline above
    acquires = claimed = retries = 0
    with open(out_file, "a") as out:
        while True:
            try:
                jobs = db.jobs.acquire(n, owner=owner, lease=lease)
            except ServerUnavailable:
                retries += 1
                if retries > 20:
                    raise
                continue
            acquires += 1
            if not jobs:
                break
            for job in jobs:
                assert job.owner == owner, (job.id, job.owner, owner)
                out.write(f"{job.id}\n")
            out.flush()
            claimed += len(jobs)
    print(f"acquires={acquires} claimed={claimed} retries={retries}")


if __name__ == "__main__":
    main()
