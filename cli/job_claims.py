"""`db job acquire`, `db job release` and `db job policy`: claims of launchers, lost-run policies."""

import click

from balsamdb.operations.leases import DEFAULT_STATES, LOST_POLICIES

from .common import echo_json, echo_table, format_time, json_option, open_db, path_option
from .job_ids import resolve_job_ids
from .ls import STATE_CHOICE


@click.command("acquire")
@click.argument("n", type=click.IntRange(min=1, max=10000))
@path_option
@click.option("--owner", help="Who holds the jobs  [default: user@host:pid of this command]")
@click.option("--lease", type=click.FloatRange(min=1), default=60.0, show_default=True, metavar="SECONDS",
              help="How long the claim lasts without a renewal (on the server's clock)")
@click.option("--workflow", "-w", help="Only jobs of this workflow")
@click.option("--state", "-s", "states", multiple=True, type=STATE_CHOICE, metavar="STATE",
              help=f"Only jobs in this state (repeat)  [default: {', '.join(DEFAULT_STATES)}]")
@json_option
def acquire(n, path, owner, lease, workflow, states, as_json):
    """Claim up to N free jobs for a launcher; prints their ids

    No job is handed to two owners while its lease lasts.  The server releases
    a claim whose lease expires (and times out a RUNNING job: a lost run).
    Never spooled: with no server to answer, this fails at once.

    Example:

    \b
        db job acquire 10 --owner launcher-1 --lease 300 --workflow sweep
        db job release --owner launcher-1 3f2a 9e8d
    """
    with open_db(path) as db:
        jobs = db.jobs.acquire(n, owner=owner, lease=lease, workflow=workflow, states=states or DEFAULT_STATES)
    if as_json:
        echo_json([j.to_dict() for j in jobs])
        return
    for found in jobs:
        click.echo(found.id)
    if not jobs:
        click.echo("no free job", err=True)


@click.command("release")
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True)
@path_option
@click.option("--owner", required=True, help="Who holds the jobs (as given to acquire)")
@json_option
def release(job_ids, path, owner, as_json):
    """End a launcher's claims on jobs (their states stay as they are)

    Example:

    \b
        db job release --owner launcher-1 3f2a 9e8d
    """
    with open_db(path) as db:
        released = db.jobs.release(resolve_job_ids(db, job_ids), owner=owner)
    if as_json:
        echo_json({"released": released})
    else:
        click.echo(f"released {released} job{'s' if released != 1 else ''}")


@click.command("policy")
@click.argument("workflow", required=False)
@path_option
@click.option("--lost-runs", type=click.Choice(LOST_POLICIES),
              help="What a lost run becomes: restart (RUN_TIMEOUT, then RESTART_READY) or stop (RUN_TIMEOUT)")
@json_option
def policy(workflow, path, lost_runs, as_json):
    """Show or set a workflow's policy for lost runs (default: restart)

    A run is lost when its launcher stops renewing its lease (the process or
    node died); the server finds it within one lease.

    Example:

    \b
        db job policy sweep --lost-runs stop
        db job policy
    """
    with open_db(path) as db:
        if lost_runs:
            if not workflow:
                raise click.UsageError("--lost-runs needs a WORKFLOW")
            db.jobs.set_lost_run_policy(workflow, lost_runs)
        rows = db.call("workflow_policy_list")
    if workflow:
        rows = [r for r in rows if r["workflow"] == workflow] or [{"workflow": workflow, "lost_runs": "restart",
                                                                  "updated_at": None}]
    if as_json:
        echo_json(rows)
        return
    echo_table(["workflow", "lost runs", "set"],
               [[r["workflow"], r["lost_runs"], format_time(r["updated_at"]) if r["updated_at"] else "(default)"]
                for r in rows])
