"""Reads off the write server: the read service, reads of the SQLite file in the client, streamed
listings, and what a read sees (docs/guarantees.md).  Real servers, real client processes."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import BadRequest, ReadTimeout, ServerUnavailable
from balsamdb.facades import Jobs
from balsamdb.reads import Reader
from balsamdb.settings import load_settings

from helpers import address, db_cli, kill_everything, wait_for

LISTED = 20000  # jobs in the listing that streams while a writer writes


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAMDB_") and k != "BALSAM_DB_PATH"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _statuses(path):
    with balsamdb.connect(path, require_server=True) as db:
        return db.server_status(), db.read_service_status()


def test_a_big_listing_streams_from_the_read_service_while_writes_go_through(served_dbdir, backend):
    """While a full `db ls` of 20k jobs streams (through the read service), a writer gets every
    write answered, and the write server serves no read at all: the read never waits on it, nor it
    on the read.  Also: the read service answers reads of a client that may not read the file
    (local_reads off; PostgreSQL always), a client on this host reads SQLite itself, and both see
    every acknowledged write."""
    path = served_dbdir
    db = balsamdb.connect(path, require_server=True)
    db.jobs.bulk_create([{"name": f"bulk-{i:05d}", "workflow": "big"} for i in range(LISTED)], make_workdir=False)
    info = address(path)
    assert info["read_address"].startswith("tcp://127.0.0.1:") and info["reader_state"] == "running"
    before, reader_before = _statuses(path)

    listing = path.parent / "listing.txt"
    with open(listing, "w") as out_file:
        ls = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "ls", "--path", str(path), "--workflow", "big"],
                              stdout=out_file, stderr=subprocess.PIPE, text=True,
                              env=_env(BALSAMDB_LOCAL_READS="0"))
    try:
        # The listing has begun: rows are printed as pages arrive, before the last page is read.
        wait_for(lambda: listing.stat().st_size > 0 or ls.poll() is not None, 60, "the first rows of db ls")
        written_during = 0
        while ls.poll() is None:
            db.jobs.create(name=f"during-{written_during}", workflow="writes", make_workdir=False)
            written_during += 1
        err = ls.communicate(timeout=120)[1]
    finally:
        if ls.poll() is None:
            ls.kill()
            ls.wait()
    assert ls.returncode == 0, err
    out = listing.read_text()
    assert out.splitlines()[0].split() == ["id", "name", "workflow", "application", "state", "created"]
    rows = out.splitlines()[2:]  # after the header and the dashes
    assert len(rows) == LISTED and len({r.split()[0] for r in rows}) == LISTED
    assert written_during >= 1, "no write was answered while the listing ran"
    after, reader_after = _statuses(path)
    # The write server answered the writes (and two status calls), and no read at all.
    assert after["reads_refused"] == 0
    assert after["requests"] - before["requests"] <= written_during + 2
    assert after["writes"] - before["writes"] == written_during
    pages = reader_after["reads"] - reader_before["reads"]
    assert pages >= LISTED // Jobs.LISTING_PAGE, reader_after
    # Read your acknowledged writes, from the service and from the file itself.
    remote = balsamdb.connect(path, local_reads=False)
    assert remote.jobs.count(workflow="writes") == written_during and remote.last_read_route == "reader"
    if backend == "sqlite3":
        local = balsamdb.connect(path)
        assert local.jobs.count(workflow="writes") == written_during and local.last_read_route == "local"
        assert _statuses(path)[1]["reads"] == reader_after["reads"] + 1  # only the remote count went there
    # The same listing in both orders, paged by keyset (no row twice, none missed).
    forward = [j.id for j in remote.jobs.iter(workflow="big", sort="name", page_size=3000)]
    backward = [j.id for j in remote.jobs.iter(workflow="big", sort="-name", page_size=777)]
    assert forward == backward[::-1] and len(set(forward)) == LISTED
    status = db_cli("dbserver", "--status", "--path", path, check=True).stdout
    assert "reader:   pid" in status and "reads:" in status, status


def _raw(sock, secret, message):
    sock.send_multipart([b""] + protocol.encode(secret, dict(message, ts=time.time())))


def test_a_slow_read_runs_once_and_the_read_service_is_restarted(tmp_path):
    """A read that takes longer than client_timeout is answered, run once: the service sends working
    replies, and a resend of its id on a fresh socket joins it.  A killed read service is restarted
    by the watchdog, and reads go on."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    started = db_cli("dbserver", "--path", path, env=_env(BALSAMDB_TEST_READ_DELAY="3"))
    try:
        assert started.returncode == 0, started.stderr
        secret = DBDirectory(path).secret()
        db = balsamdb.connect(path, local_reads=False, client_timeout=1.0)
        db.jobs.create(name="one", make_workdir=False)
        # A first try on a socket of its own, then the same id from a client: one read, joined.
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address(path)["read_address"])
        try:
            _raw(sock, secret, {"id": "slow-read-1", "op": "job_count", "params": {}})
            wait_for(lambda: _statuses(path)[1]["reads_running"] == 1, 10, "the raw read to start")
            assert db.request("job_count", {}, request_id="slow-read-1") == 1  # waited > client_timeout
        finally:
            sock.close()
        reader = _statuses(path)[1]
        assert reader["reads"] == 1 and reader["reads_joined"] == 1, reader
        assert reader["working_replies"] >= 2, reader  # the client waited on them, never resending afresh
        # A slow read of its own: one read, however many client_timeouts it lasts.
        assert db.jobs.count() == 1
        reader = _statuses(path)[1]
        assert reader["reads"] == 2 and reader["reads_joined"] == 1, reader
        log = (path / "log" / "reader.log").read_text()
        assert "read service pid" in log

        old = address(path)["reader"]["pid"]
        psutil.Process(old).kill()
        wait_for(lambda: address(path).get("reader", {}).get("pid") not in (None, old), 20,
                 "the watchdog to restart the read service")
        assert db.jobs.count() == 1 and db.last_read_route == "reader"
        assert "read service pid" in (path / "log" / "watchdog.log").read_text()
        assert address(path)["reader_restarts"] == 1
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_a_read_over_its_time_limit_is_stopped_with_a_clear_error(served_dbdir, backend):
    """SQLite's progress handler (PostgreSQL: statement_timeout) stops a read over read_time_limit:
    ReadTimeout, nothing else changes, and the next read on a connection with a longer limit works."""
    db = balsamdb.connect(served_dbdir, require_server=True)
    db.jobs.bulk_create([{"name": f"n{i}", "description": "x" * 200} for i in range(20000)], make_workdir=False)
    reader = Reader(DBDirectory(served_dbdir), load_settings(read_time_limit=0.001))
    try:
        answer = reader.run("job_count", {"filters": {"name_like": "*zz*"}})
        assert answer["ok"] is False and answer["error"]["code"] == ReadTimeout.code, answer
        assert "read_time_limit" in answer["error"]["message"]
    finally:
        reader.close()
    reader = Reader(DBDirectory(served_dbdir), load_settings(read_time_limit=60.0))
    try:
        assert reader.run("job_count", {}) == {"ok": True, "result": 20000}
        assert reader.run("job_create", {"job": {"name": "x"}})["error"]["code"] == "bad_request"
    finally:
        reader.close()


