"""`db ls` (also `db job ls`): list jobs as a table or as JSON, count them per state,
or watch a campaign with a progress bar per workflow."""

import itertools
import shutil
import sys
import time
from datetime import datetime

import click

from balsamdb import job_queries
from balsamdb.exceptions import BadRequest
from balsamdb.states import STATES

from .common import (echo_json, echo_json_stream, echo_table, echo_table_stream, format_time, json_option, open_db,
                     path_option, shorten)
from .job_ids import resolve_job_ids


class StateChoice(click.Choice):
    """A job state name, in any case (shown and returned in upper case)."""

    def convert(self, value, param, ctx):
        return super().convert(value.upper() if isinstance(value, str) else value, param, ctx)


STATE_CHOICE = StateChoice(STATES)
SORT_CHOICE = click.Choice([key for name in job_queries.SORT_KEYS for key in (name, "-" + name)])


def _when(ctx, param, value):
    """--since/--until: checked now (a clear error names the forms), sent as given."""
    if value is not None:
        try:
            job_queries.parse_time(value, what="")
        except BadRequest as exc:
            raise click.BadParameter(exc.message) from None
    return value


@click.command("ls")
@path_option
@click.option("--workflow", "-w", help="Only jobs of this workflow")
@click.option("--state", "-s", "states", multiple=True, type=STATE_CHOICE, metavar="STATE",
              help=f"Only jobs in this state (repeat for several): {', '.join(STATES)}")
@click.option("--name", "-n", "name_glob", metavar="GLOB", help="Only jobs whose name matches, e.g. 'sim-*'")
@click.option("--tag", "-t", "tags", multiple=True, help="Only jobs with this tag (repeat: all of them)")
@click.option("--since", metavar="WHEN", callback=_when,
              help="Only jobs created since WHEN: a span ago (30m, 1h, 2d, 1w), a date (2024-05-01) "
                   "or a date and time ('2024-05-01 14:30')")
@click.option("--until", metavar="WHEN", callback=_when, help="Only jobs created before WHEN (as for --since)")
@click.option("--changed", is_flag=True,
              help="--since/--until compare the time of the last change (state or field), not of creation")
@click.option("--sort", type=SORT_CHOICE, metavar="KEY",
              help=f"Order by {', '.join(job_queries.SORT_KEYS)} (state: pipeline order); "
                   "-KEY reverses it (-updated: last changed first)  [default: created]")
@click.option("--waiting-on", metavar="ID", help="Only the jobs that still wait for this job (its children)")
@click.option("--owner", help="Only the jobs this launcher holds (see db job acquire)")
@click.option("--limit", type=click.IntRange(min=0), help="Show at most this many jobs")
@click.option("--by-state", is_flag=True, help="Count the jobs in each state, per workflow, instead of listing them")
@click.option("--watch", is_flag=True,
              help="Refresh in place until Ctrl-C, with a progress bar of finished jobs per workflow")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True, metavar="SECONDS",
              help="Seconds between refreshes of --watch")
@json_option
def ls(path, workflow, states, name_glob, tags, since, until, changed, sort, waiting_on, owner, limit, by_state,
       watch, interval, as_json):
    """List jobs, oldest first

    Example:

    \b
        db ls --workflow sweep --state RUNNING --state READY
        db ls --name 'sim-*' --tag gpu --json
        db ls --since 1h --sort -updated --limit 20
        db ls --state JOB_FINISHED --since 30m --changed    # finished in the last 30 min
        db ls --by-state
        db ls --waiting-on 3f2a                             # the children that wait for it
        db ls --workflow sweep --watch --by-state           # Ctrl-C to stop
    """
    if watch and as_json:
        raise click.UsageError("--watch is for people; scripts call db ls --json (or --by-state --json) in a loop")
    if changed and since is None and until is None:
        raise click.UsageError("--changed goes with --since or --until: it says which time they compare")
    filters = dict(workflow=workflow, state=list(states) or None, name_like=name_glob, tags=list(tags) or None,
                   since=since, until=until, changed=changed, owner=owner)
    filtered = bool(workflow or states or name_glob or tags or since or until or waiting_on or owner)
    with open_db(path) as db:
        if waiting_on:
            (filters["waiting_on"],) = resolve_job_ids(db, [waiting_on])
        if watch:
            _watch(db, filters, filtered, sort, limit, by_state, interval)
            return
        if by_state:
            counts = db.jobs.state_counts(**filters)
            echo_json(counts) if as_json else _echo_counts(counts, filtered)
            return
        # Streamed: rows are printed as their pages arrive; no process holds the whole listing.
        if as_json:
            echo_json_stream(job.to_dict() for job in db.jobs.iter(limit=limit, sort=sort, **filters))
            return
        _echo_jobs(db.jobs.iter_rows(_LISTED, limit=limit, sort=sort, **filters), filtered)


