"""A job process for the load and fault tests: creates N jobs and logs each acknowledged id.

    python tests/writer.py DB_PATH N OUT_FILE GO_FILE [WORKFLOW]

Waits (at most 60 s) for GO_FILE to exist so that all writers start together,
then creates N jobs with ids it makes itself, appending each id to OUT_FILE
(flushed) once the call has returned: OUT_FILE lists exactly the writes that
were acknowledged.  Exits 1 with the error on stderr if any call raised.
"""

import os
import sys
import time
import uuid

import balsamdb


def main():
    path, count, out_file, go_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    workflow = sys.argv[5] if len(sys.argv) > 5 else "load"
    db = balsamdb.connect(path)
    deadline = time.monotonic() + 60
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            sys.exit("writer: the go file never appeared")
        time.sleep(0.005)  # wait-ok: poll interval of the go-file wait (60 s deadline)
    routes = {}
    with open(out_file, "a") as out:
        for i in range(count):
            job_id = str(uuid.uuid4())
            db.jobs.create(name=f"w{os.getpid()}-{i}", workflow=workflow, id=job_id)
            routes[db.last_route] = routes.get(db.last_route, 0) + 1
            out.write(job_id + "\n")
            out.flush()
    print(" ".join(f"{k}={v}" for k, v in sorted(routes.items())))


if __name__ == "__main__":
    main()
