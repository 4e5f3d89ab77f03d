"""The write server with real processes: load, restarts, races, stale files, bad input, stop."""

import json
import os
import signal
import subprocess
import re
import sys
import threading
import time
import uuid

import psutil
import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory

from history import REGISTER_LABELS, check_writers
from helpers import Writers, address, db_cli, job_ids_in_db, kill_everything, processes_for, wait_for


@pytest.fixture
def server_db(served_dbdir, backend):
    """A fresh DB directory on each backend with a running server (see conftest.py)."""
    assert address(served_dbdir)["address"].startswith("tcp://127.0.0.1:")
    return served_dbdir


def _check_acked(path, writers, results):
    for code, out, err in results:
        assert code == 0, f"a writer failed: {err[-2000:]}"
    acked = writers.acked_ids()
    stored = job_ids_in_db(path)
    assert len(stored) == len(set(stored)), "duplicate job ids in the database"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged writes are missing"
    return acked, stored


def test_64_writers_all_land_exactly_once(server_db, tmp_path):
    writers = Writers(server_db, tmp_path, nprocs=64, count=100)
    try:
        writers.start()
        results = writers.wait(timeout=300)
    finally:
        writers.kill()
    acked, stored = _check_acked(server_db, writers, results)
    assert len(acked) == 6400 and len(stored) == 6400
    check_writers(server_db, writers)
    assert all(out.strip() == "server=100" for _code, out, _err in results), \
        "every write should have gone through the server"
    status = json.loads(db_cli("dbserver", "--status", "--json", "--path", server_db, check=True).stdout)
    assert status["server_status"]["writes"] >= 6400
    assert status["server_status"]["max_batch"] > 1, "no group commit happened under load"


def test_server_killed_three_times_during_load(server_db, tmp_path):
    writers = Writers(server_db, tmp_path, nprocs=32, count=100,
                      env=dict(os.environ, WRITER_REGISTERS=str(REGISTER_LABELS)))
    kills = []
    torn = []
    reading = threading.Event()

    def read_address_file():
        # The watchdog rewrites the file on every restart: a reader must never see it torn.
        while not reading.is_set():
            text = (server_db / "dbwriter_address").read_text()
            try:
                json.loads(text)
            except ValueError:
                torn.append(text)

    reader = threading.Thread(target=read_address_file, daemon=True)
    reader.start()
    try:
        writers.start()
        for round_ in range(3):
            target = (round_ + 1) * 600
            wait_for(lambda: writers.acked_so_far() >= target, 120, f"{target} acknowledged writes")
            info = address(server_db)
            os.kill(info["server"]["pid"], signal.SIGKILL)
            killed_at = time.monotonic()
            new = wait_for(lambda: address(server_db).get("epoch") not in (None, info["epoch"])
                           and address(server_db).get("state") == "running" and address(server_db),
                           10, "the watchdog to restart the server")
            kills.append(time.monotonic() - killed_at)
            assert new["server"]["pid"] != info["server"]["pid"]
        results = writers.wait(timeout=300)
    finally:
        writers.kill()
        reading.set()
        reader.join(10)
    acked, stored = _check_acked(server_db, writers, results)
    assert len(acked) == 3200 and len(stored) == 3200
    check_writers(server_db, writers, registers=REGISTER_LABELS)
    assert max(kills) < 3.0, f"restart took {kills}"
    assert not torn, f"a reader saw a torn address file: {torn[:1]}"


