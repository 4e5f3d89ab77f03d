"""Schema 12 (issue 22): the records list of ``db serve`` in every sortable order reads its pages from an
index, never by sorting every record (EXPLAIN, with SQLite's statistics of a million records), and its
pages by next and previous links list each record once, in the order the column gives (long texts by
their first characters, NULL durations first ascending); ``?last=1`` is the last page."""

import uuid

import peewee as pw
import pytest

from balsamdb import migrations, schema_records_sort
from balsamdb.applier import apply
from balsamdb.models import MODELS, Record, RecordTag
from balsamdb.request import Request
from helpers import open_database, with_statistics

N = 130  # records: three pages of 50

#: ``sqlite_stat1`` of the record indexes of a DB directory with 1M records in one project (the scale
#: loader, then schema 12 and ANALYZE): few users, outcomes and main files; a distinct version per record
STATS_AT_1M = {("record", "record_project_id_user_id"): "1000000 1000000 333334 1",
               ("record", "record_project_id_version_id"): "1000000 1000000 1 1",
               ("record", "record_project_id_duration_id"): "1000000 1000000 3 1",
               ("record", "record_project_id_main_file_id"): "1000000 1000000 333334 1",
               ("record", "record_project_id_outcome_id"): "1000000 1000000 250000 1",
               ("record", "record_project_id_reason_id"): "1000000 1000000 1 1",
               ("record", "record_project_id_sort_time_id"): "1000000 1000000 1 1",
               ("record", "record_project_id_label"): "1000000 1000000 1",
               ("record", "record_sort_time"): "1000000 1",
               ("record_tag", "record_tag_tag_record_id"): "2000000 333334 1",
               ("record_tag", "sqlite_autoindex_record_tag_1"): "2000000 2 1"}


def _save(database, records):
    with database.bind_ctx(MODELS):
        answers = [r.answer for r in apply(database, [Request(uuid.uuid4().hex, "record_save",
                                                              {"project": "p", "record": record})
                                                      for record in records], database.atomic)]
    assert all(answer["ok"] for answer in answers), answers


def _records():
    out = []
    for i in range(N):
        record = {"label": f"run-{(i * 7) % N:03d}", "timestamp": f"2024-05-01 10:{i % 60:02d}:{i // 60:02d}",
                  # long reasons equal in their first 100 characters: ordered by id after them
                  "reason": "a long reason that says the same for a while " * 3 + str(i % 4) if i % 2 else f"r{i % 5}",
                  "outcome": ["", "converged", "diverged"][i % 3], "main_file": ["main.py", "post.py"][i % 2],
                  "version": uuid.UUID(int=i * 7919 % 1000).hex[-12:], "user": ["ada", "bob", "eve"][i % 3],
                  "tags": ["common"] if i % 3 else ["rare"]}
        if i % 9:  # a record without a duration has a NULL one
            record["duration"] = float((i * 37) % 50)
        out.append(record)
    return out


def _plan(database, query):
    sql, params = query.sql()
    if isinstance(database, pw.PostgresqlDatabase):
        # tiny tables: ask whether an index CAN give the order (a Sort node then means none can)
        database.execute_sql("SET enable_seqscan = off")
        database.execute_sql("SET enable_sort = off")
        return [r[0] for r in database.execute_sql("EXPLAIN " + sql, params)]
    return [r[-1] for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params)]


def _sorting(database, plan):
    if isinstance(database, pw.PostgresqlDatabase):  # "Incremental Sort": label, unique in the project
        return [line for line in plan if "Sort" in line and "Incremental Sort" not in line
                and "Presorted Key" not in line and "Sort Key" not in line]
    return [line for line in plan if "TEMP B-TREE" in line]


SORTS = [""] + [f"{sign}{name}" for name in ("label", "timestamp", "reason", "outcome", "duration", "main_file",
                                             "version", "user") for sign in ("", "-")]


