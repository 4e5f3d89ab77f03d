"""`db record`: Sumatra provenance records, grouped by project."""

import itertools

import click

from balsamdb.exceptions import NotFound

from .common import (echo_json, echo_json_stream, echo_table, echo_table_stream, format_time, json_option, open_db,
                     parse_json, path_option, shorten)


@click.group("record")
def record():
    """Save, list, show, tag and remove Sumatra provenance records

    A save replaces a record and keeps every earlier version (db record history).

    Example:

    \b
        db record add myproject run.json
        db record ls myproject --tag paper
        db record show myproject 20240101-120000
        db record history myproject 20240101-120000
    """


_RECORD_EXAMPLE = '{"label": "run-1", "timestamp": "2024-01-01 12:00:00", ...}'


@record.command("add")
@click.argument("project")
@click.argument("file", type=click.File("r"), metavar="FILE.json")
@path_option
@json_option
def add(project, file, path, as_json):
    """Save a record document (a JSON object with a label) from a file or stdin

    FILE.json is "-" for stdin.  Saving a label again replaces the record and
    keeps the earlier document as a version (db record history); in a
    write-once project (db project set P --write-once) only the run-result
    fields (duration, outcome, tags, ...) may change.

    Example:

    \b
        db record add myproject run.json
        jq '.[0]' .smt/records_export.json | db record add myproject -   # after smt export
    """
    text = file.read()
    document = parse_json(text, _RECORD_EXAMPLE, param_hint="FILE.json")
    if not isinstance(document, dict):
        raise click.BadParameter(f"a record is a JSON object such as {_RECORD_EXAMPLE}", param_hint="FILE.json")
    with open_db(path) as db:
        created = db.records.save(project, document)
    label = document.get("label")
    if as_json:
        echo_json({"project": project, "label": label, "created": created})
        return
    click.echo(f"{'saved new' if created else 'updated'} record {label} in project {project}")


def _duration(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.1f} s"
    return ""


@record.command("ls")
@click.argument("project", required=False)
@path_option
@click.option("--tag", "-t", "tags", multiple=True, help="Only records with this tag (repeat: all of them)")
@click.option("--any-tag", is_flag=True, help="Records with any of the --tag tags instead of all of them")
@click.option("--limit", type=click.IntRange(min=0), help="Show at most this many records")
@click.option("--job", "job_id", metavar="ID", help="The records of the runs of this job (any project), oldest first")
@json_option
def ls(project, path, tags, any_tag, limit, job_id, as_json):
    """List the records of a project, newest first, or those of a job

    Example:

    \b
        db record ls myproject
        db record ls myproject --tag paper --json
        db record ls myproject --tag paper --tag talk --any-tag
        db record ls --job 3f2a1b2c
    """
    if any_tag and not tags:
        raise click.UsageError("--any-tag needs the tags: --tag A --tag B --any-tag")
    if job_id is not None:
        if tags or project:
            raise click.UsageError("--job lists the records of a job in every project: give no PROJECT or --tag")
        _ls_job(job_id, path, limit, as_json)
        return
    if project is None:
        raise click.UsageError("give a PROJECT (db project ls lists them) or --job ID")
    with open_db(path) as db:
        # Streamed: printed page by page as they arrive (db.records.iter); nothing holds the whole listing.
        documents = db.records.iter(project, tags=list(tags), limit=limit, match="any" if any_tag else "all")
        try:  # the first page says NotFound for a project that does not exist, as this line does
            first = next(documents, None)
        except NotFound:
            raise click.ClickException(f"project {project!r} does not exist (db project ls lists them)") from None
        documents = itertools.chain([first], documents) if first is not None else iter(())
        if as_json:
            echo_json_stream(documents)
            return
        if first is None:
            joined = (" or " if any_tag else ", ").join(tags)
            click.echo(f"No records in project {project}" + (f" tagged {joined}." if tags else "."))
            return
        echo_table_stream(
            ["label", "timestamp", "tags", "outcome", "duration"],
            ([str(d.get("label", "")), str(d.get("timestamp") or ""), ", ".join(d.get("tags") or []),
              shorten(d.get("outcome") or "", 40), _duration(d.get("duration"))] for d in documents),
        )


def _ls_job(job_id, path, limit, as_json):
    from .job import resolve_job_ids

    with open_db(path) as db:
        (full_id,) = resolve_job_ids(db, [job_id])
        found = db.records.of_job(full_id)
    found = found[:limit] if limit is not None else found
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo(f"No records of job {full_id}.")
        return
    echo_table(["run", "project", "label", "timestamp", "exit", "outcome", "duration"],
               [[str(r.get("run") or "?"), r["project"], r["label"], r.get("timestamp") or "",
                 "" if r.get("exit_status") is None else str(r["exit_status"]), shorten(r.get("outcome") or "", 40),
                 _duration(r.get("duration"))] for r in found])


@record.command("find")
@click.option("--sha256", "sha256", metavar="HEX", help="Records whose input or output file has this SHA-256")
@click.option("--file", "file_path", metavar="PATH",
              help="Records whose input or output has this path (as the record names it: relative to its "
                   "working directory, or absolute)")
