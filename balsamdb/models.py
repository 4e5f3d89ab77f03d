"""The tables, as peewee models (the schema versions that build them: :mod:`balsamdb.migrations`).

Models are bound to a database at run time (``database.bind_ctx(MODELS)`` or
``bind(database)``), so one process can hold several DB directories.  JSON
columns are plain text: the same schema runs on SQLite and PostgreSQL.
Times are UNIX seconds (float, UTC).
"""

import time

import peewee as pw

from . import jsonio
from .job_fields import JOB_TABLE, LEASE_FIELDS  # LEASE_FIELDS: also read from here



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
    # The job's internal key (schema 11): what the tables that are only joined (history, tags) hold,
    # so that their indexes fill at their end; on SQLite the rowid.  Never shown, never copied: a job
    # is named by its id everywhere else (answers, exports, parents, records).
    key = pw.BigAutoField()
    id = pw.CharField(max_length=36, unique=True)
    name = pw.CharField(index=True)
    workflow = pw.CharField()  # indexed with state and updated_at: job_workflow_state_updated_at_id
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


#: the job's own fields (everything but its internal key)
JOB_FIELDS = [f for f in Job._meta.sorted_fields if f.name != "key"]

if tuple(f.name for f in JOB_FIELDS) != tuple(name for name, _ in JOB_TABLE):  # one table of the job's fields
    raise ImportError("balsamdb.models.Job and balsamdb.job_fields.JOB_TABLE name different fields")


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
    # The job's internal key (schema 11; was its id): the index on it fills at its end.
    job = pw.ForeignKeyField(Job, field=Job.key, column_name="job_key", backref="history", on_delete="CASCADE")
    time = pw.DoubleField()
    from_state = pw.CharField(max_length=32, null=True)
    to_state = pw.CharField(max_length=32)
    message = pw.TextField(default="")


class JobTag(BaseModel):
    # the job's internal key (schema 11; was its id), the primary key's prefix
    job = pw.ForeignKeyField(Job, field=Job.key, column_name="job_key", on_delete="CASCADE", index=False)
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


def now():
    return time.time()
