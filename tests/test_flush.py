"""The WAL flush off the write server's loop (dbserver/writer/flusher.py), on SQLite under the default
``sqlite_synchronous`` FULL: the server's connection commits with NORMAL and a flusher thread
fdatasyncs the ``-wal`` file; a batch's answers and its spool-file effects wait for a flush that
began after its COMMIT returned.

- a held flush (the test hook BALSAMDB_TEST_FLUSH_HOLD) holds every answer and every spool unlink or
  move, although the writes are committed; all of them leave once it is released;
- ``strace -f`` of the running server shows, for each answered write, the COMMIT's pwrite64 to the
  WAL, then an fdatasync of the WAL that began after it and ended before the answer's send; the
  fdatasyncs seen are the flushes the server counts, and every commit is counted flushed;
- every connection that writes is durable: the server's (NORMAL + the flusher, which the spool drain
  shares), direct mode's (FULL);
- the flusher follows the WAL when SQLite makes it anew (the committer's reconnect).

A SIGKILL cannot show a missing flush (the page cache outlives the process): hence the order proofs.
"""

import os
import re
import shutil
import signal
import subprocess
import time
import uuid

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.settings import load_settings
from helpers import address, db_cli, job_ids_in_db, kill_everything, skip_or_fail, wait_for


def _status(path):
    from balsamdb.server.supervisor import control

    return control.status(DBDirectory(path)).get("server_status") or {}


def _job_message(secret, name):
    job_id = str(uuid.uuid4())
    request_id = "flush-" + uuid.uuid4().hex[:12]
    frames = protocol.encode(secret, {"id": request_id, "op": "job_create", "ts": time.time(),
                                      "params": {"job": {"id": job_id, "name": name, "workflow": "flush"}}})
    return request_id, job_id, frames


@pytest.fixture
def dealer():
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    yield sock
    sock.close()


def _answer(sock, timeout):
    if not sock.poll(int(timeout * 1000)):
        raise AssertionError(f"no answer within {timeout} s")
    return sock.recv_multipart()


def _answer_id(secret, frames):
    return protocol.decode(secret, frames[-1:], strict=False)


