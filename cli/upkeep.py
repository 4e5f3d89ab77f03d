"""`db prune` and `db vacuum`: keeping a DB directory small (operations store_prune, store_vacuum)."""

import os

import click

from balsamdb.dbdir import DBDirectory
from balsamdb.job_queries import parse_time
from balsamdb.settings import load_settings, resolve_db_path

from .common import echo_json, json_option, open_db, path_option


@click.command("prune")
@path_option
@click.option("--before", metavar="WHEN", default=None,
              help="Remove the state history of jobs older than this (30d, 2024-05-01, ...); each job keeps its "
                   "last change")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing")
@click.option("--chunk", type=click.IntRange(min=1), default=20000, show_default=True,
              help="Rows removed per request (each request is one short transaction of the server)")
@json_option
def prune(path, before, dry_run, chunk, as_json):
    """Remove old state history and extra record versions

    Record versions go only in projects that opted in (db project set P
    --keep-versions N keeps the newest N of each record); by default every
    version is kept.  Applied request ids are pruned by the server itself
    (applied_retention_days); the count older than that is shown.

    Example:

    \b
        db prune --before 90d --dry-run
        db prune --before 2024-01-01
    """
    when = None if before is None else parse_time(before, what="--before")
    settings = load_settings()
    totals = {"state_changes": 0, "record_versions": 0}
    with open_db(path) as db:
        while True:
            result = db.call("store_prune", before=when, dry_run=dry_run, limit=None if dry_run else chunk,
                             applied_retention_days=settings.applied_retention_days)
            for key in totals:
                totals[key] += result[key]
            if dry_run or not result["more"]:
                break
    totals.update(applied_requests_older=result["applied_requests_older"], dry_run=dry_run)
    if as_json:
        echo_json(totals)
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {totals['state_changes']:,} state changes and {totals['record_versions']:,} record versions; "
               f"{totals['applied_requests_older']:,} applied request ids are older than "
               f"{settings.applied_retention_days:g} days (the server prunes them)")


def _mb(n):
    return f"{n / 1e6:,.1f} MB"


def _offline_vacuum(dbdir, dry_run):
    """VACUUM a SQLite database whose server is stopped; makes later vacuums incremental."""
    from balsamdb.operations.upkeep import sqlite_space

    database = dbdir.open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        space = sqlite_space(database)
        size, free = space["pages"] * space["page_size"], space["free_pages"] * space["page_size"]
        st = os.statvfs(dbdir.path)
        disk = st.f_bavail * st.f_frsize
        if dry_run:
            return {"bytes": size, "free_bytes": free, "needs_bytes": size, "disk_free_bytes": disk, "dry_run": True}
        if disk < size:
            raise click.ClickException(f"VACUUM needs about {_mb(size)} of free disk and {dbdir.path} has {_mb(disk)}; "
                                       "nothing was changed")
        database.execute_sql("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect with this VACUUM
        database.execute_sql("VACUUM")
        database.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        after = sqlite_space(database)
        return {"bytes": size, "free_bytes": free, "freed_bytes": size - after["pages"] * after["page_size"],
                "dry_run": False}
    finally:
        database.close()


@click.command("vacuum")
@path_option
@click.option("--dry-run", is_flag=True, help="Say the sizes and the free disk a vacuum needs; change nothing")
@json_option
def vacuum(path, dry_run, as_json):
    """Give a database's free pages back to the file system

    With the server stopped (SQLite): a full VACUUM, which needs free disk
    about the size of the database, and which switches the database to
    incremental vacuums.  With the server running: an incremental vacuum
    through the server when the database allows it, else a refusal saying
    what to do.  PostgreSQL: its autovacuum does this; the size is shown.

    Example:

    \b
        db vacuum --dry-run
        db dbserver --stop && db vacuum && db dbserver
    """
    target, _ = resolve_db_path(path)
    dbdir = DBDirectory(target)
    if dbdir.db_type == "sqlite3" and dbdir.running_server() is None:
        result = _offline_vacuum(dbdir, dry_run)
    else:
        with open_db(path) as db:
            result = db.call("store_vacuum", dry_run=dry_run)
    if as_json:
        echo_json(result)
        return
    if result.get("note"):
        click.echo(f"database {_mb(result['bytes'])}: {result['note']}")
    elif dry_run:
        needs = f"; an offline VACUUM needs about {_mb(result['needs_bytes'])} of free disk " \
                f"({_mb(result['disk_free_bytes'])} free)" if "needs_bytes" in result else ""
        click.echo(f"database {_mb(result['bytes'])}, of which {_mb(result['free_bytes'])} free pages "
                   f"would be given back{needs}")
    else:
        click.echo(f"database was {_mb(result['bytes'])}; gave back {_mb(result['freed_bytes'])}")