def test_what_a_read_sees_its_own_spooled_writes_pages_and_checkpoints(dbdir):
    """A read sees this client's writes: refused while one waits in the spool with no server, and
    waits for the drain when a server runs.  A streamed listing is consistent per page: between
    pages it holds no snapshot (a checkpoint completes) and rows created meanwhile are listed once."""
    db = balsamdb.connect(dbdir, require_server=True)
    spooled = db.jobs.create(name="spooled", make_workdir=False)
    assert spooled.spooled
    with pytest.raises(ServerUnavailable, match="waits in .* no server runs"):
        db.jobs.count()
    started = db_cli("dbserver", "--path", dbdir)
    try:
        assert started.returncode == 0, started.stderr
        assert db.jobs.count() == 1 and db.last_read_route == "local"  # waited for the drain, then read
        db.jobs.bulk_create([{"name": f"p{i}"} for i in range(2500)], make_workdir=False)
        listing = db.jobs.iter(page_size=1000)
        seen = [next(listing).id for _ in range(1000)]  # the first page, and the iterator mid-listing
        db.jobs.bulk_create([{"name": f"late{i}"} for i in range(300)], make_workdir=False)
        import sqlite3

        con = sqlite3.connect(DBDirectory(dbdir).sqlite_file)
        try:
            busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            con.close()
        assert busy == 0 and frames == done, (busy, frames, done)  # no reader holds the WAL back
        seen += [job.id for job in listing]
        assert len(seen) == len(set(seen)) == 1 + 2500 + 300
    finally:
        db_cli("dbserver", "--stop", "--path", dbdir)
        kill_everything(dbdir)


