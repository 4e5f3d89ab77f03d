"""The tables, as peewee models, and the schema versions that build them.

Models are bound to a database at run time (``database.bind_ctx(MODELS)`` or
``bind(database)``), so one process can hold several DB directories.  JSON
columns are plain text: the same schema runs on SQLite and PostgreSQL.
Times are UNIX seconds (float, UTC).
"""

import time

import peewee as pw

from . import jsonio, schema_scale, schema_tags



class JSONText(pw.TextField):
    """A JSON document stored as text; ``None`` stays NULL."""

    def db_value(self, value):
        return None if value is None else jsonio.dumps(value)

    def python_value(self, value):
        return None if value is None else jsonio.loads(value)


class BaseModel(pw.Model):
    class Meta:
        database = None
        legacy_table_names = False


class Job(BaseModel):
    id = pw.CharField(max_length=36, primary_key=True)
    name = pw.CharField(index=True)
    workflow = pw.CharField()  # indexed with state: job_workflow_state
    application = pw.TextField(default="")
    args = pw.TextField(default="")
    description = pw.TextField(default="")
    state = pw.CharField(max_length=32)  # indexed with updated_at (schema 8)
    state_message = pw.TextField(default="")
    working_directory = pw.TextField()
    num_nodes = pw.IntegerField(default=1)
    ranks_per_node = pw.IntegerField(default=1)
    threads_per_rank = pw.IntegerField(default=1)
    wall_time_minutes = pw.DoubleField(default=0)
    environ = JSONText(default=dict)
    parents = JSONText(default=list)
    tags = JSONText(default=list)
    data = JSONText(default=dict)
    created_at = pw.DoubleField(index=True)
    updated_at = pw.DoubleField()
    # The claim of a launcher (schema 6, see balsamdb.operations.leases): who holds the job and
    # until when, on the clock of the process that applies the writes (the server's).
    owner = pw.CharField(max_length=255, null=True)
    lease_expires = pw.DoubleField(null=True, index=True)  # lost runs are found from this index alone
    renewed_at = pw.DoubleField(null=True)


#: The columns of a job's claim: kept out of job answers (their stored compact form, see
#: balsamdb.answers, covers the fields a state change keeps).
LEASE_FIELDS = ("owner", "lease_expires", "renewed_at")


class JobParent(BaseModel):
    """A dependency: ``child`` waits for ``parent`` to reach JOB_FINISHED (schema 6).  The job's
    ``parents`` JSON column says the same for readers; this table is what the server queries.
    No foreign keys: rows are checked by the operations, and deleted with either job."""

    child = pw.CharField(max_length=36)
    parent = pw.CharField(max_length=36, index=True)

    class Meta:
        primary_key = pw.CompositeKey("child", "parent")


class WorkflowPolicy(BaseModel):
    """Per-workflow policy of the server (schema 6): what a lost run becomes."""

    workflow = pw.CharField(primary_key=True)
    lost_runs = pw.CharField(max_length=16, default="restart")  # restart: RUN_TIMEOUT -> RESTART_READY; stop
    updated_at = pw.DoubleField()


class JobStateChange(BaseModel):
    job = pw.ForeignKeyField(Job, backref="history", on_delete="CASCADE")
    time = pw.DoubleField()
    from_state = pw.CharField(max_length=32, null=True)
    to_state = pw.CharField(max_length=32)
    message = pw.TextField(default="")


class JobTag(BaseModel):
    job = pw.ForeignKeyField(Job, on_delete="CASCADE", index=False)  # the key's prefix
    tag = pw.CharField()  # indexed with created_at and job: job_tag_tag_created_at (schema 9)
    # The job's created_at, carried here (schema 9) so that the jobs of a tag are read from the tag
    # side in creation order: filter(tags=[X], limit=20) reads 20 index entries, not every tagged job.
    created_at = pw.DoubleField(null=True)

    class Meta:
        primary_key = pw.CompositeKey("job", "tag")


class Project(BaseModel):
    name = pw.CharField(primary_key=True)
    description = pw.TextField(default="")
    public = pw.BooleanField(default=False)
    created_at = pw.DoubleField()
    write_once = pw.BooleanField(default=False)  # a changed provenance field is refused (409), not replaced
    keep_versions = pw.IntegerField(null=True)  # db prune keeps the newest N versions of a record; None: all


class Record(BaseModel):
    project = pw.ForeignKeyField(Project, on_delete="CASCADE", index=False)  # (project, label) is unique
    label = pw.CharField()
    timestamp = pw.CharField(default="")
    sort_time = pw.DoubleField(index=True)
    reason = pw.TextField(default="")
    outcome = pw.TextField(default="")
    main_file = pw.TextField(default="")
    version = pw.CharField(default="")
    user = pw.CharField(default="")
    duration = pw.DoubleField(null=True)
    document = pw.TextField()
    created_at = pw.DoubleField()
    updated_at = pw.DoubleField()

    class Meta:
        indexes = ((("project", "label"), True),)


