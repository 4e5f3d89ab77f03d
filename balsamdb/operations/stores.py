"""Operations that move a whole store: read it in pages (its digest: :mod:`.digests`).

``db copy``, ``db configure --store``, ``db export`` and ``db import`` are built
on these three operations, so they work the same against a DB directory (through
its server, or directly), a PostgreSQL URL and an HTTP store of balsamdb.

An *item* is one JSON object with a ``kind``; items of a store, in this order:

    user        {"kind": "user", "name", "password_hash", "admin", "created_at"}
    project     {"kind": "project", "name", "description", "public", "created_at"}
    permission  {"kind": "permission", "project", "user"}
    record      {"kind": "record", "project", "label", "document", "created_at", "updated_at"
                 [, "versions": [{"version", "saved_at", "saved_by", "document"}, ...], oldest first,
                 the last one equal to "document"; only when asked for: a plain Sumatra
                 server keeps no versions]}
    job         {"kind": "job", <every field of job_get>, "history": [{"time", "from_state",
                 "to_state", "message"}, ...]}
    policy      {"kind": "policy", "workflow", "lost_runs", "updated_at"}: a workflow's policy for
                lost runs (``db job policy``); an export file made before policies were items has none

A record's tags are those of its document.  Within a kind, items sort by their
key (user: name; project: name; permission: project, user; record: project,
label; job: id; policy: workflow).
"""


import time
import weakref

import peewee as pw

from .. import jsonio

from ..exceptions import BadRequest
from ..models import Job, JobStateChange, JSONText, Project, ProjectPermission, Record, RecordVersion, User
from ..models import WorkflowPolicy
from .checks import check_number, chunks
from ..job_fields import JOB_KEYS
from .job_specs import job_to_dict
from .records import decompress
from .registry import operation

KINDS = ("user", "project", "permission", "record", "job", "policy")
#: the name of many items of a kind (in digests and messages)
PLURALS = {"user": "users", "project": "projects", "permission": "permissions", "record": "records", "job": "jobs",
           "policy": "policies"}
PAGE = 1000  # items per page unless the caller asks for another size
MAX_PAGE = 5000


def canonical(value):
    """The one JSON text of ``value`` that digests and export files use."""
    return jsonio.dumps_canonical(value)


# -- items from rows ----------------------------------------------------------------------------

def user_item(user):
    return {"kind": "user", "name": user.name, "password_hash": user.password_hash, "admin": bool(user.admin),
            "created_at": user.created_at}


def project_item(project):
    return {"kind": "project", "name": project.name, "description": project.description,
            "public": bool(project.public), "created_at": project.created_at}


def permission_item(permission):
    return {"kind": "permission", "project": permission.project_id, "user": permission.user_id}


def policy_item(policy):
    return {"kind": "policy", "workflow": policy.workflow, "lost_runs": policy.lost_runs,
            "updated_at": policy.updated_at}


def record_item(record, versions=None):
    item = {"kind": "record", "project": record.project_id, "label": record.label,
            "document": jsonio.loads(record.document), "created_at": record.created_at,
            "updated_at": record.updated_at}
    if versions is not None:
        item["versions"] = versions
    return item


# The items of a page are made from the cursor's own rows, not from model instances: peewee's
# row conversion was two thirds of an export's time (issue 22, item 7).  Only the JSON columns
# need decoding; numbers and text come from the database as they are stored.

def _rows(query, columns):
    return query.model._meta.database.execute(query.select(*columns)).fetchall()


def versions_of(record_ids):
    """``{record id: [version items, oldest first]}`` for ``record_ids``."""
    out = {record_id: [] for record_id in record_ids}
    for chunk in chunks(record_ids):
        query = (RecordVersion.select().where(RecordVersion.record.in_(chunk))
                 .order_by(RecordVersion.record, RecordVersion.number))
        for record, number, saved_at, saved_by, document in _rows(query, _VERSION_COLUMNS):
            out[record].append({"version": number, "saved_at": saved_at, "saved_by": saved_by,
                                "document": jsonio.loads(decompress(document))})
    return out