def test_a_held_flush_holds_every_answer_and_spool_effect(tmp_path, dealer):
    path = tmp_path / "db"
    DBDirectory(path).init()
    secret = DBDirectory(path).secret()
    # Spooled before the server runs: two good writes and one the server refuses (into spool/failed).
    with balsamdb.connect(path, require_server=True) as db:
        job = db.jobs.create(name="spooled", make_workdir=False)
        db.jobs.update_state(job.id, "READY")
        db.jobs.update_state(str(uuid.uuid4()), "READY")  # no such job: refused
    new, failed = path / "spool" / "new", path / "spool" / "failed"
    spooled = sorted(p.name for p in new.iterdir())
    assert len(spooled) == 3, spooled
    hold = tmp_path / "hold-the-flush"
    hold.touch()
    env = dict(os.environ, BALSAMDB_TEST_FLUSH_HOLD=str(hold))
    try:
        started = db_cli("dbserver", "--path", path, env=env)
        assert started.returncode == 0, started.stderr
        dealer.connect(address(path)["address"])
        request_id, job_id, frames = _job_message(secret, "live")
        dealer.send_multipart([b""] + frames)
        # Committed (the spool's batch and the live one), none flushed: the flush is held.
        status = wait_for(lambda: (lambda s: s if s.get("writes", 0) >= 3 else None)(_status(path)), 60,
                          "the spooled and live writes to be committed")
        assert job_id in job_ids_in_db(path), "the live write is not committed"  # readers see it already
        assert dealer.poll(0) == 0, "a write was answered before the flush of its COMMIT"
        assert sorted(p.name for p in new.iterdir()) == spooled, "a spool file left spool/new before the flush"
        assert list(failed.iterdir()) == [], "a refused spool file moved to spool/failed before the flush"
        assert status["flusher"] is True and status["commits"] > status["flushed_commits"], status
        assert status["durable_after_flush"] >= 2, status  # the spool's batch and the live one
        # One more status round trip (answered at once): still nothing.
        assert _status(path)["flushed_commits"] < _status(path)["commits"]
        assert dealer.poll(0) == 0 and sorted(p.name for p in new.iterdir()) == spooled
        hold.unlink()
        answer = _answer_id(secret, _answer(dealer, 30))
        assert answer["id"] == request_id and answer["ok"], answer
        wait_for(lambda: not any(new.iterdir()), 30, "the applied spool files to be removed")
        moved = wait_for(lambda: [p.name for p in failed.iterdir() if p.name.endswith(".req")], 30,
                         "the refused spool file to move to spool/failed")
        assert moved == [spooled[-1]], (moved, spooled)
        status = _status(path)
        assert status["flushed_commits"] == status["commits"] and status["durable_after_flush"] == 0, status
        shown = db_cli("dbserver", "--status", "--path", path).stdout
        assert "commits per flush" in shown and "0 batches waiting" in shown, shown
    finally:
        if hold.exists():
            hold.unlink()
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_a_write_committed_during_a_flush_waits_for_the_next_flush(tmp_path, dealer):
    """A flush covers the COMMITs reported before it began, never one made while it ran: A's flush
    is held (before its fdatasync), B arrives and is committed meanwhile; once the hold is gone A is
    answered, and B only after a second flush, which began after B's COMMIT (broken: the flush's
    covered COMMITs read after its fdatasync: B answered by A's flush, and no second flush made)."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    secret = DBDirectory(path).secret()
    hold = tmp_path / "hold-the-flush"
    hold.touch()
    env = dict(os.environ, BALSAMDB_TEST_FLUSH_HOLD=str(hold))
    try:
        started = db_cli("dbserver", "--path", path, env=env)
        assert started.returncode == 0, started.stderr
        before = _status(path)
        assert before["flusher"] is True and before["flushed_commits"] == before["commits"], before
        dealer.connect(address(path)["address"])
        first, _job, frames = _job_message(secret, "first")
        dealer.send_multipart([b""] + frames)
        wait_for(lambda: _status(path)["commits"] > before["commits"], 60, "the first write's COMMIT")
        second, _job, frames = _job_message(secret, "second")
        dealer.send_multipart([b""] + frames)
        held = wait_for(lambda: (lambda s: s if s["commits"] >= before["commits"] + 2 else None)(_status(path)),
                        60, "the second write's COMMIT while the first one's flush is held")
        assert held["flushes"] == before["flushes"] and dealer.poll(0) == 0, held
        hold.unlink()
        answered = [_answer_id(secret, _answer(dealer, 30)) for _ in range(2)]
        assert [(a["id"], a["ok"]) for a in answered] == [(first, True), (second, True)], answered
        after = _status(path)
        assert after["flushes"] - before["flushes"] >= 2, (
            f"{after['flushes'] - before['flushes']} flush(es) for a COMMIT made before the first flush "
            f"began and one made while it ran: the second was answered by a flush that began before it")
        assert after["flushed_commits"] == after["commits"], after
    finally:
        if hold.exists():
            hold.unlink()
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


_LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


def _events(text):
    """(index, pid, syscall, 'entry'|'exit'|'both', fd path, line) of strace -f -y output."""
    events, open_calls = [], {}
    for index, line in enumerate(text.splitlines()):
        match = _LINE.match(line)
        if not match:
            continue
        pid, resumed, name, rest = match.groups()
        if resumed:
            name, target = resumed, open_calls.pop(pid, "")
            events.append((index, pid, name, "exit", target, line))
            continue
        fd = re.match(r"\d+<([^>]*)>", rest)
        target = fd.group(1) if fd else ""
        if "<unfinished ...>" in rest:
            open_calls[pid] = target
            events.append((index, pid, name, "entry", target, line))
        else:
            events.append((index, pid, name, "both", target, line))
    return events


def test_strace_shows_commit_then_wal_fdatasync_then_answer(tmp_path, dealer):
    if shutil.which("strace") is None:
        skip_or_fail("strace is not installed (apt-get install strace)")
    path = tmp_path / "db"
    DBDirectory(path).init()
    secret = DBDirectory(path).secret()
    trace = tmp_path / "strace.out"
    tracer = None
    try:
        db_cli("dbserver", "--path", path, check=True)
        before = _status(path)
        # (d) the server's connection: NORMAL with the flusher under the default FULL.
        assert before["synchronous"] == "FULL" and before["connection_synchronous"] == "NORMAL", before
        assert before["flusher"] is True, before
        pid = address(path)["server"]["pid"]
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-y", "-s", "512", "-o", str(trace), "-p", str(pid),
             "-e", "trace=fdatasync,fsync,pwrite64,write,sendto,sendmsg",
             # Each fdatasync is held 0.2 s, so that an answer sent without waiting for it is seen.
             "-e", "inject=fdatasync:delay_enter=200000"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: tracer.poll() is not None or _traced(pid), 10, "strace to attach")
        if tracer.poll() is not None:
            skip_or_fail(f"strace cannot attach to pid {pid}: {tracer.stderr.read().strip()}")
        before = _status(path)
        dealer.connect(address(path)["address"])
        ids = []
        for i in range(5):  # one at a time: between two answers there is exactly one write's COMMIT
            request_id, _job, frames = _job_message(secret, f"traced-{i}")
            dealer.send_multipart([b""] + frames)
            answer = _answer_id(secret, _answer(dealer, 30))
            assert answer["id"] == request_id and answer["ok"], answer
            ids.append(request_id)
        after = _status(path)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait(5)
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)
    events = _events(trace.read_text())
    wal = [e for e in events if e[4].endswith("-wal")]
    writes = [e for e in wal if e[2] == "pwrite64" and e[3] in ("exit", "both")]
    # The flusher thread's (its id in status): SQLite's own fdatasync of a new WAL's header runs in the
    # thread that commits (the batch thread, or the loop).
    assert after["flusher_thread"] not in (None, pid), after
    syncs = [e for e in wal if e[2] in ("fdatasync", "fsync") and e[1] == str(after["flusher_thread"])]
    sync_entries = [e[0] for e in syncs if e[3] in ("entry", "both")]
    sync_exits = [e[0] for e in syncs if e[3] in ("exit", "both")]
    previous_send = -1
    for request_id in ids:
        sends = [e[0] for e in events if e[2] in ("sendto", "sendmsg", "write") and e[3] in ("entry", "both")
                 and request_id in e[5]]
        assert sends, f"the answer to {request_id} was not seen sent"
        send = sends[0]
        commit = [e[0] for e in writes if previous_send < e[0] < send]
        assert commit, f"no COMMIT (pwrite64 to the WAL) before the answer to {request_id}"
        last_write = commit[-1]
        flushed = [start for start in sync_entries if last_write < start
                   and any(start <= end < send for end in sync_exits)]
        assert flushed, (f"no fdatasync of the WAL began after the COMMIT of {request_id} (line {last_write}) "
                         f"and ended before its answer (line {send})")
        previous_send = send
    # (b) the flushes the server counts are the fdatasyncs of the WAL, and every commit is flushed.
    counted = after["flushes"] - before["flushes"]
    assert counted >= 1 and len(sync_entries) == counted, (counted, len(sync_entries))
    assert after["commits"] - before["commits"] >= len(ids)
    assert after["flushed_commits"] == after["commits"], after


def _traced(pid):
    with open(f"/proc/{pid}/status") as status:
        return "TracerPid:\t0\n" not in status.read()


def test_direct_mode_writes_with_synchronous_full(tmp_path):
    """(d) Direct mode has no flusher: its connection syncs at COMMIT."""
    from balsamdb.direct import DirectStore

    path = tmp_path / "db"
    DBDirectory(path).init()
    store = DirectStore(DBDirectory(path), load_settings())
    try:
        store.database.connect()
        assert store.database.execute_sql("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        store.close()


def test_normal_is_the_opt_out_without_a_flusher(tmp_path):
    """``sqlite_synchronous`` NORMAL (the documented opt-out): the server has no flusher, its
    connection commits with NORMAL, and a write is answered after its COMMIT alone."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    env = dict(os.environ, BALSAMDB_SQLITE_SYNCHRONOUS="NORMAL")
    try:
        started = db_cli("dbserver", "--path", path, env=env)
        assert started.returncode == 0, started.stderr
        with balsamdb.connect(path) as db:
            db.jobs.create(name="not-flushed", workflow="w", make_workdir=False)
            assert db.last_route == "server"
        status = _status(path)
        assert status["synchronous"] == "NORMAL" and status["connection_synchronous"] == "NORMAL", status
        assert status["flusher"] is False and "flushes" not in status, status
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_the_flusher_follows_the_wal_when_sqlite_makes_it_anew(tmp_path):
    """The committer's reconnect closes the last connection: SQLite checkpoints and deletes the
    -wal file, and makes a new one at the next write; the flusher must flush the new file."""
    from balsamdb.migrations import upgrade
    from balsamdb.models import MODELS
    from balsamdb.request import Request
    from balsamdb.server.writer.committer import Committer
    from balsamdb.server.writer.flusher import Flusher
    from balsamdb.server.writer.stats import Stats

    path = tmp_path / "db"
    dbdir = DBDirectory(path)
    dbdir.init()
    settings = load_settings()
    database = dbdir.open_database(settings, busy_timeout=30, synchronous="NORMAL")
    committer = Committer(database, "sqlite3", dbdir, settings, Stats(), stopping=lambda: False)
    committer.connect(deadline=10)
    database.bind(MODELS)
    upgrade(database)
    wal = f"{dbdir.sqlite_file}-wal"
    flusher = Flusher(wal)
    flusher.start()
    committer.flusher = flusher

    def write(name):
        message = {"id": uuid.uuid4().hex, "op": "job_create", "ts": time.time(),
                   "params": {"job": {"id": str(uuid.uuid4()), "name": name, "workflow": "flush"}}}
        request = Request.from_message(message)
        assert committer.commit([request])[0].answer["ok"]
        assert flusher.wait_flushed(flusher.commits, 30), "the commit was not flushed"

    def flushed_file():
        return os.fstat(flusher._fd).st_ino

    try:
        write("first")
        first = os.stat(wal).st_ino
        assert flushed_file() == first
        committer.reconnect()  # the last connection closes: SQLite deletes the -wal file, then makes a new one
        # (While the flusher holds the old file open its inode cannot be reused: the numbers differ.)
        assert os.stat(wal).st_ino != first, "the reconnect did not make a new WAL file: this test shows nothing"
        write("second")
        second = os.stat(wal).st_ino
        assert flushed_file() == second, "the flusher flushed the old, deleted WAL instead of the live one"
        assert flusher.counters()["wal_opens"] == 2
        assert flusher.counters()["flushed_commits"] == flusher.commits == 2
    finally:
        flusher.close()
        database.close()


