"""A job process for the load and fault tests: creates N jobs and logs each acknowledged id.

    python tests/writer.py DB_PATH N OUT_FILE GO_FILE [WORKFLOW]

Waits (at most 60 s) for GO_FILE to exist so that all writers start together,
then creates N jobs with ids it makes itself, appending each id to OUT_FILE
(flushed) once the call has returned: OUT_FILE lists exactly the writes that
were acknowledged.  Exits 1 with the error on stderr if any call raised.

Each call is also logged, invocation and completion, in OUT_FILE.history (see tests/history.py,
which checks it against the database).  With WRITER_REGISTERS=K (and WRITER_REGISTER_EVERY=E,
default 5), every E-th job is followed by a save of record ``reg-<n mod K>`` of project
``history`` whose ``reason`` is a value no other call writes: last-writer-wins registers that
the checker follows through their versions.

With WRITER_PAUSE_AT=K and WRITER_RESUME_FILE=F in the environment, the writer stops
before its write number K until F exists (at most 120 s): a test can change the world
(stop the server) between a writer's first K writes and the rest.
"""

import os
import sys
import time
import uuid

import balsamdb
from balsamdb.exceptions import BadRequest, Conflict, InvalidTransition, NotFound

from history import HistoryLog

REGISTER_PROJECT = "history"
REFUSED = (BadRequest, Conflict, InvalidTransition, NotFound)  # definite refusals: nothing was written


def logged(log, db, key, kind, value, call):
    """``call()``, with its invocation and completion in the history ``log``."""
    seq = log.invoke(key, kind, value, time.time())
    try:
        result = call()
    except REFUSED:
        log.complete(seq, "refused", time.time())
        raise
    except BaseException:
        log.complete(seq, "error", time.time())
        raise
    log.complete(seq, "spooled" if db.last_route == "spool" else "ok", time.time())
    return result


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
    registers = int(os.environ.get("WRITER_REGISTERS", 0))
    every = int(os.environ.get("WRITER_REGISTER_EVERY", 5))
    client = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
    log = HistoryLog(out_file + ".history", client)
    with open(out_file, "a") as out:
        for i in range(count):
            if i == pause_at:
                wait_for_file(resume_file, 120, "the resume file")
            job_id = str(uuid.uuid4())
            logged(log, db, job_id, "create", job_id,
                   lambda: db.jobs.create(name=f"w{os.getpid()}-{i}", workflow=workflow, id=job_id))
            routes[db.last_route] = routes.get(db.last_route, 0) + 1
            out.write(job_id + "\n")
            out.flush()
            if registers and i % every == 0:
                label, value = f"reg-{(i // every) % registers}", f"{client}:{i}"
                logged(log, db, label, "write", value,
                       lambda: db.records.save(REGISTER_PROJECT, {"label": label, "reason": value}))
    print(" ".join(f"{k}={v}" for k, v in sorted(routes.items())))


if __name__ == "__main__":
    main()
