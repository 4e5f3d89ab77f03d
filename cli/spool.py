"""`db spool`: show the writes that wait for a server, and those it refused."""

import click

from balsamdb.dbdir import DBDirectory
from balsamdb.settings import resolve_db_path
from balsamdb.spool import Spool

from balsamdb.wording import plural
from .common import echo_json, json_option, path_option


@click.command("spool")
@path_option
@click.option("--drain", is_flag=True, help="Ask the running server to apply the waiting writes now "
                                             "(with --url: send them to the HTTP store now).")
@click.option("--url", metavar="URL", help="The local spool of writes to this HTTP store "
                                           "(http://user:password@host:port/prefix/) instead of a DB directory's.")
@json_option
def spool(path, drain, url, as_json):
    """Show the writes waiting in the spool and the ones the server refused

    Writes go to the spool when no server could take them (none running, killed
    and not back yet, or the network cut); the server applies them exactly
    once, in order, when it can.  Refused ones stay in spool/failed/ with the
    reason.

    Example:

    \b
        db spool --path ~/runs/db
        db spool --drain --json
        db spool --url http://ada@records.example.org/ --drain
    """
    if url:
        _remote(url, drain, as_json)
        return
    db_path, _source = resolve_db_path(path)
    dbdir = DBDirectory(db_path)
    dbdir.config()
    drained = None
    if drain:
        import balsamdb

        with balsamdb.connect(dbdir.path) as db:
            drained = db.call("spool_drain")
    _show(Spool(dbdir.spool_dir).describe(dbdir.secret()), dbdir.spool_dir, drained, as_json)


def _remote(url, drain, as_json):
    import json

    import balsamdb

    with balsamdb.connect(url) as db:
        drained = None
        if drain:
            db.drain_spool()
            drained = {"applied": db.drained}
        _show(db.spool.describe(decode=json.loads), db.spool.path, drained, as_json)


def _show(report, spool_dir, drained, as_json):
    if as_json:
        echo_json(dict(report, drained=drained, path=str(spool_dir)))
        return
    if drained is not None:
        click.echo(f"the server applied {plural(drained['applied'], 'spooled write')}")
    click.echo(f"{plural(len(report['pending']), 'write waits', 'writes wait')} in {spool_dir / 'new'}")
    for item in report["pending"][:20]:
        click.echo(f"  {item.get('op', '?'):<20} id {item.get('id', '?')}  waiting {item['age_s']:.0f} s")
    if len(report["pending"]) > 20:
        click.echo(f"  ... and {len(report['pending']) - 20} more")
    click.echo(f"{len(report['failed'])} refused by the server (in {spool_dir / 'failed'})")
    for item in report["failed"][:20]:
        error = item.get("error") or {}
        click.echo(f"  {item.get('op', '?'):<20} id {item.get('id', '?')}  {error.get('message', '')}")
