"""`db ls` (also `db job ls`): list jobs as a table or as JSON."""

import click

from balsamdb.states import STATES

from .common import echo_json, echo_table, format_time, json_option, open_db, path_option, shorten



class StateChoice(click.Choice):
    """A job state name, in any case (shown and returned in upper case)."""

    def convert(self, value, param, ctx):
        return super().convert(value.upper() if isinstance(value, str) else value, param, ctx)


STATE_CHOICE = StateChoice(STATES)


@click.command("ls")
@path_option
@click.option("--workflow", "-w", help="Only jobs of this workflow")
@click.option("--state", "-s", "states", multiple=True, type=STATE_CHOICE, metavar="STATE",
              help=f"Only jobs in this state (repeat for several): {', '.join(STATES)}")
@click.option("--name", "-n", "name_glob", metavar="GLOB", help="Only jobs whose name matches, e.g. 'sim-*'")
@click.option("--tag", "-t", "tags", multiple=True, help="Only jobs with this tag (repeat: all of them)")
@click.option("--limit", type=click.IntRange(min=0), help="Show at most this many jobs")
@json_option
def ls(path, workflow, states, name_glob, tags, limit, as_json):
    """List jobs, oldest first

    Example:

    \b
        db ls --workflow sweep --state RUNNING --state READY
        db ls --name 'sim-*' --tag gpu --json
    """
    with open_db(path) as db:
        jobs = db.jobs.filter(limit=limit, workflow=workflow, state=list(states) or None,
                              name_like=name_glob, tags=list(tags) or None)
    if as_json:
        echo_json([job.to_dict() for job in jobs])
        return
    if not jobs:
        click.echo("No jobs match." if (workflow or states or name_glob or tags) else "No jobs yet.")
        return
    echo_table(
        ["id", "name", "workflow", "application", "state", "created"],
        [[j.id[:8], j.name, j.workflow, shorten(j.application, 40), j.state, format_time(j.created_at)]
         for j in jobs],
    )
