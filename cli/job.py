"""`db job`: add, show, modify, list and remove jobs."""

import json

import click

from balsamdb.job_queries import timeline
from balsamdb.states import INITIAL, PIPELINE
from balsamdb.wording import duration

from .common import echo_json, format_time, json_option, open_db, parse_json, path_option
from .job_ids import resolve_job_ids
from .job_claims import acquire, policy, release
from .ls import STATE_CHOICE, StateChoice, ls


@click.group("job")
def job():
    """Add, show, modify, list and remove jobs

    Example:

    \b
        db job add sim-1 --workflow sweep --application 'python sim.py' --args '--t 300'
        db job modify 3f2a --state RUNNING --message started
        db job show 3f2a
    """


job.add_command(ls, "ls")
for _command in (acquire, release, policy):
    job.add_command(_command)


# -- options that set job fields (shared by add and modify) --------------------

def _environ(ctx, param, values):
    environ = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE, e.g. --env OMP_NUM_THREADS=4")
        environ[key] = value
    return environ if values else None


_DATA_EXAMPLE = """'{"temperature": 300}'"""


def _json_object(ctx, param, value):
    if value is None:
        return None
    data = parse_json(value, _DATA_EXAMPLE)
    if not isinstance(data, dict):
        raise click.BadParameter(f"give a JSON object such as {_DATA_EXAMPLE}, not a {type(data).__name__}")
    return data


_FIELD_OPTIONS = [
    click.option("--application", "-a", help="Command the job runs, e.g. 'python sim.py'"),
    click.option("--args", help="Arguments given to the application"),
    click.option("--description", "-d", help="Free text"),
    click.option("--nodes", "num_nodes", type=click.IntRange(min=1), help="Number of nodes"),
    click.option("--ranks-per-node", type=click.IntRange(min=1), help="MPI ranks per node"),
    click.option("--threads-per-rank", type=click.IntRange(min=1), help="Threads per rank"),
    click.option("--wall-time", "wall_time_minutes", type=click.FloatRange(min=0), metavar="MINUTES",
                 help="Wall-time limit in minutes"),
    click.option("--env", "environ", multiple=True, metavar="KEY=VALUE", callback=_environ,
                 help="Environment variable of the job (repeat for several)"),
    click.option("--parent", "parents", multiple=True, metavar="ID",
                 help="Id (or 4+ character prefix) of a job this one waits for (repeat for several)"),
    click.option("--tag", "-t", "tags", multiple=True, help="Tag (repeat for several)"),
    click.option("--data", callback=_json_object, metavar="JSON", help="Free-form JSON object"),
]
FIELDS = ("application", "args", "description", "num_nodes", "ranks_per_node", "threads_per_rank",
          "wall_time_minutes", "environ", "parents", "tags", "data")


def field_options(function):
    for option in reversed(_FIELD_OPTIONS):
        function = option(function)
    return function


def _fields(db, values):
    """The job fields that were given on the command line, ready for the library."""
    fields = {}
    for name in FIELDS:
        value = values.get(name)
        if value is None or value == ():
            continue
        fields[name] = list(value) if isinstance(value, tuple) else value
    if "parents" in fields:
        fields["parents"] = resolve_job_ids(db, fields["parents"])
    return fields


# -- commands -----------------------------------------------------------------

@job.command("add")
@click.argument("name")
@path_option
@click.option("--workflow", "-w", default="default", show_default=True, help="Workflow the job belongs to")
@field_options
@click.option("--state", type=StateChoice(sorted(INITIAL, key=PIPELINE.index)),
              help="Initial state  [default: CREATED, or AWAITING_PARENTS with --parent]")
