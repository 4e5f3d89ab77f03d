"""What the jobs pages of ``db serve`` read while a campaign runs: state counts and jobs finished
per minute, as queries on any peewee ``database`` (the models' queries unbound, run with
``execute(database)``), so that they work on the pages' read-only connections.  Time parsing and
a job's timeline are :mod:`balsamdb.job_queries`', shared with ``db ls`` and ``db job show``.
"""

import peewee as pw

from . import job_queries, states
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
    # COUNT(*) and no ORDER BY: an index on (workflow, state) answers it alone, without the table.
    query = (job_query(filters or {}).select(Job.workflow, Job.state, pw.fn.COUNT(pw.SQL("*")))
             .group_by(Job.workflow, Job.state))
    counts = {}
    for workflow, state, count in sorted(query.tuples().execute(database)):
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


def moves_per_minute(database, to_states=("JOB_FINISHED",), workflow=None):
    """``{state: [(minute start in UNIX seconds, count)]}``: the moves into each of ``to_states``
    per minute, oldest first, for one workflow or all; minutes without any are left out.  One
    query, answered from the index on (to_state, time)."""
    bucket = _minute_bucket(database)
    query = (JobStateChange.select(JobStateChange.to_state, bucket.alias("minute"), pw.fn.COUNT(pw.SQL("*")))
             .where(JobStateChange.to_state.in_(list(to_states)))
             .group_by(JobStateChange.to_state, bucket).order_by(JobStateChange.to_state, bucket))
    if workflow:
        query = query.where(JobStateChange.job.in_(Job.select(Job.id).where(Job.workflow == workflow)))
    moves = {state: [] for state in to_states}
    for state, minute, count in query.tuples().execute(database):
        moves[state].append((int(minute) * 60, count))
    return moves


def finished_per_minute(database, workflow=None):
    """``[(minute start in UNIX seconds, count)]`` of the jobs finished (moved to JOB_FINISHED)."""
    return moves_per_minute(database, ("JOB_FINISHED",), workflow)["JOB_FINISHED"]
