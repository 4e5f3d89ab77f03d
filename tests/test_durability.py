"""An answered write is durable: the server answers only after COMMIT.

Made deterministic with ``strace --inject``: the process that commits (the write server on SQLite,
which writes the WAL with pwrite64 at COMMIT; the PostgreSQL backend of the write server's
connection, which writes its WAL at COMMIT) is held for 3 s at its first pwrite64.  One write is
sent; once the committing process is seen inside that pwrite64, no answer may have arrived; then the
write server is killed (SIGKILL) during the delay, the watchdog restarts it, and an answered write
must be in the database.  Answering before COMMIT fails the first check (and on SQLite loses the
answered write, which fails the second).

``-f``: the commit may move to another thread of the server.
"""

import os
import platform
import shutil
import signal
import subprocess
import time
import uuid

import psutil
import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from helpers import address, job_ids_in_db, skip_or_fail, wait_for

DELAY_US = 3_000_000
# The number of pwrite64 in /proc/PID/syscall (the syscall a stopped thread is in).
PWRITE64 = {"x86_64": 18, "aarch64": 68}


def _traced(pid):
    with open(f"/proc/{pid}/status") as status:
        return "TracerPid:\t0\n" not in status.read()


def _held_wal_write(pid):
    """The WAL file that some thread of ``pid`` is writing with pwrite64 (held there by strace), or None.

    Only a write to the WAL is the COMMIT: PostgreSQL also writes with pwrite64 when it extends a table."""
    number = str(PWRITE64[platform.machine()])
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/syscall") as syscall:
                fields = syscall.read().split()
            if fields[0] != number:
                continue
            target = os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
        except (OSError, IndexError, ValueError):  # a thread that just ended, a file just closed
            continue
        if target.endswith("-wal") or "/pg_wal/" in target:
            return target
    return None


class DelayedCommits:
    """strace holding each pwrite64 of ``pid`` (all its threads) for DELAY_US before it runs."""

    def __init__(self, pid):
        if shutil.which("strace") is None:
            skip_or_fail("strace is not installed (apt-get install strace)")
        if platform.machine() not in PWRITE64:
            pytest.skip(f"the number of pwrite64 on {platform.machine()} is not known here")
        self.pid = pid
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid), "-e", "trace=pwrite64",
             "-e", f"inject=pwrite64:delay_enter={DELAY_US}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: self.tracer.poll() is not None or _traced(pid), 10, "strace to attach")
        if self.tracer.poll() is not None:
            skip_or_fail(f"strace cannot attach to pid {pid}: {self.tracer.stderr.read().strip()}")

    def stop(self):
        if self.tracer.poll() is None:
            self.tracer.send_signal(signal.SIGINT)  # detaches cleanly
            try:
                self.tracer.wait(10)
            except subprocess.TimeoutExpired:
                self.tracer.kill()
                self.tracer.wait(5)


def _committing_pid(path, backend):
    """The process whose pwrite64 is the COMMIT of the write server's transactions."""
    server = address(path)["server"]["pid"]
    if backend == "sqlite3":
        return server
    import psycopg2

    url = (DBDirectory(path).postgres_url_file).read_text().strip()
    con = psycopg2.connect(url)
    try:
        cur = con.cursor()
        cur.execute("select pid from pg_stat_activity where datname = current_database() "
                    "and pid <> pg_backend_pid() and backend_type = 'client backend'")
        pids = [row[0] for row in cur.fetchall()]
    finally:
        con.close()
    assert len(pids) == 1, f"expected the write server's one connection, found backends {pids}"
    return pids[0]


