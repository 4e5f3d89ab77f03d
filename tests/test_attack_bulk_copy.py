"""The bulk_copy operation (db copy's fast path, balsamdb/operations/store_bulk.py) against a caller
that may write to the destination but should not read what it asks the server to attach, and
against a destination that another writer uses during the copy.  In-process (direct writes: the
same operation the write server runs)."""

import json
import os
import signal
import socket
import sqlite3
import threading
from contextlib import closing

import pytest

import balsamdb
from balsamdb import transfer
from balsamdb.exceptions import BadRequest, ServerUnavailable
from balsamdb.operations.store_bulk import source_identity, source_proof
from balsamdb.passwords import hash_password
from fixtures import sqlite_dir  # noqa: F401  (a fixture)
from helpers import db_cli
from records import sweep_record


def _destination(db):
    """The real path of the database file of the store ``db`` writes to (what a proof names)."""
    return os.path.realpath(db.dbdir.sqlite_file)


def _params(db, path, proof=None, **more):
    return dict(source=path, identity=source_identity(path), host=socket.gethostname(),
                proof=proof or source_proof(path, _destination(db)), **more)


def _evil_dir(tmp_path, dst):
    """A directory of the caller's own with a secret of its own: it can prove what it likes there (a
    well-made proof, for the DB directory ``dst``, signed with that secret)."""
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "secret").write_bytes(b"the caller's own key")
    path = str(evil / "db.sqlite3")
    return path, source_proof(path, os.path.realpath(dst / "db.sqlite3"))


def test_a_link_or_a_fifo_behind_a_secret_of_the_callers_own_is_refused(sqlite_dir, tmp_path):
    victim, dst = sqlite_dir("victim"), sqlite_dir("dst")
    with balsamdb.connect(victim) as db:
        db.call("user_save", name="only-the-owner-may-read-me", password_hash=hash_password("pw"))
    path, proof = _evil_dir(tmp_path, dst)
    os.symlink(victim / "db.sqlite3", path)  # to a file the caller could not read itself
    with balsamdb.connect(dst) as db:
        with pytest.raises(BadRequest, match="may not read"):
            db.call("bulk_copy", **_params(db, path, proof, table="user"))
        assert db.call("store_counts")["user"] == 0
    # A FIFO: the ATTACH would block the writer (every other writer behind it) until someone opens it.
    os.unlink(path)
    os.mkfifo(path)
    answer = {}

    def attack():
        with balsamdb.connect(dst) as db:
            try:
                answer["result"] = db.call("bulk_copy", **_params(db, path, proof, table="user"))
            except BadRequest as exc:
                answer["refused"] = str(exc)

    thread = threading.Thread(target=attack, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY))  # let it go
        thread.join(30)
        pytest.fail("the writer opened a FIFO and waited on it")
    assert "may not read" in answer.get("refused", ""), answer


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to make another user's files")
def test_a_database_of_another_user_is_refused(sqlite_dir, tmp_path):
    """A crafted database of the caller's own (a view or a generated column can make a read take
    hours) is refused: the source must be the server's user's own."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    path, proof = _evil_dir(tmp_path, dst)
    with closing(sqlite3.connect(src / "db.sqlite3")) as con, closing(sqlite3.connect(path)) as out:
        con.backup(out)
    for name in (path, os.path.dirname(path), os.path.join(os.path.dirname(path), "secret")):
        os.chown(name, 65534, 65534)
    with balsamdb.connect(dst) as db:
        with pytest.raises(BadRequest, match="may not read"):
            db.call("bulk_copy", **_params(db, path, proof, table="user"))


def test_a_record_that_another_writer_adds_during_the_copy_gets_no_rows_of_the_sources(sqlite_dir):
    """The source gains a record after its record table was copied; another writer adds a record to
    the destination meanwhile, which takes the same id: the source record's tags and files (copied
    by id) must not land on it."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        for i in range(2):
            db.records.save("Sweep", sweep_record(f"run-{i}", i))
    path = os.path.realpath(src / "db.sqlite3")
    with balsamdb.connect(dst) as db:
        for table in ("user", "project", "project_permission"):
            db.call("bulk_copy", **_params(db, path, table=table))
        first = db.call("bulk_copy", **_params(db, path, table="record", limit=2))
        with balsamdb.connect(src) as source:
            source.records.save("Sweep", sweep_record("run-late", 10))  # tags even and tens, a file
        db.records.save("Sweep", dict(sweep_record("someone-else", 1), tags=[], output_data=[]))
        # the next chunk (from where the first ended) clashes: the late record's own row has that id
        with pytest.raises(BadRequest, match="clash"):
            db.call("bulk_copy", **_params(db, path, table="record", after=first["next"]))
    with closing(sqlite3.connect(f"file:{dst / 'db.sqlite3'}?mode=ro", uri=True)) as con:
        ids = dict(con.execute("SELECT label, id FROM record"))
        assert ids["someone-else"] == 3  # the id the source's late record has: the case tested
        assert con.execute("SELECT tag FROM record_tag WHERE record_id = 3").fetchall() == []
        assert con.execute("SELECT path FROM record_file WHERE record_id = 3").fetchall() == []
        assert con.execute("SELECT count(*) FROM record_tag").fetchone()[0] == 3  # run-0's two, run-1's one


