"""The jobs pages of ``db serve``: ``{base}_balsamdb/jobs/`` and ``{base}_balsamdb/jobs/{id}/``.

For admin users only (as jobs over the operation endpoint).  Read on read-only connections
(:mod:`.reads`), never through the write server.  HTML for people (a page that refreshes
itself by polling while open, and reads fine without JavaScript), JSON for scripts
(``?format=json`` or ``Accept: application/json``).
"""

import logging
import math
import time

import flask
import peewee as pw

from balsamdb import job_queries, job_views, states
from balsamdb.exceptions import BadRequest
from balsamdb.models import LEASE_FIELDS, Job, JobParent, JobStateChange, Record, RecordJob
from balsamdb.operations import JOB_KEYS, job_query

from balsamdb.server.http import keyset, pages
from balsamdb.server.http.job_history import HistoryCache, start_history  # noqa: F401  (app.py, tests)
from balsamdb.server.http.state import state

log = logging.getLogger(__name__)

JOBS_PER_PAGE = 100
PLOT_MAX_BARS = 120      # jobs finished per minute: wider campaigns are shown in wider buckets
PLOT_MIN_MINUTES = 3     # the time axis fits the data, but spans at least this (one bar would say nothing)
AXIS_TICKS = 6           # time labels on each chart's axis (its two ends included)
REFRESH_SECONDS = 2      # how often an open page asks again (a poll, not a held stream)

# One colour per state, with enough contrast on white; done in green, trouble in red.
STATE_COLOURS = {
    "CREATED": "#9aa5b1", "AWAITING_PARENTS": "#b39ddb", "READY": "#64b5f6", "STAGED_IN": "#4dd0e1",
    "PREPROCESSED": "#4db6ac", "RUNNING": "#ffb300", "RUN_DONE": "#aed581", "POSTPROCESSED": "#7cb342",
    "JOB_FINISHED": "#2e7d32", "RUN_ERROR": "#e57373", "RUN_TIMEOUT": "#ff7043", "RESTART_READY": "#ba68c8",
    "FAILED": "#c62828", "USER_KILLED": "#6d4c41",
}


bp = flask.Blueprint("web_jobs", __name__, template_folder="templates")


@bp.get("/")
def jobs_page():
    web = pages.web()
    web.require_admin()
    args = flask.request.args
    form = {"workflow": args.get("workflow", "").strip(), "state": [s for s in args.getlist("state") if s],
            "name": args.get("name", "").strip(), "tag": args.get("tag", "").strip(),
            "since": args.get("since", "").strip(), "until": args.get("until", "").strip(),
            "changed": args.get("changed", "") not in ("", "0", "false")}
    at = _position(args, web)
    try:
        filters = job_views.job_filters(form["workflow"], form["state"], form["name"],
                                        [form["tag"]] if form["tag"] else None, form["since"], form["until"],
                                        form["changed"])
        data = web.reader.query(lambda db: _jobs_data(db, filters, at, form["workflow"], state().history))
    except BadRequest as exc:
        raise web.error(400, exc.message) from None
    data["filters"] = form
    return web.respond(data, "jobs.html", "Jobs", form=form, data=data, colours=STATE_COLOURS,
                       all_states=states.STATES, refresh=REFRESH_SECONDS,
                       bars=_stacked_bars(data["counts"]), plot=_plot(data["finished_per_minute"],
                                                                since=(data["state_counts"] or {}).get("start")),
                       held=_held_chart(data["state_counts"]),
                       query=_query_without_page(args),
                       pager=keyset.pager(_query_without_page(args), data))