@json_option
def add(name, path, workflow, state, as_json, **values):
    """Create a job; prints its id and working directory

    The working directory, DB/data/WORKFLOW/NAME_ID8, exists when this returns.

    Example:

    \b
        db job add sim-1 --workflow sweep --application 'python sim.py' \\
            --args '--temperature 300' --nodes 2 --ranks-per-node 4 \\
            --wall-time 30 --env OMP_NUM_THREADS=4 --tag gpu --data '{"T": 300}'
    """
    with open_db(path) as db:
        fields = _fields(db, values)
        if state:
            fields["state"] = state
        created = db.jobs.create(name, workflow=workflow, **fields)
    if as_json:
        echo_json(dict(created.to_dict(), spooled=created.spooled))
        return
    click.echo(created.id)
    click.echo(f"working directory: {created.working_directory}")
    if created.spooled:
        click.echo(f"spooled: no server could take it now; it waits in {created.spool.path} "
                   "and the server stores it when it runs (db spool)")


def _echo_job(data):
    rows = [
        ("id", data["id"]),
        ("name", data["name"]),
        ("workflow", data["workflow"]),
        ("application", data["application"]),
        ("args", data["args"]),
        ("description", data["description"]),
        ("state", data["state"] + (f" ({data['state_message']})" if data["state_message"] else "")),
        ("working directory", data["working_directory"]),
        ("nodes", data["num_nodes"]),
        ("ranks per node", data["ranks_per_node"]),
        ("threads per rank", data["threads_per_rank"]),
        ("wall time", f"{data['wall_time_minutes']:g} min"),
        ("environ", " ".join(f"{k}={v}" for k, v in data["environ"].items())),
        ("parents", " ".join(data["parents"])),
        ("tags", ", ".join(data["tags"])),
        ("data", json.dumps(data["data"], ensure_ascii=False)),
        ("created", format_time(data["created_at"])),
        ("updated", format_time(data["updated_at"])),
    ]
    if data.get("owner"):
        rows.append(("held by", f"{data['owner']} (lease until {format_time(data['lease_expires'])}, last renewed "
                                f"{format_time(data['renewed_at'])})"))
    if data.get("waiting_on") and data["state"] == "AWAITING_PARENTS":
        rows.append(("waiting on", "; ".join(
            f"{p['id'][:8]} {p['name']} ({p['state']}{': blocked until it is restarted and finishes' if p['blocked'] else ''})"
            for p in data["waiting_on"])))
    width = max(len(label) for label, _ in rows) + 2
    for label, value in rows:
        click.echo(f"{label + ':':<{width}}{value}".rstrip())
    click.echo("history (time in each state):")
    entries = data.get("timeline", [])
    state_width = max([len(e["state"]) for e in entries] + [5])
    spans = [_time_in_state(e) for e in entries]
    total = None
    if len(entries) > 1:
        last = entries[-1]
        end = last["since"] if last["seconds"] is None else last["since"] + last["seconds"]
        total = duration(end - entries[0]["since"]) + ("" if last["seconds"] is None else " so far")
    span_width = max([len(s) for s in spans + [total or ""]])
    for entry, span in zip(entries, spans):
        line = f"  {format_time(entry['since'])}  {entry['state']:<{state_width}}  {span:>{span_width}}"
        click.echo(f"{line}  {entry['message']}".rstrip())
    if total is not None:
        click.echo(f"  {'total':<{19 + 2 + state_width}}  {total:>{span_width}}")
    records = data.get("records") or []
    click.echo(f"records ({len(records)}):" if records else "records: none (db run --record PROJECT records a run)")
    for rec in records:
        run = f"run {rec['run']}" if rec.get("run") else "run ?"
        status = "" if rec.get("exit_status") is None else f"exit {rec['exit_status']}"
        click.echo(f"  {run:<7} {rec['project']}/{rec['label']}  {rec.get('timestamp') or ''}  {status}  "
                   f"{rec.get('outcome') or ''}".rstrip())


def _time_in_state(entry):
    if entry["seconds"] is None:
        return "(final)"
    return duration(entry["seconds"]) + (" so far" if entry["current"] else "")