def test_job_rows_refuses_what_is_not_a_column_or_a_cursor_with_a_bad_request(sqlite_dir):
    """job_rows (db ls) builds SQL from the names of its columns and the cursor's values: names that
    are not columns, more columns than SQLite returns, and integers SQLite cannot hold are the
    caller's mistake (BadRequest), never a failed read of the store."""
    path = sqlite_dir("d")
    with balsamdb.connect(path) as db:
        db.jobs.bulk_create([{"name": f"j{i}", "workflow": "w"} for i in range(3)], make_workdir=False)
        for columns in (["id", 'name" FROM job --'], ["id"] * 3000, [], "id", [["id"]]):
            with pytest.raises(BadRequest, match="columns must be"):
                db.call("job_rows", columns=columns)
        with pytest.raises(BadRequest, match="after must be"):
            db.call("job_rows", columns=["id"], after=[1 << 70, "a"])
        with pytest.raises(BadRequest, match="cannot sort"):
            db.call("job_rows", columns=["id"], sort="created; DROP TABLE job")
        assert len(db.call("job_rows", columns=["name", "name"], sort="-name")["rows"]) == 3


def test_a_source_replaced_after_it_was_attached_is_not_read(sqlite_dir):
    """A source file replaced by another under the same name (a restore) while the first one is still
    attached (a copy killed before its bulk_copy_detach): the old file's rows are not copied."""
    src, other, dst = sqlite_dir("src"), sqlite_dir("other"), sqlite_dir("dst")
    with balsamdb.connect(other) as db:
        db.call("user_save", name="in-the-new-file", password_hash=hash_password("pw"))
    path = os.path.realpath(src / "db.sqlite3")
    with balsamdb.connect(dst) as db:  # one connection: the attachment stays, as on a write server
        assert db.call("bulk_copy", **_params(db, path, table="user"))["copied"] == 0
        os.replace(other / "db.sqlite3", path)
        with pytest.raises(BadRequest, match="earlier file"):
            db.call("bulk_copy", **_params(db, path, table="user"))
        assert db.call("store_counts")["user"] == 0


def test_a_copy_killed_before_it_detached_does_not_hold_the_next_copy_off(sqlite_dir):
    """The write server keeps a killed copy's source attached; the next db copy of another source
    into it still takes the fast path."""
    first, second, dst = sqlite_dir("first"), sqlite_dir("second"), sqlite_dir("dst")
    with balsamdb.connect(second) as db:
        db.call("user_save", name="ada", password_hash=hash_password("pw"))
    assert db_cli("dbserver", "--path", dst).returncode == 0
    path = os.path.realpath(first / "db.sqlite3")
    with balsamdb.connect(dst, require_server=True) as db:
        db.call("bulk_copy", **_params(db, path, table="user"))  # then killed: no bulk_copy_detach
    with closing(transfer.open_store(second)) as source, closing(transfer.open_store(dst)) as destination:
        rows, _longest = transfer.bulk.bulk_pass(source, destination)
    assert rows["user"] == 1


def test_a_fast_copy_killed_after_the_job_table_is_completed_by_a_rerun(sqlite_dir):
    """db copy killed after bulk_copy committed the job table's chunk (its tags came with it: when they
    came in a chunk of their own, a copy killed before it left jobs without tags, which the general
    path's re-run found unchanged, and db ls --tag never listed); the re-run lists every job by tag."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        db.jobs.bulk_create([{"name": f"j{i}", "workflow": "w", "tags": ["gpu"]} for i in range(5)],
                            make_workdir=False)
    path = os.path.realpath(src / "db.sqlite3")
    with balsamdb.connect(dst) as db:
        for table in ("user", "project", "project_permission", "record", "job"):
            db.call("bulk_copy", **_params(db, path, table=table))  # then killed, before bulk_copy_detach
    source, destination = transfer.open_store(src), transfer.open_store(dst)
    try:
        report = transfer.copy_store(source, destination)
    finally:
        source.close()
        destination.close()
    assert report["path"] == "items" and report["verification"]["verified"]
    with balsamdb.connect(dst) as db:
        assert len(list(db.jobs.iter(tags=["gpu"]))) == 5


def test_a_chunk_the_server_does_not_answer_in_time_is_not_spooled(sqlite_dir):
    """A bulk_copy that the write server cannot answer within the client's deadline is an error the
    copy falls back from, never a spooled chunk applied later (after a re-run filled the store)."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    assert db_cli("dbserver", "--path", dst).returncode == 0
    pid = json.loads((dst / "dbwriter_address").read_text())["server"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        with balsamdb.connect(dst, client_deadline=1) as db:
            with pytest.raises(ServerUnavailable):
                db.call("bulk_copy", **_params(db, os.path.realpath(src / "db.sqlite3"), table="user"))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert not list((dst / "spool").rglob("*.req"))


def test_a_source_locked_by_another_process_is_refused_at_once(sqlite_dir):
    """A source held locked (exclusive locking mode) is refused within seconds: the destination's one
    writer waited on it for minutes, and every other writer of the destination behind it."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    path = os.path.realpath(src / "db.sqlite3")
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("PRAGMA locking_mode = EXCLUSIVE")
    lock.execute("BEGIN EXCLUSIVE")
    lock.execute("UPDATE user SET name = name")
    answer = {}

    def chunk():
        with balsamdb.connect(dst) as db:
            try:
                answer["result"] = db.call("bulk_copy", **_params(db, path, table="user"))
            except BadRequest as exc:
                answer["refused"] = str(exc)

    try:
        thread = threading.Thread(target=chunk, daemon=True)
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), "the chunk waited on the locked source"
    finally:
        lock.execute("COMMIT")
        lock.close()
        thread.join(300)
    assert "locked" in answer.get("refused", ""), answer