_VERSION_COLUMNS = [RecordVersion.record, RecordVersion.number, RecordVersion.saved_at, RecordVersion.saved_by,
                    RecordVersion.document]
_RECORD_COLUMNS = [Record.id, Record.project, Record.label, Record.document, Record.created_at, Record.updated_at]


def _record_items(query, versions):
    rows = _rows(query, _RECORD_COLUMNS)
    kept = versions_of([row[0] for row in rows]) if versions else None
    items = []
    for record_id, project, label, document, created_at, updated_at in rows:
        item = {"kind": "record", "project": project, "label": label, "document": jsonio.loads(document),
                "created_at": created_at, "updated_at": updated_at}
        if kept is not None:
            item["versions"] = kept[record_id]
        items.append(item)
    return items


_JOB_COLUMNS = [getattr(Job, key) for key in JOB_KEYS]
_JOB_JSON = [i for i, key in enumerate(JOB_KEYS) if isinstance(getattr(Job, key), JSONText)]
#: a state change's columns, its job named by id (joined from the job's internal key)
_HISTORY_COLUMNS = [Job.id, JobStateChange.time, JobStateChange.from_state, JobStateChange.to_state,
                    JobStateChange.message]


def job_dicts(query):
    """``job_to_dict`` of each job ``query`` selects, from the cursor's rows."""
    out = []
    for row in _rows(query, _JOB_COLUMNS):
        row = list(row)
        for i in _JOB_JSON:
            if row[i] is not None:
                row[i] = jsonio.loads(row[i])
        out.append(dict(zip(JOB_KEYS, row)))
    return out


def job_items(jobs):
    """The items of ``jobs`` (dicts of :func:`job_dicts`, or model rows), with their history."""
    jobs = [job if isinstance(job, dict) else job_to_dict(job) for job in jobs]
    ids = [job["id"] for job in jobs]
    history = {job_id: [] for job_id in ids}
    for start in range(0, len(ids), 500):
        query = (JobStateChange.select().join(Job, on=(JobStateChange.job == Job.key))
                 .where(Job.id.in_(ids[start:start + 500])).order_by(JobStateChange.id))
        for job_id, when, from_state, to_state, message in _rows(query, _HISTORY_COLUMNS):
            history[job_id].append({"time": when, "from_state": from_state, "to_state": to_state,
                                    "message": message})
    return [{"kind": "job", **job, "history": history[job["id"]]} for job in jobs]


_CODE_POINT_ORDER = weakref.WeakKeyDictionary()  # PostgreSQL database -> its answer, asked once


def sorts_by_code_point(database):
    """Whether ``database`` compares and sorts text by code point in its default collation, the
    one its indexes have: SQLite (BINARY) always; PostgreSQL when the database's collation is libc's
    C or POSIX, as in every cluster ``db init`` makes (``initdb --locale=C``).  A server whose
    database follows a locale sorts otherwise, and there the pages say ``COLLATE "C"``, which
    no index of the default collation serves."""
    if not isinstance(database, pw.PostgresqlDatabase):
        return True
    known = _CODE_POINT_ORDER.get(database)
    if known is None:
        collation, provider = database.execute_sql(
            "SELECT datcollate, to_jsonb(d) ->> 'datlocprovider' FROM pg_database d "  # the provider: 15+
            "WHERE datname = current_database()").fetchone()
        known = _CODE_POINT_ORDER[database] = collation in ("C", "POSIX") and provider in (None, "c")
    return known


def _c(field):
    """``field`` compared and sorted by code point on every database, so that pages, keys and
    export files agree everywhere: as it is where that is the default collation (the key's index
    then gives a page: on PostgreSQL at 100k jobs, ``COLLATE "C"`` sorted the whole table for
    each page, 40-110 ms), else ``COLLATE "C"``."""
    if sorts_by_code_point(field.model._meta.database):
        return field
    return field.collate('"C"')


