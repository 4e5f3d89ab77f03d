"""`db copy` of a SQLite DB directory into a new one: the fast path (rows copied in SQL by the
destination's write server, balsamdb/transfer/bulk.py), its fallback, and its exactly-once chunks."""

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import closing

import pytest

import balsamdb
from balsamdb import transfer
from balsamdb.exceptions import BadRequest
from balsamdb.operations.store_bulk import source_identity, source_proof
from balsamdb.passwords import hash_password
from fixtures import sqlite_dir  # noqa: F401  (a fixture)
from helpers import db_cli, wait_for
from records import sweep_record

COPY_TIMEOUT = 300
#: rows of these tables are compared as they are (beyond the items): what the server queries
RAW = {"job_parent": "SELECT child, parent FROM job_parent ORDER BY 1, 2",
       "job_state_count": "SELECT workflow, state, n FROM job_state_count WHERE n > 0 ORDER BY 1, 2",
       "job_tag": "SELECT j.id, t.tag, t.created_at FROM job_tag t JOIN job j ON j.key = t.job_key ORDER BY 1, 2",
       "record_file": "SELECT r.project_id, r.label, f.role, f.path, f.sha256 FROM record_file f "
                      "JOIN record r ON r.id = f.record_id ORDER BY 1, 2, 3, 4"}


def seed(db, jobs):
    """Users, a permission, records with several versions and files, jobs with states,
    history, tags and parents; returns the ids of the jobs still CREATED."""
    db.call("user_save", name="lab", password_hash=hash_password("pw"), admin=True)
    db.call("user_save", name="ada", password_hash=hash_password("pw"))
    db.call("permission_grant", project="Sweep", user="ada")
    for i in range(60):
        db.records.save("Sweep", sweep_record(f"run-{i:03d}", i))
        if i % 3 == 0:  # a second version
            db.records.save("Sweep", sweep_record(f"run-{i:03d}", i, outcome="rerun"))
    ids = db.jobs.bulk_create([{"name": f"job-{i}", "workflow": f"wf{i % 3}", "tags": [f"g{i % 4}"],
                                "data": {"i": i}} for i in range(jobs)], make_workdir=False)
    children = db.jobs.bulk_create([{"name": f"child-{i}", "workflow": "wf0", "parents": [ids[i], ids[i + 1]]}
                                    for i in range(20)], make_workdir=False)
    for job_id in ids[:30]:
        db.jobs.update_state(job_id, "RUNNING", "started")
        db.jobs.update_state(job_id, "RUN_DONE", "exit 0")
    assert children
    # Gaps in the source's job keys: a copied job takes the next key of its new store, so its history
    # and tags must follow it by id, never by key (schema 11).
    assert db.jobs.delete(ids[25], ids[27]) == 2
    return ids[30:]


class SourceWriter(threading.Thread):
    """Writes to the source through its server until stopped: new jobs, state changes of old
    ones, new versions of records; ``acked`` holds the ids of the jobs it created."""

    def __init__(self, path, created):
        super().__init__(daemon=True)
        self.path, self.created = path, list(created)
        self.stop, self.acked, self.error = threading.Event(), [], None

    def run(self):
        try:
            with balsamdb.connect(self.path, require_server=True) as db:
                n = 0
                while not self.stop.is_set():
                    job_id = str(uuid.uuid4())
                    db.jobs.bulk_create([{"id": job_id, "name": f"late-{n}", "workflow": "late", "tags": ["late"]}],
                                        make_workdir=False)
                    self.acked.append(job_id)
                    if n < len(self.created):
                        db.jobs.update_state(self.created[n], "RUNNING", "during the copy")
                    if n % 5 == 0:
                        db.records.save("Sweep", sweep_record(f"run-{n % 60:03d}", n % 60, reason=f"during {n}"))
                    n += 1
        except Exception as exc:  # reported by the test
            self.error = exc


def every_item(path):
    """Every item of the store at ``path`` (records with their versions), in key order."""
    store = transfer.open_store(path)
    try:
        out = {}
        for kind in store.kinds:
            out[kind], after = [], None
            while True:
                page = store.export(kind, after, 5000)
                out[kind].extend(page["items"])
                after = page["next"]
                if after is None:
                    break
        return out
    finally:
        store.close()


def raw_rows(path):
    with closing(sqlite3.connect(f"file:{path / 'db.sqlite3'}?mode=ro", uri=True)) as con:
        return {name: con.execute(sql).fetchall() for name, sql in RAW.items()}


