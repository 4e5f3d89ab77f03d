"""Prepared SQL for the hot write path, built once per database from the models.

Peewee builds each query's SQL anew, which costs more than SQLite's insert
itself; the few statements that every write runs are built here once, with the
database's own quoting and parameter style, so the same code runs on SQLite and
PostgreSQL.  Everything else uses peewee queries.
"""

import operator
import weakref

import peewee as pw

from . import jsonio
from .answers import prune_bases
from .job_fields import LEASE_FIELDS
from .models import (JOB_FIELDS, AppliedRequest, Job, JobParent, JobStateChange, JobTag, JSONText, Project,
                     Record, RecordTag, RecordVersion, quoter)

_CACHE = weakref.WeakKeyDictionary()  # database -> Statements, gone with the database
#: Rows per multi-row INSERT on SQLite, largest first (the rest, fewer than the last, row by row):
#: at most 256 x the columns of a job (19) parameters, well under SQLite's 32,766.
SQLITE_ROWS = (256, 64, 16, 4)


class Statements:
    def __init__(self, database):
        self._database = weakref.ref(database)  # the cache must not keep the database alive
        self._many = {}  # (statement, rows) -> the text of a multi-row INSERT
        # A new job holds no claim: the lease columns stay NULL (see balsamdb.operations.leases).
        self.insert_job = self._insert(Job, skip=LEASE_FIELDS + ("key",))  # the key: the database's next
        self.job_columns = [f for f in JOB_FIELDS if f.name not in LEASE_FIELDS]
        self.insert_parent = self._insert(JobParent)
        self.insert_history = self._insert(JobStateChange, skip=("id",))
        self.insert_tag = self._insert(JobTag)
        self.insert_applied = self._insert(AppliedRequest)
        q, p = quoter(database), database.param
        self.applied_prefix = (f"SELECT {q('request_id')}, {q('response')} FROM {q(AppliedRequest._meta.table_name)} "
                               f"WHERE {q('request_id')} IN ")
        self.param = p
        self.postgres = isinstance(database, pw.PostgresqlDatabase)
        job_table = q(Job._meta.table_name)
        self.select_job = (f"SELECT {', '.join(q(f.column_name) for f in self.job_columns)} FROM {job_table} "
                           f"WHERE {q('id')} = {p}")
        # compare-and-set: only from the state that was read, so that two daemons on one PostgreSQL
        # database cannot both move a job out of one state (the second finds 0 rows, reads again)
        self.update_state = (f"UPDATE {job_table} SET {q('state')} = {p}, {q('state_message')} = {p}, "
                             f"{q('updated_at')} = {p} WHERE {q('id')} = {p} AND {q('state')} = {p}")
        self.select_lease = (f"SELECT {', '.join(q(c) for c in LEASE_FIELDS)} FROM {job_table} WHERE {q('id')} = {p}")
        # The children of a finished parent that wait for no other parent (see operations.parents).
        link = q(JobParent._meta.table_name)
        self.releasable_children = (
            f"SELECT c.{q('child')} FROM {link} c JOIN {job_table} j ON j.{q('id')} = c.{q('child')} "
            f"WHERE c.{q('parent')} = {p} AND j.{q('state')} = 'AWAITING_PARENTS' AND NOT EXISTS ("
            f"SELECT 1 FROM {link} o JOIN {job_table} pj ON pj.{q('id')} = o.{q('parent')} "
            f"WHERE o.{q('child')} = c.{q('child')} AND pj.{q('state')} <> 'JOB_FINISHED')")
        # On PostgreSQL the waiting children are locked first (in id order): two parents of one child
        # finishing in two daemons' transactions then decide one after the other, on committed states.
        self.lock_children = (
            f"SELECT {q('id')} FROM {job_table} WHERE {q('id')} IN (SELECT {q('child')} FROM {link} "
            f"WHERE {q('parent')} = {p}) AND {q('state')} = 'AWAITING_PARENTS' ORDER BY {q('id')} FOR UPDATE")

        # record_save, the write of every Sumatra run (peewee's query building cost ~0.8 ms of it)
        project, record, tag = (q(m._meta.table_name) for m in (Project, Record, RecordTag))
        self.ensure_project = (f"INSERT INTO {project} ({q('name')}, {q('description')}, {q('public')}, "
                               f"{q('created_at')}, {q('write_once')}) VALUES ({p}, '', {p}, {p}, {p}) "
                               "ON CONFLICT DO NOTHING")
        self.record_columns = ["project_id", "label", "timestamp", "sort_time", "reason", "outcome", "main_file",
                               "version", "user", "duration", "document", "created_at", "updated_at"]
        self.insert_record = (f"INSERT INTO {record} ({', '.join(q(c) for c in self.record_columns)}) "
                              f"VALUES ({', '.join([p] * len(self.record_columns))})"
                              + (f" RETURNING {q('id')}" if self.postgres else ""))
        self.record_update_columns = [c for c in self.record_columns if c not in ("project_id", "label", "created_at")]
        # A save again sets only the columns that changed (the document and its time always): SQLite rewrites
        # the entries of every index (and the search index's trigger) of each column SET, changed or not.
        self.record_kept_columns = [c for c in self.record_update_columns if c not in ("document", "updated_at")]
        self.find_record = (f"SELECT {', '.join(q(c) for c in ['id', 'document'] + self.record_kept_columns)} "
                            f"FROM {record} WHERE {q('project_id')} = {p} AND {q('label')} = {p}")
        self._record_updates = {}
        self.delete_record_tags = f"DELETE FROM {tag} WHERE {q('record_id')} = {p}"
        self.insert_record_tag = f"INSERT INTO {tag} ({q('record_id')}, {q('tag')}) VALUES ({p}, {p})"
        version = q(RecordVersion._meta.table_name)
        self.last_version = f"SELECT COALESCE(MAX({q('number')}), 0) FROM {version} WHERE {q('record_id')} = {p}"
        self.insert_version = (f"INSERT INTO {version} ({q('record_id')}, {q('number')}, {q('saved_at')}, "
                               f"{q('saved_by')}, {q('document')}) VALUES ({p}, {p}, {p}, {p}, {p})")
        self.project_write_once = f"SELECT {q('write_once')} FROM {project} WHERE {q('name')} = {p}"

    def update_record(self, columns):
        """``UPDATE record SET`` the ``columns`` (a tuple) ``WHERE id = ?`` (made once for each set of columns)."""
        sql = self._record_updates.get(columns)
        if sql is None:
            q, p = quoter(self.database), self.database.param
            sets = ", ".join(f"{q(c)} = {p}" for c in columns)
            sql = f"UPDATE {q(Record._meta.table_name)} SET {sets} WHERE {q('id')} = {p}"
            self._record_updates[columns] = sql
        return sql

    @property
    def database(self):
        return self._database()

    def deferred(self):
        """A :class:`DeferredInserts` of this database: the ``insert`` that the applier gives
        insert-only operations in its optimistic pass."""
        return DeferredInserts(self)

    def execute(self, sql, params=()):
        """Run one prepared statement; returns the cursor."""
        with pw.__exception_wrapper__:
            cursor = self.database.cursor()
            cursor.execute(sql, params)
            return cursor

    def insert_record_row(self, values):
        """Insert a record row (a dict of ``record_columns``); returns its id."""
        cursor = self.execute(self.insert_record, [values[c] for c in self.record_columns])
        return cursor.fetchone()[0] if self.postgres else cursor.lastrowid

    def _insert(self, model, skip=()):
        """``(sql, fields, row_params)`` of a one-row INSERT into ``model``'s table.  A row of the
        history or the tags names its job by id, as every caller knows it; the statement looks the
        job's internal key up (schema 11: a lookup in the job id index, whose pages the batch's own
        job inserts have just read)."""
        fields = [f for f in model._meta.sorted_fields if f.name not in skip]
        q, p = quoter(self.database), self.database.param
        columns = ", ".join(q(f.column_name) for f in fields)
        by_id = f"(SELECT {q('key')} FROM {q(Job._meta.table_name)} WHERE {q('id')} = {p})"
        values = ", ".join(by_id if _names_job_by_key(f) else p for f in fields)
        return f"INSERT INTO {q(model._meta.table_name)} ({columns}) VALUES ({values})", fields, _row_params(fields)

    def executemany(self, statement, rows):
        """Insert ``rows`` (dicts keyed by field name) with one prepared statement.

        Several rows go as multi-row INSERTs.  On PostgreSQL: one round trip (psycopg2's
        executemany would send one statement per row).  On SQLite: one statement journal for
        many rows; with the job table's count trigger every row's statement (executemany) copied
        each page it touched (a dozen indexes: ~12 pages) into a journal of its own, which cost
        more than the insert (53 -> 23 us of CPU per job, see docs/benchmarks.md).  SQLite's rows
        go in statements of :data:`SQLITE_ROWS` sizes, so that each size is prepared once (the
        sqlite3 module caches prepared statements by their text)."""
        sql, _fields, row_params = statement
        params = row_params(rows)
        with pw.__exception_wrapper__:
            cursor = self.database.cursor()
            if self.postgres and len(params) > 1:
                # One INSERT of many rows, its parameters bound by one call into psycopg2 (C) per 500
                # rows: execute_values bound each row by a call of its own (mogrify).
                head, row = sql.rsplit(" VALUES ", 1)
                for start in range(0, len(params), 500):
                    page = params[start:start + 500]
                    cursor.execute(f"{head} VALUES {','.join([row] * len(page))}",
                                   [value for values in page for value in values])
                return
            start = 0
            for size in SQLITE_ROWS:
                while len(params) - start >= size:
                    page = params[start:start + size]
                    cursor.execute(self._many_rows(sql, size), [value for values in page for value in values])
                    start += size
            if start < len(params):
                cursor.executemany(sql, params[start:])

    def _many_rows(self, sql, size):
        key = (sql, size)
        text = self._many.get(key)
        if text is None:
            head, row = sql.rsplit(" VALUES ", 1)
            text = self._many[key] = f"{head} VALUES {','.join([row] * size)}"
        return text

    def job(self, job_id):
        """The job row ``job_id`` as a dict of Python values, or None."""
        row = self.database.execute_sql(self.select_job, (job_id,)).fetchone()
        if row is None:
            return None
        return {f.name: f.python_value(v) for f, v in zip(self.job_columns, row)}

    def prune_applied(self, before, limit):
        """Delete up to ``limit`` applied-request rows older than ``before``; returns how many."""
        q, p = quoter(self.database), self.param
        table = q(AppliedRequest._meta.table_name)
        cursor = self.execute(f"DELETE FROM {table} WHERE {q('request_id')} IN (SELECT {q('request_id')} FROM "
                              f"{table} WHERE {q('applied_at')} < {p} LIMIT {int(limit)})", (before,))
        deleted = cursor.rowcount
        # The job fields that only answers older than ``before`` needed.
        prune_bases(self.database, before)
        return deleted

    def applied(self, request_ids):
        """``{request_id: stored answer text}`` for those of ``request_ids`` already applied."""
        found = {}
        ids = list(request_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            sql = self.applied_prefix + "(" + ", ".join([self.param] * len(chunk)) + ")"
            found.update(self.database.execute_sql(sql, chunk).fetchall())
        return found




def _names_job_by_key(field):
    return isinstance(field, pw.ForeignKeyField) and field.rel_model is Job and field.rel_field is Job.key


def _row_params(fields):
    """The function that makes the parameter tuples of ``rows`` (dicts keyed by field name) for
    ``fields``: the values as they are, and the JSON columns as JSON text.  Peewee's per-value
    ``db_value`` (a method call per value, ``str(s)`` of a string) cost more than the insert; the
    rows of the hot path hold clean values already (see ``operations.checks``)."""
    get = operator.itemgetter(*[f.name for f in fields])
    encoded = [i for i, f in enumerate(fields) if isinstance(f, JSONText)]
    if len(fields) == 1:
        return lambda rows: [(fields[0].db_value(row[fields[0].name]),) for row in rows]
    if not encoded:
        return lambda rows: [get(row) for row in rows]

    dumps = jsonio.dumps

    def row_params(rows):
        out = []
        for row in rows:
            values = list(get(row))
            for i in encoded:
                value = values[i]
                # An empty object or list (most of a job's environ, parents, tags, data): json's
                # text without calling it.
                values[i] = None if value is None else ("{}" if value == {} and type(value) is dict else
                                                        "[]" if value == [] and type(value) is list else dumps(value))
            out.append(values)
        return out

    return row_params


class DeferredInserts:
    """An ``insert`` that collects rows until :meth:`flush`: the rows of one statement from
    every request of a batch go in one call (on PostgreSQL, one round trip) instead of one call
    per request.  Made by the applier for one pass over a batch (never shared, never cached)."""

    def __init__(self, fast):
        self.fast = fast
        self.pending = {}

    def __call__(self, statement, rows):
        self.pending.setdefault(statement[0], (statement, []))[1].extend(rows)

    def flush(self):
        """Run the deferred inserts, in the order their statements were first used."""
        pending, self.pending = self.pending, {}
        for statement, rows in pending.values():
            self.fast.executemany(statement, rows)


def statements(database=None):
    """The :class:`Statements` of ``database`` (default: the one the models are bound to)."""
    database = database or Job._meta.database
    cached = _CACHE.get(database)
    if cached is None:
        cached = _CACHE[database] = Statements(database)
    return cached