def test_no_answer_before_commit_and_an_answered_write_survives_sigkill(served_dbdir, backend):
    path = served_dbdir
    secret = DBDirectory(path).secret()
    info = address(path)
    job_id = str(uuid.uuid4())
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    # A first write makes the tables' first pages, so that the next one is held at its COMMIT only.
    with balsamdb.connect(path) as db:
        db.jobs.create(name="warm-up", workflow="w", make_workdir=False)
    delayed = DelayedCommits(_committing_pid(path, backend))
    try:
        sock.connect(info["address"])
        sock.send_multipart([b""] + protocol.encode(secret, {
            "id": "durable-" + job_id[:8], "op": "job_create", "ts": time.time(),
            "params": {"job": {"id": job_id, "name": "durable", "workflow": "w"}}}))
        # Whichever comes first: the answer, or the commit held in its pwrite64.
        first = wait_for(lambda: ("answer" if sock.poll(0) else None) or
                         ("commit" if _held_wal_write(delayed.pid) else None), 30,
                         "an answer or the commit's pwrite64")
        answered_during_commit = sock.poll(0) != 0  # the delay lasts 3 s: the commit is not done
        os.kill(info["server"]["pid"], signal.SIGKILL)
        psutil.Process(info["server"]["pid"]).wait(10)
        answered = sock.poll(0) != 0
    finally:
        sock.close()
        delayed.stop()
    wait_for(lambda: address(path).get("state") == "running" and address(path).get("epoch") != info["epoch"],
             20, "the watchdog to restart the server")
    if backend == "postgres":  # the backend finishes its COMMIT after the delay, or rolls back
        wait_for(lambda: not psutil.pid_exists(delayed.pid) or not _held_wal_write(delayed.pid),
                 DELAY_US / 1e6 + 10, "the held commit to end")
    stored = job_ids_in_db(path)
    if answered:
        assert job_id in stored, "an answered write is not in the database after SIGKILL of the server"
    assert first == "commit" and not answered_during_commit, \
        "the server answered before its COMMIT had reached the disk"


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_a_stop_answers_the_write_it_is_committing_and_applies_nothing_unanswered(served_dbdir):
    """A server told to stop (SIGTERM: what `db dbserver --stop` has the watchdog send) while it
    commits a write answers that write before it ends, and applies no request it leaves unanswered
    (broken: its endpoints unbound first, which in ZeroMQ closes the connections accepted through
    them: the committed write's answer was dropped, its client only timed out).  Made to happen: the
    write's COMMIT is held by strace and the SIGTERM comes during the hold; five more writes sent
    then are answered if the server read them before it stopped, and then only are they applied."""
    path = served_dbdir
    secret = DBDirectory(path).secret()
    info = address(path)
    pid = info["server"]["pid"]
    with balsamdb.connect(path) as db:
        db.jobs.create(name="warm-up", workflow="w", make_workdir=False)
    ids = [str(uuid.uuid4()) for _ in range(6)]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    delayed = DelayedCommits(pid)
    answers = {}
    try:
        sock.connect(info["address"])
        for n, job_id in enumerate(ids):
            sock.send_multipart([b""] + protocol.encode(secret, {
                "id": "queued-" + job_id[:12], "op": "job_create", "ts": time.time(),
                "params": {"job": {"id": job_id, "name": "queued", "workflow": "w"}}}))
            if n == 0:
                wait_for(lambda: _held_wal_write(pid), 30, "the first write's COMMIT held in its pwrite64")
                os.kill(pid, signal.SIGTERM)
                held = _held_wal_write(pid)
        delayed.stop()  # the rest of the stop runs at full speed
        assert held, "the COMMIT was no longer held when the stop came: the test proves nothing"
        psutil.Process(pid).wait(60)
        while sock.poll(1000):  # what the server sent before it ended is here by now
            answer = protocol.decode(secret, sock.recv_multipart()[1:])
            answers[answer["id"]] = answer
    finally:
        sock.close()
        delayed.stop()
    first = "queued-" + ids[0][:12]
    assert first in answers, f"the write committed at the stop was not answered: answers {sorted(answers)}"
    assert all(a["ok"] for a in answers.values()), answers
    wait_for(lambda: address(path).get("state") == "running" and address(path).get("epoch") != info["epoch"],
             30, "the watchdog to start another server")
    applied = set(ids) & set(job_ids_in_db(path))
    unanswered = {i for i in ids if "queued-" + i[:12] not in answers}
    assert not applied & unanswered, f"applied without an answer: {sorted(applied & unanswered)}"
    assert applied == set(ids) - unanswered
