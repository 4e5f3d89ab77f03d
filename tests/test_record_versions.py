"""Record versions: kept on every replace, compressed, with who saved them; carried by db copy and
db export/import (byte-identical round trip); a copy to a plain Sumatra server carries the current
versions only and says so; an older store gains them by the in-place schema upgrade."""

import json
import socket
import sqlite3
import zlib

import peewee
import pytest
from fixtures import sqlite_dir  # noqa: F401  (a fixture)
from helpers import db_cli, fresh_database_url
from served import Served

import balsamdb
from balsamdb import migrations, models, transfer
from balsamdb.identity import who
from balsamdb.dbdir import DBDirectory
from balsamdb.passwords import hash_password

ADMIN, ADMIN_PW = "lab", "lab admin pw"


def run(label, step, output=""):
    """The five saves of one Sumatra run differ in these fields only."""
    tags = ["_initialized_", "_pre_run_", "_running_", "_finished_", "_finished_"][step]
    return {"label": label, "timestamp": "2025-03-01 10:00:00+0000", "main_file": "main.py", "version": "abc",
            "script_arguments": "1 2", "tags": [tags] + (["paper"] if step == 4 else []),
            "duration": None if step < 3 else 12.5, "stdout_stderr": output if step >= 3 else "Not launched.",
            "outcome": "ok ✓" if step == 4 else None}



def five_saves(db, project, label, output="computed\n" * 1000):
    for step in range(5):
        db.records.save(project, run(label, step, output))


def test_every_save_is_a_version_stored_compressed(sqlite_dir):
    path = sqlite_dir("db")
    output = "".join(f"step {i}: residual {1 / (i + 1):.6f}\n" for i in range(20000))  # ~0.6 MB of program output
    with balsamdb.connect(path) as db:
        five_saves(db, "P", "r1", output)
        db.records.save("P", run("r1", 4, output))  # identical to the current version: no new one
        versions = db.records.versions("P", "r1")
        assert [v["version"] for v in versions] == [1, 2, 3, 4, 5]
        assert [v["changed"] for v in versions[1:]] == [["tags"], ["tags"], ["duration", "stdout_stderr", "tags"],
                                                        ["outcome", "tags"]]
        assert {v["saved_by"] for v in versions} == {who()} and who().endswith("@" + socket.gethostname())
        assert db.records.get("P", "r1", version=2)["tags"] == ["_pre_run_"]
        assert db.records.get("P", "r1", version=5) == db.records.get("P", "r1")
        with pytest.raises(balsamdb.NotFound, match="has no version 6"):
            db.records.get("P", "r1", version=6)
        with pytest.raises(balsamdb.BadRequest, match="version must be at least 1"):
            db.records.get("P", "r1", version=0)
    con = sqlite3.connect(path / "db.sqlite3")
    try:
        stored = con.execute("select sum(length(document)) from record_version").fetchone()[0]
        document = len(json.dumps(run("r1", 4, output), ensure_ascii=False, separators=(",", ":")).encode())
        assert stored < document / 4, (stored, document)  # five versions, each with the output, in < 1/4 of one
        first = con.execute("select document from record_version where number = 1").fetchone()[0]
        assert json.loads(zlib.decompress(first)) == run("r1", 0, output)  # stored whole
    finally:
        con.close()
    with balsamdb.connect(path) as db:
        db.records.delete("P", "r1")
    con = sqlite3.connect(path / "db.sqlite3")
    try:
        assert con.execute("select count(*) from record_version").fetchone()[0] == 0
    finally:
        con.close()


def test_who_saved_it_on_the_zeromq_path(sqlite_dir):
    path = sqlite_dir("db")
    started = db_cli("dbserver", "--path", path)
    try:
        assert started.returncode == 0, started.stderr
        with balsamdb.connect(path) as db:
            db.records.save("P", run("z", 0))
            assert db.last_route == "server"
            db.records.tag("P", "z", add=["paper"])
            assert [(v["version"], v["saved_by"]) for v in db.records.versions("P", "z")] == [(1, who()), (2, who())]
    finally:
        db_cli("dbserver", "--stop", "--path", path)


