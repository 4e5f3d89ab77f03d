"""Many processes writing one SQLite DB directory directly (no server) lose nothing."""

import multiprocessing
import queue
import time
import traceback
import uuid

import pytest

import balsamdb
from balsamdb.dbdir import DBDirectory
from history import HistoryLog, applied_jobs, check, load
from writer import logged

PROCESSES = 32
JOBS_EACH = 100
DEADLINE = 50  # seconds for the whole run; the test fails, not hangs, past it


def _create_jobs(path, index, barrier, results):
    """One writer: wait until every writer is ready, then create JOBS_EACH jobs, each call logged in
    the history ``PATH-h{index}.history`` (tests/history.py)."""
    try:
        db = balsamdb.connect(path)
        log = HistoryLog(f"{path}-h{index}.history", f"w{index}")
        barrier.wait(timeout=DEADLINE)
        ids = []
        for n in range(JOBS_EACH):
            job_id = str(uuid.uuid4())
            ids.append(logged(log, db, job_id, "create", job_id,
                              lambda: db.jobs.create(f"w{index}-{n}", workflow="storm", id=job_id)).id)
        log.close()
        routes = {db.last_route}
        db.close()
        results.put((index, ids, routes, None))
    except BaseException:
        results.put((index, [], set(), traceback.format_exc()))
        raise


def test_32_processes_writing_at_once_lose_no_job(tmp_path, monkeypatch):
    monkeypatch.setenv("BALSAMDB_SETTINGS", str(tmp_path / "no-settings.json"))
    monkeypatch.delenv("BALSAM_DB_PATH", raising=False)
    path = tmp_path / "db"
    DBDirectory(path).init()

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    workers = [context.Process(target=_create_jobs, args=(str(path), i, barrier, results))
               for i in range(PROCESSES)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + DEADLINE
    reports = []
    try:
        while len(reports) < PROCESSES:
            try:
                reports.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"only {len(reports)} of {PROCESSES} writers reported within {DEADLINE} s; "
                            f"exit codes: {[w.exitcode for w in workers]}")
        for worker in workers:
            worker.join(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)

    errors = {index: error for index, _, _, error in reports if error}
    assert not errors, "\n".join(f"writer {i}:\n{e}" for i, e in errors.items())
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    assert all(routes == {"direct"} for _, _, routes, _ in reports)
    created = [job_id for _, ids, _, _ in reports for job_id in ids]
    assert len(created) == len(set(created)) == PROCESSES * JOBS_EACH

    with balsamdb.connect(path) as db:
        stored = {job.id for job in db.jobs.filter(workflow="storm")}
        assert db.jobs.count() == PROCESSES * JOBS_EACH
    assert stored == set(created)
    verdict = check(load(sorted(tmp_path.glob("db-h*.history"))), applied_jobs(path, "storm"))
    print(f"[history] {verdict}")
    assert verdict.ok and verdict.ops == PROCESSES * JOBS_EACH, str(verdict)


def test_a_lock_held_longer_than_the_busy_timeout_is_waited_out(tmp_path):
    """A direct write meets a write lock that another connection holds for 6 s, longer than the 5 s
    busy timeout of the writer's own connection: it retries with backoff (up to ``direct_deadline``)
    and lands once the lock is gone, never "database is locked" (broken: a lock that outlasts the
    busy timeout raised at once; the 32 writers above never hold one that long)."""
    import sqlite3
    import threading

    path = tmp_path / "db"
    DBDirectory(path).init()
    holder = sqlite3.connect(path / "db.sqlite3", check_same_thread=False, isolation_level=None, timeout=30)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Event()

    def release():
        holder.execute("COMMIT")
        released.set()

    timer = threading.Timer(6.0, release)  # the hold itself: a lock kept longer than the busy timeout
    timer.start()
    try:
        with balsamdb.connect(path) as db:
            job = db.jobs.create("after-the-lock", make_workdir=False)
            assert db.last_route == "direct", db.last_route
            assert released.is_set(), "the write landed while the lock was held: the test held nothing"
            assert db.jobs.get(job.id).name == "after-the-lock"
    finally:
        timer.cancel()
        if not released.is_set():
            holder.execute("ROLLBACK")
        holder.close()