@job.command("show")
@click.argument("job_id", metavar="ID")
@path_option
@json_option
def show(job_id, path, as_json):
    """Show every field of a job and its state history, with the time in each state

    ID is the full id or its first 4 or more characters.  The history says when
    the job entered each state and how long it stayed ("so far" for the state it
    is in); --json gives it as "timeline".  Then the provenance records of its
    runs (db run --record; a restarted job has one per run), as "records".

    Example:

    \b
        db job show 3f2a1b2c
        db job show 3f2a --json
    """
    with open_db(path) as db:
        (full_id,) = resolve_job_ids(db, [job_id])
        found = db.jobs.get(full_id)
        records = db.records.of_job(full_id)
    data = dict(found.to_dict(), timeline=timeline(found.history), records=records)
    if as_json:
        echo_json(data)
    else:
        _echo_job(data)


@job.command("modify")
@click.argument("job_id", metavar="ID")
@path_option
@click.option("--state", "-s", type=STATE_CHOICE, help="Move the job to this state")
@click.option("--message", "-m", help="Why the state changes (kept in the history)")
@field_options
@json_option
def modify(job_id, path, state, message, as_json, **values):
    """Change a job's state or fields

    --state follows the job state machine (an illegal move is refused).
    Field options replace the old value whole: --tag, --env and --parent
    give the complete new list.

    Example:

    \b
        db job modify 3f2a --state RUNNING --message 'started on node 12'
        db job modify 3f2a --args '--temperature 350' --tag rerun
    """
    if message is not None and state is None:
        raise click.UsageError("--message goes with --state: it is kept in the state history")
    with open_db(path) as db:
        (full_id,) = resolve_job_ids(db, [job_id])
        changes = _fields(db, values)
        if state is None and not changes:
            raise click.UsageError("nothing to change: give --state or a field option (see db job modify -h)")
        before = db.jobs.get(full_id)
        after = before
        if state is not None:
            after = db.jobs.update_state(full_id, state, message=message or "")
        if changes:
            after = db.jobs.modify(full_id, **changes)
    if as_json:
        echo_json(after.to_dict())
        return
    who = f"job {full_id[:8]} ({before.name})"
    if state is not None:
        click.echo(f"{who}: {before.state} -> {state}")
    if changes:
        click.echo(f"{who}: changed {', '.join(sorted(changes))}")


@job.command("rm")
@click.argument("job_ids", metavar="[ID]...", nargs=-1)
@path_option
@click.option("--workflow", "-w", help="Remove the jobs of this workflow")
@click.option("--state", "-s", "states", multiple=True, type=STATE_CHOICE,
              help="Remove the jobs in this state (repeat for several)")
@click.option("--tag", "-t", "tags", multiple=True, help="Remove the jobs with this tag (repeat: all of them)")
@click.option("--yes", "-y", is_flag=True, help="Confirm removal by filter")
@json_option
def rm(job_ids, path, workflow, states, tags, yes, as_json):
    """Remove jobs by id, or every job that matches filters (with --yes)

    Their history goes too; working directories stay on disk.

    Example:

    \b
        db job rm 3f2a1b2c 9e8d
        db job rm --workflow sweep --state FAILED --yes
    """
    by_filter = bool(workflow or states or tags)
    if job_ids and by_filter:
        raise click.UsageError("give job ids or filters (--workflow, --state, --tag), not both")
    if not job_ids and not by_filter:
        raise click.UsageError("give job ids, or filters (--workflow, --state, --tag) with --yes")
    with open_db(path) as db:
        if job_ids:
            ids = list(dict.fromkeys(resolve_job_ids(db, job_ids)))
        else:
            ids = [j.id for j in db.jobs.filter(workflow=workflow, state=list(states) or None,
                                                tags=list(tags) or None)]
            if ids and not yes:
                raise click.ClickException(
                    f"this would remove {len(ids)} job{'s' if len(ids) != 1 else ''}; add --yes to confirm"
                )
        deleted = db.jobs.delete(*ids)  # in requests of db.jobs.DELETE_CHUNK ids
    if as_json:
        echo_json({"deleted": deleted})
        return
    note = f" ({len(ids) - deleted} of the given ids did not exist)" if job_ids and deleted < len(ids) else ""
    click.echo(f"removed {deleted} job{'s' if deleted != 1 else ''}{note}")
