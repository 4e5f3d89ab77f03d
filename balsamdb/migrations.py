"""The schema versions: what each migration adds, and the upgrade that brings a database to
:data:`SCHEMA_VERSION` keeping every row (``db init`` on an existing DB directory runs it).

Each migration is idempotent and self-contained: it runs on a database made fresh by today's
models and on an old one upgraded step by step, on SQLite and PostgreSQL.
"""

import zlib

import peewee as pw

from . import crash_points, jsonio, schema_dashboard, schema_keys, schema_records_sort, schema_scale, schema_tags
from .exceptions import ConfigError
from .models import (MODELS, MODELS_V1, AppliedRequest, Job, JobAnswerBase, JobParent, JobStateChange, JobTag,
                     Project, ProjectPermission, Record, RecordFile, RecordJob, RecordTag, RecordVersion,
                     SchemaVersion, User, WorkflowPolicy, quoter)
from .operations.record_links import link_rows


def current_version(database):
    """Schema version of ``database`` (0 for an empty database)."""
    with database.bind_ctx(MODELS):
        if not SchemaVersion.table_exists():
            return 0
        row = SchemaVersion.select().first()
        return row.version if row else 0


def _create_v1(database):
    database.create_tables(MODELS_V1, safe=True)


def _add_users_v2(database):
    # Made with today's model, the table already has schema 3's admin column.
    database.create_tables([User, ProjectPermission], safe=True)


def _schema_3(database):
    """The admin flag of users; an index to prune old request ids by; on PostgreSQL, 8-byte
    floats where schema 2 made 4-byte ones."""
    q = quoter(database)

    if "admin" not in {c.name for c in database.get_columns(User._meta.table_name)}:
        # A plain ADD COLUMN: peewee's migrator rebuilds the table on SQLite, and dropping the old
        # one would cascade to the project permissions (foreign keys are on).
        database.execute_sql(f"ALTER TABLE {q(User._meta.table_name)} ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE")
    _ensure_indexes(database)
    if isinstance(database, pw.PostgresqlDatabase):
        for model, column in ((Job, "wall_time_minutes"), (Record, "duration")):
            database.execute_sql(f"ALTER TABLE {q(model._meta.table_name)} "
                                 f"ALTER COLUMN {q(column)} TYPE DOUBLE PRECISION")


def _schema_compact_answers(database):
    """The table of job fields that compact stored answers refer to (issue 12, item 8).
    Answers stored whole by earlier versions stay valid as they are."""
    database.create_tables([JobAnswerBase], safe=True)


def _record_versions(database):
    """Schema 5: the versions of records and the write-once flag of projects.

    Self-contained and idempotent (whatever number it runs under): the table is made
    when missing, the column added when missing, and every record that has no version
    yet gets its current document as version 1 (saved by "" : unknown)."""
    q = quoter(database)

    database.create_tables([RecordVersion], safe=True)
    project_table = Project._meta.table_name
    if "write_once" not in {c.name for c in database.get_columns(project_table)}:
        # A plain ADD COLUMN, as for the users' admin flag (no table rebuild on SQLite).
        database.execute_sql(f"ALTER TABLE {q(project_table)} ADD COLUMN write_once BOOLEAN NOT NULL DEFAULT FALSE")
    unversioned = (Record.select(Record.id, Record.document, Record.updated_at)
                   .where(~pw.fn.EXISTS(RecordVersion.select(RecordVersion.id)
                                        .where(RecordVersion.record == Record.id))))
    batch = []
    for row in unversioned.iterator():
        batch.append({"record": row.id, "number": 1, "saved_at": row.updated_at, "saved_by": "",
                      "document": zlib.compress(row.document.encode())})
        if len(batch) >= 200:
            RecordVersion.insert_many(batch).execute()
            batch = []
    if batch:
        RecordVersion.insert_many(batch).execute()


