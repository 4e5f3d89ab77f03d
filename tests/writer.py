"""A job process for the load and fault tests: creates N jobs and logs each acknowledged id.

    python tests/writer.py DB_PATH N OUT_FILE GO_FILE [WORKFLOW]

Waits (at most 60 s) for GO_FILE to exist so that all writers start together,
then creates N jobs with ids it makes itself, appending each id to OUT_FILE
(flushed) once the call has returned: OUT_FILE lists exactly the writes that
were acknowledged.  Exits 1 with the error on stderr if any call raised.

With WRITER_PAUSE_AT=K and WRITER_RESUME_FILE=F in the environment, the writer stops
before its write number K until F exists (at most 120 s): a test can change the world
(stop the server) between a writer's first K writes and the rest.
"""

import os
import sys
import time
import uuid

import balsamdb


def wait_for_file(path, seconds, what):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"writer: {what} never appeared ({seconds} s)")
        time.sleep(0.005)  # wait-ok: poll interval of a file wait with the deadline above


def main():
    path, count, out_file, go_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    workflow = sys.argv[5] if len(sys.argv) > 5 else "load"
    db = balsamdb.connect(path)
    wait_for_file(go_file, 60, "the go file")
    routes = {}
    pause_at = int(os.environ.get("WRITER_PAUSE_AT", -1))
    resume_file = os.environ.get("WRITER_RESUME_FILE")
    with open(out_file, "a") as out:
        for i in range(count):
            if i == pause_at:
                wait_for_file(resume_file, 120, "the resume file")
            job_id = str(uuid.uuid4())
            db.jobs.create(name=f"w{os.getpid()}-{i}", workflow=workflow, id=job_id)
            routes[db.last_route] = routes.get(db.last_route, 0) + 1
            out.write(job_id + "\n")
            out.flush()
    print(" ".join(f"{k}={v}" for k, v in sorted(routes.items())))


if __name__ == "__main__":
    main()
