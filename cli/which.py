"""`db which`: which DB directory a command would use, why, and its state."""

import os

import click

from balsamdb.client import server_state
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import NotADBDirectory
from balsamdb.settings import resolve_db_path
from balsamdb.wording import shell_path

from balsamdb.wording import plural
from .common import echo_json, json_option, path_option


def _remote(url, source):
    """The report for an HTTP store: whether it answers, and as whom."""
    from balsamdb.exceptions import ServerUnavailable
    from balsamdb.remote import RemoteDatabase
    from balsamdb.urls import redact
    from balsamdb.settings import load_settings

    report = {"path": redact(url), "source": source, "exists": None, "is_db_directory": False,
              "db_type": "http", "problem": None, "server": None}
    remote = RemoteDatabase(url, load_settings(client_deadline=5, spool=False))
    try:
        status, info = remote.info()
        report["server"] = {"health": "up" if info else "down", "address": remote.url,
                            "user": (info or {}).get("user"), "admin": (info or {}).get("admin"),
                            "spool_waiting": remote.spool.count()}
        if info is None:
            report["problem"] = f"HTTP {status}: not a balsamdb HTTP store"
    except ServerUnavailable as exc:  # unreachable: what a user asks `db which` to find out
        report["server"] = {"health": "down", "address": remote.url, "spool_waiting": remote.spool.count()}
        report["problem"] = f"unreachable: {exc.message}"
    finally:
        remote.close()
    return report


def describe(path):
    """What `db which` reports about the DB directory chosen for ``path``."""
    url = str(path) if path else os.environ.get("BALSAM_DB_PATH", "")
    if url.startswith(("http://", "https://")):
        return _remote(url, "the --path option" if path else "the BALSAM_DB_PATH environment variable")
    chosen, source = resolve_db_path(path)
    dbdir = DBDirectory(chosen)
    report = {
        "path": str(dbdir.path), "source": source, "exists": dbdir.path.exists(),
        "is_db_directory": dbdir.is_db_directory(), "db_type": None, "problem": None,
        "server": None,
    }
    if report["is_db_directory"]:
        try:
            report["db_type"] = dbdir.db_type
        except NotADBDirectory as exc:  # a broken directory is something to report, not a failure
            report["problem"] = exc.message
        server = dbdir.read_address()
        # "health" is what a client would find: the file alone may name a dead process.
        report["server"] = dict(server, health=server_state(server))
        if report["db_type"] == "sqlite3":
            report["direct_writes"] = _direct_writes(dbdir)
    return report


def _direct_writes(dbdir):
    """Whether a client here would write SQLite directly while no server runs, and why (statfs)."""
    from balsamdb.filesystems import describe, direct_writes_allowed, sqlite_location

    try:
        allowed, why = direct_writes_allowed(dbdir)
        return dict(describe(sqlite_location(dbdir)), allowed=allowed, why=why)
    except OSError as exc:
        return {"allowed": False, "why": f"its file system cannot be told ({exc}): writes spool"}


def _server_line(server):
    if server is None:
        return "none (not a DB directory)"
    address = server.get("address") or "no address"
    if server["health"] == "up":
        return f"running at {address}"
    if server["health"] == "coming":
        return f"restarting at {address} (its watchdog is bringing it back)"
    if server.get("state") in ("running", "restarting"):
        return (f"stale: the address file names {address}, but that server is gone "
                f"(start one with: db dbserver)")
    return f"{server.get('state', 'unknown')} ({server.get('reason') or 'no reason given'})"


@click.command("which")
@path_option
@json_option
def which(path, as_json):
    """Show which DB directory commands use, why, and whether its server runs

    The choice: --path, else $BALSAM_DB_PATH, else default_db_path in the
    settings file ($BALSAMDB_SETTINGS or ~/.config/balsamdb/settings.json),
    else default_db/ of a source checkout, else a per-user directory.

    Example:

    \b
        $ BALSAM_DB_PATH=~/runs/db db which
        /home/me/runs/db
          chosen by:     the BALSAM_DB_PATH environment variable
          DB directory:  yes (sqlite3)
          server:        stopped (no server has run yet)
          direct writes: yes when no server runs (ext2/3/4 is a local file system)
    """
    report = describe(path)
    if as_json:
        echo_json(report)
        return
    if report["db_type"] == "http":
        server = report["server"]
        click.echo(report["path"])
        click.echo(f"  chosen by:     {report['source']}")
        click.echo("  HTTP store:    " + (report["problem"] or f"answers, as {server.get('user') or 'anonymous'}"
                                          + (" (admin)" if server.get("admin") else "")))
        click.echo(f"  local spool:   {plural(server['spool_waiting'], 'write')} waiting (db spool --url URL)")
        return
    if report["is_db_directory"]:
        kind = f"yes ({report['db_type']})" if report["db_type"] else f"broken: {report['problem']}"
    elif report["exists"]:
        kind = f"no (run: db init {shell_path(report['path'])})"
    else:
        kind = f"no, it does not exist (run: db init {shell_path(report['path'])})"
    click.echo(report["path"])
    click.echo(f"  chosen by:     {report['source']}")
    click.echo(f"  DB directory:  {kind}")
    click.echo(f"  server:        {_server_line(report['server'])}")
    direct = report.get("direct_writes")
    if direct is not None:
        click.echo(f"  direct writes: {'yes' if direct['allowed'] else 'no'} when no server runs ({direct['why']})")
