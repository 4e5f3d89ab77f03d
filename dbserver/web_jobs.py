"""The jobs pages of ``db serve``: ``{base}_balsamdb/jobs/`` and ``{base}_balsamdb/jobs/{id}/``.

For admin users only (as jobs over the operation endpoint).  Read on read-only connections
(:mod:`.web_reads`), never through the write server.  HTML for people (a page that refreshes
itself by polling while open, and reads fine without JavaScript), JSON for scripts
(``?format=json`` or ``Accept: application/json``).
"""

import math
import threading
import time

import flask

from balsamdb import job_queries, job_views, states
from balsamdb.exceptions import BadRequest
from balsamdb.models import Job, JobStateChange
from balsamdb.operations import JOB_KEYS, job_query

JOBS_PER_PAGE = 100
PLOT_MAX_BARS = 120      # jobs finished per minute: wider campaigns are shown in wider buckets
PLOT_MIN_MINUTES = 30    # the plot's time axis spans at least this (one bar for all would say nothing)
REFRESH_SECONDS = 2      # how often an open page asks again (a poll, not a held stream)
#: the states whose arrivals over time the burn-up chart draws (started, finished, failed)
REACHED = ("RUNNING", "JOB_FINISHED", "FAILED")
CHART_SECONDS = 5        # the charts are read again after this; the counts and the list on every request

# One colour per state, with enough contrast on white; done in green, trouble in red.
STATE_COLOURS = {
    "CREATED": "#9aa5b1", "AWAITING_PARENTS": "#b39ddb", "READY": "#64b5f6", "STAGED_IN": "#4dd0e1",
    "PREPROCESSED": "#4db6ac", "RUNNING": "#ffb300", "RUN_DONE": "#aed581", "POSTPROCESSED": "#7cb342",
    "JOB_FINISHED": "#2e7d32", "RUN_ERROR": "#e57373", "RUN_TIMEOUT": "#ff7043", "RESTART_READY": "#ba68c8",
    "FAILED": "#c62828", "USER_KILLED": "#6d4c41",
}


def blueprint(web):
    """The jobs pages, answering with the hooks of ``web`` (a :class:`.web_pages.WebContext`)."""
    pages = flask.Blueprint("web_jobs", __name__, template_folder="templates")
    charts = ChartCache()

    @pages.get("/")
    def jobs_page():
        web.require_admin()
        args = flask.request.args
        form = {"workflow": args.get("workflow", "").strip(), "state": [s for s in args.getlist("state") if s],
                "name": args.get("name", "").strip(), "tag": args.get("tag", "").strip(),
                "since": args.get("since", "").strip(), "until": args.get("until", "").strip(),
                "changed": args.get("changed", "") not in ("", "0", "false")}
        page = _page_number(args.get("page"), web)
        try:
            filters = job_views.job_filters(form["workflow"], form["state"], form["name"],
                                            [form["tag"]] if form["tag"] else None, form["since"], form["until"],
                                            form["changed"])
            data = web.reader.run(lambda db: _jobs_data(db, filters, page, form["workflow"], charts))
        except BadRequest as exc:
            raise web.error(400, exc.message) from None
        data["filters"] = form
        return web.respond(data, "jobs.html", "Jobs", form=form, data=data, colours=STATE_COLOURS,
                           all_states=states.STATES, refresh=REFRESH_SECONDS,
                           bars=_stacked_bars(data["counts"]), plot=_plot(data["finished_per_minute"]),
                           burnup=_burnup(data["reached_per_minute"], data["total"]),
                           query=_query_without_page(args))

    @pages.get("/<job_id>/")
    def job_page(job_id):
        web.require_admin()
        job = web.reader.run(lambda db: _job_data(db, job_id))
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

    return pages


def _page_number(text, web):
    if text is None or text == "":
        return 1
    if not text.isdigit() or int(text) < 1:
        raise web.error(400, f"page must be a number from 1, not {text!r}")
    return int(text)


def _query_without_page(args):
    return [(k, v) for k, v in args.items(multi=True) if k not in ("page", "format")]