def test_watchdog_backs_off_when_the_server_keeps_dying(server_db):
    delays = []
    for _ in range(4):
        info = address(server_db)
        os.kill(info["server"]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        # One read per look: two reads could see "running" (the old epoch) and then "restarting" (no epoch).
        wait_for(lambda: (lambda now: now.get("state") == "running" and now.get("epoch") != info["epoch"])(
            address(server_db)), 15, "a restarted server")
        delays.append(time.monotonic() - killed)
    log = (server_db / "log" / "watchdog.log").read_text()
    announced = [float(x) for x in re.findall(r"restarting in ([0-9.]+) s", log)]
    assert announced == [0.0, 0.25, 0.5, 1.0], announced
    assert delays[3] >= 1.0 > delays[0], delays
    assert address(server_db)["restarts"] == 4


def test_two_starts_at_once_give_one_server(any_dbdir):
    path = any_dbdir
    try:
        cmd = [sys.executable, "-m", "balsamdb.cli", "dbserver", "--path", str(path)]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=60) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        texts = sorted(o[0] for o in outs)
        assert any("already runs" in t for t in texts) and any("listening at" in t for t in texts), texts
        servers = [p for p in processes_for(path) if "balsamdb.server.writer.server" in p.cmdline()]
        watchdogs = [p for p in processes_for(path) if "balsamdb.server.supervisor.watchdog" in p.cmdline()]
        assert len(servers) == 1 and len(watchdogs) == 1, (servers, watchdogs)
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_stale_address_file_is_detected_fast(server_db, backend):
    info = address(server_db)
    for key in ("watchdog", "server"):
        os.kill(info[key]["pid"], signal.SIGKILL)
    wait_for(lambda: not any(psutil.pid_exists(info[k]["pid"]) and
                             psutil.Process(info[k]["pid"]).status() != psutil.STATUS_ZOMBIE
                             for k in ("watchdog", "server")), 10, "the killed processes to vanish")
    assert address(server_db)["state"] == "running"  # stale: names dead processes
    db = balsamdb.connect(server_db)
    started = time.monotonic()
    job = db.jobs.create(name="after-crash")
    if backend == "sqlite3":
        assert db.last_route == "direct" and not job.spooled  # no server: written directly
    else:
        assert db.last_route == "spool" and job.spooled  # PostgreSQL: only a server writes it
        assert os.path.isdir(job.working_directory)
    assert time.monotonic() - started < 1.0, "a stale address file made the client wait"
    restarted = db_cli("dbserver", "--path", server_db, check=True)
    assert "listening at" in restarted.stdout
    assert address(server_db)["epoch"] != info["epoch"]
    db.jobs.create(name="after-restart")
    assert db.last_route == "server"
    assert sorted(j.name for j in db.jobs.filter()) == ["after-crash", "after-restart"]
    assert db.jobs.get(job.id).name == "after-crash"


def _raw_request(path, frames, timeout_ms=10000):
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address(path)["address"])
        sock.send_multipart([b""] + frames)
        assert sock.poll(timeout_ms), "the server did not answer"
        reply = sock.recv_multipart()
        assert reply[0] == b""
        return reply[1:]
    finally:
        sock.close()


def _error_code(reply, secret):
    body = protocol.decode(secret, reply)
    assert body["ok"] is False
    return body["error"]["code"]


