"""The operations on jobs."""

import peewee as pw

from .. import states
from ..exceptions import BadRequest, Conflict, NotFound
from ..job_fields import JOB_KEYS, LEASE_FIELDS
from ..job_queries import check_sort
from .. import schema_scale
from ..models import Job, JobStateChange, JobTag, now
from ..statements import statements
from . import leases
from .changed_since import few_changed
from . import parents as dependencies
from .checks import check_number, check_object, check_str_list, check_text, check_uuid
from .job_specs import JOB_FIELDS, check_jobs, clean_job, job_to_dict
from .registry import operation


STATE_CHANGE_ATTEMPTS = 3  # reads of a job whose state another daemon changes meanwhile


def _by_id(row):
    return row["id"]


def _insert_jobs(rows, when, insert):
    """Insert job ``rows`` with their first history entries and tags through ``insert`` (given
    by the applier: now, or deferred to be made with the other requests' rows of the batch)."""
    fast = statements()
    links = dependencies.link_new_jobs(rows, when, insert)  # nothing to do (no read) without parents
    if len(rows) > 1:
        # In id order: the one B-tree keyed by the random job id (its unique index; the history and
        # tags hold the job's integer key since schema 11) is then walked from left to right once
        # per statement (13% less CPU a job inserting 5,000 into a 1M-job database with three such
        # B-trees: scripts/key_order_cost.py, "-sorted").  Nothing reads the order rows were inserted in.
        rows = sorted(rows, key=_by_id)
    try:
        insert(fast.insert_job, rows)
    except pw.IntegrityError:
        # No query here: on PostgreSQL the transaction is unusable until the savepoint rolls back.
        which = f"job id {rows[0]['id']} already exists" if len(rows) == 1 else "a job id already exists"
        raise Conflict(which) from None
    insert(fast.insert_history, [
        {"job": r["id"], "time": when, "from_state": None, "to_state": r["state"], "message": "created"}
        for r in rows
    ])
    tags = [{"job": r["id"], "tag": t, "created_at": r["created_at"]} for r in rows for t in r["tags"]]
    if tags:
        insert(fast.insert_tag, tags)
    if links:
        insert(fast.insert_parent, links)


# Insert-only (they read nothing): in a group commit's optimistic pass their inserts may be
# deferred and made together with the batch's (``insert``, see balsamdb.statements).
@operation(write=True, deferrable=True, answer="job", offline=lambda job: clean_job(job, 0.0))
def job_create(job, *, insert):
    """Create one job.

    ``job`` is an object with ``name`` (required), ``workflow`` (default
    "default"), ``id`` (a UUID made by the client; made here if absent),
    ``application``, ``args``, ``description``, ``num_nodes``,
    ``ranks_per_node``, ``threads_per_rank``, ``wall_time_minutes``,
    ``environ`` (object of strings), ``parents`` (job ids), ``tags`` (strings),
    ``data`` (any JSON object), ``state`` (CREATED, AWAITING_PARENTS or READY;
    AWAITING_PARENTS by default when there are parents, READY when they have all
    finished).  Parents must exist; a job waiting for them moves to READY when
    the last one reaches JOB_FINISHED.  The working directory
    is ``data/<workflow>/<name>_<first 8 characters of id>``.
    Returns the job.  A duplicate id is a conflict.
    """
    when = now()
    row = clean_job(job, when)
    _insert_jobs([row], when, insert)
    return {key: row[key] for key in JOB_KEYS}


@operation(write=True, deferrable=True, offline=lambda jobs: check_jobs(jobs, 0.0))
def job_bulk_create(jobs, *, insert):
    """Create many jobs at once, all or none.

    ``jobs`` is a list of job objects as for ``job_create`` (give each its
    ``id``: the answer does not list them).  A job's parents may be jobs of the
    same list (no cycles).  Returns ``{"created": n}``.
    """
    when = now()
    rows = check_jobs(jobs, when)
    if len({r["id"] for r in rows}) != len(rows):
        raise Conflict("the same job id appears twice in one bulk_create")
    _insert_jobs(rows, when, insert)
    return {"created": len(rows)}


def _get_job(job_id):
    try:
        return Job.get(Job.id == check_uuid(job_id))
    except Job.DoesNotExist:
        raise NotFound(f"no job with id {job_id}") from None


