"""What people look at while a campaign runs: state counts, a job's timeline, jobs finished per minute.

Pure functions and read-only queries, shared by the web pages of ``db serve`` and the CLI.
Queries take a peewee ``database`` and run the (unbound) model queries on it, so they
work on any connection, including the read-only ones of the web pages.
"""

import re
import time
from datetime import datetime, timezone

import peewee as pw

from . import states
from .exceptions import BadRequest
from .models import Job, JobStateChange
from .operations import job_query

_SPAN = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d|w)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text, now=None):
    """UNIX seconds from ``text``: a span back from now (``90s``, ``15m``, ``2h``, ``3d``, ``1w``)
    or a date and time (``2024-05-01``, ``2024-05-01 12:30``, ISO 8601; UTC unless it says).
    Raises :class:`BadRequest` with the forms it takes."""
    text = (text or "").strip()
    span = _SPAN.fullmatch(text)
    if span:
        return (time.time() if now is None else now) - float(span.group(1)) * _UNIT_SECONDS[span.group(2).lower()]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since {text!r} is neither a span back from now (30m, 2h, 3d, 1w) nor a date "
                         "and time (2024-05-01 or 2024-05-01T12:30)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def job_filters(workflow=None, states_=None, name_glob=None, tags=None, since=None, now=None):
    """The ``filters`` of :func:`balsamdb.operations.job_query` from what a person types: a workflow,
    states (any of them), a name glob (``sim-*``), tags (all of them) and ``since``: jobs that
    changed at or after that moment (see :func:`parse_since`)."""
    filters = {}
    if workflow:
        filters["workflow"] = workflow
    if states_:
        filters["state"] = [s.upper() for s in states_]
    if name_glob:
        filters["name_like"] = name_glob
    if tags:
        filters["tags"] = list(tags)
    if since:
        filters["updated_after"] = parse_since(since, now)
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


def timeline(history, now=None):
    """A job's time in each state from its ``history`` (``{time, from_state, to_state, message}``,
    oldest first, as ``job_get`` returns it): a list of ``{state, start, end, seconds, message,
    current}``; the last state runs until ``now`` (its ``end`` is None) unless it is final."""
    now = time.time() if now is None else now
    spans = []
    for i, change in enumerate(history):
        following = history[i + 1] if i + 1 < len(history) else None
        state = change["to_state"]
        end = following["time"] if following else None
        final = following is None and state in states.FINAL
        seconds = (end if end is not None else (change["time"] if final else now)) - change["time"]
        spans.append({"state": state, "start": change["time"], "end": end, "seconds": max(0.0, seconds),
                      "message": change.get("message") or "", "current": following is None})
    return spans


def _minute_bucket(database):
    if isinstance(database, pw.PostgresqlDatabase):
        return pw.fn.FLOOR(JobStateChange.time / 60)
    return pw.Cast(JobStateChange.time / 60, "INTEGER")  # times are positive: truncation is floor


def finished_per_minute(database, workflow=None, state="JOB_FINISHED"):
    """``[(minute start in UNIX seconds, count)]`` of the moves into ``state`` (by default, jobs
    finished), oldest first, for one workflow or all; minutes without any are left out."""
    bucket = _minute_bucket(database)
    query = (JobStateChange.select(bucket.alias("minute"), pw.fn.COUNT(pw.SQL("*")))
             .where(JobStateChange.to_state == state).group_by(bucket).order_by(bucket))
    if workflow:
        query = query.where(JobStateChange.job.in_(Job.select(Job.id).where(Job.workflow == workflow)))
    return [(int(minute) * 60, count) for minute, count in query.tuples().execute(database)]
