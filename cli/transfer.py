"""`db copy`, `db configure`, `db export`, `db import`: moving records and jobs between stores."""

import sys

import click

from balsamdb import transfer
from balsamdb.operations.stores import PLURALS
from balsamdb.settings import resolve_db_path

from balsamdb.wording import plural
from .common import CONTEXT_SETTINGS, echo_json, json_option, path_option
from .provenance import FORMATS, export_provenance, scope_of

STORE_HELP = ("a DB directory, a postgresql://user:pw@host:port/db URL, or an http(s)://user:pw@host:port/prefix/ "
              "store (balsamdb's own or any Sumatra record store)")


def _progress(as_json):
    return not as_json and sys.stderr.isatty()


def _say(as_json):
    return None if as_json else (lambda sentence: click.echo(sentence, err=True))


def _count(count, kind):
    """"2 jobs", "1 policy", "3 policies"."""
    return plural(count, kind, PLURALS.get(kind))


def _kind_counts(totals):
    """"30 records, 2500 jobs (2530 added, 0 updated, 1 already there)"."""
    seen = [(k, sum(v.values())) for k, v in totals.items() if any(v.values())]
    if not seen:
        return "nothing"
    added, updated, unchanged = (sum(v[key] for v in totals.values()) for key in ("added", "updated", "unchanged"))
    items = ", ".join(_count(n, k) for k, n in seen)
    return f"{items} ({added} added, {updated} updated, {unchanged} already there)"


@click.command("copy", context_settings=CONTEXT_SETTINGS)
@click.argument("src")
@click.argument("dst")
@click.option("--dry-run", is_flag=True, help="Only count what would be added and updated; write nothing.")
@json_option
def copy(src, dst, dry_run, as_json):
    """Copy every project, record, tag and job from SRC to DST, and verify

    SRC and DST are each a DB directory, a postgresql:// URL or an http(s)://
    store.  Users and permissions are copied where both sides hold them; a
    plain Sumatra server holds projects and records only.  The source is never
    changed.  Safe to run again (after a failure, or to catch up): each item is
    present once.  Writers may keep writing to SRC: later passes copy what
    changed, and the report says what arrived during the copy.

    A SQLite DB directory copied into a new one (nothing in it yet) takes a
    fast path: DST's server copies the rows in SQL and the check compares both
    files in SQL (docs/transfer.md); the report's "path" says which ran.

    Example:

    \b
        db copy ~/runs/db postgresql://lab:pw@dbhost/balsam
        db copy ~/runs/db http://admin:pw@records.example.org/ --dry-run
        db copy http://ada:pw@old-server/records/ ~/runs/db --json
    """
    source = transfer.open_store(src)
    try:
        destination = transfer.open_store(dst, create=True)
        try:
            report = transfer.copy_store(source, destination, dry_run=dry_run, progress=_progress(as_json),
                                         log=_say(as_json))
        finally:
            destination.close()
    finally:
        source.close()
    if as_json:
        echo_json(report)
        return
    verb = "would copy" if dry_run else "copied"
    click.echo(f"{verb} {report['source']} -> {report['destination']}: {_kind_counts(report['first_pass'])}")
    click.echo(f"path: {report['path']} ({report['path_reason']})")
    skipped = [_count(count, kind) for kind, count in report["skipped_kinds"].items() if count]
    if skipped:
        click.echo(f"not copied: {', '.join(skipped)} ({'; '.join(report['limits'])})")
    if not dry_run:
        during = report["during_copy"]
        click.echo("arrived during the copy: " + (", ".join(f"{v['added']} new and {v['updated']} changed {k}s"
                                                           for k, v in during.items()) or "nothing"))
        check = report["verification"]
        records = sum(p["records"] for p in check["projects"].values())
        click.echo(f"verified: {plural(len(check['projects']), 'project')}, {plural(records, 'record')}, "
                   f"{plural(check['jobs']['count'], 'job')}, {plural(check['users']['count'], 'user')} have equal counts "
                   f"and digests on both sides ({report['seconds']:.1f} s, {report['items_per_second']} items/s)")


@click.command("configure", context_settings=CONTEXT_SETTINGS)
@path_option
@click.option("--store", "store", required=True, metavar="URL",
              help="The PostgreSQL database to use from now on: postgresql://user:pw@host:port/dbname")
@json_option
def configure(path, store, as_json):
    """Move a DB directory to another database: copy, verify, then switch

    Copies everything of the DB directory into the PostgreSQL database at
    --store, checks the copy, and makes the DB directory use it from now on
    (its server, jobs and `db` commands follow).  The old database is kept
    where it was.  Stop the directory's server first.

    Example:

    \b
        db dbserver --stop --path ~/runs/db
        db configure --path ~/runs/db --store postgresql://lab:pw@dbhost:5432/balsam
        db dbserver --path ~/runs/db
    """
    db_path, _source = resolve_db_path(path)
    report = transfer.configure_store(db_path, store, progress=_progress(as_json), log=_say(as_json))
    if as_json:
        echo_json(report)
        return
    click.echo(f"copied and verified: {_kind_counts(report['first_pass'])}")
    if report.get("arrived_after_switch"):
        click.echo(f"also copied, written to the old database during the switch: {report['arrived_after_switch']}")
    click.echo(f"{db_path} now uses {report['new_store']}")
    click.echo(f"the old database is kept, unchanged, at {report['old_database']}")