@operation(write=True, answer="job")
def job_update_state(job_id, state, message="", owner=None):
    """Move job ``job_id`` to ``state``, recording ``message`` in its history.

    The state machine (see :mod:`balsamdb.states`) refuses illegal transitions.
    With ``owner`` (a launcher that holds the job, see ``job_acquire``) the change
    is refused unless that owner holds it, and renews its lease; a final state
    ends the claim.  When the job reaches JOB_FINISHED, each child whose parents
    have now all finished moves from AWAITING_PARENTS to READY in the same
    transaction.  Returns the job.
    """
    fast = statements()
    job_id = check_uuid(job_id)
    message = check_text(message, "message", required=False) or ""
    for _attempt in range(STATE_CHANGE_ATTEMPTS):
        job = fast.job(job_id)
        if job is None:
            raise NotFound(f"no job with id {job_id}")
        states.check_transition(job["state"], state)
        when = now()
        # Compare-and-set on the state read: another daemon on the same PostgreSQL database may have
        # moved the job since (its UPDATE holds ours until it commits; ours then matches no row).
        changed = fast.database.execute_sql(fast.update_state, (state, message, when, job["id"], job["state"]))
        if changed.rowcount == 1:
            break
    else:
        raise Conflict(f"job {job_id} kept changing state while it was moved to {state}; try again")
    if owner is not None or state in states.FINAL:
        leases.on_state_change(fast, job["id"], owner, state, when)
    fast.executemany(fast.insert_history, [
        {"job": job["id"], "time": when, "from_state": job["state"], "to_state": state, "message": message}])
    job.update(state=state, state_message=message, updated_at=when)
    if state == dependencies.FINISHED:
        dependencies.release_children(fast, job["id"], when)
    return job


@operation(write=True, answer="job", changes_jobs=lambda params: [params.get("job_id")])
def job_modify(job_id, changes):
    """Change fields of job ``job_id``.

    ``changes`` may set ``application``, ``args``, ``description``,
    ``num_nodes``, ``ranks_per_node``, ``threads_per_rank``,
    ``wall_time_minutes``, ``environ``, ``parents``, ``tags`` and ``data``
    (replaced whole).  The state changes only through ``job_update_state``.
    Returns the job.
    """
    changes = check_object(changes, "changes")
    bad = set(changes) - set(JOB_FIELDS)
    if bad or not changes:
        raise BadRequest(
            f"cannot modify {', '.join(sorted(bad)) or 'nothing'}; modifiable fields: {', '.join(JOB_FIELDS)}"
        )
    job = _get_job(job_id)
    for name, value in changes.items():
        setattr(job, name, JOB_FIELDS[name](value))
    job.updated_at = now()
    if "parents" in changes:
        job.parents = dependencies.set_parents(job, job.parents, job.updated_at, statements())
    job.save(only=[Job._meta.fields[name] for name in list(changes) + ["updated_at", "state", "state_message"]])
    if "tags" in changes:
        JobTag.delete().where(JobTag.job == job.key).execute()
        if job.tags:
            JobTag.insert_many([{"job": job.key, "tag": t, "created_at": job.created_at} for t in job.tags]).execute()
    return job_to_dict(job)


@operation(write=True, changes_jobs=lambda params: params.get("job_ids"))
def job_delete(job_ids):
    """Delete the jobs in ``job_ids`` with their history; returns ``{"deleted": n}``.

    Ids that do not exist are not an error; the count says how many went.
    Working directories are left on disk.
    """
    ids = [check_uuid(i) for i in check_str_list(job_ids, "job_ids")]
    deleted = 0
    for start in range(0, len(ids), 500):  # stay below SQLite's limit on parameters
        chunk = ids[start:start + 500]
        keys = Job.select(Job.key).where(Job.id.in_(chunk))
        JobTag.delete().where(JobTag.job.in_(keys)).execute()
        dependencies.forget(chunk)
        JobStateChange.delete().where(JobStateChange.job.in_(keys)).execute()
        deleted += Job.delete().where(Job.id.in_(chunk)).execute()
    return {"deleted": deleted}


@operation(write=False)
def job_get(job_id):
    """Return job ``job_id`` with its ``history``: a list of
    ``{time, from_state, to_state, message}``, oldest first; its claim (``owner``,
    ``lease_expires``, ``renewed_at``: None when no launcher holds it) and
    ``waiting_on``: its parents that have not finished (``{id, name, state,
    blocked}``; ``blocked`` when the parent ended FAILED or USER_KILLED)."""
    job = _get_job(job_id)
    out = job_to_dict(job)
    out.update((name, getattr(job, name)) for name in LEASE_FIELDS)
    out["waiting_on"] = dependencies.waiting_on(job.id) if job.parents else []
    out["history"] = [
        {"time": h.time, "from_state": h.from_state, "to_state": h.to_state, "message": h.message}
        for h in JobStateChange.select().where(JobStateChange.job == job.key).order_by(JobStateChange.id)
    ]
    return out