def test_bad_messages_get_error_answers_and_the_server_keeps_serving(server_db):
    secret = DBDirectory(server_db).secret()
    now = time.time()
    existing = balsamdb.connect(server_db).jobs.create(name="existing")
    good = protocol.encode(secret, {"id": "x1", "op": "job_count", "params": {}, "ts": now})
    cases = {
        "garbage": [os.urandom(64)],
        "three frames": [protocol.MAGIC, good[0][4:36], good[0][36:]],
        "truncated": [good[0][:30]],
        "cut body": [good[0][:-5]],
        "not json": [protocol.MAGIC + protocol.sign(secret, b"{nope") + b"{nope"],
        "wrong secret": protocol.encode(b"not-the-secret", {"id": "x2", "op": "job_count", "params": {}, "ts": now}),
        "unknown op": protocol.encode(secret, {"id": "x3", "op": "drop_table", "params": {}, "ts": now}),
        "bad params": protocol.encode(secret, {"id": "x4", "op": "job_create", "params": {"job": 5}, "ts": now}),
        "no time stamp": protocol.encode(secret, {"id": "x5", "op": "job_count", "params": {}}),
        "replayed an hour later": protocol.encode(secret, {"id": "x6", "op": "job_count", "params": {},
                                                            "ts": now - 3600}),
        "deep nesting, unsigned": [protocol.MAGIC + b"0" * 32 + b"[" * 100000],
        "deep nesting, signed": [protocol.MAGIC + protocol.sign(secret, b"[" * 100000) + b"[" * 100000],
        "state of the wrong type": protocol.encode(secret, {"id": "x7", "op": "job_update_state", "ts": now,
                                                            "params": {"job_id": existing.id, "state": ["x"]}}),
        "tag too long": protocol.encode(secret, {"id": "x8", "op": "job_create", "ts": now,
                                                 "params": {"job": {"name": "t", "tags": ["t" * 300]}}}),
        "32-bit overflow": protocol.encode(secret, {"id": "x9", "op": "job_create", "ts": now,
                                                    "params": {"job": {"name": "t", "num_nodes": 2 ** 40}}}),
    }
    expected = {"garbage": "bad_request", "three frames": "bad_request", "truncated": "bad_request",
                "cut body": "auth", "not json": "bad_request",
                "wrong secret": "auth", "unknown op": "bad_request", "bad params": "bad_request",
                "no time stamp": "auth", "replayed an hour later": "auth",
                "deep nesting, unsigned": "auth", "deep nesting, signed": "bad_request",
                "state of the wrong type": "invalid_transition", "tag too long": "bad_request",
                "32-bit overflow": "bad_request"}
    for name, frames in cases.items():
        assert _error_code(_raw_request(server_db, frames), secret) == expected[name], name
    # Larger than max_request_bytes: dropped unread with its connection (tests/test_bounded_memory.py).
    with pytest.raises(AssertionError, match="did not answer"):
        _raw_request(server_db, [protocol.MAGIC + b"0" * 32 + b"x" * (100 * 1024 * 1024)], timeout_ms=2000)
    # A read is refused by the write server: reads go to the read service (tests/test_reads.py).
    reply = protocol.decode(secret, _raw_request(server_db, good))
    assert reply["id"] == "x1" and reply["error"]["code"] == "bad_request" and "read service" in reply["error"]["message"]
    ping = protocol.encode(secret, {"id": "x10", "op": "ping", "params": {}, "ts": time.time()})
    assert protocol.decode(secret, _raw_request(server_db, ping))["result"]["pong"] is True
    db = balsamdb.connect(server_db)
    db.jobs.create(name="still-serving")
    assert db.last_route == "server" and db.jobs.count() == 2
    status = json.loads(db_cli("dbserver", "--status", "--json", "--path", server_db, check=True).stdout)
    assert status["server_status"]["rejected"] >= 5
    log = (server_db / "log" / "server.log").read_text()
    assert "not-the-secret" not in log and secret.decode() not in log
    assert "refused as a replay" in log and "bad signature" in log  # refusals are logged


def test_retry_of_an_applied_write_is_answered_from_the_record(server_db):
    secret = DBDirectory(server_db).secret()
    job = {"id": str(uuid.uuid4()), "name": "once", "workflow": "w"}
    frames = protocol.encode(secret, {"id": "retry-me", "op": "job_create", "params": {"job": job},
                                      "ts": time.time()})
    first = protocol.decode(secret, _raw_request(server_db, frames))
    second = protocol.decode(secret, _raw_request(server_db, frames))
    assert first["ok"] and second["ok"] and second.get("replayed") is True
    assert second["result"] == first["result"]
    assert job_ids_in_db(server_db) == [job["id"]]


def test_stop_during_load_loses_no_acknowledged_write(server_db, tmp_path, backend):
    # Each writer holds before its 100th write until the server is stopped, so that the
    # last 50 of each find it gone however fast the first 100 went; the stop comes while
    # the first ones are still being written.
    resume = tmp_path / "resume"
    writers = Writers(server_db, tmp_path, nprocs=16, count=150,
                      env=dict(os.environ, WRITER_PAUSE_AT="100", WRITER_RESUME_FILE=str(resume),
                               WRITER_REGISTERS=str(REGISTER_LABELS)))
    try:
        writers.start()
        wait_for(lambda: writers.acked_so_far() >= 500, 120, "500 acknowledged writes")
        stopped = db_cli("dbserver", "--stop", "--path", server_db, check=True)
        assert "stopped server" in stopped.stdout
        assert not processes_for(server_db)
        assert address(server_db)["state"] == "stopped"
        resume.write_text("go on")
        results = writers.wait(timeout=300)
    finally:
        writers.kill()
    acked = writers.acked_ids()
    stored = job_ids_in_db(server_db)
    assert len(stored) == len(set(stored))
    if backend == "sqlite3":
        # SQLite: once the server is gone the writers go on writing the file directly.
        acked, stored = _check_acked(server_db, writers, results)
        assert len(acked) == 2400 and len(stored) == 2400
        routes = " ".join(out for _c, out, _e in results)
        assert "server=" in routes and "direct=" in routes, routes
    else:
        # PostgreSQL is written through a server only: the writers go on into the spool,
        # and the next server applies every spooled write once.
        assert all(code == 0 for code, _o, _e in results), [e[-500:] for c, _o, e in results if c]
        routes = " ".join(out for _c, out, _e in results)
        assert "server=" in routes and "spool=" in routes, routes
        assert len(acked) == 2400
        db_cli("dbserver", "--path", server_db, check=True)
        wait_for(lambda: len(job_ids_in_db(server_db)) >= 2400, 60, "the spool to be applied")
        stored = job_ids_in_db(server_db)
        assert sorted(stored) == sorted(acked)
    check_writers(server_db, writers, registers=REGISTER_LABELS)