def _after(fields, key):
    """The condition "(fields) > key", in key order."""
    first, rest = _c(fields[0]), fields[1:]
    if not rest:
        return first > key[0]
    return (first > key[0]) | ((first == key[0]) & _after(rest, key[1:]))


def _page_query(kind, after, since):
    """The query for one kind, ordered by key, from just after key ``after``."""
    model, fields = {
        "user": (User, [User.name]),
        "project": (Project, [Project.name]),
        "permission": (ProjectPermission, [ProjectPermission.project, ProjectPermission.user]),
        "record": (Record, [Record.project, Record.label]),
        "job": (Job, [Job.id]),
        "policy": (WorkflowPolicy, [WorkflowPolicy.workflow]),
    }[kind]
    query = model.select().order_by(*[_c(f) for f in fields])
    if after is not None:
        if len(after) != len(fields):
            raise BadRequest(f"after must be a {kind} key of {len(fields)} strings")
        query = query.where(_after(fields, after))
        if len(fields) > 1 and sorts_by_code_point(model._meta.database):
            # The same rows, as a row value (in the default collation: only where that is code point
            # order): the database then starts the index at the key instead of reading every entry
            # before it (SQLite, of 100k records in one project: the page at the 95,000th took
            # 41 ms, the first 28 ms; now 26 ms; PostgreSQL: 195 ms, now 0.8 ms).
            query = query.where(pw.Tuple(*fields) > pw.Tuple(*after))
    if since is not None and kind in ("record", "job"):
        query = query.where(model.updated_at >= since)
    return query


def item_key(item):
    """The sort key of an item, as a list (what ``export_items`` takes as ``after``)."""
    kind = item["kind"]
    if kind in ("user", "project"):
        return [item["name"]]
    if kind == "permission":
        return [item["project"], item["user"]]
    if kind == "record":
        return [item["project"], item["label"]]
    if kind == "policy":
        return [item["workflow"]]
    return [item["id"]]


def _items(kind, query, versions=False):
    """The items that ``query`` (of :func:`_page_query`) selects."""
    if kind == "job":
        return job_items(job_dicts(query))
    if kind == "record":
        return _record_items(query, versions)
    return [{"user": user_item, "project": project_item, "permission": permission_item,
             "policy": policy_item}[kind](row)
            for row in query]


def check_kind(kind):
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def _check_after(after):
    if after is None:
        return None
    if not isinstance(after, list) or not after or not all(isinstance(k, str) for k in after):
        raise BadRequest("after must be the key of the last item read: a list of strings")
    return after


@operation(write=False)
def export_items(kind, after=None, limit=PAGE, since=None, versions=False):
    """One page of the store's items of ``kind`` (user, project, permission, record, job, policy),
    in key order, starting just after the key ``after`` (the ``next`` of the previous page).

    ``since`` (UNIX seconds; records and jobs only) keeps only items changed at or
    after that time: a catch-up pass of a copy.  ``versions``: each record carries
    its versions.  Returns ``{"items": [...], "next": key or null when this was the
    last page, "now": the store's clock}``.
    """
    check_kind(kind)
    after = _check_after(after)
    limit = check_number(limit, "limit", int, 1)
    if limit > MAX_PAGE:
        raise BadRequest(f"limit is at most {MAX_PAGE}")
    since = None if since is None else check_number(since, "since", float, float("-inf"))
    now = time.time()
    if not isinstance(versions, bool):
        raise BadRequest("versions must be true or false")
    items = _items(kind, _page_query(kind, after, since).limit(limit + 1), versions)
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next": item_key(items[-1]) if more else None, "now": now}


@operation(write=False)
def store_counts():
    """How many items of each kind the store holds: ``{"user": n, "project": n, ...}``."""
    return {"user": User.select().count(), "project": Project.select().count(),
            "permission": ProjectPermission.select().count(), "record": Record.select().count(),
            "job": Job.select().count(), "policy": WorkflowPolicy.select().count()}