def job_query(filters):
    """The query of the jobs matching ``filters`` (as for ``job_filter``), bound to no database:
    run it with ``query.execute(database)``.  For readers outside the write path (the web pages);
    raises :class:`BadRequest` for a bad filter."""
    return _job_query(filters)


def _glob_to_like(pattern):
    return pattern.replace("*", "%").replace("?", "_")


def _next_prefix(prefix):
    """The smallest string greater than every string that starts with ``prefix`` (byte order)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _prefix_range(column, prefix):
    """``column`` starts with ``prefix`` (case-sensitive), as a range an index answers."""
    if not prefix:
        return pw.SQL("1 = 1")
    condition = (column >= prefix) & (column < _next_prefix(prefix))
    if isinstance(Job._meta.database, pw.PostgresqlDatabase):  # exact whatever the collation
        condition &= pw.Expression(column, "LIKE", prefix + "%")  # hex digits and dashes: nothing to escape
    return condition


def _name_glob(pattern):
    """``name_like``: the glob in any case (ASCII), using the ``lower(name)`` index for the literal
    part before the first wildcard."""
    condition = Job.name ** _glob_to_like(pattern)
    literal = pattern.lower()
    for wildcard in "*?[":
        literal = literal.split(wildcard, 1)[0]
    if isinstance(Job._meta.database, pw.PostgresqlDatabase):
        return condition & pw.Expression(pw.fn.LOWER(Job.name), "LIKE", _glob_to_like(pattern.lower()))
    if literal:
        lowered = pw.fn.LOWER(Job.name)
        condition &= (lowered >= literal) & (lowered < _next_prefix(literal))
    return condition


FILTER_KEYS = ("ids", "id_prefix", "workflow", "name", "name_like", "state", "tags",
               "created_after", "created_before", "updated_after", "updated_before", "waiting_on", "owner")


def _job_query(filters):
    filters = check_object(filters, "filters")
    unknown = set(filters) - set(FILTER_KEYS)
    if unknown:
        raise BadRequest(f"unknown job filters {sorted(unknown)}; known: {', '.join(FILTER_KEYS)}")
    query = Job.select()
    if filters.get("ids") is not None:
        ids = [check_uuid(i) for i in check_str_list(filters["ids"], "ids")]
        if len(ids) > 500:  # SQLite allows a limited number of parameters per statement
            raise BadRequest("filter by at most 500 ids at a time")
        query = query.where(Job.id.in_(ids))
    if filters.get("id_prefix") is not None:
        prefix = check_text(filters["id_prefix"], "id_prefix").lower()
        if not all(c in "0123456789abcdef-" for c in prefix):
            raise BadRequest(f"id_prefix {prefix!r} is not part of a UUID")
        query = query.where(_prefix_range(Job.id, prefix))
    for key in ("workflow", "name"):
        if filters.get(key) is not None:
            query = query.where(getattr(Job, key) == check_text(filters[key], key))
    if filters.get("name_like") is not None:
        pattern = check_text(filters["name_like"], "name_like", max_len=255)
        if "\\" in pattern:
            raise BadRequest("name_like may not contain a backslash")
        query = query.where(_name_glob(pattern))
    if filters.get("state") is not None:
        wanted = filters["state"]
        wanted = [wanted] if isinstance(wanted, str) else check_str_list(wanted, "state")
        unknown_states = [s for s in wanted if s not in states.STATES]
        if unknown_states:
            raise BadRequest(f"unknown states {unknown_states}; known: {', '.join(states.STATES)}")
        query = query.where(Job.state.in_(wanted))
    if filters.get("waiting_on") is not None:  # the children of a job that still wait
        parent = check_uuid(filters["waiting_on"], "waiting_on")
        unfinished = Job.select(Job.id).where((Job.id == parent) & (Job.state != dependencies.FINISHED))
        query = query.where(Job.id.in_(dependencies.children_query(parent)) & (Job.state == dependencies.WAITING)
                            & pw.fn.EXISTS(unfinished))
    if filters.get("owner") is not None:
        query = query.where(Job.owner == check_text(filters["owner"], "owner", max_len=255))
    for tag in check_str_list(filters.get("tags"), "tags"):
        query = query.where(Job.key.in_(JobTag.select(JobTag.job).where(JobTag.tag == tag)))
    for key, field, op in (("created_after", Job.created_at, ">="), ("created_before", Job.created_at, "<"),
                           ("updated_after", Job.updated_at, ">="), ("updated_before", Job.updated_at, "<")):
        if filters.get(key) is not None:
            query = query.where(pw.Expression(field, op, check_number(filters[key], key)))
    return query


def job_order(sort):
    """The ORDER BY of ``sort`` for readers outside this module (the paged listing)."""
    return _job_order(sort)


def ordered_job_query(filters, sort):
    """``(query, order)``: the jobs matching ``filters`` in the order of ``sort``.  Jobs with tags
    listed by creation (either way) are read from the tag side (schema 9): the tag's index entries
    in ``(created_at, job)`` order, the other filters tested on each job, so that the first 20
    cost 20 entries rather than a sort of every job of the tag.  The same order as
    :func:`job_order`'s (``job_tag.created_at`` is its job's)."""
    sort = check_sort(sort) or "created"
    tags = check_str_list(filters.get("tags"), "tags") if isinstance(filters, dict) else []
    if sort.lstrip("-") != "created" or not tags:
        query = _job_query(filters)
        if sort.lstrip("-") != "created" or not few_changed(filters):
            order = _job_order(sort)
            return query.order_by(*order), order
        # Read the few changed jobs from an index of the last changes and sort them, rather than
        # walk every job in creation order testing each one's last change (issue 22: the time grew
        # with the database, not with the jobs changed).  ``+created_at`` is the same value, but no
        # index's column: neither SQLite nor PostgreSQL walks job_created_at_id for it.
        created = pw.NodeList((pw.SQL("+"), Job.created_at), glue="")
        order = [created.desc(), Job.id.desc()] if sort.startswith("-") else [created.asc(), Job.id.asc()]
        return query.order_by(*order), order
    # Ties of one creation time (a bulk_create's jobs) by id, as everywhere: the tag's index holds the
    # job's key, so such a group is sorted (a partial sort: the first page reads the groups it shows).
    order = [JobTag.created_at, Job.id]
    order = [field.desc() if sort.startswith("-") else field.asc() for field in order]
    query = (_job_query(dict(filters, tags=tags[1:])).join(JobTag, on=(JobTag.job == Job.key))
             .where(JobTag.tag == tags[0]).order_by(*order))
    return query, order


def _job_order(sort):
    """The ORDER BY of ``sort`` (see :data:`balsamdb.job_queries.SORT_KEYS`); ties by creation, then id."""
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
    ``updated_before`` (UNIX seconds), ``waiting_on`` (a job id: its children
    that still wait), ``owner`` (the jobs a launcher holds).  ``limit`` and
    ``offset`` page the result.  Each job comes with its claim (``owner``,
    ``lease_expires``, ``renewed_at``).
    ``sort`` is one of ``created`` (the default), ``updated``, ``name``,
    ``workflow``, ``state`` (in pipeline order) or ``id``; with a leading ``-``
    the order is reversed (``-updated``: the last changed first).
    """
    query, _order = ordered_job_query(filters, sort)
    if limit is not None:
        query = query.limit(check_number(limit, "limit", int, 0))
    if offset:
        query = query.offset(check_number(offset, "offset", int, 0))
    return [job_lease_dict(j) for j in query]