class ChartCache:
    """The charts' moves per minute, per workflow, kept for :data:`CHART_SECONDS`: their query reads
    every move of the campaign (a tenth of a second for 100,000 jobs), and eight tabs left open,
    each asking every 2 s, then cost one such query per few seconds instead of four a second."""

    def __init__(self, seconds=CHART_SECONDS, max_entries=64):
        self.seconds, self.max_entries = seconds, max_entries
        self._entries = {}
        self._lock = threading.Lock()

    def get(self, workflow, read):
        """The cached value for ``workflow``, or ``read()`` (then kept)."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(workflow)
            if entry is not None and entry[0] > now:
                return entry[1]
        value = read()
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[workflow] = (now + self.seconds, value)
        return value


def _jobs_data(db, filters, page, workflow, charts):
    counts = job_views.state_counts(db, filters)
    total = sum(sum(c.values()) for c in counts.values())
    pages = max(1, math.ceil(total / JOBS_PER_PAGE))
    query = (job_query(filters).select(Job.id, Job.name, Job.workflow, Job.state, Job.state_message, Job.tags,
                                      Job.created_at, Job.updated_at)
             .order_by(Job.updated_at.desc(), Job.id).limit(JOBS_PER_PAGE).offset((page - 1) * JOBS_PER_PAGE))
    jobs = list(query.dicts().execute(db))
    return {"counts": counts, "states": job_views.ordered_states(counts), "total": total, "page": page,
            "pages": pages, "per_page": JOBS_PER_PAGE, "jobs": jobs, "read_at": time.time(),
            **_moves(charts.get(workflow, lambda: job_views.moves_per_minute(db, REACHED, workflow or None)))}


def _moves(moves):
    return {"finished_per_minute": moves["JOB_FINISHED"],
            "reached_per_minute": {state: moves[state] for state in REACHED}}


def _job_data(db, job_id):
    rows = list(Job.select().where(Job.id == job_id).dicts().execute(db))
    if not rows:
        return None
    job = {key: rows[0][key] for key in JOB_KEYS}
    history = (JobStateChange.select(JobStateChange.time, JobStateChange.from_state, JobStateChange.to_state,
                                     JobStateChange.message)
               .where(JobStateChange.job == job_id).order_by(JobStateChange.id))
    job["history"] = list(history.dicts().execute(db))
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


def _plot(points, now=None, width=720, height=160, left=36):
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
    return {"bars": bars, "width": width, "height": height, "left": left, "ymax": ymax, "start": first,
            "end": first + n * bucket_minutes * 60, "bucket": bucket_minutes, "total": sum(totals)}


def _burnup(reached, total, now=None, width=720, height=160, left=48):
    """How many jobs had reached each state of :data:`REACHED` over time (cumulative lines), with the
    number of jobs as the ceiling: ``{lines: [{state, colour, points, last}], width, height, ymax,
    start, end}``, or None before any job ran.  The time axis is that of :func:`_plot`."""
    events = [minute for series in reached.values() for minute, _count in series]
    if not events:
        return None
    now = time.time() if now is None else now
    last = max(max(events), int(now // 60) * 60)
    first = min(min(events), last - (PLOT_MIN_MINUTES - 1) * 60)
    span = max(last + 60 - first, 60)
    ymax = max(total, max(sum(c for _m, c in series) for series in reached.values()), 1)

    def x(t):
        return left + (width - left) * (t - first) / span

    def y(n):
        return height - (height - 4) * n / ymax

    lines = []
    for state, series in reached.items():
        if not series:
            continue
        done, points = 0, [(x(first), y(0))]
        for minute, count in series:
            points.append((x(minute), y(done)))
            done += count
            points.append((x(minute + 60), y(done)))
        points.append((x(last + 60), y(done)))
        lines.append({"state": state, "colour": STATE_COLOURS[state], "last": done,
                      "points": " ".join(f"{px:.1f},{py:.1f}" for px, py in points)})
    return {"lines": lines, "width": width, "height": height, "left": left, "ymax": ymax,
            "start": first, "end": last + 60, "total_y": y(total)}
