"""What the jobs pages of ``db serve`` read while a campaign runs: state counts and the state
history's moves per minute (jobs finished per minute, jobs in each state over time), as queries
on any peewee ``database`` (the models' queries unbound, run with ``execute(database)``), so that they work on the pages' read-only connections.  Time parsing and
a job's timeline are :mod:`balsamdb.job_queries`', shared with ``db ls`` and ``db job show``.
"""

import peewee as pw

from . import job_queries, schema_scale, states
from .models import Job, JobStateChange
from .operations import job_query


def job_filters(workflow=None, states_=None, name_glob=None, tags=None, since=None, until=None, changed=False,
                now=None):
    """The ``filters`` of :func:`balsamdb.operations.job_query` from what a person types, as ``db ls``
    takes them: a workflow, states (any of them), a name glob (``sim-*``), tags (all of them), and
    jobs created (``changed``: last changed) at or after ``since`` and before ``until`` (as
    :func:`balsamdb.job_queries.parse_time` reads them: ``2h``, ``2024-05-01``, ...)."""
    filters = {}
    if workflow:
        filters["workflow"] = workflow
    if states_:
        filters["state"] = [s.upper() for s in states_]
    if name_glob:
        filters["name_like"] = name_glob
    if tags:
        filters["tags"] = list(tags)
    filters.update(job_queries.time_filters(since or None, until or None, changed, now))
    return filters


def state_counts(database, filters=None):
    """``{workflow: {state: count}}`` of the jobs matching ``filters``, workflows by name."""
    # The kept counts (SQLite, schema 8) when the filters allow: a few rows, whatever the jobs.
    # Else COUNT(*) and no ORDER BY: an index on (workflow, state) answers it alone, without the table.
    query = (job_query(filters or {}).select(Job.workflow, Job.state, pw.fn.COUNT(pw.SQL("*")))
             .group_by(Job.workflow, Job.state))
    rows = schema_scale.kept_counts(database, filters)
    counts = {}
    for workflow, state, count in sorted(rows if rows is not None else query.tuples().execute(database)):
        counts.setdefault(workflow, {})[state] = count
    return counts


def ordered_states(counts):
    """The states that occur in ``counts`` (as made by :func:`state_counts`), in pipeline order."""
    present = {s for per_state in counts.values() for s in per_state}
    return [s for s in states.STATES if s in present]


def _minute_bucket(database):
    if isinstance(database, pw.PostgresqlDatabase):
        return pw.fn.FLOOR(JobStateChange.time / 60)
    return pw.Cast(JobStateChange.time / 60, "INTEGER")  # times are positive: truncation is floor


def history_moves(database, workflow=None, after_id=0, upto_id=None):
    """The moves of the state history per minute, from the rows with ``after_id < id <= upto_id``
    (all rows by default): ``{"entered": {state: {minute: n}}, "left": {state: {minute: n}}}``, where
    ``minute`` is the minute's start in UNIX seconds, ``entered`` counts the moves into a state
    (``to_state``) and ``left`` the moves out of it (``from_state``; a job's creation leaves nothing).
    Two ``GROUP BY`` queries, for one workflow or all.  :func:`state_counts_over_time` makes the count
    of jobs in each state at any time from them, and :func:`merge_moves` adds newer rows' moves."""
    bucket = _minute_bucket(database)
    moves = {"entered": {}, "left": {}}
    for kind, column in (("entered", JobStateChange.to_state), ("left", JobStateChange.from_state)):
        query = (JobStateChange.select(column, bucket.alias("minute"), pw.fn.COUNT(pw.SQL("*")))
                 .where(column.is_null(False)).group_by(column, bucket))
        if after_id:
            query = query.where(JobStateChange.id > after_id)
        if upto_id is not None:
            query = query.where(JobStateChange.id <= upto_id)
        if workflow:
            # A join, not "job IN (the workflow's jobs)": with the id range, the planner reads the new rows
            # by id and looks up their jobs, instead of every history row of the workflow's jobs.
            query = query.join(Job, on=(JobStateChange.job == Job.key)).where(Job.workflow == workflow)
        for state, minute, count in query.tuples().execute(database):
            moves[kind].setdefault(state, {})[int(minute) * 60] = count
    return moves


def merge_moves(older, newer):
    """``older`` plus ``newer`` (both as :func:`history_moves` makes them), as a new value."""
    merged = {}
    for kind in ("entered", "left"):
        merged[kind] = {state: dict(per_minute) for state, per_minute in older[kind].items()}
        for state, per_minute in newer[kind].items():
            target = merged[kind].setdefault(state, {})
            for minute, count in per_minute.items():
                target[minute] = target.get(minute, 0) + count
    return merged


def state_counts_over_time(moves, start, bucket_seconds, buckets):
    """``{state: [count, ...]}``: how many jobs were in each state at the end of each of ``buckets``
    spans of ``bucket_seconds`` from ``start`` (UNIX seconds), from ``moves`` (:func:`history_moves`):
    the jobs that entered the state until then less those that left it.  States never held by a job at
    a bucket's end are left out; the states come in pipeline order."""
    ends = [start + (i + 1) * bucket_seconds for i in range(buckets)]
    out = {}
    for state in states.STATES:
        net = dict(moves["entered"].get(state, {}))
        for minute, count in moves["left"].get(state, {}).items():
            net[minute] = net.get(minute, 0) - count
        if not net:
            continue
        counts, held, minutes, k = [], 0, sorted(net), 0
        for end in ends:
            while k < len(minutes) and minutes[k] < end:
                held += net[minutes[k]]
                k += 1
            counts.append(held)
        if any(counts):
            out[state] = counts
    return out
