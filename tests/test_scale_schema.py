"""Schema 8 (issue 22): an old DB upgrades in place keeping every row; the kept job counts and the
records' search index stay right through every write path; each everyday read uses an index
(EXPLAIN QUERY PLAN fails the test when a plan scans the table); an older balsamdb refuses a newer
schema with one line naming both versions."""

import time
import uuid

import peewee as pw
import pytest

from balsamdb import migrations, schema_dashboard, schema_records_sort, schema_scale, schema_tags
from balsamdb.applier import apply
from balsamdb.request import Request
from balsamdb.exceptions import ConfigError
from balsamdb.models import MODELS, Job, Record
from balsamdb.operations import jobs as job_ops
from balsamdb.operations import leases, pages
from helpers import open_database, with_statistics

import old_schema

#: the indexes of schema 5 that schema 8 drops, as main made them
OLD_INDEXES = {"job_workflow": ("job", "workflow"), "job_state": ("job", "state"),
               "job_tag_job_id": ("job_tag", "job_id"), "job_tag_tag": ("job_tag", "tag"),
               "record_project_id": ("record", "project_id"), "record_tag_record_id": ("record_tag", "record_id"),
               "record_tag_tag": ("record_tag", "tag"), "record_version_record_id": ("record_version", "record_id"),
               "project_permission_project_id": ("project_permission", "project_id")}


def _apply(database, requests):
    with database.bind_ctx(MODELS):
        answers = [r.answer for r in apply(database, [Request(uuid.uuid4().hex, op, params) for op, params in requests],
                                           database.atomic)]
    for answer in answers:
        assert answer["ok"], answer
    return [answer["result"] for answer in answers]


def _to_schema_5(database):
    """What a DB directory made by the previous release holds: schema 5's indexes, no counts, no
    search index, version 5."""
    postgres = isinstance(database, pw.PostgresqlDatabase)
    old_schema.to_id_keys(database)  # schema 11's job keys undone: history and tags by job id
    for name in [*schema_scale.CREATED, "job_name_lower", "record_search_trgm"]:
        database.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
    if not postgres:
        for trigger in ("job_count_insert", "job_count_delete", "job_count_update", "record_fts_insert",
                        "record_fts_delete", "record_fts_update"):
            database.execute_sql(f'DROP TRIGGER IF EXISTS "{trigger}"')
        database.execute_sql(f'DROP TABLE IF EXISTS "{schema_scale.COUNTS}"')
        database.execute_sql(f'DROP TABLE IF EXISTS "{schema_scale.FTS}"')
    for name, (table, column) in OLD_INDEXES.items():
        database.execute_sql(f'CREATE INDEX "{name}" ON "{table}" ("{column}")')
    database.execute_sql('UPDATE "schema_version" SET "version" = 5')


