"""The record of applied requests stays small and still answers a retry with the original
answer (issue 12, item 8)."""

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import balsamdb
from balsamdb.dbdir import DBDirectory
from balsamdb.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent


def _stored(path):
    """{request id: stored answer text}, read with SQL."""
    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        return dict(database.execute_sql("select request_id, response from applied_request").fetchall())
    finally:
        database.close()


def _text(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def test_a_retry_gets_the_original_answer_from_a_compact_record(served_dbdir):
    """Through the server: a job is created (2 KB of data, a default 0 that the row keeps as
    0.0), moved, modified, moved and deleted; then every one of these writes is sent again
    with its id.  Each retry gets the original answer, byte for byte, also those whose job
    was changed or deleted since; the job answers are stored compactly."""
    path = served_dbdir
    job_id = str(uuid.uuid4())
    data = {"values": os.urandom(1000).hex(), "x": 1.5, "n": [1, 2.0, None]}
    writes = [
        ("job_create", {"job": {"id": job_id, "name": "a", "data": data, "tags": ["t"], "environ": {"A": "1"}}}),
        ("job_update_state", {"job_id": job_id, "state": "RUNNING", "message": "go"}),
        ("job_modify", {"job_id": job_id, "changes": {"data": {"v": 2}, "num_nodes": 3}}),
        ("job_update_state", {"job_id": job_id, "state": "RUN_DONE"}),
        ("job_delete", {"job_ids": [job_id]}),
    ]
    first = []
    with balsamdb.connect(path, require_server=True) as db:
        for op, params in writes:
            request_id = os.urandom(16).hex()
            first.append((request_id, op, params, db.request(op, params, request_id=request_id)))
        assert db.last_route == "server"
        stored = _stored(path)
        for request_id, op, params, answer in first:
            if op != "job_delete":
                assert stored[request_id].startswith('{"job":'), f"{op} stored whole: {stored[request_id][:80]}"
                assert len(stored[request_id]) < 250, stored[request_id]
        for request_id, op, params, answer in first:
            again = db.request(op, params, request_id=request_id)
            assert _text(again) == _text(answer), f"the retry of {op} got another answer"
    assert first[0][3]["wall_time_minutes"] == 0 and _text(first[0][3]["wall_time_minutes"]) == "0"
    assert first[0][3]["data"] == data and first[1][3]["state"] == "RUNNING"
    with balsamdb.connect(path) as db:
        assert db.call("job_count") == 0, "a retry applied a write again"


def test_the_record_adds_at_most_a_quarter_of_the_rows_written(tmp_path):
    """scripts/bench_applied_record.py on 100 jobs with 2 KB of data, each created and moved
    through three states: the record adds at most 25% to the bytes of the rows written."""
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_applied_record.py"), "--jobs", "100",
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["writes"] == 400
    assert result["record_share"] <= 0.25, proc.stdout
    assert result["whole_share"] > 1.0, proc.stdout  # what it was: more than the rows themselves


def test_upgrade_to_compact_answers_in_place_keeps_answers_stored_whole(dbdir, run_db):
    """A schema 3 database, whose answers are stored whole, is upgraded in place by db init,
    idempotently; a retry of a write recorded before the upgrade gets its answer."""
    path = dbdir
    with balsamdb.connect(path) as db:
        job = db.call("job_create", job={"name": "old"})
    request_id = "before-the-upgrade"
    whole = _text({"ok": True, "result": job})
    con = sqlite3.connect(str(path / "db.sqlite3"))
    with con:
        con.execute("drop table job_answer_base")
        con.execute("update schema_version set version = 3")
        con.execute("insert into applied_request (request_id, applied_at, response) values (?, 0, ?)",
                    (request_id, whole))
    con.close()
    upgraded = run_db("init", path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "schema 3 -> 4" in upgraded.stdout + upgraded.stderr
    again = run_db("init", path)
    assert again.returncode == 0 and "->" not in again.stdout + again.stderr, again.stdout
    with balsamdb.connect(path) as db:
        answer = db.request("job_create", {"job": {"name": "old"}}, request_id=request_id)
        assert _text(answer) == _text(job)
        assert db.call("job_count") == 1


def test_a_retry_after_an_import_changed_the_job_gets_the_original_answer(dbdir):
    """Direct SQLite: a job is created, modified, then replaced by import_items (as db import and
    db copy do); retries of the create and the modify still get their original answers, and the
    fields they need are forgotten with the request ids once the retention is over."""
    from balsamdb.models import MODELS
    from balsamdb.statements import statements

    path = dbdir
    job_id = str(uuid.uuid4())
    with balsamdb.connect(path) as db:
        create = ("job_create", {"job": {"id": job_id, "name": "a", "data": {"v": "A" * 3000}}}, "r-create")
        modify = ("job_modify", {"job_id": job_id, "changes": {"data": {"v": "B"}}}, "r-modify")
        answers = [db.request(op, params, request_id=rid) for op, params, rid in (create, modify)]
        item = db.call("export_items", kind="job")["items"][0]
        item["data"] = {"v": "C"}
        assert db.call("import_items", items=[item]) == {"added": 0, "updated": 1, "unchanged": 0}
        assert db.last_route == "direct"
        for (op, params, rid), answer in zip((create, modify), answers):
            assert _text(db.request(op, params, request_id=rid)) == _text(answer), f"the retry of {op} changed"
        assert db.call("job_get", job_id=job_id)["data"] == {"v": "C"}
    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        with database.bind_ctx(MODELS), database.atomic():
            assert database.execute_sql("select count(*) from job_answer_base").fetchone()[0] == 2
            statements(database).prune_applied(before=4e9, limit=1000)  # as if the retention were over
            assert database.execute_sql("select count(*) from job_answer_base").fetchone()[0] == 0
    finally:
        database.close()


def test_a_retry_in_the_same_group_commit_gets_the_original_answer(any_dbdir):
    """A write and its retry in one batch (a client that resent after a server restart): in the
    optimistic pass the job's insert is deferred, and the retry still gets the first answer."""
    from balsamdb.applier import apply
    from balsamdb.migrations import upgrade
    from balsamdb.models import MODELS
    from balsamdb.request import Request

    database = DBDirectory(any_dbdir).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        upgrade(database)
        job_id = str(uuid.uuid4())
        def create():
            return Request("r-1", "job_create", {"job": {"id": job_id, "name": "a", "data": {"v": 1}}})

        with database.bind_ctx(MODELS):
            first, again = (r.answer for r in apply(database, [create(), create()], database.atomic))
            later, = (r.answer for r in apply(database, [create()], database.atomic))
    finally:
        database.close()
    assert first["ok"] and again.pop("replayed") and later.pop("replayed")
    assert _text(again) == _text(first) == _text(later)