def _schema_jobs(database):
    """Schema 6: the claims of launchers (owner, lease expiry, last renewal; an index on the
    expiry), the parent->child table (filled from the ``parents`` column of existing jobs, for
    parents that exist) and the per-workflow policies.  Idempotent, on a fresh database (whose
    job table today's model made) and on an old one."""
    q = quoter(database)
    table = Job._meta.table_name
    columns = {c.name for c in database.get_columns(table)}
    for name, kind in (("owner", "VARCHAR(255)"), ("lease_expires", "DOUBLE PRECISION"),
                       ("renewed_at", "DOUBLE PRECISION")):
        if name not in columns:
            database.execute_sql(f"ALTER TABLE {q(table)} ADD COLUMN {q(name)} {kind}")
    database.execute_sql(f"CREATE INDEX IF NOT EXISTS {q(table + '_lease_expires')} ON {q(table)} "
                         f"({q('lease_expires')})")
    # The free jobs that job_acquire picks from: only jobs no one holds, so that claimed jobs still
    # READY are never read again (a launcher that keeps them READY must not slow the others down).
    database.execute_sql(f"CREATE INDEX IF NOT EXISTS {q(table + '_free_state_workflow')} ON {q(table)} "
                         f"({q('state')}, {q('workflow')}) WHERE {q('owner')} IS NULL")
    database.create_tables([JobParent, WorkflowPolicy], safe=True)
    links = []
    known = set()
    rows = database.execute_sql(f"SELECT {q('id')}, {q('parents')} FROM {q(table)} "
                                f"WHERE {q('parents')} IS NOT NULL AND {q('parents')} <> '[]'")
    for job_id, parents in rows.fetchall():
        links.extend((job_id, parent) for parent in jsonio.loads(parents))
    for start in range(0, len(links), 400):
        chunk = links[start:start + 400]
        known.update(i for (i,) in Job.select(Job.id).where(Job.id.in_({p for _, p in chunk})).tuples())
        JobParent.insert_many([{"child": c, "parent": p} for c, p in chunk if p in known]) \
            .on_conflict_ignore().execute()


def _record_links(database):
    """Schema 7: the job of each record and its input and output files with their digests.

    Self-contained and idempotent: the tables are made when missing, and every record whose
    links are not there yet gets them from its document (records saved before capture
    existed name no job and hold no SHA-256, so most make no row)."""
    database.create_tables([RecordJob, RecordFile], safe=True)
    linked = RecordJob.select(RecordJob.record)
    with_files = RecordFile.select(RecordFile.record)
    query = (Record.select(Record.id, Record.document)
             .where(Record.id.not_in(linked) & Record.id.not_in(with_files)))
    jobs, files = [], []
    for row in query.iterator():
        job, found = link_rows(row.id, jsonio.loads(row.document))
        if job:
            jobs.append(job)
        files.extend(found)
        if len(jobs) + len(files) >= 200:
            _insert_links(jobs, files)
            jobs, files = [], []
    _insert_links(jobs, files)


def _insert_links(jobs, files):
    if jobs:
        RecordJob.insert_many(jobs).execute()
    for start in range(0, len(files), 100):
        RecordFile.insert_many(files[start:start + 100]).execute()


#: version -> (function that brings the schema from version-1 to it, what it does)
MIGRATIONS = {
    1: (_create_v1, "created the tables for jobs, state history, tags, projects, records and request ids"),
    2: (_add_users_v2, "added the tables for users and project permissions (HTTP record store)"),
    3: (_schema_3, "added the admin flag of users (every operation over HTTP) and an index to prune old "
                   "request ids; PostgreSQL floats now 8 bytes"),
    4: (_schema_compact_answers, "added the table that lets the answers of applied writes be stored compactly"),
    5: (_record_versions, "added the versions of records (every save kept; existing records become their "
                          "version 1) and the write-once option of projects"),
    6: (_schema_jobs, "added the claims of launchers (owner, lease expiry), the parent->child table of job "
                      "dependencies and per-workflow policies for lost runs"),
    7: (_record_links, "added the job of each record and its input and output files with their SHA-256 "
                       "digests (indexed: the records of a job, the records that used or produced a file)"),
    8: (schema_scale.migrate, "indexes for a million jobs (no duplicates; records by "
        "project and time, tags from the tag side, state and last change, name globs), job counts per workflow "
        "and state kept in the same transaction, and a full-text index of records"),
    9: (schema_tags.migrate, "the creation time of each job carried in its tag rows, indexed with the tag: the "
        "newest or oldest jobs of a tag read from the tag side"),
    10: (schema_dashboard.migrate, "the jobs of a workflow in a state, most recently changed first, read from one "
         "index (workflow, state, last change) that replaces (workflow, state)"),
    11: (schema_keys.migrate, "an internal integer key for each job, held by its state history and tags instead of "
         "its id: their indexes fill at their end (the job table, its history and tags rebuilt on SQLite)"),
    12: (schema_records_sort.migrate, "the records list sorted by any of its columns (reason, outcome, duration, "
         "main file, version, user), read from one index per column (project, column, id)"),
}