@bp.get("/<job_id>/")
def job_page(job_id):
    web = pages.web()
    web.require_admin()
    job = web.reader.query(lambda db: _job_data(db, job_id))
    if job is None:
        raise web.error(404, f"no job with id {job_id!r}")
    spans = job_queries.timeline(job["history"])  # what `db job show` shows
    job["timeline"] = spans
    total = sum(s["seconds"] or 0.0 for s in spans) or 1.0
    x = 0.0
    segments = []
    for s in spans:
        width = 100.0 * (s["seconds"] or 0.0) / total
        segments.append(dict(s, x=x, width=width, colour=STATE_COLOURS.get(s["state"], "#999")))
        x += width
    return web.respond(job, "job.html", f"Job {job['name']}", job=job, segments=segments,
                       colours=STATE_COLOURS, refresh=REFRESH_SECONDS)


def _position(args, web):
    """Where the page starts: ``{"after": key}``, ``{"before": key}`` or ``{"page": N}`` (see
    :mod:`.keyset`); 400 for anything else."""
    try:
        at = keyset.position(args, str)
        ORDER.check(at)
        return at
    except ValueError as exc:
        raise web.error(400, str(exc)) from None


def _query_without_page(args):
    return [(k, v) for k, v in args.items(multi=True) if k not in keyset.PARAMS + ("format",)]


#: The states of a job whose run ended well, for the count of those with a provenance record.
FINISHED = ("RUN_DONE", "POSTPROCESSED", "JOB_FINISHED")


#: the job list's order: the most recently changed first (then by id, so that every job has one place)
ORDER = keyset.Order(Job.updated_at, Job.id)


def _jobs_data(db, filters, at, workflow, history):
    counts = job_views.state_counts(db, filters)
    total = sum(sum(c.values()) for c in counts.values())
    query = job_query(filters).select(Job.id, Job.name, Job.workflow, Job.state, Job.state_message, Job.tags,
                                      Job.created_at, Job.updated_at, Job.owner, Job.lease_expires)
    jobs, links = keyset.read(db, query, ORDER, JOBS_PER_PAGE, at, ("updated_at", "id"))
    # the number of jobs of the charts' workflow, when the counts above are of exactly those
    moves = history.get(db, workflow, total if set(filters) <= {"workflow"} else None)
    charts_pending = moves is None  # its history is being read whole: the charts come at a later refresh
    moves = moves or {"entered": {}, "left": {}}
    finished = sorted(moves["entered"].get("JOB_FINISHED", {}).items())
    done = sum(c.get(state, 0) for c in counts.values() for state in FINISHED)
    recorded = finished_with_record_query(filters).scalar(db) if done else 0
    return {"finished": done, "finished_with_record": recorded,
            "counts": counts, "states": job_views.ordered_states(counts), "total": total,
            **keyset.numbering(at, total, JOBS_PER_PAGE), **links, "per_page": JOBS_PER_PAGE, "jobs": jobs,
            "read_at": time.time(),
            "finished_per_minute": finished, "state_counts": _state_counts(moves), "charts_pending": charts_pending,
            "lost_runs": _lost_runs(db, workflow)}


def finished_with_record_query(filters):
    """The count of the jobs that ``filters`` select, finished well, that a record names: from the
    records' links to jobs (``id IN``, each job probed by its key), not from the jobs (an EXISTS per
    job walked every finished job: 148 ms of the unfiltered page at 1M jobs, 0.1 ms this way)."""
    return (job_query(filters).select(pw.fn.COUNT(Job.id))
            .where(Job.state.in_(FINISHED) & Job.id.in_(RecordJob.select(RecordJob.job_id))))


def _lost_runs(db, workflow):
    """How many runs the write server found lost (of ``workflow``, or all): see :func:`_lost_runs_query`."""
    return _lost_runs_query(workflow).tuples().execute(db)[0][0]


def _lost_runs_query(workflow):
    """The count of the runs the write server found lost (their lease expired while RUNNING), from the index
    on the history's (to_state, time): RUN_TIMEOUT rows are few.  A workflow's are those rows whose
    job (probed by its key) is of the workflow: as a join, SQLite walked the workflow's jobs instead
    and probed each one's history (547 ms for a workflow of 100k jobs; 0.1 ms this way)."""
    query = (JobStateChange.select(pw.fn.COUNT(JobStateChange.id))
             .where((JobStateChange.to_state == "RUN_TIMEOUT") & JobStateChange.message.startswith("lost run")))
    if workflow:
        query = query.where(pw.fn.EXISTS(Job.select(pw.SQL("1")).where((Job.key == JobStateChange.job)
                                                                         & (Job.workflow == workflow))))
    return query


