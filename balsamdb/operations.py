"""The closed set of operations that change or read the store.

Each operation is defined once, here, and its docstring is its specification:
the same function runs inside the write server (in a savepoint of a group
commit) and in a process writing SQLite directly.  Parameters arrive as JSON
values and are validated before anything is written; no SQL crosses the wire.

:mod:`balsamdb.applier` runs them (``lookup``, ``bind_params``, then the
function) while the models are bound to a database and a transaction is open.
"""

import inspect
import json
import uuid
import zlib
from dataclasses import dataclass

import peewee as pw

from . import states
from .dbdir import job_working_directory
from .exceptions import BadRequest, Conflict, NotFound
from .models import (Job, JobStateChange, JobTag, Project, ProjectPermission, Record, RecordTag, RecordVersion, User,
                     now)
from .statements import statements


@dataclass(frozen=True)
class Operation:
    name: str
    function: object
    write: bool
    signature: inspect.Signature

    @property
    def doc(self):
        return inspect.cleandoc(self.function.__doc__ or "")


OPERATIONS = {}


def operation(write):
    def register(function):
        name = function.__name__
        OPERATIONS[name] = Operation(name, function, write, inspect.signature(function))
        return function

    return register


def lookup(name):
    """The :class:`Operation` called ``name``, or :class:`BadRequest`."""
    if not isinstance(name, str) or name not in OPERATIONS:
        raise BadRequest(f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}")
    return OPERATIONS[name]


def check_offline(name, params):
    """The checks of operation ``name`` that need no database, for a write about to be
    spooled: nothing the server would refuse on sight is left waiting in the spool."""
    op = lookup(name)
    bind_params(op, params)
    if name == "job_create":
        _clean_job(params["job"], 0.0)
    elif name == "job_bulk_create":
        if not isinstance(params["jobs"], list):
            raise BadRequest("jobs must be a non-empty list")
        for spec in params["jobs"]:
            _clean_job(spec, 0.0)


def bind_params(op, params):
    """Check ``params`` against the operation's signature; raise :class:`BadRequest`."""
    if not isinstance(params, dict):
        raise BadRequest(f"{op.name}: params must be an object")
    try:
        op.signature.bind(**params)
    except TypeError as exc:
        raise BadRequest(f"{op.name}: {exc}") from None


# -- validation helpers ------------------------------------------------------

def _text(value, what, required=True, max_len=None):
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{what} must be a non-empty string")
    if max_len and len(value) > max_len:
        raise BadRequest(f"{what} is longer than {max_len} characters")
    if "\x00" in value:
        raise BadRequest(f"{what} may not contain the NUL character (PostgreSQL cannot store it)")
    return value


INT_MAX = 2 ** 31 - 1  # integer columns are 32-bit on PostgreSQL


