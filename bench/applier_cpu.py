"""CPU per request of the applier in process (issue 13 item 4): batches of 256 ``job_create``
applied by ``apply`` into a fresh SQLite DB directory (durable commits), the thread CPU of
each batch per request, min and median of ``--rounds``.  No sockets, no other process: what the
write server spends in the database part of a group commit, steady enough on a busy machine to
compare one change with the next.

    python -m balsamdb.bench.applier_cpu [--rounds 12] [--batch 256]
"""

import argparse
import shutil
import sys
import tempfile
import time
import uuid


def measure(rounds, size):
    from balsamdb.applier import apply
    from balsamdb.dbdir import DBDirectory
    from balsamdb.models import MODELS
    from balsamdb.request import Request
    from balsamdb.settings import load_settings

    path = tempfile.mkdtemp(prefix="balsamdb-applier-")
    try:
        DBDirectory(path).init()
        database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
        database.connect()
        database.bind(MODELS)
        per_request = []
        for _ in range(rounds):
            batch = [Request(uuid.uuid4().hex, "job_create",
                             {"job": {"id": str(uuid.uuid4()), "name": f"cap-{i}", "workflow": "capacity",
                                      "application": "python sim.py", "args": f"--n {i}"}})
                     for i in range(size)]
            started = time.thread_time()
            apply(database, batch, lambda: database.atomic(lock_type="IMMEDIATE"))
            per_request.append(1e6 * (time.thread_time() - started) / size)
            assert all(r.answer["ok"] for r in batch)
        database.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    per_request.sort()
    return per_request[0], per_request[len(per_request) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    low, median = measure(args.rounds, args.batch)
    print(f"applier CPU per job_create: min {low:.1f} us, median {median:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