@click.command("export", context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(allow_dash=True, readable=False))
@path_option
@click.option("--store", "store", metavar="STORE", help=f"Export this store instead of --path: {STORE_HELP}.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True,
              help="jsonl: every item of the store; prov-json (W3C PROV) or ro-crate (a directory, Process Run "
                   "Crate): the provenance of --record, --job, --workflow or --project")
@click.option("--record", "record", metavar="PROJECT/LABEL", help="prov-json/ro-crate: this record")
@click.option("--job", "job", metavar="ID", help="prov-json/ro-crate: the records of this job's runs")
@click.option("--workflow", "workflow", metavar="NAME", help="prov-json/ro-crate: the records of this workflow's jobs")
@click.option("--project", "project", metavar="NAME", help="prov-json/ro-crate: the records of this project")
@click.option("--with-files", is_flag=True, help="ro-crate: copy the files into the crate (else referenced by URL)")
@json_option
def export(file, path, store, fmt, record, job, workflow, project, with_files, as_json):
    """Write every item of a store to FILE ('-': stdout), one JSON object per line; or provenance

    The format (docs/transfer.md) is versioned and exact: export, import into
    an empty store, export again, and the files are identical.  The file holds
    users' password hashes: it is made readable by you only.

    --format prov-json writes W3C PROV-JSON, --format ro-crate an RO-Crate
    directory (Process Run Crate profile) of the records of one record, job,
    workflow or project (docs/provenance.md).

    Example:

    \b
        db export backup.jsonl --path ~/runs/db
        db export - --store postgresql://lab:pw@dbhost/balsam | gzip > backup.jsonl.gz
        db export run.prov.json --format prov-json --job 3f2a1b2c
        db export crate/ --format ro-crate --workflow sweep --with-files
    """
    import os

    if fmt != "jsonl":
        if store:
            raise click.UsageError("--store is for --format jsonl; provenance is exported from --path")
        scope, name = scope_of(record, job, workflow, project)
        export_provenance(file, path, fmt, scope, name, with_files, as_json)
        return
    if record or job or workflow or project or with_files:
        raise click.UsageError("--record, --job, --workflow, --project and --with-files go with --format prov-json "
                               "or ro-crate; --format jsonl exports the whole store")

    source = transfer.open_store(store or resolve_db_path(path)[0])
    try:
        if file == "-":
            footer = transfer.export_store(source, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            footer = transfer.export_file(source, file, progress=_progress(as_json))  # complete, or not there
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the reader went away (| head)
        raise SystemExit(1) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {file}: {exc.strerror or exc}") from None
    finally:
        source.close()
    summary = {"file": file, "counts": footer["counts"], "digests": footer["digests"]}
    if as_json:
        echo_json(summary)
    elif file != "-":
        click.echo(f"exported {', '.join(_count(n, k) for k, n in footer['counts'].items())} to {file}")


@click.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(dir_okay=False, readable=False))  # a shelve store is records.dat/.dir on disk
@path_option
@click.option("--store", "store", metavar="STORE", help=f"Import into this store instead of --path: {STORE_HELP}.")
@click.option("--project", metavar="NAME", help="Project of records from `smt export` that do not name one; "
                                                  "for Sumatra's own store, the project of all its records.")
@click.option("--dry-run", is_flag=True, help="Only count what would be added and updated; write nothing.")
@json_option
def import_(file, path, store, project, dry_run, as_json):
    """Read a file of `db export`, the JSON of Sumatra's `smt export`, or the
    record store that `smt` keeps (.smt/records), into a store

    Items already present and equal are left alone, so importing twice changes
    nothing.  A balsamdb export without its end line (truncated) is refused
    before anything is written; after the import, every item of the file is
    checked to be present and equal.  Sumatra's own store is read with plain
    SQL when it is Django's SQLite file (a running smt's write is waited for),
    and as inert data when it is a shelve file (its pickles never build one of
    Sumatra's objects, so a crafted store runs nothing): neither Django nor
    Sumatra is needed.

    Example:

    \b
        db import backup.jsonl --path ~/runs/newdb
        db import .smt/records_export.json --project MyProject
        db import .smt/records --path ~/runs/db
    """
    destination = transfer.open_store(store or resolve_db_path(path)[0], create=True)
    try:
        report = transfer.import_file(file, destination, project=project, dry_run=dry_run,
                                      progress=_progress(as_json))
    finally:
        destination.close()
    if as_json:
        echo_json(report)
        return
    verb = "would import" if dry_run else "imported"
    click.echo(f"{verb} {report['format']} {file}: {_kind_counts(report['items'])}"
               + (" (verified)" if report.get("verified") else ""))
    for kind, count in report["skipped_kinds"].items():
        click.echo(f"not imported: {_count(count, kind)} (the store cannot hold them)")
