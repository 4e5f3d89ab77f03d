"""Listings paged by a keyset cursor: ``job_page`` (``job_rows``: a few of its fields) and
``record_page``.

A page is read in one short read transaction and carries ``next``, the sort key of its last
row; the next page starts just after that key (``WHERE (k1, k2, id) > (?, ?, ?)``), never
with OFFSET, so page 1,000 costs what page 1 costs and a whole listing is read in time
linear in its size.  The client turns pages into an iterator (``db.jobs.iter``,
``db.records.iter``), so neither side ever holds a whole listing.

Consistency is per page: each page sees one state of the database; between pages, rows may be
written.  A row whose sort key does not change between pages is listed exactly once; a new row
is listed when its key falls after the cursor; a row whose sort key changes meanwhile (sorting by
``updated``, a state change with ``state``) may be listed twice or not at all.
"""


import peewee as pw

from .. import states
from ..exceptions import BadRequest
from ..job_queries import check_sort
from ..jsonio import loads
from ..job_fields import LEASE_FIELDS
from ..models import Job, JSONText, Record
from .checks import check_number
from .jobs import JOB_KEYS, ordered_job_query
from .records import get_project, record_query
from .registry import operation

PAGE = 1000       # rows per page unless the caller asks for another size
MAX_PAGE = 5000

#: the columns of a listed job: job_filter's answer (job_lease_dict), the claim included
_PAGE_KEYS = tuple(JOB_KEYS) + tuple(LEASE_FIELDS)
_JOB_COLUMNS = [getattr(Job, key) for key in _PAGE_KEYS]
_JSON_KEYS = [key for key in JOB_KEYS if isinstance(getattr(Job, key), JSONText)]
#: the fields ``job_rows`` reads: a listed job's plain (not JSON) columns
ROW_COLUMNS = tuple(key for key in _PAGE_KEYS if key not in _JSON_KEYS)
_RANK = {name: rank for rank, name in enumerate(states.STATES)}
#: job_to_dict key of the first sort column of each sort key ("state" sorts by pipeline rank)
_SORT_COLUMN = {"created": "created_at", "updated": "updated_at", "name": "name", "workflow": "workflow",
                "id": "id", "state": "state"}


def _limit(limit):
    limit = check_number(limit, "limit", int, 1)
    if limit > MAX_PAGE:
        raise BadRequest(f"limit is at most {MAX_PAGE} per page")
    return limit


def _after(after, length):
    if after is None:
        return None
    if not isinstance(after, list) or len(after) != length \
            or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in after) \
            or any(isinstance(v, int) and not -(1 << 63) <= v < (1 << 63) for v in after):  # SQLite's integers
        raise BadRequest(f"after must be the 'next' of the previous page: a list of {length} values")
    return after


def _job_key(job, key):
    """The cursor of ``job`` (a dict) for sort key ``key``: the values of the ORDER BY's columns."""
    first = job[_SORT_COLUMN[key]]
    if key == "state":
        first = _RANK.get(first, len(_RANK))
    return [first, job["id"]] if key == "created" else [first, job["created_at"], job["id"]]


def _keyset(filters, sort, after):
    """``(query, order, sort)``: the jobs matching ``filters`` in the order of ``sort``, those
    just after the cursor ``after`` (none: from the first)."""
    sort = check_sort(sort) or "created"
    query, order = ordered_job_query(filters, sort)
    after = _after(after, len(order))
    if after is not None:
        columns = pw.Tuple(*[o.node for o in order])
        values = pw.Tuple(*after)
        query = query.where(columns < values if sort.startswith("-") else columns > values)
    return query, order, sort


@operation(write=False)
def job_page(filters=None, sort=None, after=None, limit=PAGE):
    """One page of the jobs matching ``filters`` (as for ``job_filter``), in the order of ``sort``
    (as for ``job_filter``), starting just after ``after`` (the ``next`` of the previous page;
    none for the first page).  Returns ``{"jobs": [...], "next": cursor, or null after the last
    page}``.  ``limit``: jobs per page (at most 5000)."""
    query, _order, sort = _keyset(filters, sort, after)
    limit = _limit(limit)
    # The cursor's own rows, not model instances nor peewee's converters (two thirds of the time of a
    # page): only the JSON columns need decoding; numbers and text come as they are.
    cursor = Job._meta.database.execute(query.select(*_JOB_COLUMNS).limit(limit + 1))
    jobs = []
    for row in cursor.fetchall():
        job = dict(zip(_PAGE_KEYS, row))
        for column in _JSON_KEYS:
            if job[column] is not None:
                job[column] = loads(job[column])
        jobs.append(job)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return {"jobs": jobs, "next": _job_key(jobs[-1], sort.lstrip("-")) if more else None}


@operation(write=False)
def job_rows(columns, filters=None, sort=None, after=None, limit=PAGE):
    """One page of ``job_page``'s listing (same ``filters``, ``sort``, ``after`` and ``limit``), each
    job a list: the values of ``columns`` (names of job fields that are not JSON: id, name,
    workflow, application, state, created_at, owner, lease_expires, ...), then those of its sort
    key that ``columns`` lack.  Returns ``{"rows": [[...], ...], "next": cursor, or null after the
    last page}``.  For listings that print a few fields (``db ls``): the rows are the database
    cursor's own."""
    if not isinstance(columns, list) or not 0 < len(columns) <= len(ROW_COLUMNS) \
            or not all(c in ROW_COLUMNS for c in columns):
        raise BadRequest(f"columns must be a list of at most {len(ROW_COLUMNS)} job fields among "
                         f"{', '.join(ROW_COLUMNS)}")
    query, order, _sort = _keyset(filters, sort, after)
    limit = _limit(limit)
    selected = [getattr(Job, c) for c in columns]
    key = []  # where each value of the cursor is in a row
    for node in (o.node for o in order):
        if isinstance(node, pw.Field) and node.model is Job and node.name in columns:
            key.append(columns.index(node.name))
        else:  # the state's rank, the tag side's columns
            key.append(len(selected))
            selected.append(node)
    rows = Job._meta.database.execute(query.select(*selected).limit(limit + 1)).fetchall()
    more = len(rows) > limit
    if more:
        del rows[limit:]
    return {"rows": rows, "next": [rows[-1][i] for i in key] if more else None}


@operation(write=False)
def record_page(project, tags=None, match="all", after=None, limit=PAGE):
    """One page of the record documents of ``project`` having ``tags`` (``match`` as for
    ``record_list``), newest first, starting just after ``after`` (the ``next`` of the previous
    page).  Returns ``{"records": [...], "next": cursor, or null after the last page}``.  A project
    that does not exist is :class:`NotFound` on the first page, as for ``record_list``."""
    after = _after(after, 2)
    limit = _limit(limit)
    if after is None:
        get_project(project)
    query = (record_query(project, tags, match).select(Record.id, Record.sort_time, Record.document)
             .order_by(Record.sort_time.desc(), Record.id.desc()))
    if after is not None:
        query = query.where(pw.Tuple(Record.sort_time, Record.id) < pw.Tuple(*after))
    rows = list(query.limit(limit + 1).tuples())
    more = len(rows) > limit
    rows = rows[:limit]
    return {"records": [loads(document) for _, _, document in rows],
            "next": [rows[-1][1], rows[-1][0]] if more else None}