def test_a_copy_into_a_new_directory_takes_the_fast_path_while_the_source_is_written(sqlite_dir):
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        created = seed(db, jobs=1500)
    assert db_cli("dbserver", "--path", src).returncode == 0
    assert db_cli("dbserver", "--path", dst).returncode == 0
    writer = SourceWriter(src, created)
    writer.start()
    try:
        wait_for(lambda: len(writer.acked) >= 20 or writer.error, 60, "the source's writer to write")
        copied = db_cli("copy", src, dst, "--json", timeout=COPY_TIMEOUT)
        acked_before_end = set(writer.acked)
        wait_for(lambda: len(writer.acked) > len(acked_before_end) + 5 or writer.error, 60,
                 "the writer to go on after the copy")  # so it wrote during the whole copy
    finally:
        writer.stop.set()
        writer.join(60)
    assert writer.error is None, writer.error
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["path"] == "sqlite-bulk", report["path_reason"]
    assert report["bulk_rows"]["job"] >= 1520 and report["bulk_rows"]["record_version"] >= 80
    assert report["bulk_rows"]["job_parent"] == 40
    check = report["verification"]
    assert check["verified"] and check["method"] == "sql"
    assert report["during_copy"]["job"]["added"] > 0  # the writer wrote while it copied
    # What the fast path copied, read back on both sides: every item not changed after the check's
    # moment is in the copy, equal, once; the jobs written after it are those the report compared
    # one by one (a later run brings them).
    a, b = every_item(src), every_item(dst)
    for kind in a:
        keys = [tuple(transfer.copying.item_key(i)) for i in b[kind]]
        assert len(keys) == len(set(keys)), f"a {kind} twice in the copy"
        copied = {tuple(transfer.copying.item_key(i)): i for i in b[kind]}
        kept = [i for i in a[kind] if kind not in ("job", "record") or i["updated_at"] <= check["until"]]
        differ = [i for i in kept if copied.get(tuple(transfer.copying.item_key(i))) != i]
        assert not differ, f"{len(differ)} of {len(kept)} {kind}s missing or different in the copy, e.g. {differ[0]}"
    created = {item["id"]: item["created_at"] for item in a["job"]}
    missing = {i for i in acked_before_end - set(k[0] for k in map(transfer.copying.item_key, b["job"]))
               if created[i] <= check["until"]}
    assert not missing, f"{len(missing)} acknowledged jobs missing, e.g. {sorted(missing)[:3]}"
    with closing(sqlite3.connect(f"file:{dst / 'db.sqlite3'}?mode=ro", uri=True)) as con:  # the triggers' tables
        assert con.execute(RAW["job_state_count"]).fetchall() == con.execute(
            "SELECT workflow, state, count(*) FROM job GROUP BY 1, 2 ORDER BY 1, 2").fetchall()
        assert con.execute("SELECT count(*) FROM record_fts(?)", ('"run-0"',)).fetchone()[0] == 60

    # The destination now holds jobs: a second run takes the general path, and brings the rest.
    again = db_cli("copy", src, dst, "--json", timeout=COPY_TIMEOUT)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["path"] == "items" and "not empty" in second["path_reason"], second["path_reason"]
    db_cli("dbserver", "--stop", "--path", src)
    db_cli("dbserver", "--stop", "--path", dst)
    a, b = every_item(src), every_item(dst)
    for kind in a:
        keys = [tuple(transfer.copying.item_key(i)) for i in b[kind]]
        assert len(keys) == len(set(keys)), f"a {kind} twice in the copy"
        assert a[kind] == b[kind], f"the {kind}s differ"
    assert raw_rows(src) == raw_rows(dst)


def test_a_retried_chunk_is_applied_once_and_a_non_empty_destination_takes_the_general_path(sqlite_dir):
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        seed(db, jobs=50)
    path = str((src / "db.sqlite3").resolve())
    params = {"source": path, "identity": source_identity(path), "host": socket.gethostname(),
              "proof": source_proof(path, os.path.realpath(dst / "db.sqlite3")), "table": "user", "after": None,
              "limit": 5000}
    with balsamdb.connect(dst) as db:  # no server: this process writes directly, the same operation
        request_id = uuid.uuid4().hex
        first = db.request("bulk_copy", params, request_id=request_id)
        again = db.request("bulk_copy", params, request_id=request_id)
        assert first == again == {"copied": 2, "rows": {"user": 2}, "next": None}
        assert db.call("store_counts")["user"] == 2  # applied once
        # A caller that cannot read the source's DB directory (its secret) cannot make the store copy it.
        with pytest.raises(BadRequest, match="proof"):
            db.call("bulk_copy", **dict(params, table="project", proof="0" * 64))
        # Nor can whoever saw a request replay its proof into another store, or once it expired.
        elsewhere = source_proof(path, os.path.realpath(src / "db.sqlite3"))
        expired = source_proof(path, os.path.realpath(dst / "db.sqlite3"), expires=time.time() - 1)
        for proof in (elsewhere, expired):
            with pytest.raises(BadRequest, match="for another store or expired"):
                db.call("bulk_copy", **dict(params, table="project", proof=proof))
        held = db.call("bulk_copy", **dict(params, table="project"))  # its own proof holds
        assert held["copied"] >= 1 and held["rows"] == {"project": held["copied"]}, held
        with closing(transfer.open_store(src)) as source, closing(transfer.open_store(dst)) as destination:
            fast, why = transfer.bulk.fast_path(source, destination)
    assert not fast and "not empty (2 users" in why, why


