"""Two daemons on one PostgreSQL database (documented as supported), racing (issue 24, item 4).

Two DB directories name the same PostgreSQL database, each with its own running server.  The
test holds an EXCLUSIVE lock on the table of applied request ids, so that the first daemon's
transaction waits at the end, holding its row lock, while the second's waits on that row; then
it lets go: the two transactions meet exactly where a real race would make them."""

import time
import uuid

import psycopg2
import pytest
import zmq
from helpers import address, db_cli, fresh_database_url, kill_everything, wait_for

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory

pytestmark = pytest.mark.slow
ANSWER_DEADLINE = 60.0


@pytest.fixture
def two_daemons(pg_cluster, tmp_path, request):
    url = fresh_database_url(pg_cluster)
    paths = [tmp_path / "a", tmp_path / "b"]
    for path in paths:
        DBDirectory(path).init("postgres", url=url)
        request.addfinalizer(lambda path=path: kill_everything(path))
        request.addfinalizer(lambda path=path: db_cli("dbserver", "--stop", "--path", path))
        started = db_cli("dbserver", "--path", path)
        assert started.returncode == 0, started.stderr
    return url, paths


def send(path, message):
    """Send one signed request to the server of ``path``; returns a function that waits for its answer."""
    secret = DBDirectory(path).secret()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address(path)["address"])
    sock.send_multipart([b""] + protocol.encode(secret, dict(message, ts=time.time())))

    def answer():
        try:
            assert sock.poll(int(ANSWER_DEADLINE * 1000)), f"no answer from the server of {path}"
            return protocol.decode(secret, sock.recv_multipart()[1:])
        finally:
            sock.close()
    return answer


def race(url, sends):
    """Lock the applied-request table, send ``[(path, message), ...]``, wait until both daemons'
    transactions wait on a lock, let go; returns the answers."""
    holder = psycopg2.connect(url)
    try:
        holder.cursor().execute("BEGIN; LOCK TABLE applied_request IN EXCLUSIVE MODE")
        answers = [send(path, message) for path, message in sends]

        def waiting():
            cur = holder.cursor()
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            return cur.fetchone()[0] >= len(sends)
        wait_for(waiting, 30, "both daemons' transactions to wait on a lock")
        holder.rollback()
    finally:
        holder.close()
    return [answer() for answer in answers]


def history(url, job_id):
    con = psycopg2.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT from_state, to_state FROM job_state_change "
                    "WHERE job_key = (SELECT key FROM job WHERE id = %s) ORDER BY id", (job_id,))
        return cur.fetchall()
    finally:
        con.close()


def test_two_daemons_racing_on_one_request_id_and_on_one_job(two_daemons):
    """Before: the daemon that lost the race for a request id answered StorageError `duplicate key
    ... applied_request_pkey` for a write that was applied; and two daemons both moved one job
    READY -> RUNNING (two history rows).  Now the loser's batch runs again and answers from the
    record; the state change is a compare-and-set: the second finds RUNNING and is refused."""
    url, (a, b) = two_daemons
    with balsamdb.connect(a) as db:
        modified = db.jobs.create(name="modified", state="READY").id
        moved = db.jobs.create(name="moved", state="READY").id
    same_id = f"the-same-{uuid.uuid4()}"
    first, second = race(url, [(p, {"id": same_id, "op": "job_modify",
                                    "params": {"job_id": modified, "changes": {"data": {"by": p.name}}}})
                               for p in (a, b)])
    assert first.get("ok") and second.get("ok"), (first, second)
    assert first["result"] == second["result"], (first, second)  # one application, one answer
    assert [x.get("replayed", False) for x in (first, second)].count(True) == 1, (first, second)

    one, other = race(url, [(p, {"id": f"move-{p.name}-{uuid.uuid4()}", "op": "job_update_state",
                                 "params": {"job_id": moved, "state": "RUNNING", "message": p.name}})
                            for p in (a, b)])
    outcomes = sorted([bool(one.get("ok")), bool(other.get("ok"))])
    refused = other if one.get("ok") else one
    assert outcomes == [False, True], (one, other)
    assert refused["error"]["code"] == "invalid_transition" and "RUNNING cannot move to RUNNING" in \
        refused["error"]["message"], refused
    assert history(url, moved) == [(None, "READY"), ("READY", "RUNNING")]
