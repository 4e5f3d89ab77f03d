"""Records and jobs read as the lines of an export file from their rows (store_lines.py): the
digests of a verification made from them equal those made from items, also up to a time and
without some keys; on PostgreSQL the pages come in code point order whatever the database's
collation, and from the key's index where the default collation is code point order (every
cluster that `db init` makes: a page that sorted ``COLLATE "C"`` sorted the whole table, 40-110 ms
a page at 100k jobs)."""

import time
import uuid

import psycopg2

import balsamdb
from balsamdb import transfer
from balsamdb.models import MODELS
from balsamdb.operations import stores
from balsamdb.transfer import endpoints
from fixtures import sqlite_dir  # noqa: F401  (a fixture)
from helpers import fresh_database_url


class _ItemsOnly:
    """A store read through its items only (``export_items``), as an HTTP store is."""

    def __init__(self, store):
        self.kinds, self.counts, self.export = store.kinds, store.counts, store.export


def _icu_database_url(pg_url):
    """A new database whose default collation is ICU's en-US ("a A b B"), or None before PostgreSQL 15."""
    name = "t_icu_" + uuid.uuid4().hex[:8]
    con = psycopg2.connect(pg_url + "postgres")
    con.autocommit = True
    try:
        if con.server_version < 150000:
            return None
        con.cursor().execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                             "LOCALE 'C'")  # datcollate says C; the ICU provider decides the order
    finally:
        con.close()
    return pg_url + name


def _seed(db):
    """Records in three projects whose names and labels sort differently by code point and by a
    locale, a second version, jobs with a history; returns the job ids."""
    for project in ("alpha", "Zeta", "beta"):
        for label in ("b0", "B1", "a2", "A3", "\u00e94"):
            db.records.save(project, {"label": label, "x": 1})
    db.records.save("alpha", {"label": "b0", "x": 2})  # a second version
    ids = db.jobs.bulk_create([{"name": f"j{i}", "tags": ["t"]} for i in range(7)], make_workdir=False)
    for job_id in ids[:3]:
        db.jobs.update_state(job_id, "RUNNING", "started")
    return ids


def _digests_agree(store, until, exclude):
    """The digest of ``store`` from its rows' lines equals the one from its items, whole and up to
    ``until`` without the keys ``exclude``; returns the latter."""
    for args in ((None, None), (until, exclude)):
        by_lines = transfer.digest_pages(store, *args)
        by_items = transfer.digest_pages(_ItemsOnly(store), *args)
        for found in (by_lines, by_items):
            found.pop("now")
        assert by_lines == by_items, args
    return by_lines


def test_digests_from_lines_equal_those_from_items(sqlite_dir, monkeypatch):
    """A verification's digest of a store read here (its records and jobs as lines) equals the one
    from items, whole, up to a time (what changed after it listed, not digested) and without the
    keys it is told to leave out; pages of 2 (monkeypatched)."""
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        ids = _seed(db)
        until = time.time()  # the writes below are stamped later, a round trip to the server after it
        db.jobs.update_state(ids[3], "RUNNING", "later")
        db.records.save("beta", {"label": "B1", "x": 3})
    for name in ("PAGE", "READER_PAGE", "LINES_PAGE"):
        monkeypatch.setattr(endpoints, name, 2)
    store = transfer.open_store(src)
    try:
        found = _digests_agree(store, until, [["alpha", "b0"], [ids[4]]])  # not the job changed later
    finally:
        store.close()
    assert sorted(found["changed_after"]) == sorted([["beta", "B1"], [ids[3]]])
    assert found["projects"]["alpha"]["records"] == 4 and found["jobs"]["count"] == 5  # one left out, one changed


def _plan(database, query):
    sql, params = query.sql()
    for setting in ("enable_seqscan", "enable_sort"):  # tiny tables: ask whether an index CAN give the order
        database.execute_sql(f"SET {setting} = off")
    return [row[0] for row in database.execute_sql("EXPLAIN " + sql, params)]


def test_postgres_exports_keep_code_point_order_and_read_pages_from_the_key_index(sqlite_dir, pg_cluster, tmp_path,
                                                                                  monkeypatch):
    """The same store imported into a database of collation C and one of ICU en-US exports
    byte-identical files (also equal to the SQLite source's), as lines and as items, in pages of 2
    (page boundaries inside a project, the next page's rows read ahead on a thread); on the C
    database the pages of records and jobs need no sort (broken: ``COLLATE "C"`` on every page)."""
    src = sqlite_dir("src")
    with balsamdb.connect(src) as db:
        ids = _seed(db)
    seed = tmp_path / "seed.jsonl"
    store = transfer.open_store(src)
    try:
        transfer.export_file(store, seed)
    finally:
        store.close()
    urls = {"C": fresh_database_url(pg_cluster), "ICU en-US": _icu_database_url(pg_cluster)}
    for name in ("PAGE", "READER_PAGE", "LINES_PAGE"):
        monkeypatch.setattr(endpoints, name, 2)
    for collation, url in urls.items():
        if url is None:
            continue
        store = transfer.open_store(url, create=True)
        try:
            transfer.import_file(seed, store)
            for reader, how in ((store, "lines"), (_ItemsOnly(store), "items")):
                with open(tmp_path / f"{how}.jsonl", "wb") as out:
                    transfer.export_store(reader, out)
                assert (tmp_path / f"{how}.jsonl").read_bytes() == seed.read_bytes(), (collation, how)
            _digests_agree(store, time.time(), [["alpha", "b0"]])
            database = store.db.database
            assert stores.sorts_by_code_point(database) is (collation == "C")
            if collation == "C":
                with database.bind_ctx(MODELS):
                    for kind, after in (("job", [sorted(ids)[2]]), ("record", ["alpha", "b0"])):
                        plan = _plan(database, stores._page_query(kind, after, None).limit(3))
                        assert not [line for line in plan if "Sort" in line], (kind, plan)
        finally:
            store.close()
    assert urls["C"] is not None