def links(path):
    """The job_parent rows of ``path`` whose parent exists (each once: the table's key)."""
    with closing(sqlite3.connect(f"file:{path / 'db.sqlite3'}?mode=ro", uri=True)) as con:
        return con.execute("SELECT child, parent FROM job_parent WHERE parent IN (SELECT id FROM job) "
                           "ORDER BY 1, 2").fetchall()


def _finish(db, job_id):
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        db.jobs.update_state(job_id, state, "done")


def test_a_copy_carries_the_links_to_parents_and_the_workflow_policies(sqlite_dir, tmp_path):
    """Into a new directory (the fast path), into one in use (the general path) and through an
    export file: in each copy a finished parent releases its children as in the source (the
    server reads the links of the job_parent table, not the jobs' parents column), and the
    lost-run policies are there."""
    src, new, used, imported, older = (sqlite_dir(n) for n in ("src", "new", "used", "imported", "older"))
    with balsamdb.connect(src) as db:
        p1, p2 = db.jobs.bulk_create([{"name": "p1", "workflow": "fam"}, {"name": "p2", "workflow": "fam"}],
                                     make_workdir=False)
        db.jobs.bulk_create([{"name": "both", "workflow": "fam", "parents": [p1, p2]},
                             {"name": "one", "workflow": "fam", "parents": [p1]}], make_workdir=False)
        db.jobs.set_lost_run_policy("fam", "stop")
        gone = db.jobs.create(name="gone", workflow="other", make_workdir=False).id
        db.jobs.bulk_create([{"name": "lost", "workflow": "fam", "parents": [gone]}], make_workdir=False)
        db.jobs.delete(gone)  # its link goes, not the child's parents column: a copy may make it again
    with balsamdb.connect(used) as db:
        db.jobs.create(name="already-here", workflow="other", make_workdir=False)
    for run, (dst, path) in enumerate(((new, "sqlite-bulk"), (used, "items"), (used, "items"))):
        if run == 2:  # as a copy made before copies carried links: the second run completes it, once
            with closing(sqlite3.connect(used / "db.sqlite3")) as con, con:
                con.execute("DELETE FROM job_parent")
        copied = db_cli("copy", src, dst, "--json", timeout=COPY_TIMEOUT)
        assert copied.returncode == 0, copied.stderr
        report = json.loads(copied.stdout)
        assert report["path"] == path, report["path_reason"]
    assert report["first_pass"]["job"] == {"added": 0, "updated": 0, "unchanged": 5}
    export = tmp_path / "export.jsonl"
    assert db_cli("export", export, "--path", src).returncode == 0
    assert db_cli("import", export, "--path", imported).returncode == 0
    # A file exported before policies were items (format 1 all the same) imports as it did.
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    lines[0]["kinds"].remove("policy")
    del lines[-1]["counts"]["policy"], lines[-1]["digests"]["policies"]
    old = tmp_path / "old.jsonl"
    old.write_text("".join(json.dumps(line) + "\n" for line in lines if line.get("kind") != "policy"))
    assert db_cli("import", old, "--path", older).returncode == 0
    found = {}
    for where in (src, new, used, imported, older):
        with balsamdb.connect(where) as db:
            _finish(db, p1)
            found[where.name] = ({j.name: j.state for j in db.jobs.filter(workflow="fam")},
                                 [(p["workflow"], p["lost_runs"]) for p in db.call("workflow_policy_list")],
                                 links(where))
    assert found["src"][:2] == ({"p1": "JOB_FINISHED", "p2": "CREATED", "both": "AWAITING_PARENTS", "one": "READY",
                                 "lost": "AWAITING_PARENTS"}, [("fam", "stop")])
    assert found.pop("older") == (found["src"][0], [], found["src"][2])
    assert {name: value for name, value in found.items() if value != found["src"]} == {}


def test_the_sql_check_matches_history_through_the_jobs_not_through_shared_times(sqlite_dir):
    """The verification's history and tag comparisons join the copy's rows to the source's through
    the job (key -> id -> key), never through an index of their content: the CREATED rows of one
    bulk_create share (to_state, time), and at 1M jobs a join through that index ran for minutes
    (session 8's `db bench --scale`: 426 s for the copy, 10 minutes in one comparison)."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        db.jobs.bulk_create([{"name": f"same-{i}", "workflow": "w", "tags": ["t"]} for i in range(300)],
                            make_workdir=False)
    with closing(sqlite3.connect(src / "db.sqlite3")) as source:
        source.execute("ANALYZE")  # statistics, as a grown DB has them
    assert db_cli("copy", src, dst).returncode == 0
    with closing(sqlite3.connect(f"file:{dst / 'db.sqlite3'}?mode=ro", uri=True)) as conn:
        conn.execute(f"ATTACH DATABASE 'file:{src / 'db.sqlite3'}?mode=ro' AS src")
        for table, *counts in transfer.bulk._comparisons(conn):
            if table not in ("job_state_change", "job_tag"):
                continue
            plan = [row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + counts[2], {"until": 2e9})]
            content = [step for step in plan if "to_state_time" in step or "tag_created_at" in step]
            assert not content, (table, plan)
            assert len({conn.execute(sql, {"until": 2e9}).fetchone()[0] for sql in counts}) == 1, table