def _indexes(database):
    if isinstance(database, pw.PostgresqlDatabase):
        return {r[0] for r in database.execute_sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    return {r[0] for r in database.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _counts_match(database):
    """The kept counts equal a GROUP BY of the jobs (SQLite); the answer of job_state_counts does too."""
    grouped = {(w, s): n for w, s, n in database.execute_sql(
        "SELECT workflow, state, COUNT(*) FROM job GROUP BY workflow, state")}
    answer = _apply(database, [("job_state_counts", {})])[0]
    assert {(r["workflow"], r["state"]): r["count"] for r in answer} == grouped
    if not isinstance(database, pw.PostgresqlDatabase):
        kept = {(w, s): n for w, s, n in database.execute_sql(
            f'SELECT workflow, state, n FROM "{schema_scale.COUNTS}" WHERE n <> 0')}
        assert kept == grouped
    return grouped


def _load(database, n=300):
    """Jobs in two workflows with tags and history, some deleted; records with tags and versions."""
    specs = [{"id": str(uuid.uuid4()), "name": f"sim-{i:04d}", "workflow": f"w{i % 2}", "state": "READY",
              "tags": ["gpu"] if i % 10 == 0 else ["cpu"], "working_directory": f"data/w/sim-{i:04d}"}
             for i in range(n)]
    _apply(database, [("job_bulk_create", {"jobs": specs})])
    _apply(database, [("job_update_state", {"job_id": s["id"], "state": "STAGED_IN"}) for s in specs[:40]])
    _apply(database, [("job_delete", {"job_ids": [s["id"] for s in specs[-20:]]})])
    for i in range(30):
        record = {"label": f"run-{i}", "reason": f"why {i}" + (" needle here" if i % 10 == 3 else ""),
                  "tags": [f"t{i % 3}"], "timestamp": f"2024-05-01 10:{i:02d}:00"}
        _apply(database, [("record_save", {"project": "p", "record": record})])
        if i % 5 == 0:
            _apply(database, [("record_save", {"project": "p", "record": dict(record, outcome="again")})])
    return specs


def _rows(database):
    return {table: database.execute_sql(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
            for table in ("job", "job_state_change", "job_tag", "project", "record", "record_tag", "record_version")}


def _digest(database):
    result = _apply(database, [("store_digest", {})])[0]
    result.pop("now", None)
    return result


def test_an_old_db_upgrades_in_place_keeping_every_row(any_dbdir, backend, tmp_path, run_db):
    database = open_database(any_dbdir)
    try:
        if backend == "postgres":
            migrations.upgrade(database)
        specs = _load(database)  # written by today's code, then the tables made as schema 5 had them
        rows, digest = _rows(database), _digest(database)
        _to_schema_5(database)
        assert _rows(database) == rows
        assert migrations.current_version(database) == 5
    finally:
        database.close()

    upgraded = run_db("init", any_dbdir, "--db-type", backend)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from version 5 to {migrations.SCHEMA_VERSION}" in upgraded.stderr and "280 job" in upgraded.stderr, upgraded.stderr
    backups = sorted(any_dbdir.glob("backup-schema-5-*.sqlite3"))
    if backend == "sqlite3":
        assert "backed the schema 5 database up" in upgraded.stdout and len(backups) == 1
        backup = pw.SqliteDatabase(str(backups[0]))
        assert _rows(backup) == rows and migrations.current_version(backup) == 5
        backup.close()
    else:
        assert "pg_dump" in upgraded.stdout and not backups

    database = open_database(any_dbdir)
    try:
        assert migrations.current_version(database) == migrations.SCHEMA_VERSION
        assert not old_schema.has_id_keys(database)  # schema 11: history and tags by the job's key
        assert _rows(database) == rows and _digest(database) == digest
        indexes = _indexes(database)
        assert not indexes & set(OLD_INDEXES), indexes & set(OLD_INDEXES)
        assert (set(schema_scale.CREATED) - {schema_tags.REPLACED, schema_records_sort.REPLACED}) | {
            "job_name_lower", schema_tags.INDEX} <= indexes
        assert schema_tags.REPLACED not in indexes and schema_tags.PREFIX not in indexes  # covered by others
        assert schema_dashboard.INDEX in indexes and schema_dashboard.REPLACED not in indexes  # schema 10
        assert {schema_records_sort.index_name(c) for c in schema_records_sort.COLUMNS} <= indexes  # schema 12
        assert _tag_times_differ(database) == 0  # every tag row got its job's created_at
        grouped = _counts_match(database)
        assert grouped[("w0", "STAGED_IN")] == 20 and sum(grouped.values()) == 280
        # Every write path keeps the counts: create, state change, modify, delete, import (and any UPDATE).
        more = [{"id": str(uuid.uuid4()), "name": f"new-{i}", "workflow": "w9", "working_directory": "d",
                 "tags": ["gpu"]} for i in range(5)]
        # (a workflow whose only job is deleted: its count is 0, and left out of the answer)
        gone = {"id": str(uuid.uuid4()), "name": "gone", "workflow": "w-gone", "working_directory": "d"}
        _apply(database, [("job_bulk_create", {"jobs": more + [gone]}),
                          ("job_update_state", {"job_id": specs[50]["id"], "state": "STAGED_IN"}),
                          ("job_modify", {"job_id": specs[51]["id"], "changes": {"description": "x"}}),
                          ("job_delete", {"job_ids": [specs[0]["id"], more[0]["id"], gone["id"]]})])
        database.execute_sql("UPDATE job SET workflow = 'w9' WHERE id = " + database.param, (specs[52]["id"],))
        exported = _apply(database, [("export_items", {"kind": "job", "limit": 3})])[0]
        _apply(database, [("job_delete", {"job_ids": [item["id"] for item in exported["items"]]})])
        _apply(database, [("import_items", {"items": exported["items"]}),
                          ("job_modify", {"job_id": specs[53]["id"], "changes": {"tags": ["gpu", "x"]}})])
        _counts_match(database)
        # Every path that writes tag rows carries the job's created_at (create, modify, import).
        assert _tag_times_differ(database) == 0
        tagged = database.execute_sql("SELECT COUNT(*) FROM job_tag").fetchone()[0]
        assert tagged == rows["job_tag"] - 1 + 4 + 1, (tagged, rows["job_tag"])  # specs[0] and more[0] deleted
        # From the tag side, in creation order (either way), the same jobs as the job side gives.
        everyone = _apply(database, [("job_filter", {"filters": {"workflow": "w0"}}),
                                     ("job_filter", {"filters": {"tags": ["gpu"]}, "limit": 7}),
                                     ("job_filter", {"filters": {"tags": ["gpu"]}, "limit": 7, "sort": "-created"}),
                                     ("job_page", {"filters": {"tags": ["gpu"]}, "limit": 5})])
        with_gpu = sorted((j for j in _apply(database, [("job_filter", {"filters": {}})])[0] if "gpu" in j["tags"]),
                          key=lambda j: (j["created_at"], j["id"]))
        assert [j["id"] for j in everyone[1]] == [j["id"] for j in with_gpu[:7]]
        assert [j["id"] for j in everyone[2]] == [j["id"] for j in with_gpu[::-1][:7]]
        page = everyone[3]
        assert [j["id"] for j in page["jobs"]] == [j["id"] for j in with_gpu[:5]]
        second = _apply(database, [("job_page", {"filters": {"tags": ["gpu"]}, "limit": 5, "after": page["next"]})])
        assert [j["id"] for j in second[0]["jobs"]] == [j["id"] for j in with_gpu[5:10]]
        # The record search finds through the index what it found before, in any case.
        from balsamdb.server.http.record_pages import find_records

        found = find_records(database, "p", search="NEEDLE")
        assert sorted(r["label"] for r in found["rows"]) == ["run-13", "run-23", "run-3"]
        assert find_records(database, "p", search="why 1")["count"] == 11  # 1, 10..19
    finally:
        database.close()
    again = run_db("init", any_dbdir, "--db-type", backend)
    assert again.returncode == 0 and "already a current" in again.stdout, again.stdout + again.stderr


def _tag_times_differ(database):
    return database.execute_sql('SELECT COUNT(*) FROM "job_tag" t JOIN "job" j ON j."key" = t.job_key '
                                "WHERE t.created_at IS NULL OR t.created_at <> j.created_at").fetchone()[0]


def _plan(database, query):
    sql, params = query if isinstance(query, tuple) else query.sql()
    if isinstance(database, pw.PostgresqlDatabase):
        database.execute_sql("SET enable_seqscan = off")  # tiny tables: ask whether an index CAN answer
        return [r[0] for r in database.execute_sql("EXPLAIN " + sql, params)]
    return [r[-1] for r in database.execute_sql("EXPLAIN QUERY PLAN " + sql, params)]


def _scans(database, plan):
    if isinstance(database, pw.PostgresqlDatabase):
        return [line for line in plan if "Seq Scan" in line]
    return [line for line in plan if line.startswith("SCAN") and "VIRTUAL TABLE" not in line
            and schema_scale.COUNTS not in line]


def test_every_everyday_read_uses_an_index(any_dbdir, backend):
    database = open_database(any_dbdir)
    try:
        if backend == "postgres":
            migrations.upgrade(database)
        _load(database, 100)
        since = time.time() - 600
        with database.bind_ctx(MODELS):
            queries = {
                "tags, limit 20": job_ops.ordered_job_query({"tags": ["gpu"]}, None)[0].limit(20),
                "8-character id prefix": job_ops._job_query({"id_prefix": "0123abcd"}),
                "name glob": job_ops._job_query({"name_like": "SIM-001*"}),
                "name": job_ops._job_query({"name": "sim-0001"}),
                "state, changed since": job_ops._job_query({"state": ["READY", "RUNNING"], "updated_after": since}),
                "workflow": job_ops._job_query({"workflow": "w1"}),
                "records by project and time": Record.select().where(Record.project == "p")
                .order_by(Record.sort_time.desc(), Record.id.desc()).limit(50),
                "job history": job_ops.JobStateChange.select().where(job_ops.JobStateChange.job == 1),
                "expired leases (the lost-runs look)": leases.expired_leases(time.time(), 500),
            }
            if backend == "sqlite3":
                queries["state counts"] = (f'SELECT workflow, state, n FROM "{schema_scale.COUNTS}" WHERE n > 0', [])
            else:
                queries["state counts"] = Job.select(Job.workflow, Job.state, pw.fn.COUNT(Job.id)).group_by(
                    Job.workflow, Job.state)
            from balsamdb.server.http import record_pages

            indexed = record_pages.search_index(database, "needle")
            assert indexed is not None, "no search index"
            project = Record.project if backend == "postgres" else pw.NodeList((pw.SQL("+"), Record.project), glue="")
            queries["records search"] = Record.select().where((project == "p") & indexed)
            from balsamdb.server.http import job_pages

            filtered = job_pages.job_query({"workflow": "w1", "state": ["READY"]}).select(job_pages.Job.id)
            dashboard = filtered.order_by(*job_pages.ORDER.order_by()).limit(job_pages.JOBS_PER_PAGE + 1)
            queries["jobs page of a workflow and state"] = dashboard
            queries["... its next page"] = dashboard.where(job_pages.ORDER.after((since, "f" * 36)))
            # filter(since=..., changed=True), by creation: the changed jobs from an index of the last
            # changes, sorted; not every job walked in creation order (its time grew with the database)
            changed = {"changed since, by creation": job_ops.ordered_job_query({"updated_after": since}, None)[0],
                       "state, changed since, by creation, next page": pages._keyset(
                           {"state": ["STAGED_IN"], "updated_after": since}, "-created", [time.time(), "f"])[0]}
            queries.update(changed)
            plans = {what: _plan(database, query) for what, query in queries.items()}
            scanning = {what: _scans(database, plan) for what, plan in plans.items()}
            walking = {what: plans[what] for what in changed if any("created_at_id" in line for line in plans[what])}
            queries["lost runs of a workflow (jobs page)"] = job_pages._lost_runs_query("w1")
            queries["finished jobs with a record (jobs page)"] = job_pages.finished_with_record_query({})
            if backend == "sqlite3":  # the newest changed come from the index in order: no sort of every match
                sorting = [line for what in ("jobs page of a workflow and state", "... its next page")
                           for line in plans[what] if "TEMP B-TREE" in line]
                assert not sorting, sorting
        assert not any(scanning.values()), {what: lines for what, lines in scanning.items() if lines}
        assert not walking, walking
        # ... answering what the walk answered: the same jobs, in the same order.
        listed = _apply(database, [("job_filter", {"filters": {"updated_after": since}})])[0]
        assert [j["id"] for j in listed] == [r[0] for r in database.execute_sql(
            "SELECT id FROM job WHERE updated_at >= %s ORDER BY created_at, id" % repr(since))]
        assert len(listed) == 80
        paged, after = [], None  # page by page (the cursor's +created_at), the rows' read as well
        while True:
            page, rows = _apply(database, [("job_page", {"filters": {"updated_after": since}, "sort": "-created",
                                                         "after": after, "limit": 30}),
                                           ("job_rows", {"columns": ["id"], "filters": {"updated_after": since},
                                                         "sort": "-created", "after": after, "limit": 30})])
            assert [j["id"] for j in page["jobs"]] == [r[0] for r in rows["rows"]] and page["next"] == rows["next"]
            paged += [j["id"] for j in page["jobs"]]
            after = page["next"]
            if after is None:
                break
        assert paged == [j["id"] for j in listed][::-1]
        # The plans above answer what the unindexed queries answered.
        answered = _apply(database, [("job_filter", {"filters": {"name_like": "SIM-001*"}}),
                                     ("job_count", {"filters": {"id_prefix": "0"}})])
        assert sorted(j["name"] for j in answered[0]) == [f"sim-001{i}" for i in range(10)]
        everyone = [r[0] for r in database.execute_sql("SELECT id FROM job")]
        assert answered[1] == sum(1 for i in everyone if i.startswith("0"))
    finally:
        database.close()


#: ``sqlite_stat1`` of the 1M-job DB directory of ``db bench --scale``'s loader (ANALYZE): 10 workflows,
#: six target states in the history, so to SQLite a state looks common and a workflow rare
STATS_AT_1M = {("job_state_change", "job_state_change_to_state_time"): "3799768 633295 1",
               ("job_state_change", "job_state_change_job_id"): "3799768 4",
               ("job", "job_workflow_state_updated_at_id"): "1000000 100000 33334 1 1",
               ("job", "sqlite_autoindex_job_1"): "1000000 1",
               ("job", "job_state_updated_at"): "1000000 333334 1"}


def test_the_jobs_page_counts_a_workflows_lost_runs_from_the_history_side(dbdir):
    """With the statistics of a million jobs, the jobs page's count of a workflow's lost runs starts
    from the history's few RUN_TIMEOUT rows (as a join, SQLite walked the workflow's 100k jobs and
    probed each one's history: 547 ms of every filtered page at 1M), and its count of the finished
    jobs that a record names from the records' links (an EXISTS per job walked every finished job)."""
    database = open_database(dbdir)
    _load(database, 50)
    database = with_statistics(database, dbdir, STATS_AT_1M)
    try:
        from balsamdb.server.http import job_pages

        with database.bind_ctx(MODELS):
            plan = _plan(database, job_pages._lost_runs_query("w1"))
            assert "job_state_change_to_state_time" in plan[0], plan
            assert job_pages._lost_runs(database, "w1") == 0
            plan = _plan(database, job_pages.finished_with_record_query({}))  # the links are read whole
            assert not [line for line in _scans(database, plan) if "record_job" not in line], plan
    finally:
        database.close()


def test_an_older_balsamdb_refuses_a_newer_schema(dbdir, run_db):
    database = open_database(dbdir)
    database.execute_sql('UPDATE "schema_version" SET "version" = 99')
    database.close()
    refused = run_db("ls", "--path", dbdir)
    assert refused.returncode != 0
    assert f"schema version 99, newer than this balsamdb's ({migrations.SCHEMA_VERSION})" in refused.stderr, \
        refused.stderr
    init = run_db("init", dbdir)
    assert init.returncode != 0 and "99" in init.stderr and f"({migrations.SCHEMA_VERSION})" in init.stderr, init.stderr
    with pytest.raises(ConfigError, match="newer than this balsamdb"):
        migrations.check_schema_not_newer(open_database(dbdir), dbdir)