class RecordTag(BaseModel):
    record = pw.ForeignKeyField(Record, on_delete="CASCADE", index=False)  # the key's prefix
    tag = pw.CharField()  # indexed with record: record_tag_tag_record_id (schema 8)

    class Meta:
        primary_key = pw.CompositeKey("record", "tag")


class RecordVersion(BaseModel):
    """Every saved state of a record, numbered from 1 (the newest is also ``Record.document``):
    a save that replaces a record loses nothing.  The document is stored whole, zlib-compressed
    (Sumatra saves a run five times, each with its program output)."""

    record = pw.ForeignKeyField(Record, on_delete="CASCADE", index=False)  # (record, number) is unique
    number = pw.IntegerField()
    saved_at = pw.DoubleField()
    saved_by = pw.CharField(default="")  # the HTTP user, or user@host of a ZeroMQ/direct client
    document = pw.BlobField()

    class Meta:
        indexes = ((("record", "number"), True),)


class RecordJob(BaseModel):
    """The job whose run a record describes (``balsamdb.job`` of the document): "the records of
    job X" is one index lookup.  Kept in step with ``Record.document`` by every save."""

    record = pw.ForeignKeyField(Record, primary_key=True, on_delete="CASCADE")
    job_id = pw.CharField(max_length=36, index=True)
    run = pw.IntegerField(null=True)  # the job's run number (1 for its first run), when known


class RecordFile(BaseModel):
    """An input or output file of a record (``input_data`` / ``output_data`` of the document),
    with its SHA-256 digest when it was taken: "which records used the file with digest X",
    "which records produced F" are index lookups."""

    record = pw.ForeignKeyField(Record, on_delete="CASCADE", index=True)
    role = pw.CharField(max_length=8)  # input | output
    path = pw.TextField(index=True)
    sha256 = pw.CharField(max_length=64, null=True, index=True)
    size = pw.BigIntegerField(null=True)


class User(BaseModel):
    """A person who may use the HTTP record store; the password is kept as a scrypt hash."""

    name = pw.CharField(primary_key=True)
    password_hash = pw.TextField()
    created_at = pw.DoubleField()
    admin = pw.BooleanField(default=False)  # may use every operation over HTTP (jobs, users, copies)


class ProjectPermission(BaseModel):
    project = pw.ForeignKeyField(Project, on_delete="CASCADE", index=False)  # the key's prefix
    user = pw.ForeignKeyField(User, on_delete="CASCADE")

    class Meta:
        primary_key = pw.CompositeKey("project", "user")


class AppliedRequest(BaseModel):
    """A write that was applied, with its answer: a retry gets this answer (a job answer is
    stored compactly; see :mod:`balsamdb.answers`)."""

    request_id = pw.CharField(max_length=64, primary_key=True)
    applied_at = pw.DoubleField(index=True)  # old ones are pruned (applied_retention_days)
    response = pw.TextField()


class JobAnswerBase(BaseModel):
    """The fields of a job as they were before a change, kept for the compact stored
    answers that refer to them (see :mod:`balsamdb.answers`)."""

    digest = pw.CharField(max_length=32, primary_key=True)
    applied_at = pw.DoubleField(index=True)  # when the job changed; pruned with the request ids
    fields = pw.TextField()


class SchemaVersion(BaseModel):
    version = pw.IntegerField()


MODELS = [Job, JobStateChange, JobTag, Project, Record, RecordTag, RecordVersion, User, ProjectPermission,
          AppliedRequest, JobAnswerBase, JobParent, WorkflowPolicy, SchemaVersion, RecordJob, RecordFile]
MODELS_V1 = [Job, JobStateChange, JobTag, Project, Record, RecordTag, AppliedRequest, SchemaVersion]


def quoter(database):
    """A function that quotes an SQL identifier (table, column, index name) the way
    ``database`` does, as peewee's ``Entity`` does: ``q("job")`` -> ``"job"`` on SQLite
    and PostgreSQL.  For the few statements written by hand."""
    left, right = database.quote[0], database.quote[1]
    return lambda name: left + str(name).replace(left, left + left) + right


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
    import zlib

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
    from .operations.record_links import link_rows

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
    for table, columns in ((Job._meta.table_name, ("workflow", "state")), (Job._meta.table_name, ("updated_at",)),
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
        from .exceptions import ConfigError

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
                from .exceptions import ConfigError

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
    return done


def now():
    return time.time()
