"""The Python API and the operations behind it, on real DB directories.

Every test of the store runs on four routes (the ``route`` fixture): SQLite written directly
(no server), SQLite through a running server, PostgreSQL through a running server (PostgreSQL
has no direct mode), and the HTTP store's operation endpoint in this process (Flask's test client
behind the HTTP client of ``balsamdb.connect("http://...")``; see tests/in_process.py).  Tests about
SQLite itself or the direct mode stay on SQLite.
"""

import re
import time
import uuid
from pathlib import Path

import pytest
from helpers import make_db_directory
from helpers import job_ids_in_db
from records import small_record as _record
from in_process import connect_in_process

import balsamdb
from balsamdb import migrations, states
from balsamdb.dbdir import DBDirectory
from balsamdb.server.dbinit import init_db_directory
from balsamdb.settings import load_settings

ROUTES = ["sqlite3-direct", "sqlite3-server", "postgres-server", "sqlite3-flask"]


@pytest.fixture(params=ROUTES)
def route(request):
    """How the store is reached: ``<backend>-direct`` (no server), ``<backend>-server``, or
    ``sqlite3-flask`` (the HTTP store in this process)."""
    return request.param


@pytest.fixture
def backend(route):
    """Overrides the conftest ``backend`` in this module: the backend of ``route``, so that
    ``any_dbdir`` and ``served_dbdir`` follow the route instead of adding their own parameter."""
    return route.split("-")[0]


@pytest.fixture
def db(route, request, tmp_path):
    """``balsamdb.connect()`` on a fresh DB directory of ``route``; its server (if any) is
    started by ``served_dbdir`` and stopped by its finalizer."""
    path = request.getfixturevalue("served_dbdir" if route.endswith("-server") else "any_dbdir")
    if route.endswith("-flask"):
        with connect_in_process(path, tmp_path / "remote-spool") as database:
            yield database
        assert database.last_route in (None, "http"), f"route {route} went to {database.last_route}"
        return
    with balsamdb.connect(path) as database:
        yield database
    expected = "server" if route.endswith("-server") else "direct"
    assert database.last_route in (None, expected), f"route {route} went to {database.last_route}"


def test_create_gives_client_made_id_and_working_directory(db, route):
    job = db.jobs.create(name="sim-1", workflow="sweep", application="python sim.py", args="--n 10")
    assert uuid.UUID(job.id) and job.state == "CREATED" and job.args == "--n 10"
    assert job.working_directory.endswith(f"data/sweep/sim-1_{job.id[:8]}")
    assert db.jobs.get(job.id) == db.jobs.get(job.id)
    if route.endswith("-flask"):  # over HTTP the directory is relative and made where the jobs run
        assert job.working_directory == f"data/sweep/sim-1_{job.id[:8]}" and db.last_route == "http"
        return
    assert (db.path / "data" / "sweep" / f"sim-1_{job.id[:8]}").is_dir()
    assert db.last_route == ("server" if route.endswith("-server") else "direct")


def test_duplicate_job_id_is_a_conflict(db):
    job_id = str(uuid.uuid4())
    db.jobs.create(name="a", id=job_id)
    with pytest.raises(balsamdb.Conflict):
        db.jobs.create(name="b", id=job_id)
    assert db.jobs.count() == 1