@click.option("--role", type=click.Choice(["input", "output"]), help="Only inputs (used) or outputs (produced)")
@click.option("--project", metavar="NAME", help="Only records of this project")
@click.option("--limit", type=click.IntRange(min=1, max=10000), default=1000, show_default=True,
              help="Show at most this many files")
@path_option
@json_option
def find(sha256, file_path, role, project, limit, path, as_json):
    """Find records by their files: which runs used or produced a file

    Looks up the input and output files of records made by db run --record and
    balsamdb.capture (and any record whose files carry a "sha256" in their
    metadata), newest first, with the job of each run.

    Example:

    \b
        db record find --sha256 6667b2d1...5e8f6e5f --role input    # which jobs used this input
        db record find --file results/out.h5 --role output            # which runs produced it
        db record find --sha256 "$(sha256sum data.csv | cut -d' ' -f1)"
    """
    if sha256 is None and file_path is None:
        raise click.UsageError("give --sha256 HEX or --file PATH (or both)")
    with open_db(path) as db:
        found = db.records.find_files(sha256=sha256, path=file_path, role=role, project=project, limit=limit)
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("No record has such a file.")
        return
    echo_table(["role", "project", "label", "job", "path", "sha256", "size"],
               [[r["role"], r["project"], r["label"], (r["job"] or "")[:8], r["path"], (r["sha256"] or "")[:16],
                 "" if r["size"] is None else str(r["size"])] for r in found])


@record.command("show")
@click.argument("project")
@click.argument("label")
@path_option
@click.option("--version", "version", type=click.IntRange(min=1), metavar="N",
              help="Show version N of the record (db record history lists them)")
@json_option
def show(project, label, path, version, as_json):
    """Print a record document as it was saved

    The output is the JSON document, with or without --json.

    Example:

    \b
        db record show myproject 20240101-120000
        db record show myproject 20240101-120000 --version 1
    """
    with open_db(path) as db:
        document = db.records.get(project, label, version=version)
    echo_json(document)


@record.command("history")
@click.argument("project")
@click.argument("label")
@path_option
@json_option
def history(project, label, path, as_json):
    """List the versions of a record, oldest first: when, by whom, what changed

    Every save that changed the record made a version; the last is the
    current record.  "saved by" is the HTTP user, or user@host of the
    process that saved it.

    Example:

    \b
        db record history myproject 20240101-120000
        db record show myproject 20240101-120000 --version 2
    """
    with open_db(path) as db:
        versions = db.records.versions(project, label)
    if as_json:
        echo_json(versions)
        return
    echo_table(["version", "saved at", "saved by", "bytes", "changed"],
               [[str(v["version"]), format_time(v["saved_at"]), v["saved_by"] or "(unknown)", str(v["bytes"]),
                 shorten(", ".join(v["changed"]), 60) if v["version"] > 1 else "(first)"] for v in versions])


@record.command("tag")
@click.argument("project")
@click.argument("label")
@path_option
@click.option("--add", "-a", "add_tags", multiple=True, metavar="TAG", help="Tag to add (repeat for several)")
@click.option("--remove", "-r", "remove_tags", multiple=True, metavar="TAG",
              help="Tag to remove (repeat for several)")
@json_option
def tag(project, label, path, add_tags, remove_tags, as_json):
    """Add and remove tags of a record; prints its tags

    Example:

    \b
        db record tag myproject 20240101-120000 --add paper --remove draft
    """
    if not add_tags and not remove_tags:
        raise click.UsageError("give --add TAG or --remove TAG")
    with open_db(path) as db:
        tags = db.records.tag(project, label, add=add_tags, remove=remove_tags)
    if as_json:
        echo_json({"project": project, "label": label, "tags": tags})
        return
    click.echo(f"{label}: {', '.join(tags) if tags else '(no tags)'}")


@record.command("rm")
@click.argument("project")
@click.argument("labels", metavar="[LABEL]...", nargs=-1)
@path_option
@click.option("--tag", "-t", help="Remove every record with this tag (needs --yes)")
@click.option("--yes", "-y", is_flag=True, help="Confirm removal by tag")
@json_option
def rm(project, labels, path, tag, yes, as_json):
    """Remove records by label, or every record with a tag (with --yes)

    Example:

    \b
        db record rm myproject 20240101-120000 20240102-090000
        db record rm myproject --tag failed --yes
    """
    if labels and tag:
        raise click.UsageError("give labels or --tag, not both")
    if not labels and not tag:
        raise click.UsageError("give the labels to remove, or --tag TAG --yes")
    with open_db(path) as db:
        if tag:
            matching = db.records.labels(project, tags=[tag])
            if matching and not yes:
                raise click.ClickException(
                    f"this would remove {len(matching)} record{'s' if len(matching) != 1 else ''} "
                    f"of {project} tagged {tag}; add --yes to confirm"
                )
            deleted = db.records.delete_by_tag(project, tag) if matching else 0
        else:
            try:
                deleted = db.records.delete_labels(project, labels)  # every label checked first
            except NotFound as exc:
                raise click.ClickException(exc.message) from None
    if as_json:
        echo_json({"deleted": deleted})
        return
    click.echo(f"removed {deleted} record{'s' if deleted != 1 else ''}")