def _axis(first_event, now):
    """The time axis of both charts: ``(start, bucket seconds, buckets)`` from the first event (a
    minute's start) to now, at least :data:`PLOT_MIN_MINUTES`, at most :data:`PLOT_MAX_BARS` buckets."""
    last = max(first_event, int(now // 60) * 60)
    first = min(first_event, last - (PLOT_MIN_MINUTES - 1) * 60)
    minutes = int((last - first) // 60) + 1
    bucket_minutes = max(1, math.ceil(minutes / PLOT_MAX_BARS))
    return first, bucket_minutes * 60, math.ceil(minutes / bucket_minutes)


def _state_counts(moves, now=None):
    """``{"start", "bucket_seconds", "counts": {state: [jobs in it at the end of each bucket]}}`` (see
    :func:`balsamdb.job_views.state_counts_over_time`), or None before any job was created."""
    minutes = [m for per_minute in moves["entered"].values() for m in per_minute]
    if not minutes:
        return None
    start, bucket, n = _axis(min(minutes), time.time() if now is None else now)
    return {"start": start, "bucket_seconds": bucket,
            "counts": job_views.state_counts_over_time(moves, start, bucket, n)}


def _job_data(db, job_id):
    rows = list(Job.select().where(Job.id == job_id).dicts().execute(db))
    if not rows:
        return None
    job = {key: rows[0][key] for key in JOB_KEYS + LEASE_FIELDS}
    history = (JobStateChange.select(JobStateChange.time, JobStateChange.from_state, JobStateChange.to_state,
                                     JobStateChange.message)
               .where(JobStateChange.job == rows[0]["key"]).order_by(JobStateChange.id))
    job["history"] = list(history.dicts().execute(db))
    runs = (Record.select(Record.project, Record.label, Record.timestamp, Record.outcome, RecordJob.run)
            .join(RecordJob, on=(RecordJob.record == Record.id)).where(RecordJob.job_id == job_id)
            .order_by(Record.sort_time, Record.id).limit(1000))
    job["records"] = list(runs.dicts().execute(db))  # the provenance of its runs (db run --record)
    job["lost_runs"] = sum(1 for h in job["history"]
                           if h["to_state"] == "RUN_TIMEOUT" and h["message"].startswith("lost run"))
    waiting = (Job.select(Job.id, Job.name, Job.state).join(JobParent, on=(JobParent.parent == Job.id))
               .where((JobParent.child == job_id) & (Job.state != "JOB_FINISHED")).order_by(Job.created_at))
    job["waiting_on"] = [{"id": i, "name": n, "state": s, "blocked": s in states.FINAL}
                         for i, n, s in waiting.tuples().execute(db)] if job["parents"] else []
    return job


def _stacked_bars(counts):
    """Per workflow, the segments of its stacked bar: ``{workflow, total, segments: [{state, count, x,
    width}]}`` (x and width in percent of the bar)."""
    bars = []
    for workflow, per_state in counts.items():
        total = sum(per_state.values())
        x, segments = 0.0, []
        for state in states.STATES:
            count = per_state.get(state, 0)
            if count:
                width = 100.0 * count / total
                segments.append({"state": state, "count": count, "x": x, "width": width,
                                 "colour": STATE_COLOURS[state]})
                x += width
        bars.append({"workflow": workflow, "total": total, "segments": segments, "counts": per_state})
    return bars


def _plot(points, now=None, width=720, height=160, left=36, since=None):
    """Jobs finished per minute as SVG bars: ``{bars, width, height, ymax, start, end, bucket, total}``,
    or None before the first finished job.

    The time axis runs from the first finished job to now (at least :data:`PLOT_MIN_MINUTES`), and
    minutes without a finished job are bars of height 0, so that the axis is even; a campaign
    longer than :data:`PLOT_MAX_BARS` minutes is shown in buckets of several minutes."""
    if not points:
        return None
    now = time.time() if now is None else now
    last = max(points[-1][0], int(now // 60) * 60)
    first = min(points[0][0], last - (PLOT_MIN_MINUTES - 1) * 60)
    if since is not None:  # the axis of the chart beside it (from the first job's creation)
        first = min(first, since)
    minutes = int((last - first) // 60) + 1
    bucket_minutes = max(1, math.ceil(minutes / PLOT_MAX_BARS))
    n = math.ceil(minutes / bucket_minutes)
    totals = [0] * n
    for start, count in points:
        totals[int((start - first) // 60) // bucket_minutes] += count
    ymax = max(totals) or 1
    bar_width = (width - left) / n
    bars = []
    for i, count in enumerate(totals):
        h = (height - 4) * count / ymax
        bars.append({"x": left + i * bar_width, "y": height - h, "w": max(bar_width - 1, 0.5), "h": h,
                     "count": count, "start": first + i * bucket_minutes * 60})
    end = first + n * bucket_minutes * 60
    return {"bars": bars, "width": width, "height": height, "left": left, "ymax": ymax, "start": first,
            "end": end, "bucket": bucket_minutes, "total": sum(totals), "ticks": _ticks(first, end, left, width)}


def _ticks(start, end, left, width):
    """Labels of the time axis: ``[{x, time, anchor}]``, about :data:`AXIS_TICKS` of them on whole
    minutes, the first and last at the chart's ends."""
    minutes = max(1, int((end - start) // 60))
    step = max(1, math.ceil(minutes / (AXIS_TICKS - 1)))
    ticks = []
    for m in range(0, minutes + 1, step):
        x = left + (width - left) * m * 60 / (end - start)
        ticks.append({"x": x, "time": start + m * 60, "anchor": "start" if m == 0 else "middle"})
    if ticks[-1]["time"] < end:
        if (end - ticks[-1]["time"]) < step * 30:  # too close to the end label: give way to it
            ticks.pop()
        ticks.append({"x": width, "time": end, "anchor": "end"})
    return ticks


def _held_chart(state_counts, width=720, height=160, left=48):
    """The count of jobs in each state over time as stacked SVG areas, in pipeline order (the top edge
    is the number of jobs): ``{areas: [{state, colour, points, now, peak}], width, height, left, ymax,
    start, end}``, or None before any job was created.  Each bucket is a step: the counts at its end."""
    if not state_counts or not state_counts["counts"]:
        return None
    start, bucket, series = state_counts["start"], state_counts["bucket_seconds"], state_counts["counts"]
    n = len(next(iter(series.values())))
    totals = [sum(counts[i] for counts in series.values()) for i in range(n)]
    ymax = max(max(totals), 1)
    step = (width - left) / n

    def y(count):
        return height - (height - 4) * count / ymax

    below = [0] * n
    areas = []
    for state, counts in series.items():
        above = [b + c for b, c in zip(below, counts)]
        top = [(left + i * step + dx, y(above[i])) for i in range(n) for dx in (0, step)]
        bottom = [(left + i * step + dx, y(below[i])) for i in reversed(range(n)) for dx in (step, 0)]
        areas.append({"state": state, "colour": STATE_COLOURS.get(state, "#999"), "now": counts[-1],
                      "peak": max(counts), "points": " ".join(f"{px:.1f},{py:.1f}" for px, py in top + bottom)})
        below = above
    return {"areas": areas, "width": width, "height": height, "left": left, "ymax": ymax, "start": start,
            "end": start + n * bucket, "ticks": _ticks(start, start + n * bucket, left, width)}