def test_state_machine_allows_and_refuses(db):
    job = db.jobs.create(name="s")
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        job = db.jobs.update_state(job.id, state, message=f"to {state}")
    with pytest.raises(balsamdb.InvalidTransition, match="cannot move"):
        db.jobs.update_state(job.id, "RUNNING")
    history = db.jobs.history(job.id)
    assert [h["to_state"] for h in history] == ["CREATED", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert [h["from_state"] for h in history] == [None, "CREATED", "RUNNING", "RUN_DONE"]
    assert history[1]["message"] == "to RUNNING" and history[0]["time"] <= history[-1]["time"]


@pytest.mark.parametrize("current,new,ok", [
    ("CREATED", "READY", True), ("CREATED", "RUNNING", True), ("CREATED", "RUN_DONE", False),
    ("RUNNING", "RUN_ERROR", True), ("RUN_ERROR", "RESTART_READY", True), ("RESTART_READY", "RUNNING", True),
    ("JOB_FINISHED", "FAILED", False), ("JOB_FINISHED", "USER_KILLED", False), ("FAILED", "RESTART_READY", True),
    ("RUN_DONE", "RUNNING", False), ("PREPROCESSED", "STAGED_IN", False), ("READY", "USER_KILLED", True),
])
def test_transition_table(current, new, ok):
    if ok:
        states.check_transition(current, new)
    else:
        with pytest.raises(balsamdb.InvalidTransition):
            states.check_transition(current, new)


def test_every_non_final_state_can_fail_and_final_states_are_final():
    for state in states.STATES:
        if state in states.FINAL:
            assert "FAILED" not in states.TRANSITIONS[state]
        else:
            assert {"FAILED", "USER_KILLED"} <= states.TRANSITIONS[state]
    assert states.TRANSITIONS["JOB_FINISHED"] == frozenset()


def test_filters(db):
    early = db.jobs.create(name="sim-a", workflow="w1", tags=["x", "y"])
    middle = time.time()
    db.jobs.create(name="sim-b", workflow="w1", tags=["x"])
    db.jobs.create(name="other", workflow="w2")
    db.jobs.update_state(early.id, "RUNNING")
    assert [j.name for j in db.jobs.filter(workflow="w1")] == ["sim-a", "sim-b"]
    assert [j.name for j in db.jobs.filter(tags=["x", "y"])] == ["sim-a"]
    assert db.jobs.count(tags=["x"]) == 2 and db.jobs.count(tags=["nope"]) == 0
    assert [j.name for j in db.jobs.filter(name_like="SIM-*")] == ["sim-a", "sim-b"]
    assert [j.name for j in db.jobs.filter(state="RUNNING")] == ["sim-a"]
    assert db.jobs.count(state=["RUNNING", "CREATED"]) == 3
    assert [j.name for j in db.jobs.filter(created_after=middle)] == ["sim-b", "other"]
    assert [j.name for j in db.jobs.filter(id_prefix=early.id[:6])] == ["sim-a"]
    assert len(db.jobs.filter(limit=2)) == 2 and len(db.jobs.filter(limit=2, offset=2)) == 1
    with pytest.raises(balsamdb.BadRequest, match="unknown states"):
        db.jobs.filter(state="DONE")
    with pytest.raises(balsamdb.BadRequest, match="unknown job filter colour; known: .*since, until, changed, sort, "
                                                  "limit, offset"):
        db.jobs.filter(colour="red")


def test_modify_and_delete(db):
    job = db.jobs.create(name="m", tags=["a"])
    job = db.jobs.modify(job.id, num_nodes=4, tags=["b"], data={"k": 1}, environ={"OMP_NUM_THREADS": "8"})
    assert (job.num_nodes, job.tags, job.data, job.environ) == (4, ["b"], {"k": 1}, {"OMP_NUM_THREADS": "8"})
    assert db.jobs.count(tags=["a"]) == 0 and db.jobs.count(tags=["b"]) == 1
    with pytest.raises(balsamdb.BadRequest, match="cannot modify state"):
        db.jobs.modify(job.id, state="RUNNING")
    with pytest.raises(balsamdb.BadRequest, match="num_nodes must be at least 1"):
        db.jobs.modify(job.id, num_nodes=0)
    assert db.jobs.delete(job.id, str(uuid.uuid4())) == 1
    with pytest.raises(balsamdb.NotFound):
        db.jobs.get(job.id)


def test_bulk_create_is_all_or_nothing(db):
    ids = db.jobs.bulk_create([{"name": f"b{i}", "workflow": "bulk", "tags": ["t"]} for i in range(1200)])
    assert len(set(ids)) == 1200 and db.jobs.count(workflow="bulk", tags=["t"]) == 1200
    with pytest.raises(balsamdb.BadRequest):
        db.jobs.bulk_create([{"name": "ok"}, {"name": "bad", "num_nodes": -1}])
    assert db.jobs.count() == 1200


def test_parents_start_awaiting(db):
    parent = db.jobs.create(name="p")
    child = db.jobs.create(name="c", parents=[parent.id])
    assert child.state == "AWAITING_PARENTS" and child.parents == [parent.id]


def test_records_are_stored_unchanged_and_filled_in(db):
    first = _record("run-1", tags=["_initialized_"], extra={"ünïcode": "✓", "n": [1, 2.5, None]})
    assert db.records.save("P", first) is True
    assert db.records.get("P", "run-1") == first
    done = dict(first, duration=12.5, tags=["_finished_"], stdout_stderr="x" * 3_000_000, outcome="ok")
    assert db.records.save("P", done) is False
    assert db.records.get("P", "run-1") == done
    assert db.records.labels("P", tags=["_finished_"]) == ["run-1"]
    assert db.records.labels("P", tags=["_initialized_"]) == []


def test_a_save_replaces_and_write_once_is_a_project_option(db):
    db.records.save("P", _record("run-1"))
    assert db.records.save("P", _record("run-1", version="def")) is False  # replaced, as in Sumatra's stores
    assert db.records.get("P", "run-1")["version"] == "def"
    assert db.records.get("P", "run-1", version=1)["version"] == "abc"
    db.projects.save("P", write_once=True)
    with pytest.raises(balsamdb.Conflict, match="version"):
        db.records.save("P", _record("run-1", version="ghi"))
    assert db.records.get("P", "run-1")["version"] == "def"
    assert [v["version"] for v in db.records.versions("P", "run-1")] == [1, 2]


def test_record_listing_tags_and_deletes(db):
    db.records.save("P", _record("old", timestamp="2025-01-01 00:00:00+0000", tags=["a"]))
    db.records.save("P", _record("new", timestamp="2026-01-01 00:00:00+0000", tags=["a", "b"]))
    db.records.save("Q", _record("other"))
    assert [r["label"] for r in db.records.list("P")] == ["new", "old"]
    assert [r["label"] for r in db.records.list("P", tags=["a", "b"])] == ["new"]
    assert db.records.tag("P", "old", add=["b"], remove=["a"]) == ["b"]
    assert db.records.get("P", "old")["tags"] == ["b"]
    assert db.records.delete_by_tag("P", "b") == 2
    assert db.records.list("P") == [] and len(db.records.list("Q")) == 1
    with pytest.raises(balsamdb.NotFound):
        db.records.delete("P", "old")
    assert [p["name"] for p in db.projects.list()] == ["P", "Q"]


def test_record_needs_a_label(db):
    with pytest.raises(balsamdb.BadRequest, match="label"):
        db.records.save("P", {"reason": "no label"})
    with pytest.raises(balsamdb.BadRequest, match="JSON object"):
        db.records.save("P", ["not", "a", "dict"])


def test_reinit_keeps_rows_and_upgrades_an_old_schema(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    with balsamdb.connect(path) as database:
        database.jobs.create(name="keep-me")
        database.records.save("P", {"label": "keep-me-too"})
    import sqlite3

    # Make it a version-1 database, as balsamdb 0.1 left it: no user tables.
    con = sqlite3.connect(str(path / "db.sqlite3"))
    con.execute("drop table project_permission")
    con.execute("drop table user")
    con.execute("update schema_version set version = 1")
    con.commit()
    con.close()
    done = DBDirectory(path).init()
    assert any("schema 1 -> 2" in line for line in done) and not any("schema 0 -> 1" in line for line in done)
    assert DBDirectory(path).init() == [
        f"{path} is already a current sqlite3 DB directory (schema {migrations.SCHEMA_VERSION})"]
    with balsamdb.connect(path) as database:
        assert [j.name for j in database.jobs.filter()] == ["keep-me"]
        assert database.records.labels("P") == ["keep-me-too"]
        assert database.call("user_list") == []  # the new tables work


def test_init_again_keeps_rows_and_says_it_is_current(db, backend, route):
    if route.endswith("-flask"):
        pytest.skip("about the DB directory itself, which an HTTP client does not see")
    db.jobs.create(name="keep-me")
    assert init_db_directory(db.path, backend) == [
        f"{db.path} is already a current {backend} DB directory (schema {migrations.SCHEMA_VERSION})"]
    assert [j.name for j in db.jobs.filter()] == ["keep-me"]


def test_postgres_has_no_direct_mode(tmp_path, pg_cluster):
    """With no server, a write to PostgreSQL is spooled for the server (or refused), never applied
    directly, and a read is refused."""
    path = make_db_directory("postgres", tmp_path / "db", pg_cluster)
    with balsamdb.connect(path) as database:
        job = database.jobs.create(name="waits")
        assert job.spooled and database.last_route == "spool"
        assert [p.name for p in (path / "spool" / "new").iterdir()] == [Path(job.spool.path).name]
        with pytest.raises(balsamdb.ServerUnavailable, match=re.escape(f"db dbserver --path {path}")):
            database.jobs.count()
    with balsamdb.connect(path, spool=False) as database:
        with pytest.raises(balsamdb.ServerUnavailable, match=re.escape(f"db dbserver --path {path}")):
            database.jobs.create(name="refused")
        assert database.last_route is None
    assert job_ids_in_db(path) == []
    assert len(list((path / "spool" / "new").iterdir())) == 1


def test_settings_precedence(tmp_path, monkeypatch):
    settings_file = tmp_path / "settings.json"
    settings_file.write_text('{"client_timeout": 7, "require_server": true}')
    monkeypatch.setenv("BALSAMDB_SETTINGS", str(settings_file))
    monkeypatch.delenv("BALSAMDB_CLIENT_TIMEOUT", raising=False)
    assert load_settings().client_timeout == 7.0 and load_settings().require_server is True
    monkeypatch.setenv("BALSAMDB_CLIENT_TIMEOUT", "3.5")
    assert load_settings().client_timeout == 3.5
    assert load_settings(client_timeout=1).client_timeout == 1.0
    monkeypatch.setenv("BALSAMDB_REQUIRE_SERVER", "maybe")
    with pytest.raises(balsamdb.ConfigError, match="BALSAMDB_REQUIRE_SERVER"):
        load_settings()
    settings_file.write_text('{"colour": "red"}')
    monkeypatch.delenv("BALSAMDB_REQUIRE_SERVER")
    with pytest.raises(balsamdb.ConfigError, match="unknown keys"):
        load_settings()


def test_connect_refuses_a_path_that_is_not_a_db_directory(tmp_path):
    with pytest.raises(balsamdb.NotADBDirectory, match="db init"):
        balsamdb.connect(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(balsamdb.NotADBDirectory, match="is a file"):
        balsamdb.connect(tmp_path / "file")


def test_direct_mode_from_many_threads_and_a_forked_child(tmp_path):
    """One process, 8 threads with a Database each, no server; then a forked child reusing one."""
    import multiprocessing
    import threading

    path = tmp_path / "db"
    DBDirectory(path).init()
    errors = []

    def work(n):
        try:
            with balsamdb.connect(path) as db:
                for i in range(25):
                    db.jobs.create(name=f"t{n}-{i}", make_workdir=False)
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    assert time.monotonic() - started < 60
    shared = balsamdb.connect(path)
    assert shared.jobs.count() == 200

    def child():
        shared.jobs.create(name="from-child", make_workdir=False)  # the parent's Database, after fork

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert shared.jobs.count() == 201 and shared.jobs.filter(name="from-child")


def test_upgrade_from_schema_2_keeps_users_and_their_permissions(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    from balsamdb.passwords import hash_password

    with balsamdb.connect(path) as database:
        database.call("user_save", name="alice", password_hash=hash_password("pw"))
        database.call("permission_grant", project="P", user="alice")
    import sqlite3

    # Make it a version-2 database: the user table without the admin column.
    con = sqlite3.connect(str(path / "db.sqlite3"))
    con.execute("pragma foreign_keys = off")
    con.execute("create table user_v2 as select name, password_hash, created_at from user")
    con.execute("drop table user")
    con.execute("alter table user_v2 rename to user")
    con.execute("update schema_version set version = 2")
    con.commit()
    con.close()
    done = DBDirectory(path).init()
    assert any("schema 2 -> 3" in line for line in done), done
    with balsamdb.connect(path) as database:
        assert database.call("user_list") == [
            {"name": "alice", "created_at": database.call("user_list")[0]["created_at"], "admin": False,
             "projects": ["P"]}]


def test_a_fresh_database_has_one_index_per_purpose(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    import sqlite3

    con = sqlite3.connect(str(path / "db.sqlite3"))
    indexes = [row[0] for row in con.execute(
        "select sql from sqlite_master where type = 'index' and sql is not null")]
    con.close()
    on_applied_at = [sql for sql in indexes if '"applied_request" ("applied_at")' in sql]
    assert len(on_applied_at) == 1, indexes  # the migration's index is the model's, not a second one


def test_a_nul_character_is_refused_clearly_on_every_backend(db):
    from balsamdb.exceptions import BadRequest

    for call in (lambda: db.jobs.create(name="bad\x00name"),
                 lambda: db.records.save("P", {"label": "r", "reason": "a\x00b"}),
                 lambda: db.jobs.create(name="ok", tags=["t\x00"])):
        with pytest.raises(BadRequest, match="NUL"):
            call()
    assert db.jobs.create(name="fine").name == "fine"  # and the store goes on


def test_the_retention_of_request_ids_must_be_positive():
    from balsamdb.exceptions import ConfigError
    from balsamdb.settings import load_settings

    for value in (0, -1):
        with pytest.raises(ConfigError, match="applied_retention_days"):
            load_settings(applied_retention_days=value)



def test_claims_acquire_renew_release_on_every_route(db, route):
    """``job_acquire`` / ``job_renew`` / ``job_release`` and the owner's state changes, the same on
    every route (direct SQLite, the write server on both backends, the HTTP operation endpoint
    behind the remote client)."""
    from balsamdb.exceptions import Conflict

    ids = [db.jobs.create(name=f"j{i}", workflow="claims", state="READY").id for i in range(3)]
    db.jobs.create(name="other", workflow="elsewhere", state="READY")
    first = db.jobs.acquire(2, owner="A", lease=300, workflow="claims")
    assert len(first) == 2 and {j.owner for j in first} == {"A"}
    assert all(abs(j.lease_expires - j.renewed_at - 300) < 1e-6 for j in first)
    second = db.jobs.acquire(5, owner="B", lease=300, workflow="claims")
    assert {j.id for j in second} == set(ids) - {j.id for j in first}
    assert db.jobs.acquire(5, owner="C", workflow="claims") == []
    assert db.jobs.acquire(0, owner="C") == []
    mine = first[0].id
    renewed = db.jobs.renew([mine, second[0].id], owner="A", lease=600)
    assert renewed == {"renewed": 1, "lost": [second[0].id]}
    with pytest.raises(Conflict, match="not held by B"):
        db.jobs.update_state(mine, "RUNNING", owner="B")
    before = db.call("job_get", job_id=mine)
    db.jobs.update_state(mine, "RUNNING", "started", owner="A")  # the owner's change renews the lease
    after = db.call("job_get", job_id=mine)
    assert after["owner"] == "A" and after["renewed_at"] >= before["renewed_at"]
    assert abs(after["lease_expires"] - after["renewed_at"] - 600) < 1e-6
    assert {j.id for j in db.jobs.filter(owner="A", workflow="claims")} == {j.id for j in first}
    assert db.jobs.release([first[1].id, second[0].id], owner="A") == 1  # B's job is not A's to release
    assert [j.id for j in db.jobs.acquire(1, owner="C", workflow="claims")] == [first[1].id]
    db.jobs.update_state(mine, "FAILED", owner="A")  # a final state ends the claim
    assert db.call("job_get", job_id=mine)["owner"] is None
    with pytest.raises(balsamdb.BadRequest, match="lease"):
        db.jobs.acquire(1, owner="A", lease=0.5)
    with pytest.raises(balsamdb.BadRequest, match="non-final"):
        db.jobs.acquire(1, owner="A", states=["JOB_FINISHED"])
