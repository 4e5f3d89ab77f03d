"""`db export --format prov-json|ro-crate` and `db record run`: the provenance of runs."""

import os
import sys

import click

from balsamdb.exceptions import BadRequest

from .common import echo_json, open_db, path_option

FORMATS = ("jsonl", "prov-json", "ro-crate")


def scope_of(record, job, workflow, project):
    """The one scope an export of provenance names, as ``(scope, name)``."""
    given = [(s, n) for s, n in (("record", record), ("job", job), ("workflow", workflow), ("project", project))
             if n]
    if len(given) != 1:
        raise click.UsageError("--format prov-json and ro-crate export one of: --record PROJECT/LABEL, --job ID, "
                               "--workflow NAME, --project NAME")
    return given[0]


def export_provenance(file, path, fmt, scope, name, with_files, as_json):
    """Write the PROV-JSON file or the RO-Crate directory ``file`` of ``scope`` ``name``."""
    try:
        from balsamdb.provenance import prov_json, ro_crate, selection
        import prov  # noqa: F401
        import rocrate  # noqa: F401
    except ImportError as exc:
        raise click.ClickException(f"{fmt} needs the export extra: pip install 'balsamdb[export]' ({exc})") from None
    with open_db(path) as db:
        try:
            chosen = selection.select(db, scope, name)
        except BadRequest as exc:
            raise click.UsageError(exc.message) from None
    notes = []
    if fmt == "prov-json":
        if with_files:
            raise click.UsageError("--with-files is for --format ro-crate (a PROV document holds no files)")
        text = prov_json.to_json(chosen)
        if file == "-":
            click.echo(text)
        else:
            with open(file, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    else:
        if file == "-":
            raise click.UsageError("an RO-Crate is a directory: give its path, not '-'")
        if os.path.exists(file) and (not os.path.isdir(file) or os.listdir(file)):
            raise click.UsageError(f"{file} exists and is not an empty directory; give a new directory for the crate")
        notes = ro_crate.write(chosen, file, with_files=with_files)
    summary = {"file": file, "format": fmt, scope: name, "records": len(chosen.records), "jobs": len(chosen.jobs),
               "notes": notes}
    if as_json:
        echo_json(summary)
    elif file != "-":
        for note in notes:
            click.echo(f"note: {note}", err=True)
        what = "crate" if fmt == "ro-crate" else "PROV-JSON"
        click.echo(f"exported {len(chosen.records)} record(s) of {scope} {name} as {what} to {file}")


@click.command("run", context_settings={"help_option_names": ["-h", "--help"], "ignore_unknown_options": True})
@click.argument("project")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@path_option
@click.option("--job", "job_id", metavar="ID", help="The job this run is for (default: $BALSAMDB_JOB_ID)")
@click.option("--input", "inputs", multiple=True, metavar="PATH|GLOB", help="An input file (repeat; globs allowed)")
@click.option("--output", "outputs", multiple=True, metavar="PATH|GLOB",
              help="An output file besides those found changed under the working directory (repeat)")
@click.option("--parameters", metavar="FILE", help="The parameter file (YAML, JSON, INI or Sumatra's simple format)")
@click.option("--reason", default="", help="Why this run (Sumatra's reason)")
@click.option("--tag", "tags", multiple=True, help="A tag of the record (repeat)")
@click.option("--label", help="The record's label (default: the rule of docs/provenance.md)")
@click.option("--max-digest-bytes", type=click.IntRange(min=0), metavar="N",
              help="Do not hash files larger than N bytes (their size is still recorded)")
@click.option("--no-find-outputs", is_flag=True, help="Do not walk the working directory for changed files")
def record_run(project, command, path, job_id, inputs, outputs, parameters, reason, tags, label,
               max_digest_bytes, no_find_outputs):
    """Run COMMAND and save its provenance as a Sumatra record in PROJECT

    The command's output passes through as it comes; its exit status is this
    command's.  The record (code version and diff, parameters, platform,
    inputs and outputs with SHA-256, output tail, exit status) is saved when it
    ends, to the server or, when none runs, to the spool.  `db run --record`
    does the same for a job.  See docs/provenance.md.

    Example:

    \b
        db record run sweep --input 'data/*.csv' --parameters params.yaml -- python sim.py params.yaml
        db record run sweep --job 3f2a1b2c -- ./solver -n 4
    """
    from balsamdb.provenance import run_command

    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise click.UsageError("give the command after --: db record run PROJECT -- CMD ARGS...")
    options = dict(inputs=inputs, outputs=outputs, parameters=parameters, reason=reason, tags=tags, label=label,
                   job=job_id, path=path, max_digest_bytes=max_digest_bytes, find_outputs=not no_find_outputs)
    status, _capture = run_command(list(command), project, **options)
    sys.exit(status)
