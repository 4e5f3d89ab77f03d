"""Moving stores (`db copy`, `db configure --store`, `db export`, `db import`) between real
SQLite DB directories, PostgreSQL databases and `db serve` processes."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import balsamdb
from balsamdb import transfer
from balsamdb.operations.stores import item_key
from balsamdb.passwords import hash_password
from history import check_writers
from fixtures import sqlite_dir  # noqa: F401  (a fixture)
from helpers import Writers, db_cli, fresh_database_url, wait_for
from records import UNICODE, numbered_record as _record
from served import Served
from fixtures import smt_project as smt  # noqa: F401  (the fixture: a real Sumatra project)

ADMIN, ADMIN_PW = "lab", "lab admin pw"
COPY_TIMEOUT = 300


def seed(db, records, jobs):
    """A store with users, a public and a private project, ``records`` records and ``jobs`` jobs,
    some with a state history."""
    pw_hash = hash_password(ADMIN_PW)
    db.call("user_save", name=ADMIN, password_hash=pw_hash, admin=True)
    db.call("user_save", name="ada", password_hash=pw_hash)
    db.call("permission_grant", project="Sweep", user="ada")
    db.projects.save("Open", description="for everyone", public=True)
    past = time.time() - 10 * records - 3600  # stored over the last hours, one every 10 s
    items = []
    for i in range(records):
        project = "Sweep" if i % 4 else "Open"
        items.append({"kind": "record", "project": project, "label": f"run-{i:05d}",
                      "document": dict(_record(i, project), label=f"run-{i:05d}"), "created_at": past + 10 * i,
                      "updated_at": past + 10 * i})
    for start in range(0, len(items), 2000):
        db.call("import_items", items=items[start:start + 2000])
    ids = db.jobs.bulk_create([{"name": f"job-{i}", "workflow": f"wf{i % 3}", "tags": [f"g{i % 4}"],
                                "data": {"i": i, "text": UNICODE}, "num_nodes": 1 + i % 8}
                               for i in range(jobs)], make_workdir=False)
    for job_id in ids[:50]:
        db.jobs.update_state(job_id, "RUNNING", "started")
        db.jobs.update_state(job_id, "RUN_DONE", "exit 0")
    return ids


def assert_same_content(src_name, dst_name, jobs=None):
    """The stores named have equal digests (and ``jobs`` jobs, when given)."""
    a, b = transfer.open_store(src_name), transfer.open_store(dst_name)
    try:
        assert digests(a) == digests(b)
        if jobs is not None:
            assert b.counts()["job"] == jobs  # each present once
    finally:
        a.close()
        b.close()


def digests(store):
    found = store.digest()
    return {k: found[k] for k in ("projects", "jobs", "users", "permissions")}


@pytest.fixture
def pg_url(pg_cluster):
    return fresh_database_url(pg_cluster)



@pytest.fixture
def http_store(sqlite_dir, tmp_path, request):
    """``http_store(name)``: a SQLite DB directory with its server and `db serve`, and the admin user."""

    def make(name):
        path = sqlite_dir(name)
        with balsamdb.connect(path) as db:
            db.call("user_save", name=ADMIN, password_hash=hash_password(ADMIN_PW), admin=True)
        started = db_cli("dbserver", "--path", path)
        request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", path))
        assert started.returncode == 0, started.stderr
        served = Served(path, tmp_path)
        request.addfinalizer(served.stop)
        return path, f"http://{ADMIN}:{ADMIN_PW}@127.0.0.1:{served.port}/", served

    return make


# Records and jobs in the round trip: more than one page of every reader (transfer.READER_PAGE 5000 on a
# local SQLite file, transfer.PAGE 1000 elsewhere) and a part-filled last page; 10,000 (two full pages) took
# about twice as long through the same pager.
ROUND_TRIP = 5_500


def test_round_trip_sqlite_postgres_http_sqlite_keeps_every_digest(sqlite_dir, pg_url, http_store):
    first = sqlite_dir("first")
    with balsamdb.connect(first) as db:
        seed(db, records=ROUND_TRIP, jobs=ROUND_TRIP)
    _c_path, c_url, _served = http_store("third")
    last = sqlite_dir("last")
    chain = [str(first), pg_url, c_url, str(last)]
    expected = None
    rates = []
    for src_name, dst_name in zip(chain, chain[1:]):
        src, dst = transfer.open_store(src_name), transfer.open_store(dst_name, create=True)
        try:
            report = transfer.copy_store(src, dst)
            assert report["verification"]["verified"] and report["verification"]["left_out_changing"] == 0
            rates.append((src.name, dst.name, report["items_per_second"]))
            got_src, got_dst = digests(src), digests(dst)
        finally:
            src.close()
            dst.close()
        assert got_src == got_dst
        expected = expected or got_src
        assert got_dst == expected  # identical at every step
    assert expected["jobs"]["count"] == ROUND_TRIP
    assert sum(p["records"] for p in expected["projects"].values()) == ROUND_TRIP
    print("digests", json.dumps(expected["jobs"]), json.dumps(expected["projects"]))
    print("rates", rates)
    # The end store is usable: the records and jobs read back as they were written.
    with balsamdb.connect(first) as a, balsamdb.connect(last) as z:
        assert a.records.list("Sweep", tags=["paper"]) == z.records.list("Sweep", tags=["paper"])
        job = a.jobs.filter(limit=1)[0]
        assert z.jobs.history(job.id) == a.jobs.history(job.id)


def test_items_stamped_in_the_future_are_still_verified(sqlite_dir):
    """A clock that ran ahead stamped records in the future: the copy compares them one by one."""
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    future = time.time() + 3600
    with balsamdb.connect(src) as db:
        db.call("import_items", items=[{"kind": "record", "project": "P", "label": f"f{i}",
                                        "document": {"label": f"f{i}"}, "created_at": future,
                                        "updated_at": future} for i in range(30)])
    a, b = transfer.open_store(str(src)), transfer.open_store(str(dst), create=True)
    try:
        report = transfer.copy_store(a, b)
        check = report["verification"]
        assert check["verified"] and check["compared_one_by_one"] == 30 and check["left_out_changing"] == 0
        assert digests(a) == digests(b)
    finally:
        a.close()
        b.close()


def test_an_imported_label_is_checked_like_a_saved_one(sqlite_dir):
    """An import takes no label that a save would refuse (it had let control characters through)."""
    dst = sqlite_dir("dst")
    good = {"kind": "record", "project": "P", "label": "ok", "document": {"label": "ok"},
            "created_at": 1.0, "updated_at": 1.0}
    bad = dict(good, label="r2\x01bad", document={"label": "r2\x01bad"})
    with balsamdb.connect(dst) as db:
        with pytest.raises(balsamdb.BadRequest, match="control characters"):
            db.call("import_items", items=[good, bad])
        assert db.call("store_counts")["record"] == 0  # nothing of the refused batch was written


def test_export_import_export_gives_identical_bytes(sqlite_dir, pg_url, tmp_path):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        seed(db, records=300, jobs=300)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert db_cli("export", one, "--path", src).returncode == 0
    assert oct(one.stat().st_mode & 0o777) == "0o600"  # it holds password hashes
    imported = db_cli("import", one, "--store", pg_url, "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["verified"] is True
    assert db_cli("export", two, "--store", pg_url).returncode == 0
    assert one.read_bytes() == two.read_bytes()
    again = db_cli("import", one, "--store", pg_url)  # twice changes nothing
    assert again.returncode == 0 and "0 added, 0 updated" in again.stdout, again.stdout + again.stderr
    lines = one.read_text().splitlines()
    assert json.loads(lines[0]) == {"balsamdb_export": 1, "kinds": ["user", "project", "permission", "record",
                                                                    "job", "policy"]}
    footer = json.loads(lines[-1])
    assert footer["end"] is True and footer["counts"]["record"] == 300 and footer["counts"]["job"] == 300


def test_a_truncated_or_foreign_file_is_refused_before_anything_is_written(sqlite_dir, tmp_path):
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        seed(db, records=50, jobs=50)
    full = tmp_path / "full.jsonl"
    assert db_cli("export", full, "--path", src).returncode == 0
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    refused = db_cli("import", cut, "--path", dst)
    assert refused.returncode == 1 and "truncated" in refused.stderr, refused.stderr
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n{"end": true}\n')
    foreign = db_cli("import", other, "--path", dst)
    assert foreign.returncode == 1 and "not a balsamdb export" in foreign.stderr, foreign.stderr
    with balsamdb.connect(dst) as db:
        assert db.call("store_counts") == {"user": 0, "project": 0, "permission": 0, "record": 0, "job": 0,
                                           "policy": 0}


def test_a_copy_killed_midway_is_finished_by_running_it_again(sqlite_dir, pg_url):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        seed(db, records=5_000, jobs=20_000)
    command = [sys.executable, "-m", "balsamdb.cli", "copy", str(src), pg_url, "--json"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Kill it while jobs arrive: some are copied, most are not.
        wait_for(lambda: 0 < _rows(pg_url, "job") < 20_000 or first.poll() is not None, 120,
                 "the copy to be midway through the jobs")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        partial = {"job": _rows(pg_url, "job")}
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(30)
    assert first.returncode == -signal.SIGKILL and partial["job"] < 20_000, (first.returncode, partial)
    second = subprocess.run(command, capture_output=True, text=True, timeout=COPY_TIMEOUT)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["verification"]["verified"]
    assert report["first_pass"]["job"]["unchanged"] >= partial["job"] > 0  # what was there stayed
    assert_same_content(str(src), pg_url, jobs=20_000)


def test_a_copy_under_concurrent_writers_catches_up_and_says_what_arrived(sqlite_dir, pg_url, tmp_path):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        seed(db, records=2_000, jobs=20_000)
    assert db_cli("dbserver", "--path", src).returncode == 0
    writers = Writers(src, tmp_path, 8, 150)  # started, waiting for the go
    copy = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "copy", str(src), pg_url, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Once the copy is writing jobs (the last kind), the writers write: surely during the copy.
        wait_for(lambda: _rows(pg_url, "job") > 0 or copy.poll() is not None, 120, "the copy to reach the jobs")
        writers.start()
        stdout, stderr = copy.communicate(timeout=COPY_TIMEOUT)
        acked_before_end = set(writers.acked_ids())
        results = writers.wait(180)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait(30)
        db_cli("dbserver", "--stop", "--path", src)
    copied = subprocess.CompletedProcess(copy.args, copy.returncode, stdout, stderr)
    assert copied.returncode == 0, copied.stderr
    assert all(code == 0 for code, _out, _err in results), results
    report = json.loads(copied.stdout)
    assert report["verification"]["verified"]
    arrived = report["during_copy"].get("job", {}).get("added", 0)
    assert arrived > 0, report["during_copy"]  # the writers were writing while it copied
    dst = transfer.open_store(pg_url)
    try:
        ids = {item["id"] for page in _pages(dst, "job") for item in page}
    finally:
        dst.close()
    # Every write the writers had acknowledged when the copy ended is in the copy, once.
    missing = acked_before_end - ids
    assert not missing, f"{len(missing)} acknowledged jobs missing, e.g. {sorted(missing)[:3]}"
    # After the writers stopped, a second run brings the rest; then both are equal.
    again = db_cli("copy", src, pg_url, "--json", timeout=COPY_TIMEOUT)
    assert again.returncode == 0, again.stderr
    assert_same_content(str(src), pg_url, jobs=20_000 + 8 * 150)
    check_writers(src, writers)  # the source, read after its server stopped: each create applied once


def _rows(url, table):
    """Rows of ``table`` in the PostgreSQL database ``url`` (0 before the schema exists), read with SQL."""
    import psycopg2

    con = psycopg2.connect(url)
    try:
        with con.cursor() as cur:
            cur.execute("select to_regclass(%s)", (table,))
            if cur.fetchone()[0] is None:
                return 0
            cur.execute(f"select count(*) from {table}")
            return cur.fetchone()[0]
    finally:
        con.close()


def _pages(store, kind):
    after = None
    while True:
        page = store.export(kind, after, 5000)
        yield page["items"]
        after = page["next"]
        if after is None:
            return


def test_copy_into_a_plain_sumatra_api_copies_projects_and_records(sqlite_dir, http_store):
    """A user who is not an admin sees only the Sumatra Server API: the copy uses it."""
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        seed(db, records=120, jobs=10)
    path, admin_url, served = http_store("sumatra")
    with balsamdb.connect(path) as db:
        db.call("user_save", name="ada", password_hash=hash_password("ada pw"))
        db.call("permission_grant", project="Sweep", user="ada")
        db.call("permission_grant", project="Open", user="ada")
    url = f"http://ada:ada%20pw@127.0.0.1:{served.port}/"
    dry = db_cli("copy", src, url, "--dry-run")
    assert dry.returncode == 0 and "would copy" in dry.stdout and "120 records" in dry.stdout, dry.stdout
    copied = db_cli("copy", src, url, "--json", timeout=COPY_TIMEOUT)
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["skipped_kinds"] == {"user": 2, "permission": 1, "job": 10, "policy": 0}
    assert report["verification"]["verified"] and report["first_pass"]["record"]["added"] == 120
    with balsamdb.connect(src) as a, balsamdb.connect(path) as b:
        assert a.records.list("Sweep") == b.records.list("Sweep")
        assert b.jobs.count() == 0


def test_clear_errors_for_unreachable_and_read_only_destinations(sqlite_dir, pg_cluster, pg_url):
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        seed(db, records=20, jobs=20)
    unreachable = db_cli("copy", src, "http://lab:pw@127.0.0.1:1/")
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr, unreachable.stderr
    # A PostgreSQL role that may read but not write: the copy fails loudly and says why.
    import psycopg2

    assert db_cli("copy", src, pg_url).returncode == 0  # the schema and rows exist
    con = psycopg2.connect(pg_url)
    con.autocommit = True
    with con.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS reader")
        cur.execute("CREATE ROLE reader LOGIN PASSWORD 'r'")
        cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    con.close()
    with balsamdb.connect(src) as db:
        db.records.save("Sweep", {"label": "new-one"})
    host = pg_url.split("@", 1)[1]
    read_only = db_cli("copy", src, f"postgresql://reader:r@{host}")
    assert read_only.returncode == 1 and "permission denied" in read_only.stderr, read_only.stderr
    assert "Traceback" not in read_only.stderr
    missing_db = db_cli("copy", src, pg_cluster + "no_such_db")
    assert missing_db.returncode == 1 and "no_such_db" in missing_db.stderr, missing_db.stderr


def test_configure_moves_a_sqlite_directory_to_postgres_and_keeps_the_old_file(sqlite_dir, pg_url):
    path = sqlite_dir("lab")
    with balsamdb.connect(path) as db:
        ids = seed(db, records=200, jobs=200)
        retried = {"job": {"id": "6f1c2d7e-0000-4000-8000-0000000000aa", "name": "retried-across-the-switch"}}
        first_answer = db.request("job_create", retried, request_id="retry-across-the-switch-01")
    assert db_cli("dbserver", "--path", path).returncode == 0
    refused = db_cli("configure", "--path", path, "--store", pg_url)
    assert refused.returncode == 1 and "stop it first" in refused.stderr, refused.stderr
    assert db_cli("dbserver", "--stop", "--path", path).returncode == 0
    old = Path(path) / "db.sqlite3"
    early = balsamdb.connect(path)  # open before the switch, writing SQLite directly
    assert early.jobs.count() == 201 and early.last_read_route == "local"
    before = old.read_bytes()
    moved = db_cli("configure", "--path", path, "--store", pg_url)
    assert moved.returncode == 0, moved.stderr
    assert f"the old database is kept, unchanged, at {old}" in moved.stdout
    assert _rows(pg_url, "applied_request") >= 1  # the ids of applied writes moved too
    again = db_cli("configure", "--path", path, "--store", pg_url)
    assert again.returncode == 1 and "already uses" in again.stderr, again.stderr
    assert "***" not in pg_url and pg_url.split("@")[0].split(":")[-1] not in moved.stdout  # no password shown
    assert old.read_bytes() == before
    which = json.loads(db_cli("which", "--path", path, "--json").stdout)
    assert which["db_type"] == "postgres", which
    # The early connection noticed the switch: its write waits for the new store's server.
    assert early.jobs.create(name="early").spooled
    early.close()
    started = db_cli("dbserver", "--path", path)
    try:
        assert started.returncode == 0, started.stderr
        with balsamdb.connect(path) as db:
            wait_for(lambda: db.jobs.count(name="early") == 1, 30, "the spooled write to reach PostgreSQL")
            assert db.jobs.count() == 202 and db.jobs.history(ids[0])[-1]["to_state"] == "RUN_DONE"
            # A retry of a write applied before the switch is answered, not applied again.
            again = db.request("job_create", retried, request_id="retry-across-the-switch-01")
            assert again == first_answer and db.jobs.count(name="retried-across-the-switch") == 1
            db.jobs.create(name="after-the-move")
        old_store = transfer.sqlite_file_store(old)
        try:
            assert old_store.counts()["job"] == 201  # the new jobs went to PostgreSQL only
        finally:
            old_store.close()
    finally:
        db_cli("dbserver", "--stop", "--path", path)
    for url in ("sqlite:///x.db", str(path)):
        wrong = db_cli("configure", "--path", path, "--store", url)
        assert wrong.returncode == 1 and "postgresql://" in wrong.stderr


def test_import_reads_what_the_real_smt_export_wrote(sqlite_dir, smt):  # noqa: F811 (the fixture)
    smt("init", "--main=main.py", f"--executable={sys.executable}", "MyProj")
    smt("run", "default.param", "n=2", "--label=first")
    smt("run", "default.param", "n=3", "--label=second")
    smt("tag", "paper", "second")
    smt("export")
    exported = smt.workdir / ".smt" / "records_export.json"
    dst = sqlite_dir("dst")
    done = db_cli("import", exported, "--path", dst, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["format"] == "smt export" and report["items"]["record"]["added"] == 2 and report["verified"]
    with balsamdb.connect(dst) as db:
        assert sorted(db.records.labels("MyProj")) == ["first", "second"]
        assert "paper" in db.records.get("MyProj", "second")["tags"]
        assert db.records.get("MyProj", "first")["parameters"]["content"].startswith("n = 2")
    assert "0 added" in db_cli("import", exported, "--path", dst).stdout  # twice changes nothing


def test_importing_records_keeps_the_settings_of_an_existing_project(sqlite_dir, tmp_path):
    dst = sqlite_dir("dst")
    with balsamdb.connect(dst) as db:
        db.projects.save("MyProj", description="the real one", public=True)
        created = db.projects.get("MyProj")["created_at"]
    exported = tmp_path / "records_export.json"
    exported.write_text(json.dumps([{"label": "a", "timestamp": "2025-01-01 10:00:00+0000", "tags": ["x"]}]))
    done = db_cli("import", exported, "--path", dst, "--project", "MyProj")
    assert done.returncode == 0, done.stderr
    with balsamdb.connect(dst) as db:
        project = db.projects.get("MyProj")
        assert (project["description"], project["public"], project["created_at"]) == ("the real one", True, created)
        assert db.records.labels("MyProj") == ["a"]


def test_an_export_missing_lines_in_the_middle_is_refused(sqlite_dir, tmp_path):
    src, dst = sqlite_dir("src"), sqlite_dir("dst")
    with balsamdb.connect(src) as db:
        seed(db, records=40, jobs=10)
    full = tmp_path / "full.jsonl"
    assert db_cli("export", full, "--path", src).returncode == 0
    lines = full.read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(lines[:10] + lines[12:]))  # two records gone, the end line kept
    refused = db_cli("import", damaged, "--path", dst)
    assert refused.returncode == 1 and "damaged" in refused.stderr, refused.stderr
    with balsamdb.connect(dst) as db:
        assert db.call("store_counts")["record"] == 0


def test_export_pages_list_every_item_once_across_page_boundaries(sqlite_dir):
    """The pages of ``export_items`` (what db copy, export and verification read), two items at a
    time: every record (a two-part key: project, label), permission and job comes once, in key
    order, also where a page ends inside a project (broken: a page started after the project alone,
    which skipped the rest of its records)."""
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        for project, count in (("A", 7), ("B", 5)):
            for i in range(count):
                db.records.save(project, {"label": f"r{i:02d}"})
        db.call("user_save", name="ada", password_hash=hash_password("pw"))
        for project in ("A", "B"):
            db.call("permission_grant", project=project, user="ada")
        db.jobs.bulk_create([{"name": f"j{i}"} for i in range(5)], make_workdir=False)
        for kind, count in (("record", 12), ("permission", 2), ("job", 5)):
            keys, after = [], None
            while True:
                page = db.call("export_items", kind=kind, after=after, limit=2)
                keys += [item_key(item) for item in page["items"]]
                after = page["next"]
                if after is None:
                    break
            assert len(keys) == count and keys == sorted(keys) and len({tuple(k) for k in keys}) == count, (kind, keys)


class _ItemsOnly:
    """A store read through its items only (``export_items``), as an HTTP store is."""

    def __init__(self, store):
        self.kinds, self.counts, self.export = store.kinds, store.counts, store.export


def test_export_lines_made_from_rows_are_the_items_canonical_text(sqlite_dir, tmp_path, monkeypatch):
    """`db export` of a store read here makes each record's and job's line from the row's columns and
    stored JSON texts (store_lines.py), not from items: the file is byte for byte the one made from the
    items (canonical(item)), also for awkward values: small floats json spells 1e-07, integers beyond
    64 bits, 19-digit runs, unicode, braces in keys, versions (the last one the current document), a
    history, and NaN and infinities stored by SQL (json writes NaN and Infinity; orjson would write
    null).  Pages of 2 (monkeypatched) so that page boundaries fall inside a project."""
    import sqlite3

    from balsamdb.transfer import endpoints

    src = sqlite_dir("src")
    # one awkward value an item: a 19-digit run (or NaN) sends a whole text to json
    awkward = [{"small": 1e-07, "u": UNICODE}, {"tiny": 0.00001, "{k}": [1e16, -0.0, 1.5e-300]}, {"big": 2 ** 70},
               {"nineteen": 1234567890123456789}, {"s": "e-5,\u2028\x7f", "nested": {"z": 1, "a": [{"y": None}]}}]
    with balsamdb.connect(src) as db:
        for i, value in enumerate(awkward):
            db.records.save("A" if i % 2 else "B", {"label": f"r{i}", "data": value, "i": i})
        db.records.save("A", {"label": "r1", "data": awkward[0], "x": 3e-5})  # a second version
        ids = db.jobs.bulk_create([{"name": f"j{i}", "data": value, "tags": ["t", UNICODE], "environ": {"A": "1"},
                                    "wall_time_minutes": 1e-05 if i == 2 else i / 3}
                                   for i, value in enumerate(awkward)], make_workdir=False)
        db.jobs.update_state(ids[0], "RUNNING", f"started {UNICODE}")
        db.jobs.update_state(ids[0], "RUN_DONE", "done")  # a history in time order, not in message order
    with sqlite3.connect(src / "db.sqlite3") as raw:  # values stored before NaN was refused
        raw.execute("UPDATE job SET data = ?, created_at = 9e999 WHERE id = ?", ('{"x":NaN,"y":-Infinity}', ids[1]))
        raw.execute("UPDATE record SET document = ? WHERE label = 'r2'", ('{"label": "r2", "v": NaN}',))
    monkeypatch.setattr(endpoints, "READER_PAGE", 2)
    monkeypatch.setattr(endpoints, "LINES_PAGE", 2)
    store = transfer.open_store(src)
    try:
        with open(tmp_path / "lines.jsonl", "wb") as out:
            footer = transfer.export_store(store, out)
        with open(tmp_path / "items.jsonl", "wb") as out:
            assert transfer.export_store(_ItemsOnly(store), out) == footer
    finally:
        store.close()
    lines = (tmp_path / "lines.jsonl").read_bytes()
    assert lines == (tmp_path / "items.jsonl").read_bytes()
    assert footer["counts"] == {"user": 0, "project": 2, "permission": 0, "record": 5, "job": 5, "policy": 0}
    assert b"1e-07" in lines and b"NaN" in lines and b"Infinity" in lines and b'"versions":[{' in lines
