"""Schema 11's job keys attacked (issue 22): history and tags hold the job's internal integer key,
which SQLite gives again once the largest is deleted (``INTEGER PRIMARY KEY``, no AUTOINCREMENT).
Each test checks, by job id, that no job ever shows another's history or tags: after a delete and
a create that takes the freed key, through a fast copy while another writer takes and frees keys in
the destination, after ``db prune`` and a full ``db vacuum``, and after ``db init`` killed before its
upgrade committed."""

import os
import socket
import sqlite3
import uuid
from contextlib import closing

import balsamdb
from balsamdb import migrations, schema_keys
from balsamdb.dbdir import DBDirectory
from balsamdb.operations.store_bulk import source_identity, source_proof
from balsamdb.settings import load_settings
from fixtures import sqlite_dir  # noqa: F401  (a fixture)

import old_schema


def _spec(name, tags=()):
    return {"id": str(uuid.uuid4()), "name": name, "workflow": "w", "working_directory": f"data/{name}",
            "tags": list(tags)}


def _sql(path, query, params=()):
    with closing(sqlite3.connect(f"file:{path / 'db.sqlite3'}?mode=ro", uri=True)) as con:
        return con.execute(query, params).fetchall()


def _key(path, job):
    return _sql(path, "SELECT key FROM job WHERE id = ?", (job["id"],))[0][0]


def _by_id(path, column="job_key", parent="key"):
    """``{job id: [(to_state, message, time), ...]}`` and ``{job id: {tags}}``, joined as stored."""
    history, tags = {}, {}
    for job_id, to_state, message, when in _sql(
            path, f"SELECT j.id, h.to_state, h.message, h.time FROM job_state_change h "
                  f"JOIN job j ON j.{parent} = h.{column} ORDER BY h.id"):
        history.setdefault(job_id, []).append((to_state, message, when))
    for job_id, tag in _sql(path, f"SELECT j.id, t.tag FROM job_tag t JOIN job j ON j.{parent} = t.{column}"):
        tags.setdefault(job_id, set()).add(tag)
    return history, tags


def test_a_job_that_takes_a_deleted_jobs_key_has_none_of_its_history_or_tags(dbdir):
    kept, gone, new = _spec("kept", ["k"]), _spec("gone", ["g"]), _spec("new", ["n"])
    with balsamdb.connect(dbdir) as db:
        db.call("job_bulk_create", jobs=[kept])
        db.call("job_bulk_create", jobs=[gone])
        db.call("job_update_state", job_id=gone["id"], state="STAGED_IN", message="gone moved")
        db.call("job_modify", job_id=gone["id"], changes={"tags": ["g", "g2"]})
        freed = _key(dbdir, gone)
        db.call("job_delete", job_ids=[gone["id"]])
        db.call("job_bulk_create", jobs=[new])
        assert _key(dbdir, new) == freed  # the case tested: SQLite gave the deleted job's key again
        got = db.call("job_get", job_id=new["id"])
        assert [(h["to_state"], h["message"]) for h in got["history"]] == [("CREATED", "created")]
        assert got["tags"] == ["n"]
        assert db.call("job_filter", filters={"tags": ["g2"]}) == []
        assert [j["id"] for j in db.call("job_filter", filters={"tags": ["n"]})] == [new["id"]]
        db.call("job_modify", job_id=new["id"], changes={"tags": ["n2"]})
    history, tags = _by_id(dbdir)
    assert set(history) == {kept["id"], new["id"]} and [h[:2] for h in history[new["id"]]] == [("CREATED", "created")]
    assert tags == {kept["id"]: {"k"}, new["id"]: {"n2"}}


def _copy_params(db, path, **more):
    return dict(source=path, identity=source_identity(path), host=socket.gethostname(),
                proof=source_proof(path, os.path.realpath(db.dbdir.sqlite_file)), **more)