#: the schema this balsamdb makes and reads (the highest migration; numbers may skip)
SCHEMA_VERSION = max(MIGRATIONS)


def _ensure_indexes(database):
    """Indexes that a database of this schema version may lack (made idempotently)."""
    q = quoter(database)
    database.execute_sql(f"CREATE INDEX IF NOT EXISTS {q(AppliedRequest._meta.table_name + '_applied_at')} "
                         f"ON {q(AppliedRequest._meta.table_name)} ({q('applied_at')})")
    # What the jobs page of `db serve` reads while a campaign runs: the count per workflow and state,
    # the most recently changed jobs and the jobs finished per minute, each from an index alone.
    for table, columns in ((Job._meta.table_name, schema_dashboard.COLUMNS), (Job._meta.table_name, ("updated_at",)),
                           (JobStateChange._meta.table_name, ("to_state", "time")),
                           # The keyset cursors of the paged listings (balsamdb.operations.pages): the next
                           # page starts from the index, even inside one bulk_create (one created_at for all).
                           (Job._meta.table_name, ("created_at", "id")),
                           (Record._meta.table_name, ("project_id", "sort_time", "id"))):
        database.execute_sql(f"CREATE INDEX IF NOT EXISTS {q(table + '_' + '_'.join(columns))} "
                             f"ON {q(table)} ({', '.join(q(c) for c in columns)})")


def check_schema_not_newer(database, where):
    """Refuse (:class:`ConfigError`, one line naming both versions) a database whose schema is newer
    than this balsamdb's: an older client must not write tables it does not know the rules of."""
    version = current_version(database)
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{where} has schema version {version}, newer than this balsamdb's ({SCHEMA_VERSION}): "
                          "upgrade balsamdb on this host")
    return version


def row_counts(database):
    """``{table: rows}`` of the tables an upgrade rebuilds indexes of (what ``db init`` says first)."""
    out = {}
    with database.bind_ctx(MODELS):
        for model in (Job, JobStateChange, JobTag, Record, RecordTag, RecordVersion):
            if model.table_exists():
                out[model._meta.table_name] = model.select().count()
    return out


def upgrade(database, progress=None):
    """Bring ``database`` to :data:`SCHEMA_VERSION`, keeping every row.

    Idempotent.  Returns the list of sentences saying what was done (empty when
    the schema was already current).
    """
    done = []
    with database.bind_ctx(MODELS):
        with database.atomic():
            version = current_version(database)
            if version > SCHEMA_VERSION:
                        raise ConfigError(
                    f"the database has schema version {version}, newer than this balsamdb "
                    f"({SCHEMA_VERSION}); upgrade balsamdb"
                )
            previous = version
            for target in sorted(t for t in MIGRATIONS if t > version):
                migrate, what = MIGRATIONS[target]
                if progress is not None:
                    progress(f"schema {previous} -> {target}")
                if getattr(migrate, "takes_progress", False):
                    migrate(database, progress=progress)
                else:
                    migrate(database)
                done.append(f"schema {previous} -> {target}: {what}")
                previous = target
            if done:
                SchemaVersion.delete().execute()
                SchemaVersion.create(version=SCHEMA_VERSION)
            _ensure_indexes(database)
            if done:
                crash_points.reach(crash_points.UPGRADE_BEFORE_COMMIT)
    return done
