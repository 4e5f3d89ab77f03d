"""Crashes made to happen where they matter (issue 25), not waited for: a fault file
(balsamdb.crash_points) makes the write server SIGKILL itself at a named point of its code, once."""

import pytest

import balsamdb
from history import applied_jobs
from helpers import address, db_cli, kill_everything, wait_for


@pytest.fixture
def armed_server(dbdir, tmp_path, request):
    """``(path, fault_file)``: a write server (and watchdog) whose processes read ``fault_file``."""
    import os

    fault = tmp_path / "fault"
    env = dict(os.environ, BALSAMDB_FAULT_FILE=str(fault))
    request.addfinalizer(lambda: kill_everything(dbdir))
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", dbdir))
    db_cli("dbserver", "--path", dbdir, env=env, check=True)
    return dbdir, fault


@pytest.mark.parametrize("point", ["after-writes", "after-applied-insert"])
def test_a_crash_inside_the_group_commit_applies_the_retry_once(armed_server, point):
    """The server dies after a batch's writes and before its request ids are inserted, or after they
    were and before the COMMIT: the write and its id are rolled back together, so the client's retry
    (same id, to the restarted server) is applied, once, and answered as a success (broken: the batch
    written outside a transaction: the write stays without its id, and the retry finds the job)."""
    path, fault = armed_server
    before = address(path)
    with balsamdb.connect(path, client_timeout=1.0, client_deadline=60, spool=False) as db:
        db.jobs.create(name="warm-up", make_workdir=False)  # the first batch is not the one that dies
        fault.write_text(point)
        job = db.jobs.create(name="dies-before-commit", make_workdir=False)
        assert db.last_route == "server" and not job.spooled
    assert not fault.exists(), "the server never reached the crash point: this test proved nothing"
    after = wait_for(lambda: address(path).get("state") == "running" and address(path), 30, "a running server")
    assert after["server"]["pid"] != before["server"]["pid"], "the server was not restarted"
    jobs = applied_jobs(path)
    assert jobs.get(job.id) == [job.id], f"the job is stored {len(jobs.get(job.id, []))} times (CREATED rows)"
    assert len(jobs) == 2, jobs  # the warm-up and this one, nothing else