def test_a_fast_copy_gives_each_job_its_own_rows_while_another_writer_takes_and_frees_keys(sqlite_dir):
    """The destination's own writer creates a job between two chunks of the job table (it takes the key
    that the source's next job has there) and creates and deletes another (whose key the copy then takes
    again): the copied history and tags are mapped through the job's id (broken: copied by the source's
    key, the second chunk's history lands on the other writer's job)."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    jobs = [_spec(f"j{i}", [f"t{i}"]) for i in range(3)]
    with balsamdb.connect(src) as db:
        for job in jobs:  # one at a time: keys, history ids and tag rows in this order
            db.call("job_bulk_create", jobs=[job])
        db.call("job_update_state", job_id=jobs[0]["id"], state="STAGED_IN", message="first moved")
    path = os.path.realpath(src / "db.sqlite3")
    other, freed = _spec("other"), _spec("freed")
    with balsamdb.connect(dst) as db:
        for table in ("user", "project", "project_permission"):
            db.call("bulk_copy", **_copy_params(db, path, table=table))
        first = db.call("bulk_copy", **_copy_params(db, path, table="job", limit=1))
        assert first["copied"] == 1 and first["next"] is not None
        db.call("job_bulk_create", jobs=[other])  # the key jobs[1] has in the source
        db.call("job_bulk_create", jobs=[freed])
        db.call("job_delete", job_ids=[freed["id"]])
        assert _key(dst, other) == _key(src, jobs[1])  # the case tested
        rest = db.call("bulk_copy", **_copy_params(db, path, table="job", after=first["next"]))
        assert rest["copied"] == 2 and rest["next"] is None
        db.call("bulk_copy", **_copy_params(db, path, table="workflow_policy"))
        for job in jobs:
            assert db.call("job_get", job_id=job["id"])["history"] == _history(src, job)
        assert [(h["to_state"], h["message"]) for h in db.call("job_get", job_id=other["id"])["history"]] == \
            [("CREATED", "created")]
    copied_history, copied_tags = _by_id(dst)
    source_history, source_tags = _by_id(src)
    assert copied_history == dict(source_history, **{other["id"]: copied_history[other["id"]]})
    assert copied_tags == source_tags  # the other writer's job has none


def _history(path, job):
    with balsamdb.connect(path) as db:
        return db.call("job_get", job_id=job["id"])["history"]


def test_prune_and_a_full_vacuum_keep_each_jobs_rows_under_its_key(dbdir, run_db):
    """Keys with gaps (deleted jobs), the newest history row of each job kept by ``db prune``, then a
    full VACUUM (which renumbers the rowids of tables without an INTEGER PRIMARY KEY): every job keeps
    its key and its own rows."""
    jobs = [_spec(f"j{i}", [f"t{i}"]) for i in range(6)]
    with balsamdb.connect(dbdir) as db:
        for job in jobs:
            db.call("job_bulk_create", jobs=[job])
            db.call("job_update_state", job_id=job["id"], state="STAGED_IN", message=f"{job['name']} moved")
        db.call("job_delete", job_ids=[jobs[1]["id"], jobs[3]["id"]])
        pruned = db.call("store_prune", before=4e9)  # every row but each job's newest
        assert pruned["state_changes"] == 4, pruned
    keys = {job["id"]: _key(dbdir, job) for job in jobs if job not in (jobs[1], jobs[3])}
    before = _by_id(dbdir)
    assert {i: [h[:2] for h in rows] for i, rows in before[0].items()} == \
        {job["id"]: [("STAGED_IN", f"{job['name']} moved")] for job in jobs if job["id"] in keys}
    vacuumed = run_db("vacuum", "--path", dbdir)
    assert vacuumed.returncode == 0, vacuumed.stderr
    assert _sql(dbdir, "PRAGMA auto_vacuum") == [(2,)]  # the full VACUUM ran (it switches to incremental)
    assert {job_id: key for job_id, key in _sql(dbdir, "SELECT id, key FROM job")} == keys
    assert _by_id(dbdir) == before


def _stats(path):
    return {(t, i): n for t, i, n in _sql(path, "SELECT tbl, idx, stat FROM sqlite_stat1 "
                                               "WHERE tbl IN ('job', 'job_state_change', 'job_tag')")}


def test_db_init_killed_before_the_upgrade_commits_leaves_schema_10_whole(dbdir, tmp_path, run_db):
    """``db init`` dies (SIGKILL) with the job, history and tag tables rebuilt and the version written,
    before the COMMIT: the database is schema 10 as it was, every row joined by job id as before,
    and the next ``db init`` upgrades it keeping every row and the planner's statistics of the tables."""
    jobs = [_spec(f"j{i}", [f"t{i}", "all"]) for i in range(8)]
    with balsamdb.connect(dbdir) as db:
        db.call("job_bulk_create", jobs=jobs)
        for job in jobs[::2]:
            db.call("job_update_state", job_id=job["id"], state="STAGED_IN", message=f"{job['name']} moved")
        db.call("job_delete", job_ids=[jobs[5]["id"]])
    database = DBDirectory(dbdir).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        with database.atomic():
            old_schema.to_id_keys(database)
            database.execute_sql('UPDATE "schema_version" SET "version" = 10')
        database.execute_sql("ANALYZE")
    finally:
        database.close()
    old = _by_id(dbdir, column="job_id", parent="id")
    stats = _stats(dbdir)
    assert len(stats) == 13, stats  # every index of the three tables that the upgrade rebuilds
    assert len(old[0]) == 7 and sum(len(t) for t in old[1].values()) == 14
    fault = tmp_path / "fault"
    for point in ("backup-copied", "upgrade-before-commit"):
        fault.write_text(point)
        killed = run_db("init", dbdir, "--db-type", "sqlite3", env={"BALSAMDB_FAULT_FILE": fault})
        assert killed.returncode == -9 and not fault.exists(), (point, killed.returncode, killed.stderr)
        assert _sql(dbdir, "PRAGMA integrity_check") == [("ok",)]
        assert _sql(dbdir, "SELECT max(version) FROM schema_version") == [(10,)]
        assert "key" not in {row[1] for row in _sql(dbdir, "PRAGMA table_info(job)")}
        assert _by_id(dbdir, column="job_id", parent="id") == old
        if point == "backup-copied":  # a copy killed before it was whole is not named as a backup
            assert not list(dbdir.glob("backup-*.sqlite3")) and list(dbdir.glob("backup-*.partial"))
    assert "job keys: indexes" in killed.stderr  # it died after the last step of the rebuild
    # Run again at once (the same second, often): a backup of its own, not a refusal to overwrite one.
    upgraded = run_db("init", dbdir, "--db-type", "sqlite3")
    assert upgraded.returncode == 0, upgraded.stderr
    assert _sql(dbdir, "SELECT max(version) FROM schema_version") == [(migrations.SCHEMA_VERSION,)]
    assert _by_id(dbdir) == old
    assert _sql(dbdir, "PRAGMA foreign_key_check") == []
    # the planner's statistics of the rebuilt tables kept (broken: dropped with the old tables)
    assert _stats(dbdir) == {(t, schema_keys.RENAMED_INDEXES.get(i, i)): n for (t, i), n in stats.items()}
    backups = sorted(dbdir.glob("backup-schema-10-*.sqlite3"))
    assert len(backups) == 2, backups
    for backup in backups:  # each a whole schema 10 database
        with closing(sqlite3.connect(f"file:{backup}?mode=ro", uri=True)) as con:
            assert con.execute("SELECT max(version) FROM schema_version").fetchone() == (10,)
            assert con.execute("SELECT count(*) FROM job_state_change").fetchone() == (len(sum(old[0].values(), [])),)