def test_a_failed_flush_stops_the_server_without_answering(tmp_path, dealer):
    """fail-stop: the flusher's fdatasync fails (EIO injected by strace): the write it covers is
    not answered, the server ends at once (logged), the watchdog starts another, and the same
    write sent again is answered (exactly once: from the record if the first COMMIT stayed)."""
    if shutil.which("strace") is None:
        skip_or_fail("strace is not installed (apt-get install strace)")
    import psutil

    path = tmp_path / "db"
    DBDirectory(path).init()
    secret = DBDirectory(path).secret()
    tracer = None
    try:
        db_cli("dbserver", "--path", path, check=True)
        with balsamdb.connect(path) as db:  # the WAL's header is written (and synced by SQLite) now
            db.jobs.create(name="warm-up", workflow="w", make_workdir=False)
        info = address(path)
        pid = info["server"]["pid"]
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(pid), "-e", "trace=fdatasync",
             "-e", "inject=fdatasync:error=EIO"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: tracer.poll() is not None or _traced(pid), 10, "strace to attach")
        if tracer.poll() is not None:
            skip_or_fail(f"strace cannot attach to pid {pid}: {tracer.stderr.read().strip()}")
        dealer.connect(info["address"])
        request_id, job_id, frames = _job_message(secret, "unflushed")
        dealer.send_multipart([b""] + frames)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
                 30, "the server to stop after its failed flush")
        assert dealer.poll(0) == 0, "a write was answered although its flush failed"
        log = (path / "log" / "server.log").read_text()
        assert "stopping after a failed flush of the WAL" in log, log[-2000:]
        tracer.wait(10)
        wait_for(lambda: address(path).get("state") == "running" and address(path).get("epoch") != info["epoch"],
                 30, "the watchdog to start another server")
        # The client's retry: the same id and job, signed afresh, to the next server.
        retry = zmq.Context.instance().socket(zmq.DEALER)
        retry.setsockopt(zmq.LINGER, 0)
        try:
            retry.connect(address(path)["address"])
            retry.send_multipart([b""] + protocol.encode(secret, {
                "id": request_id, "op": "job_create", "ts": time.time(),
                "params": {"job": {"id": job_id, "name": "unflushed", "workflow": "flush"}}}))
            answer = _answer_id(secret, _answer(retry, 30))
        finally:
            retry.close()
        assert answer["id"] == request_id and answer["ok"], answer
        assert job_ids_in_db(path).count(job_id) == 1
    finally:
        if tracer is not None and tracer.poll() is None:
            tracer.kill()
            tracer.wait(5)
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_a_wake_after_its_batch_was_settled_does_not_keep_the_loop_awake():
    """The batch thread wakes the loop's pipe after it hands a result over; when ``settle`` took the
    result first, the wake comes later and ``take`` finds nothing: it must still empty the pipe, or
    the loop's poll returns at once, again and again (a spin of the write server's loop)."""
    import select

    from balsamdb.server.writer.batch_thread import BatchThread

    batches = BatchThread(lambda requests: len(requests))
    try:
        batches.submit(["a", "b"])
        assert batches.settle() == 2
        batches._pipe.wake()  # the thread's wake as it comes after settle() took the result (order forced)
        assert select.select([batches.wake_fd], [], [], 0)[0] == [batches.wake_fd]
        assert batches.take() is None
        assert select.select([batches.wake_fd], [], [], 0)[0] == [], "a wake with nothing to take stays in the pipe"
    finally:
        batches.close()