def _number(value, what, kind=float, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRequest(f"{what} must be a number")
    if value < minimum:
        raise BadRequest(f"{what} must be at least {minimum}")
    if kind is int and value > INT_MAX:
        raise BadRequest(f"{what} must be at most {INT_MAX}")
    if kind is float and abs(value) == float("inf"):
        raise BadRequest(f"{what} must be finite")
    return kind(value)


MAX_LIST = 50000  # items in one list parameter (ids, tags): beyond it, send several requests


def _str_list(value, what, max_len=255):
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise BadRequest(f"{what} must be a list of non-empty strings")
    if len(value) > MAX_LIST:
        raise BadRequest(f"{what} holds {len(value)} items; at most {MAX_LIST} per request")
    if any(len(v) > max_len for v in value):
        raise BadRequest(f"each of {what} must be at most {max_len} characters")
    if any("\x00" in v for v in value):
        raise BadRequest(f"{what} may not contain the NUL character (PostgreSQL cannot store it)")
    return list(dict.fromkeys(value))


def _object(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def _uuid(value, what="job id"):
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise BadRequest(f"{what} {value!r} is not a UUID") from None


# -- jobs ----------------------------------------------------------------------

JOB_FIELDS = {
    # name: validator(value) -> clean value
    "application": lambda v: _text(v, "application", required=False) or "",
    "args": lambda v: _text(v, "args", required=False) or "",
    "description": lambda v: _text(v, "description", required=False) or "",
    "num_nodes": lambda v: _number(v, "num_nodes", int, 1),
    "ranks_per_node": lambda v: _number(v, "ranks_per_node", int, 1),
    "threads_per_rank": lambda v: _number(v, "threads_per_rank", int, 1),
    "wall_time_minutes": lambda v: _number(v, "wall_time_minutes", float, 0),
    "environ": lambda v: {str(k): str(x) for k, x in _object(v, "environ").items()},
    "parents": lambda v: [_uuid(p, "parent id") for p in _str_list(v, "parents")],
    "tags": lambda v: _str_list(v, "tags"),
    "data": lambda v: _object(v, "data"),
}
CREATE_ONLY = {"id", "name", "workflow", "state", "working_directory", "state_message"}


JOB_KEYS = ("id", "name", "workflow", "application", "args", "description", "state", "state_message",
            "working_directory", "num_nodes", "ranks_per_node", "threads_per_rank", "wall_time_minutes",
            "environ", "parents", "tags", "data", "created_at", "updated_at")


def job_to_dict(job):
    return {key: getattr(job, key) for key in JOB_KEYS}


def _clean_job(spec, when):
    """Validate a job specification; returns the row to insert."""
    if not isinstance(spec, dict):
        raise BadRequest("a job must be an object")
    unknown = set(spec) - set(JOB_FIELDS) - CREATE_ONLY
    if unknown:
        raise BadRequest(f"unknown job fields: {', '.join(sorted(unknown))}")
    row = {name: check(spec[name]) for name, check in JOB_FIELDS.items() if name in spec}
    row["id"] = _uuid(spec["id"]) if spec.get("id") else str(uuid.uuid4())
    row["name"] = _text(spec.get("name"), "job name", max_len=255)
    row["workflow"] = _text(spec.get("workflow") or "default", "workflow", max_len=255)
    state = spec.get("state") or ("AWAITING_PARENTS" if row.get("parents") else "CREATED")
    if state not in states.INITIAL:
        raise BadRequest(f"a new job starts in one of {sorted(states.INITIAL)}, not {state!r}")
    row["state"] = state
    row["state_message"] = _text(spec.get("state_message"), "state_message", required=False) or ""
    row["working_directory"] = spec.get("working_directory") or job_working_directory(
        row["workflow"], row["name"], row["id"]
    )
    _text(row["working_directory"], "working_directory")
    row["created_at"] = row["updated_at"] = when
    for name, default in _JOB_DEFAULTS:
        if name not in row:
            row[name] = default() if callable(default) else default
    return row


# The model's defaults, looked up once rather than for every job.
_JOB_DEFAULTS = [(name, field.default) for name, field in Job._meta.fields.items() if field.default is not None]


#: Operations that only insert (they read nothing): in a group commit's optimistic pass their
#: inserts are deferred and made together (see balsamdb.statements.Statements.insert).
DEFERRABLE = frozenset({"job_create", "job_bulk_create"})


def _insert_jobs(rows, when):
    fast = statements()
    try:
        fast.insert(fast.insert_job, rows)
    except pw.IntegrityError:
        # No query here: on PostgreSQL the transaction is unusable until the savepoint rolls back.
        which = f"job id {rows[0]['id']} already exists" if len(rows) == 1 else "a job id already exists"
        raise Conflict(which) from None
    fast.insert(fast.insert_history, [
        {"job": r["id"], "time": when, "from_state": None, "to_state": r["state"], "message": "created"}
        for r in rows
    ])
    tags = [{"job": r["id"], "tag": t} for r in rows for t in r["tags"]]
    if tags:
        fast.insert(fast.insert_tag, tags)


@operation(write=True)
def job_create(job):
    """Create one job.

    ``job`` is an object with ``name`` (required), ``workflow`` (default
    "default"), ``id`` (a UUID made by the client; made here if absent),
    ``application``, ``args``, ``description``, ``num_nodes``,
    ``ranks_per_node``, ``threads_per_rank``, ``wall_time_minutes``,
    ``environ`` (object of strings), ``parents`` (job ids), ``tags`` (strings),
    ``data`` (any JSON object), ``state`` (CREATED, AWAITING_PARENTS or READY;
    AWAITING_PARENTS by default when there are parents).  The working directory
    is ``data/<workflow>/<name>_<first 8 characters of id>``.
    Returns the job.  A duplicate id is a conflict.
    """
    when = now()
    row = _clean_job(job, when)
    _insert_jobs([row], when)
    return {key: row[key] for key in JOB_KEYS}


@operation(write=True)
def job_bulk_create(jobs):
    """Create many jobs at once, all or none.

    ``jobs`` is a list of job objects as for ``job_create`` (give each its
    ``id``: the answer does not list them).  Returns ``{"created": n}``.
    """
    if not isinstance(jobs, list) or not jobs:
        raise BadRequest("jobs must be a non-empty list")
    when = now()
    rows = [_clean_job(spec, when) for spec in jobs]
    if len({r["id"] for r in rows}) != len(rows):
        raise Conflict("the same job id appears twice in one bulk_create")
    _insert_jobs(rows, when)
    return {"created": len(rows)}


def _get_job(job_id):
    try:
        return Job.get_by_id(_uuid(job_id))
    except Job.DoesNotExist:
        raise NotFound(f"no job with id {job_id}") from None


@operation(write=True)
def job_update_state(job_id, state, message=""):
    """Move job ``job_id`` to ``state``, recording ``message`` in its history.

    The state machine (see :mod:`balsamdb.states`) refuses illegal transitions.
    Returns the job.
    """
    fast = statements()
    job = fast.job(_uuid(job_id))
    if job is None:
        raise NotFound(f"no job with id {job_id}")
    states.check_transition(job["state"], state)
    message = _text(message, "message", required=False) or ""
    when = now()
    fast.executemany(fast.insert_history, [
        {"job": job["id"], "time": when, "from_state": job["state"], "to_state": state, "message": message}])
    fast.database.execute_sql(fast.update_state, (state, message, when, job["id"]))
    job.update(state=state, state_message=message, updated_at=when)
    return job


@operation(write=True)
def job_modify(job_id, changes):
    """Change fields of job ``job_id``.

    ``changes`` may set ``application``, ``args``, ``description``,
    ``num_nodes``, ``ranks_per_node``, ``threads_per_rank``,
    ``wall_time_minutes``, ``environ``, ``parents``, ``tags`` and ``data``
    (replaced whole).  The state changes only through ``job_update_state``.
    Returns the job.
    """
    changes = _object(changes, "changes")
    bad = set(changes) - set(JOB_FIELDS)
    if bad or not changes:
        raise BadRequest(
            f"cannot modify {', '.join(sorted(bad)) or 'nothing'}; modifiable fields: {', '.join(JOB_FIELDS)}"
        )
    job = _get_job(job_id)
    for name, value in changes.items():
        setattr(job, name, JOB_FIELDS[name](value))
    job.updated_at = now()
    job.save()
    if "tags" in changes:
        JobTag.delete().where(JobTag.job == job.id).execute()
        if job.tags:
            JobTag.insert_many([{"job": job.id, "tag": t} for t in job.tags]).execute()
    return job_to_dict(job)


@operation(write=True)
def job_delete(job_ids):
    """Delete the jobs in ``job_ids`` with their history; returns ``{"deleted": n}``.

    Ids that do not exist are not an error; the count says how many went.
    Working directories are left on disk.
    """
    ids = [_uuid(i) for i in _str_list(job_ids, "job_ids")]
    deleted = 0
    for start in range(0, len(ids), 500):  # stay below SQLite's limit on parameters
        chunk = ids[start:start + 500]
        JobTag.delete().where(JobTag.job.in_(chunk)).execute()
        JobStateChange.delete().where(JobStateChange.job.in_(chunk)).execute()
        deleted += Job.delete().where(Job.id.in_(chunk)).execute()
    return {"deleted": deleted}


@operation(write=False)
def job_get(job_id):
    """Return job ``job_id`` with its ``history``: a list of
    ``{time, from_state, to_state, message}``, oldest first."""
    job = _get_job(job_id)
    out = job_to_dict(job)
    out["history"] = [
        {"time": h.time, "from_state": h.from_state, "to_state": h.to_state, "message": h.message}
        for h in JobStateChange.select().where(JobStateChange.job == job.id).order_by(JobStateChange.id)
    ]
    return out


def job_query(filters):
    """The query of the jobs matching ``filters`` (as for ``job_filter``), bound to no database:
    run it with ``query.execute(database)``.  For readers outside the write path (the web pages);
    raises :class:`BadRequest` for a bad filter."""
    return _job_query(filters)


def _glob_to_like(pattern):
    return pattern.replace("*", "%").replace("?", "_")


FILTER_KEYS = ("ids", "id_prefix", "workflow", "name", "name_like", "state", "tags",
               "created_after", "created_before", "updated_after", "updated_before")


def _job_query(filters):
    filters = _object(filters, "filters")
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise BadRequest(f"unknown job filters {sorted(unknown)}; known: {', '.join(FILTER_KEYS)}")
    query = Job.select()
    if filters.get("ids") is not None:
        ids = [_uuid(i) for i in _str_list(filters["ids"], "ids")]
        if len(ids) > 500:  # SQLite allows a limited number of parameters per statement
            raise BadRequest("filter by at most 500 ids at a time")
        query = query.where(Job.id.in_(ids))
    if filters.get("id_prefix") is not None:
        prefix = _text(filters["id_prefix"], "id_prefix").lower()
        if not all(c in "0123456789abcdef-" for c in prefix):
            raise BadRequest(f"id_prefix {prefix!r} is not part of a UUID")
        query = query.where(Job.id.startswith(prefix))
    for key in ("workflow", "name"):
        if filters.get(key) is not None:
            query = query.where(getattr(Job, key) == _text(filters[key], key))
    if filters.get("name_like") is not None:
        pattern = _text(filters["name_like"], "name_like", max_len=255)
        if "\\" in pattern:
            raise BadRequest("name_like may not contain a backslash")
        query = query.where(Job.name ** _glob_to_like(pattern))
    if filters.get("state") is not None:
        wanted = filters["state"]
        wanted = [wanted] if isinstance(wanted, str) else _str_list(wanted, "state")
        unknown_states = [s for s in wanted if s not in states.STATES]
        if unknown_states:
            raise BadRequest(f"unknown states {unknown_states}; known: {', '.join(states.STATES)}")
        query = query.where(Job.state.in_(wanted))
    for tag in _str_list(filters.get("tags"), "tags"):
        query = query.where(Job.id.in_(JobTag.select(JobTag.job).where(JobTag.tag == tag)))
    for key, field, op in (("created_after", Job.created_at, ">="), ("created_before", Job.created_at, "<"),
                           ("updated_after", Job.updated_at, ">="), ("updated_before", Job.updated_at, "<")):
        if filters.get(key) is not None:
            query = query.where(pw.Expression(field, op, _number(filters[key], key)))
    return query


def _job_order(sort):
    """The ORDER BY of ``sort`` (see :data:`balsamdb.job_queries.SORT_KEYS`); ties by creation, then id."""
    from .job_queries import check_sort

    sort = check_sort(sort) or "created"
    key = sort.lstrip("-")
    if key == "state":  # in the order of the pipeline, not of the alphabet
        field = pw.Case(Job.state, [(name, rank) for rank, name in enumerate(states.STATES)], len(states.STATES))
    else:
        field = {"created": Job.created_at, "updated": Job.updated_at, "name": Job.name,
                 "workflow": Job.workflow, "id": Job.id}[key]
    descending = sort.startswith("-")
    order = [field.desc() if descending else field.asc()]
    if key != "created":
        order.append(Job.created_at.desc() if descending else Job.created_at.asc())
    order.append(Job.id.desc() if descending else Job.id.asc())
    return order


@operation(write=False)
def job_filter(filters=None, limit=None, offset=0, sort=None):
    """Jobs matching ``filters``, oldest first (or as ``sort`` says).

    ``filters`` may hold ``ids``, ``id_prefix`` (the start of an id),
    ``workflow``, ``name``, ``name_like`` (a glob
    such as ``sim-*``, case-insensitive), ``state`` (one or a list), ``tags``
    (all of them), ``created_after``/``created_before``/``updated_after``/
    ``updated_before`` (UNIX seconds).  ``limit`` and ``offset`` page the result.
    ``sort`` is one of ``created`` (the default), ``updated``, ``name``,
    ``workflow``, ``state`` (in pipeline order) or ``id``; with a leading ``-``
    the order is reversed (``-updated``: the last changed first).
    """
    query = _job_query(filters).order_by(*_job_order(sort))
    if limit is not None:
        query = query.limit(_number(limit, "limit", int, 0))
    if offset:
        query = query.offset(_number(offset, "offset", int, 0))
    return [job_to_dict(j) for j in query]


@operation(write=False)
def job_count(filters=None):
    """Number of jobs matching ``filters`` (as for ``job_filter``)."""
    return _job_query(filters).count()


@operation(write=False)
def job_state_counts(filters=None):
    """How many jobs matching ``filters`` (as for ``job_filter``) are in each
    state, per workflow: a list of ``{workflow, state, count}``, by workflow,
    then states in pipeline order; states with no job are left out."""
    query = (_job_query(filters).select(Job.workflow, Job.state, pw.fn.COUNT(Job.id).alias("count"))
             .group_by(Job.workflow, Job.state))
    rows = [{"workflow": row.workflow, "state": row.state, "count": row.count} for row in query]
    rank = {name: index for index, name in enumerate(states.STATES)}
    return sorted(rows, key=lambda r: (r["workflow"], rank.get(r["state"], len(rank))))


# -- projects and records -------------------------------------------------------

# Fields of a Sumatra record that a later save of the same run may fill in or change; in a
# project with the write-once option every other field is provenance and may not change
# (see docs/http.md).  Elsewhere a save replaces the record and its earlier versions are kept.
RECORD_MUTABLE = frozenset({"duration", "output_data", "platforms", "stdout_stderr", "tags",
                            "user", "outcome", "reason", "repeats"})
TAG_MATCHES = ("all", "any")


def _project_name(name):
    return _text(name, "project name", max_len=255)


def project_to_dict(project):
    return {"name": project.name, "description": project.description,
            "public": project.public, "created_at": project.created_at, "write_once": bool(project.write_once)}


def _flag(value, what):
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value


@operation(write=True)
def project_save(name, description=None, public=None, write_once=None):
    """Create project ``name`` or update its description, public flag and
    write-once option (``write_once``: a save that changes a provenance field of
    an existing record is refused as a conflict instead of replacing it; off by
    default).  Returns ``{"created": bool, "project": {...}}``.  Creating a
    project that exists is not an error (two jobs may race to create it).
    """
    name = _project_name(name)
    _flag(public, "public")
    _flag(write_once, "write_once")
    project, created = Project.get_or_create(name=name, defaults={"created_at": now()})
    if description is not None:
        project.description = _text(description, "description", required=False) or ""
    if public is not None:
        project.public = public
    if write_once is not None:
        project.write_once = write_once
    project.save()
    return {"created": created, "project": project_to_dict(project)}


def _get_project(name):
    try:
        return Project.get_by_id(_project_name(name))
    except Project.DoesNotExist:
        raise NotFound(f"no project {name!r}") from None


@operation(write=False)
def project_get(name, count=True):
    """Return project ``name`` with its record count (``records``; left out when
    ``count`` is false: counting a large project costs more than the rest)."""
    project = _get_project(name)
    out = project_to_dict(project)
    if count:
        out["records"] = Record.select().where(Record.project == project.name).count()
    return out


@operation(write=False)
def project_list(count=False):
    """All projects, by name; with ``count``, each with its number of ``records``."""
    projects = [project_to_dict(p) for p in Project.select().order_by(Project.name)]
    if count:
        counts = dict(Record.select(Record.project, pw.fn.COUNT(Record.id)).group_by(Record.project).tuples())
        for project in projects:
            project["records"] = counts.get(project["name"], 0)
    return projects


def _sort_time(timestamp):
    from datetime import datetime

    for fmt in ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(timestamp, fmt).timestamp()
        except (ValueError, TypeError):
            continue
    return now()


def _record_columns(doc):
    def text(key, limit=None):
        value = doc.get(key)
        value = "" if value is None else str(value)
        if limit and len(value) > limit:
            raise BadRequest(f"record field {key} is longer than {limit} characters")
        if "\x00" in value:
            raise BadRequest(f"record field {key} may not contain the NUL character")
        return value

    duration = doc.get("duration")
    return {
        "timestamp": text("timestamp", 255), "sort_time": _sort_time(doc.get("timestamp")),
        "reason": text("reason"), "outcome": text("outcome"), "main_file": text("main_file"),
        "version": text("version", 255), "user": text("user", 255),
        "duration": float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None,
    }


def record_tags(document, what="record tags"):
    """The tags of a record document: a list of strings; ``""`` and null mean none (as in
    Sumatra Server's own example record)."""
    tags = document.get("tags")
    if tags is None or tags == "":
        return []
    return _str_list(tags, what)


def record_text(document):
    """The one JSON text of a record document that the store keeps (and compares)."""
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def compress(text):
    return zlib.compress(text.encode(), 1)  # level 1: half the CPU of 6 on program output, ~10% larger


def decompress(data):
    return zlib.decompress(bytes(data)).decode()


def _saved_by(value):
    return _text(value, "saved_by", required=False, max_len=255) or ""


def _check_write_once(fast, project, label, old_text, record):
    """Refuse (Conflict) a changed provenance field when ``project`` has the write-once option."""
    row = fast.execute(fast.project_write_once, (project,)).fetchone()
    if not row or not row[0]:
        return
    old = json.loads(old_text)
    changed = sorted(k for k in set(old) | set(record) if k not in RECORD_MUTABLE and old.get(k) != record.get(k))
    if changed:
        raise Conflict(
            f"record {label!r} in {project!r} exists with different {', '.join(changed)}; project {project!r} "
            "is write-once, so these provenance fields may not change (use another label)"
        )


def _add_version(fast, record_id, text, when, saved_by, number=None):
    """Keep ``text`` as the next version of record ``record_id``; returns its number."""
    if number is None:
        number = fast.execute(fast.last_version, (record_id,)).fetchone()[0] + 1
    fast.execute(fast.insert_version, (record_id, number, when, saved_by, compress(text)))
    return number


@operation(write=True)
def record_save(project, record, saved_by=None):
    """Save a Sumatra record document in ``project`` (created if needed).

    ``record`` is the JSON object Sumatra sends, stored unchanged; its
    ``label`` names it.  Saving a label again replaces the record, as in
    Sumatra's own stores, and keeps every earlier version: each save that
    changes the document adds a version (numbered from 1, with the time and
    ``saved_by``, who saved it); a save identical to the current version adds
    none.  In a project with the write-once option, a save that changes a
    field other than the run results (duration, output_data, platforms,
    stdout_stderr, tags, user, outcome, reason, repeats) is a conflict.
    ``tags`` "" or null mean no tags.  Returns ``{"created": bool, "version": n}``.
    """
    project = _project_name(project)
    if not isinstance(record, dict):
        raise BadRequest("a record must be a JSON object")
    label = _text(record.get("label"), "record label", max_len=255)
    if any(ord(c) < 32 and c not in "\t" for c in label):
        raise BadRequest("a record label may not hold control characters")
    tags = record_tags(record)
    saved_by = _saved_by(saved_by)
    fast = statements()
    when = now()
    fast.execute(fast.ensure_project, (project, False, when, False))
    document = record_text(record)
    columns = _record_columns(record)
    existing = fast.execute(fast.find_record, (project, label)).fetchone()
    if existing is None:
        record_id = fast.insert_record_row(dict(columns, project_id=project, label=label, document=document,
                                                created_at=when, updated_at=when))
        version = _add_version(fast, record_id, document, when, saved_by, number=1)
        created = True
    else:
        record_id, old_document = existing
        if old_document == document:  # nothing changed: no new version
            return {"created": False, "version": fast.execute(fast.last_version, (record_id,)).fetchone()[0]}
        _check_write_once(fast, project, label, old_document, record)
        values = dict(columns, document=document, updated_at=when)
        fast.execute(fast.update_record, [values[c] for c in fast.record_update_columns] + [record_id])
        fast.execute(fast.delete_record_tags, (record_id,))
        version = _add_version(fast, record_id, document, when, saved_by)
        created = False
    for tag in tags:
        fast.execute(fast.insert_record_tag, (record_id, tag))
    return {"created": created, "version": version}


def _get_record(project, label):
    row = Record.get_or_none((Record.project == _project_name(project)) & (Record.label == label))
    if row is None:
        raise NotFound(f"no record {label!r} in project {project!r}")
    return row


@operation(write=False)
def record_get(project, label, version=None):
    """The record document labelled ``label`` in ``project``, as it was saved;
    with ``version`` (a number from ``record_versions``), that version of it."""
    row = _get_record(project, label)
    if version is None:
        return json.loads(row.document)
    number = _number(version, "version", int, 1)
    found = RecordVersion.get_or_none((RecordVersion.record == row.id) & (RecordVersion.number == number))
    if found is None:
        raise NotFound(f"record {label!r} in project {project!r} has no version {number}")
    return json.loads(decompress(found.document))


def version_list(record_id):
    """The versions of record ``record_id``, oldest first: ``{"version", "saved_at", "saved_by",
    "bytes", "changed"}`` where ``changed`` names the top-level fields that differ from the
    version before (all of them for version 1)."""
    out, previous = [], None
    query = RecordVersion.select().where(RecordVersion.record == record_id).order_by(RecordVersion.number)
    for row in query:
        text = decompress(row.document)
        doc = json.loads(text)
        changed = sorted(k for k in set(doc) | set(previous or {})
                         if previous is None or doc.get(k) != previous.get(k))
        out.append({"version": row.number, "saved_at": row.saved_at, "saved_by": row.saved_by,
                    "bytes": len(text.encode()), "changed": changed})
        previous = doc
    return out


@operation(write=False)
def record_versions(project, label):
    """The versions of record ``label`` of ``project``, oldest first: a list of
    ``{"version": n, "saved_at": UNIX seconds, "saved_by": who, "bytes": size of the
    document, "changed": [top-level fields that differ from the version before]}``.
    The last one is the current record."""
    return version_list(_get_record(project, label).id)


def _tag_match(match):
    if match not in TAG_MATCHES:
        raise BadRequest(f"match must be one of {', '.join(TAG_MATCHES)}, not {match!r}")
    return match


def _record_query(project, tags, match="all"):
    query = Record.select().where(Record.project == _project_name(project))
    tags = _str_list(tags, "tags")
    if _tag_match(match) == "any" and tags:
        return query.where(Record.id.in_(RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(tags))))
    for tag in tags:
        query = query.where(Record.id.in_(RecordTag.select(RecordTag.record).where(RecordTag.tag == tag)))
    return query


@operation(write=False)
def record_list(project, tags=None, limit=None, match="all"):
    """Record documents of ``project`` having ``tags``, newest first: all of them
    (``match`` "all", the default) or any of them (``match`` "any")."""
    query = _record_query(project, tags, match).order_by(Record.sort_time.desc(), Record.id.desc())
    if limit is not None:
        query = query.limit(_number(limit, "limit", int, 0))
    return [json.loads(r.document) for r in query]


@operation(write=False)
def record_labels(project, tags=None, match="all"):
    """Labels of the records of ``project`` having ``tags`` (``match`` as for
    ``record_list``), newest first."""
    query = (_record_query(project, tags, match).select(Record.label)
             .order_by(Record.sort_time.desc(), Record.id.desc()))
    return [r.label for r in query]


def _delete_records(ids):
    deleted = 0
    for start in range(0, len(ids), 500):  # stay below SQLite's limit on parameters
        chunk = ids[start:start + 500]
        RecordTag.delete().where(RecordTag.record.in_(chunk)).execute()
        RecordVersion.delete().where(RecordVersion.record.in_(chunk)).execute()
        deleted += Record.delete().where(Record.id.in_(chunk)).execute()
    return deleted


@operation(write=True)
def record_delete(project, label):
    """Delete record ``label`` of ``project`` with its versions; not found is an
    error.  Returns ``{"deleted": 1}``."""
    _delete_records([_get_record(project, label).id])
    return {"deleted": 1}


@operation(write=True)
def record_delete_by_tag(project, tag):
    """Delete every record of ``project`` tagged ``tag``, with their versions;
    returns ``{"deleted": n}``."""
    ids = [r.id for r in _record_query(project, [_text(tag, "tag")]).select(Record.id)]
    return {"deleted": _delete_records(ids)}


@operation(write=True)
def record_tag(project, label, add=None, remove=None, saved_by=None):
    """Add and remove tags of record ``label`` (a new version of it when its tags
    change; ``saved_by`` as for ``record_save``); returns ``{"tags": [...]}``, its new tags."""
    row = _get_record(project, label)
    doc = json.loads(row.document)
    add, remove = _str_list(add, "add"), set(_str_list(remove, "remove"))
    tags = [t for t in list(dict.fromkeys(record_tags(doc) + add)) if t not in remove]
    doc["tags"] = tags
    text = record_text(doc)
    if text == row.document:
        return {"tags": tags}
    when = now()
    Record.update(document=text, updated_at=when).where(Record.id == row.id).execute()
    RecordTag.delete().where(RecordTag.record == row.id).execute()
    if tags:
        RecordTag.insert_many([{"record": row.id, "tag": t} for t in tags]).execute()
    _add_version(statements(), row.id, text, when, _saved_by(saved_by))
    return {"tags": tags}


# -- users and permissions (the HTTP record store) -------------------------------------

def _user_name(name):
    name = _text(name, "user name", max_len=150)
    if not all(c.isalnum() or c in "._-@+" for c in name):
        raise BadRequest(f"user name {name!r} may hold letters, digits and . _ - @ + only")
    return name


@operation(write=True)
def user_save(name, password_hash=None, admin=None):
    """Create user ``name`` or change their password or admin flag; ``password_hash``
    is made by ``balsamdb.passwords.hash_password`` (the password itself never reaches
    the store), required for a new user.  An admin may use every operation over HTTP
    (jobs, users, whole-store copies); others only the records of their projects.
    Returns ``{"created": bool}``."""
    name = _user_name(name)
    if password_hash is not None:
        password_hash = _text(password_hash, "password_hash", max_len=512)
        if not password_hash.startswith("scrypt$"):
            raise BadRequest("password_hash must come from balsamdb.passwords.hash_password")
    if admin is not None and not isinstance(admin, bool):
        raise BadRequest("admin must be true or false")
    created = User.get_or_none(User.name == name) is None
    if created:
        if password_hash is None:
            raise BadRequest(f"user {name!r} is new: give a password_hash")
        User.create(name=name, password_hash=password_hash, created_at=now(), admin=bool(admin))
    else:
        changes = {k: v for k, v in (("password_hash", password_hash), ("admin", admin)) if v is not None}
        if changes:
            User.update(**changes).where(User.name == name).execute()
    return {"created": created}


@operation(write=True)
def user_delete(name):
    """Delete user ``name`` and their permissions; not found is an error."""
    name = _user_name(name)
    ProjectPermission.delete().where(ProjectPermission.user == name).execute()
    if not User.delete().where(User.name == name).execute():
        raise NotFound(f"no user {name!r}")
    return {"deleted": 1}


@operation(write=False)
def user_list():
    """All users, by name, with the projects each may use (no password hashes)."""
    grants = {}
    for perm in ProjectPermission.select():
        grants.setdefault(perm.user_id, []).append(perm.project_id)
    return [{"name": u.name, "created_at": u.created_at, "admin": bool(u.admin),
             "projects": sorted(grants.get(u.name, []))} for u in User.select().order_by(User.name)]


@operation(write=False)
def user_get(name):
    """User ``name`` with their password hash, for a server that checks passwords."""
    user = User.get_or_none(User.name == _user_name(name))
    if user is None:
        raise NotFound(f"no user {name!r}")
    projects = [p.project_id for p in ProjectPermission.select().where(ProjectPermission.user == user.name)]
    return {"name": user.name, "password_hash": user.password_hash, "admin": bool(user.admin),
            "projects": sorted(projects)}


@operation(write=True)
def permission_grant(project, user):
    """Let ``user`` read and write ``project`` (the project is created if needed)."""
    project, user = _project_name(project), _user_name(user)
    if User.get_or_none(User.name == user) is None:
        raise NotFound(f"no user {user!r}; add one with: db user add {user}")
    Project.get_or_create(name=project, defaults={"created_at": now()})
    _, created = ProjectPermission.get_or_create(project=project, user=user)
    return {"granted": created}


@operation(write=False)
def permission_list(project):
    """Users who may use ``project``."""
    _get_project(project)
    return sorted(p.user_id for p in ProjectPermission.select().where(ProjectPermission.project == project))


# The operations that move whole stores (db copy, export, import) live in their own module.
from . import transfer_ops  # noqa: E402,F401  (registers its operations)