def export_of(store_name, out):
    done = db_cli("export", out, *(["--store", store_name] if "://" in store_name else ["--path", store_name]))
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def test_copy_and_export_import_carry_versions(sqlite_dir, pg_cluster, tmp_path):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        for i in range(30):
            five_saves(db, "Sweep", f"run-{i}")
        db.records.tag("Sweep", "run-3", add=["extra"])
        expected = {f"run-{i}": db.records.versions("Sweep", f"run-{i}") for i in range(30)}
        older = db.records.get("Sweep", "run-3", version=2)
    pg_url = fresh_database_url(pg_cluster)
    copied = db_cli("copy", src, pg_url, "--json", timeout=300)
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout)["record_versions"] == "all"
    dst = sqlite_dir("dst")
    assert db_cli("copy", pg_url, dst, timeout=300).returncode == 0
    with balsamdb.connect(dst) as db:
        assert {f"run-{i}": db.records.versions("Sweep", f"run-{i}") for i in range(30)} == expected
        assert db.records.get("Sweep", "run-3", version=2) == older
    one = export_of(str(src), tmp_path / "one.jsonl")
    imported = sqlite_dir("imported")
    done = db_cli("import", tmp_path / "one.jsonl", "--path", imported, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["verified"] is True, done.stderr
    assert export_of(str(imported), tmp_path / "two.jsonl") == one
    assert export_of(str(dst), tmp_path / "three.jsonl") == one
    assert export_of(pg_url, tmp_path / "four.jsonl") == one
    record = next(json.loads(line) for line in one.decode().splitlines() if '"label":"run-3"' in line
                  and '"kind":"record"' in line)
    assert [v["version"] for v in record["versions"]] == [1, 2, 3, 4, 5, 6]


def test_a_copy_to_a_plain_sumatra_server_carries_current_versions_only(sqlite_dir, tmp_path, request):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        five_saves(db, "Sweep", "run-1")
    path = sqlite_dir("sumatra")
    with balsamdb.connect(path) as db:
        db.call("user_save", name="ada", password_hash=hash_password("ada pw"))
        db.call("permission_grant", project="Sweep", user="ada")
    started = db_cli("dbserver", "--path", path)
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", path))
    assert started.returncode == 0, started.stderr
    served = Served(path, tmp_path)
    request.addfinalizer(served.stop)
    url = f"http://ada:ada%20pw@127.0.0.1:{served.port}/"  # not an admin: the Sumatra Server API
    copied = db_cli("copy", src, url, timeout=300)
    assert copied.returncode == 0, copied.stderr
    assert "keeps no record versions: the current version of each record is copied" in copied.stderr
    with balsamdb.connect(path) as db:
        assert db.records.get("Sweep", "run-1") == run("run-1", 4, "computed\n" * 1000)
        assert [v["saved_by"] for v in db.records.versions("Sweep", "run-1")] == ["ada"]


def test_a_schema_3_store_gains_versions_in_place_idempotently(sqlite_dir):
    path = sqlite_dir("db")
    with balsamdb.connect(path) as db:
        db.records.save("P", run("old", 4))
        db.projects.save("Q", description="kept")
    con = sqlite3.connect(path / "db.sqlite3")
    con.execute("drop table record_version")
    con.execute("alter table project drop column write_once")
    con.execute("update schema_version set version = 3")
    con.commit()
    con.close()
    done = DBDirectory(path).init()
    assert any("schema 4 -> 5" in line for line in done), done
    assert DBDirectory(path).init() == [
        f"{path} is already a current sqlite3 DB directory (schema {migrations.SCHEMA_VERSION})"]
    database = peewee.SqliteDatabase(str(path / "db.sqlite3"))
    try:
        with database.bind_ctx(models.MODELS):
            migrations._record_versions(database)  # the step alone, run again (as under another number): no change
            assert models.RecordVersion.select().count() == 1
    finally:
        database.close()
    with balsamdb.connect(path) as db:
        assert [(v["version"], v["saved_by"]) for v in db.records.versions("P", "old")] == [(1, "")]
        assert db.projects.get("Q")["write_once"] is False and db.projects.get("Q")["description"] == "kept"
        db.records.save("P", run("old", 3))
        assert [v["version"] for v in db.records.versions("P", "old")] == [1, 2]
        assert db.records.get("P", "old", version=1) == run("old", 4)


def test_a_schema_3_postgresql_store_gains_versions_in_place(pg_cluster):
    import psycopg2

    url = fresh_database_url(pg_cluster)
    store = transfer.open_store(url, create=True)  # the schema, and operations run straight on it
    try:
        store.db.call("record_save", project="P", record=run("old", 4, "ü" * 5000))
    finally:
        store.close()
    con = psycopg2.connect(url)
    with con, con.cursor() as cur:
        cur.execute("drop table record_version")
        cur.execute("alter table project drop column write_once")
        cur.execute("update schema_version set version = 3")
    con.close()
    database = peewee.PostgresqlDatabase(url.rsplit("/", 1)[1], dsn=url)
    try:
        assert any("schema 4 -> 5" in line for line in migrations.upgrade(database))
        assert migrations.upgrade(database) == []
    finally:
        database.close()
    store = transfer.open_store(url)
    try:
        assert store.db.call("record_get", project="P", label="old", version=1) == run("old", 4, "ü" * 5000)
        assert [v["saved_by"] for v in store.db.call("record_versions", project="P", label="old")] == [""]
        store.db.call("project_save", name="P", write_once=True)
        with pytest.raises(balsamdb.Conflict):
            store.db.call("record_save", project="P", record=dict(run("old", 4), main_file="other.py"))
    finally:
        store.close()
