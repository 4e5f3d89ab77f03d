"""`db prune` and `db vacuum` through a running server (issue 22, item 6): a dry run says exactly
what the run removes; each job keeps its last state change; record versions go only in projects
that opted in, the current one never; a vacuum while the server runs is refused with what to do
when the database cannot be compacted in place, and an offline vacuum keeps every row."""

import json
import sqlite3
import time

import balsamdb
from helpers import db_cli, kill_everything


def _json(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _load(path):
    """Five jobs with three old changes each, one of them changed again after ``middle``; records
    saved four times in an opted-in project and in one that did not opt in."""
    with balsamdb.connect(path) as db:
        jobs = [db.jobs.create(f"j{i}", state="READY", make_workdir=False) for i in range(5)]
        for job in jobs:
            db.jobs.update_state(job.id, "STAGED_IN")
            db.jobs.update_state(job.id, "PREPROCESSED")
        time.sleep(0.05)  # wait-ok: the changes above must be strictly older than `middle`
        middle = time.time()
        time.sleep(0.05)  # wait-ok: and the one below strictly newer
        db.jobs.update_state(jobs[0].id, "RUNNING")
        db.projects.save("opted", keep_versions=2)
        db.projects.save("kept")
        for project in ("opted", "kept"):
            for n in range(4):
                db.records.save(project, {"label": "r", "reason": f"save {n}"})
        return [job.id for job in jobs], middle


def _check_prune(run_db, path):
    ids, middle = _load(path)
    dry = _json(run_db("prune", "--path", path, "--before", repr(middle), "--dry-run", "--json"))
    # j0: its 3 old changes (its last is new); j1..j4: 2 of 3 each (the last is kept).
    assert (dry["state_changes"], dry["record_versions"]) == (11, 2), dry
    done = _json(run_db("prune", "--path", path, "--before", repr(middle), "--chunk", "4", "--json"))
    assert (done["state_changes"], done["record_versions"]) == (11, 2), done
    again = _json(run_db("prune", "--path", path, "--before", repr(middle), "--dry-run", "--json"))
    assert (again["state_changes"], again["record_versions"]) == (0, 0), again
    with balsamdb.connect(path) as db:
        assert [[h["to_state"] for h in db.jobs.history(i)] for i in ids] == [["RUNNING"]] + [["PREPROCESSED"]] * 4
        assert [db.jobs.get(i).state for i in ids] == ["RUNNING"] + ["PREPROCESSED"] * 4
        assert [v["version"] for v in db.records.versions("opted", "r")] == [3, 4]
        assert [v["version"] for v in db.records.versions("kept", "r")] == [1, 2, 3, 4]
        assert db.records.get("opted", "r")["reason"] == "save 3"


def test_prune_and_vacuum_with_the_server_running(tmp_path, run_db):
    from balsamdb.dbdir import DBDirectory

    path = tmp_path / "db"
    DBDirectory(path).init()
    con = sqlite3.connect(path / "db.sqlite3")  # as a database made before schema 8: no incremental vacuum
    con.execute("PRAGMA auto_vacuum = NONE")
    con.execute("VACUUM")
    con.close()
    started = db_cli("dbserver", "--path", path)
    try:
        assert started.returncode == 0, started.stderr
        _check_prune(run_db, path)
        refused = run_db("vacuum", "--path", path)
        assert refused.returncode != 0
        assert "cannot be compacted while its server runs" in refused.stderr and "MB of free disk" in refused.stderr
        status = run_db("dbserver", "--status", "--path", path)
        assert "files:    database" in status.stdout and "WAL" in status.stdout, status.stdout
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)
    before = sqlite3.connect(path / "db.sqlite3").execute("SELECT COUNT(*) FROM job_state_change").fetchone()
    dry = _json(run_db("vacuum", "--path", path, "--dry-run", "--json"))
    assert dry["needs_bytes"] == dry["bytes"] > 0
    _json(run_db("vacuum", "--path", path, "--json"))
    con = sqlite3.connect(path / "db.sqlite3")
    assert con.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # later vacuums run with the server up
    assert con.execute("SELECT COUNT(*) FROM job_state_change").fetchone() == before == (5,)
    con.close()
    started = db_cli("dbserver", "--path", path)
    try:
        assert started.returncode == 0, started.stderr
        online = _json(run_db("vacuum", "--path", path, "--json"))
        assert online["dry_run"] is False and online["backend"] == "sqlite3"
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_prune_on_postgres(backend, served_dbdir, run_db):
    if backend != "postgres":
        return  # SQLite: the test above
    _check_prune(run_db, served_dbdir)
    sized = _json(run_db("vacuum", "--path", served_dbdir, "--json"))
    assert sized["backend"] == "postgres" and sized["bytes"] > 0
