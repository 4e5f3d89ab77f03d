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


def race(url, sends, one_by_one=False):
    """Lock the applied-request table, send ``[(path, message), ...]``, wait until both daemons'
    transactions wait on a lock, let go; returns the answers.  ``one_by_one``: each is sent once the
    ones before it wait (they take their locks in that order)."""
    holder = psycopg2.connect(url)
    try:
        holder.cursor().execute("BEGIN; LOCK TABLE applied_request IN EXCLUSIVE MODE")

        def waiting(n):
            cur = holder.cursor()
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
            return cur.fetchone()[0] >= n
        answers = []
        for path, message in sends:
            answers.append(send(path, message))
            if one_by_one:
                wait_for(lambda: waiting(len(answers)), 30, f"{len(answers)} daemons' transactions to wait on a lock")
        wait_for(lambda: waiting(len(sends)), 30, "both daemons' transactions to wait on a lock")
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


def _keyed(url):
    """``{job id: ([(from_state, to_state, message), ...], {tags})}`` joined by the job's key (schema 11)."""
    con = psycopg2.connect(url)
    try:
        cur = con.cursor()
        cur.execute("SELECT j.id, h.from_state, h.to_state, h.message FROM job_state_change h "
                    "JOIN job j ON j.key = h.job_key ORDER BY h.id")
        out = {}
        for job_id, *row in cur.fetchall():
            out.setdefault(job_id, ([], set()))[0].append(tuple(row))
        cur.execute("SELECT j.id, t.tag FROM job_tag t JOIN job j ON j.key = t.job_key")
        for job_id, tag in cur.fetchall():
            out.setdefault(job_id, ([], set()))[1].add(tag)
        cur.execute("SELECT count(*) FROM job_state_change WHERE job_key NOT IN (SELECT key FROM job)")
        assert cur.fetchone()[0] == 0
        return out
    finally:
        con.close()


def test_two_daemons_creating_and_deleting_jobs_at_once_keep_each_jobs_rows_its_own(two_daemons):
    """Both daemons create jobs in transactions that meet (each job takes a key from the one sequence,
    its history and tags look it up by id), then one deletes a job while the other changes its tags,
    and the one that deleted it makes it again under the same id: every job's history and tags are
    its own, and a job has rows only while it is there."""
    url, (a, b) = two_daemons
    made = {p: [{"id": str(uuid.uuid4()), "name": f"{p.name}-{i}", "workflow": "w", "tags": [p.name, f"n{i}"],
                 "working_directory": f"d/{p.name}-{i}"} for i in range(40)] for p in (a, b)}
    answers = race(url, [(p, {"id": f"create-{p.name}-{uuid.uuid4()}", "op": "job_bulk_create",
                              "params": {"jobs": made[p]}}) for p in (a, b)])
    assert all(answer.get("ok") for answer in answers), answers
    rows = _keyed(url)
    assert {i: r for i, r in rows.items()} == {j["id"]: ([(None, "CREATED", "created")], set(j["tags"]))
                                               for p in (a, b) for j in made[p]}
    victim = made[a][0]
    # The delete first (it holds the job's row, and waits at its end); then the change of its tags,
    # which waits for that row: it goes on once the delete committed, with the key it read before.
    deleted, modified = race(url, [(a, {"id": f"delete-{uuid.uuid4()}", "op": "job_delete",
                                        "params": {"job_ids": [victim["id"]]}}),
                                   (b, {"id": f"modify-{uuid.uuid4()}", "op": "job_modify",
                                        "params": {"job_id": victim["id"], "changes": {"tags": ["late"]}}})],
                             one_by_one=True)
    assert modified.get("error", {}).get("code") == "not_found", modified  # not a tag row of no job
    assert deleted.get("ok") and deleted["result"] == {"deleted": 1}, deleted
    assert victim["id"] not in _keyed(url)
    again = dict(victim, tags=["again"])
    made_again = send(a, {"id": f"again-{uuid.uuid4()}", "op": "job_bulk_create", "params": {"jobs": [again]}})()
    assert made_again.get("ok"), made_again
    assert _keyed(url)[victim["id"]] == ([(None, "CREATED", "created")], {"again"})