def test_a_read_waits_while_its_own_spooled_write_waits_for_a_running_server(dbdir):
    """With a server running, a read waits for this client's spooled write to be applied, and says
    so when it is not by ``client_deadline`` (broken: the wait only when no server runs; a read
    meanwhile answered without the write).  Made to happen: the server is SIGSTOPped, so that this
    client's write is spooled while its server runs, and is not drained until SIGCONT."""
    import signal

    started = db_cli("dbserver", "--path", dbdir)
    pid = None
    try:
        assert started.returncode == 0, started.stderr
        pid = address(dbdir)["server"]["pid"]
        db = balsamdb.connect(dbdir, require_server=True, client_timeout=0.5, client_deadline=3)
        os.kill(pid, signal.SIGSTOP)
        try:
            job = db.jobs.create(name="spooled-while-stopped", make_workdir=False)
            assert job.spooled and db.last_route == "spool"
            with pytest.raises(ServerUnavailable, match="still waits in .* after 3 s"):
                db.jobs.count()
        finally:
            os.kill(pid, signal.SIGCONT)
        assert db.jobs.count() == 1  # waited for the drain, then read
        assert list((dbdir / "spool" / "failed").iterdir()) == []  # the copies queued while stopped: one request
        db.close()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        db_cli("dbserver", "--stop", "--path", dbdir)
        kill_everything(dbdir)


def _peak_rss_of(cmd, env):
    """Run ``cmd`` to its end, sampling its RSS; returns (peak RSS, lines printed, bytes printed)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak, lines, size = 0, 0, 0
    try:
        ps = psutil.Process(proc.pid)
        for line in proc.stdout:
            lines += 1
            size += len(line)
            if lines % 2000 == 0:
                try:
                    peak = max(peak, ps.memory_info().rss)
                except psutil.Error:
                    pass
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return peak, lines, size


def test_a_full_listing_streams_in_bounded_memory(tmp_path):
    """`db ls --json` of 40k jobs of 2.5 KB each prints them all while its RSS stays far below what
    the listing would take held whole (the JSON printed is over 100 MB)."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    db = balsamdb.connect(path)
    total = 40000
    for start in range(0, total, 10000):
        db.jobs.bulk_create([{"name": f"job-{i:06d}", "workflow": "mem", "data": {"blob": "x" * 2500}}
                             for i in range(start, start + 10000)], make_workdir=False)
    db.close()
    cmd = [sys.executable, "-m", "balsamdb.cli", "ls", "--path", str(path), "--json"]
    peak, lines, size = _peak_rss_of(cmd, _env())
    print(f"db ls --json: {lines} lines, {size / 2 ** 20:.0f} MB, peak RSS {peak / 2 ** 20:.0f} MB")
    assert lines > total * 20, lines  # every job was printed (about 22 lines each)
    assert size > 100 * 2 ** 20
    assert 0 < peak < 90 * 2 ** 20, f"peak RSS {peak / 2 ** 20:.0f} MB for a listing of {size / 2 ** 20:.0f} MB"


def test_db_ls_rows_are_the_listings_jobs_in_its_order_across_pages(dbdir):
    """`db ls` reads tuples of a few fields (`iter_rows`, `job_rows`): the jobs `iter` lists, in its
    order, for each sort and from the tag side, across pages of 7: the cursor comes from the columns,
    or from the sort key's values they lack (the state's rank, the tag rows' columns), never sent back."""
    db = balsamdb.connect(dbdir)
    for batch in range(3):  # three creation times; ties within each are broken by id
        db.jobs.bulk_create([{"name": f"j{i % 5}", "workflow": f"w{i % 2}", "tags": ["gpu"] if i % 3 else []}
                             for i in range(batch * 20, batch * 20 + 20)], make_workdir=False)
    for i, job in enumerate(db.jobs.iter(limit=20)):
        db.jobs.update_state(job.id, "READY" if i % 2 else "USER_KILLED")
    columns = ("id", "name", "state", "created_at")
    for sort in ("created", "-created", "state", "-state", "name", "-updated"):
        for tags in (None, ["gpu"]):
            expected = [(j.id, j.name, j.state, j.created_at) for j in db.jobs.iter(sort=sort, tags=tags)]
            rows = [tuple(row) for row in db.jobs.iter_rows(columns, sort=sort, tags=tags, page_size=7)]
            assert rows == expected and len(expected) == (40 if tags else 60), (sort, tags)
    assert len(list(db.jobs.iter_rows(["id"], sort="state", limit=10, page_size=3))) == 10
    with pytest.raises(BadRequest, match="columns must be"):
        next(db.jobs.iter_rows(["data"]))
    db.close()

def test_a_read_stopped_while_its_rows_are_fetched_is_a_read_timeout(tmp_path):
    """SQLite interrupts a read at its time limit also while the rows are fetched (a page's GROUP BY over
    a million jobs' history did): that is ReadTimeout, as when the statement starts, never a raw
    driver error (an internal error, 500, on the pages)."""
    DBDirectory(tmp_path / "db").init()
    reader = Reader(DBDirectory(tmp_path / "db"), load_settings(), time_limit=0.2, lazy=True)

    def endless(database):
        for _row in database.execute_sql("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) "
                                         "SELECT x FROM n"):
            pass

    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        reader.query(endless)
    assert time.monotonic() - started < 30
    assert reader.query(lambda database: database.execute_sql("SELECT 1").fetchone()) == (1,), "it reads on"