def test_status_and_stop_when_nothing_runs(any_dbdir):
    path = any_dbdir
    status = db_cli("dbserver", "--status", "--path", path)
    assert status.returncode == 1 and "stopped" in status.stdout, status
    stop = db_cli("dbserver", "--stop", "--path", path, check=True)
    assert "no server was running" in stop.stdout


def test_require_server_spools_and_spool_off_refuses(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    db = balsamdb.connect(path, require_server=True)
    job = db.jobs.create(name="waits")
    assert job.spooled and db.last_route == "spool" and job_ids_in_db(path) == []
    with pytest.raises(balsamdb.BadRequest, match="new job starts in one of"):
        db.jobs.create(name="never-valid", state="RUNNING")  # refused at once, never spooled
    assert len(os.listdir(path / "spool" / "new")) == 1
    strict = balsamdb.connect(path, require_server=True, spool=False)
    with pytest.raises(balsamdb.ServerUnavailable, match="db dbserver --path"):
        strict.jobs.create(name="nope")
    with pytest.raises(balsamdb.ServerUnavailable):
        db.jobs.count()  # reads are never spooled
    assert job_ids_in_db(path) == []


def test_oversized_requests_are_refused_at_once_not_spooled(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    env = dict(os.environ, BALSAMDB_MAX_REQUEST_BYTES="10000")
    started = subprocess.run([sys.executable, "-m", "balsamdb.cli", "dbserver", "--path", str(path)],
                             env=env, capture_output=True, text=True, timeout=60)
    try:
        assert started.returncode == 0, started.stderr
        big = {"label": "big", "stdout_stderr": "y" * 20000}
        # The client knows its own limit: refused before anything is sent.
        client_limited = balsamdb.connect(path, max_request_bytes=10000)
        t0 = time.monotonic()
        with pytest.raises(balsamdb.BalsamDBError, match="max_request_bytes"):
            client_limited.records.save("P", big)
        # A server with a smaller limit than the client's answers at once, and the client says so.
        db = balsamdb.connect(path, client_deadline=20)
        with pytest.raises(balsamdb.BalsamDBError, match="exceeds the limit of 10000 bytes"):
            db.records.save("P", big)
        assert time.monotonic() - t0 < 2.0, "a refusal must not wait for the client deadline"
        spool_new = path / "spool" / "new"
        assert not spool_new.exists() or not os.listdir(spool_new), "a refused write was spooled"
        assert db.records.save("P", {"label": "small"}) is True
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_old_request_ids_are_forgotten_after_the_retention(any_dbdir):
    """The record of applied requests does not grow for ever: ids older than
    applied_retention_days are pruned by the running server (here 2 s)."""
    env = dict(os.environ, BALSAMDB_APPLIED_RETENTION_DAYS=str(2 / 86400))
    started = db_cli("dbserver", "--path", any_dbdir, env=env)
    try:
        assert started.returncode == 0, started.stderr
        with balsamdb.connect(any_dbdir) as db:
            first = db.jobs.create(name="old")
            count = lambda: _applied_rows(any_dbdir)  # noqa: E731
            assert count() >= 1
            wait_for(lambda: count() == 0, 30, "the server to forget the old request ids")
            db.jobs.create(name="new")
            assert count() == 1 and db.jobs.count() == 2 and db.jobs.get(first.id).name == "old"
            assert db.server_status()["pruned_request_ids"] >= 1
    finally:
        db_cli("dbserver", "--stop", "--path", any_dbdir)
        kill_everything(any_dbdir)


def _applied_rows(path):
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    dbdir = DBDirectory(path)
    database = dbdir.open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        return database.execute_sql("select count(*) from applied_request").fetchone()[0]
    finally:
        database.close()