#: the fields a listing prints (the last two only when a launcher holds one of its first jobs)
_LISTED = ("id", "name", "workflow", "application", "state", "created_at", "owner", "lease_expires")


def _echo_jobs(rows, filtered):
    """Print ``rows`` (tuples of the :data:`_LISTED` fields) as a table, as they come."""
    rows = iter(rows)
    head = list(itertools.islice(rows, 200))  # the rows that set the widths, as echo_table_stream measures
    held = any(row[6] for row in head)  # the claim columns only when a launcher holds one
    shown = echo_table_stream(
        ["id", "name", "workflow", "application", "state", "created"] + (["owner", "lease until"] if held else []),
        _cells(itertools.chain(head, rows), held))
    if not shown:
        click.echo("No jobs match." if filtered else "No jobs yet.")


def _cells(rows, held):
    """The cells of each listed job, a tuple of strings (a tuple: echo_table_stream formats it as it is)."""
    for job_id, name, workflow, application, state, created_at, owner, lease_expires in rows:
        cells = (job_id[:8], name, workflow, application if len(application) <= 40 else shorten(application, 40),
                 state, format_time(created_at))
        yield cells + (shorten(owner or "", 30), format_time(lease_expires)[11:]) if held else cells


def _echo_counts(counts, filtered):
    """A row per workflow: its total and a column per state that any workflow has a job in."""
    if not counts:
        click.echo("No jobs match." if filtered else "No jobs yet.")
        return
    per_workflow = job_queries.progress(counts)
    shown = [s for s in STATES if any(s in item["states"] for item in per_workflow.values())]
    echo_table(["workflow", "total"] + shown,
               [[name, str(item["total"])] + [str(item["states"].get(s, 0)) for s in shown]
                for name, item in per_workflow.items()])


def _bars(counts, width):
    """A progress bar of finished jobs for each workflow (tqdm draws it)."""
    from tqdm import tqdm

    plain = not (sys.stdout.encoding or "").lower().startswith("utf")
    lines = []
    per_workflow = job_queries.progress(counts)
    name_width = max([len(name) for name in per_workflow] + [8])
    for name, item in per_workflow.items():
        failed = f", {item['failed']} failed" if item["failed"] else ""
        # Rounded down: 1500 of 1501 is 99%, never 100% before the last job finished.
        done = 100 * item["finished"] // item["total"] if item["total"] else 0
        lines.append(tqdm.format_meter(
            item["finished"], item["total"], 0, ncols=width, prefix=name.ljust(name_width), ascii=plain,
            bar_format="{desc} {done:3d}%|{bar}| {n_fmt}/{total_fmt} finished" + failed, done=done))
    return lines


def _watch(db, filters, filtered, sort, limit, by_state, interval):
    """Draw the listing (or the counts) and the bars every ``interval`` s until Ctrl-C.
    On a terminal each frame replaces the last; into a file or pipe, frames follow each other."""
    in_place = sys.stdout.isatty()
    width = min(shutil.get_terminal_size().columns if in_place else 80, 100)
    try:
        while True:
            counts = db.jobs.state_counts(**filters)
            jobs = None if by_state else db.jobs.iter_rows(_LISTED, limit=limit, sort=sort, **filters)  # as db ls
            if in_place:
                click.clear()
            click.echo(f"{datetime.now():%Y-%m-%d %H:%M:%S}  every {interval:g} s, Ctrl-C to stop")
            if by_state:
                _echo_counts(counts, filtered)
            else:
                _echo_jobs(jobs, filtered)
            bars = _bars(counts, width)
            if bars:
                click.echo("")
                for line in bars:
                    click.echo(line)
            if not in_place:
                click.echo("")
            sys.stdout.flush()
            time.sleep(interval)  # the refresh period the user asked for
    except KeyboardInterrupt:
        return