def job_lease_dict(job):
    """:func:`job_to_dict` with the claim (not part of the answers of writes, see balsamdb.answers)."""
    out = job_to_dict(job)
    out.update((name, getattr(job, name)) for name in LEASE_FIELDS)
    return out


@operation(write=False)
def job_count(filters=None):
    """Number of jobs matching ``filters`` (as for ``job_filter``)."""
    return _job_query(filters).count()


@operation(write=False)
def job_state_counts(filters=None):
    """How many jobs matching ``filters`` (as for ``job_filter``) are in each
    state, per workflow: a list of ``{workflow, state, count}``, by workflow,
    then states in pipeline order; states with no job are left out."""
    rows = _kept_counts(filters)
    if rows is None:
        query = (_job_query(filters).select(Job.workflow, Job.state, pw.fn.COUNT(Job.id).alias("count"))
                 .group_by(Job.workflow, Job.state))
        rows = [{"workflow": row.workflow, "state": row.state, "count": row.count} for row in query]
    rank = {name: index for index, name in enumerate(states.STATES)}
    return sorted(rows, key=lambda r: (r["workflow"], rank.get(r["state"], len(rank))))


def _kept_counts(filters):
    """The counts per workflow and state from the table the job triggers keep (SQLite, schema 8),
    when ``filters`` hold at most a workflow and states; else None (counted from the jobs)."""
    filters = check_object(filters or {}, "filters")
    _job_query(filters)  # the same checks of the filters
    rows = schema_scale.kept_counts(Job._meta.database, filters)
    return None if rows is None else [{"workflow": w, "state": s, "count": n} for w, s, n in rows]