def test_every_sort_of_the_records_list_reads_its_pages_from_an_index(any_dbdir, backend):
    from balsamdb.server.http import keyset, record_pages

    assert set(record_pages.SORTABLE) == {s for s in SORTS if s and not s.startswith("-")}
    database = open_database(any_dbdir)
    try:
        if backend == "postgres":
            migrations.upgrade(database)
        records = _records()
        _save(database, records)
        if backend == "sqlite3":
            database = with_statistics(database, any_dbdir, STATS_AT_1M)
        with database.bind_ctx(MODELS):
            ids = {label: i for label, i in Record.select(Record.label, Record.id).tuples()}
            times = {label: t for label, t in Record.select(Record.label, Record.sort_time).tuples()}
            sorting = {}
            for sort in SORTS:
                order = record_pages._order(sort)
                for tags in ((), ("common",)):
                    query = Record.select(Record.id).where(Record.project == "p")
                    if tags:  # a common tag: checked per record read in order (record_pages.find_records)
                        tagged = RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(tags))
                        query = query.where(pw.fn.EXISTS(tagged.where(RecordTag.record == Record.id)))
                    value = 1.0 if isinstance(record_pages.SORTABLE[sort.lstrip("-") or "timestamp"],
                                              pw.DoubleField) else "m"
                    # the parts that keyset.page_of reads a next or previous page from
                    pages = {}
                    for name, ordered, key in (("next", order, [value, 10]),
                                               ("previous", order.reversed(), [value, 10]),
                                               ("next after NULL", order, [None, 10]),
                                               ("previous before NULL", order.reversed(), [None, 10])):
                        if order.nullable or "NULL" not in name:
                            for number, (part, order_by) in enumerate(ordered.after_parts(key)):
                                pages[(name, number)] = (query.where(part), order_by)
                    pages[("first", 0)] = (query, order.order_by())
                    for name, (page, order_by) in pages.items():
                        plan = _plan(database, page.order_by(*order_by).limit(51))
                        if _sorting(database, plan):
                            sorting[(sort or "default", tags, name)] = plan
            assert not sorting, sorting

            # Paged by next links, then back by previous links: each record once, in the column's order.
            for sort in SORTS:
                name = sort.lstrip("-") or "timestamp"
                field = record_pages.SORTABLE[name]

                def key(record, field=field, name=name):
                    value = record.get("duration") if name == "duration" else record[name]
                    if name == "timestamp":
                        value = times[record["label"]]
                    if schema_records_sort.COLUMNS.get(field.name):
                        value = value[:schema_records_sort.PREFIX]
                    return (value is not None, value if value is not None else 0, ids[record["label"]])

                expected = [r["label"] for r in sorted(records, key=key, reverse=sort.startswith("-") or not sort)]
                listed, at, backwards = [], {"page": 1}, []
                while True:
                    page = record_pages.find_records(database, "p", "", (), sort, at)
                    listed += [r["label"] for r in page["rows"]]
                    if not page["next"]:
                        break
                    at = {"after": keyset.decode(page["next"], int), "at": None}
                while True:
                    backwards = [r["label"] for r in page["rows"]] + backwards
                    if not page["previous"]:
                        break
                    page = record_pages.find_records(database, "p", "", (), sort,
                                                     {"before": keyset.decode(page["previous"], int), "at": None})
                assert listed == expected == backwards, sort
                last = record_pages.find_records(database, "p", "", (), sort, {"last": True})  # ?last=1
                assert [r["label"] for r in last["rows"]] == expected[-50:] and not last["next"] and last["previous"]
    finally:
        database.close()


@pytest.mark.parametrize("again", [False, True])
def test_the_sort_indexes_are_made_once(dbdir, again):
    """Schema 12 on a schema 10 database: the indexes made and the duplicate dropped; a second run changes
    nothing."""
    database = open_database(dbdir)
    try:
        for column in schema_records_sort.COLUMNS:
            database.execute_sql(f'DROP INDEX "{schema_records_sort.index_name(column)}"')
        database.execute_sql('CREATE INDEX "record_project_id_sort_time" ON "record" ("project_id", "sort_time")')
        steps = []
        schema_records_sort.migrate(database, progress=steps.append)
        if again:
            schema_records_sort.migrate(database)
        names = {r[0] for r in database.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {schema_records_sort.index_name(c) for c in schema_records_sort.COLUMNS} <= names
        assert schema_records_sort.REPLACED not in names and "record_project_id_sort_time_id" in names
        assert steps == [f"index {schema_records_sort.index_name(c)}" for c in schema_records_sort.COLUMNS] + [
            f"drop index {schema_records_sort.REPLACED}"]
    finally:
        database.close()


def test_a_save_again_sets_what_changed_and_the_sorts_and_search_follow(any_dbdir, backend):
    """A record saved again updates only the columns that changed (record_save's UPDATE names them): the
    sorted lists and the search see the new values, and the columns not changed keep theirs."""
    from balsamdb.server.http import record_pages

    database = open_database(any_dbdir)
    try:
        if backend == "postgres":
            migrations.upgrade(database)
        first = [{"label": f"r{i}", "reason": f"first reason {i}", "outcome": f"o{i}", "duration": float(i),
                  "user": "ada", "version": f"v{i}", "timestamp": f"2024-05-0{i + 1} 10:00:00"} for i in range(3)]
        _save(database, first)
        again = [dict(first[0], outcome="z last"), dict(first[1], duration=None, reason="changed twice over")]
        _save(database, again)
        with database.bind_ctx(MODELS):
            def labels(sort, search=""):
                found = record_pages.find_records(database, "p", search, (), sort, {"page": 1})
                return [r["label"] for r in found["rows"]]

            assert labels("outcome") == ["r1", "r2", "r0"] and labels("-outcome") == ["r0", "r2", "r1"]
            assert labels("duration") == ["r1", "r0", "r2"]
            assert labels("reason") == ["r1", "r0", "r2"]
            assert labels("", "twice over") == ["r1"] and labels("", "first reason 1") == []
            assert labels("", "first reason 0") == ["r0"]
            rows = {r.label: r for r in Record.select()}
            assert (rows["r0"].reason, rows["r0"].outcome, rows["r0"].duration) == ("first reason 0", "z last", 0.0)
            assert (rows["r1"].reason, rows["r1"].outcome, rows["r1"].duration) == ("changed twice over", "o1", None)
            assert [rows[f"r{i}"].version for i in range(3)] == ["v0", "v1", "v2"]
    finally:
        database.close()
