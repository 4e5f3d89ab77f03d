"""`db init`: create a DB directory, or upgrade an existing one in place."""

import sys

import click

from balsamdb.dbdir import DB_TYPES, DBDirectory
from balsamdb.settings import resolve_db_path

from ..server.dbinit import init_db_directory

from .common import echo_json, json_option, path_option


def _octal_mode(ctx, param, value):
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode such as 700 or 750") from None
    if not 0o700 <= mode <= 0o777 or mode & 0o700 != 0o700:
        raise click.BadParameter(f"{value} must give its owner rwx, e.g. 700 (private) or 750 (group may read)")
    return mode


@click.command("init")
@click.argument("db_path", metavar="[PATH]", required=False, type=click.Path(readable=False))
@path_option
@click.option("--db-type", type=click.Choice(DB_TYPES), default="sqlite3", show_default=True,
              help="Database behind the directory")
@click.option("--url", default=None, metavar="URL",
              help="With --db-type postgres: use this existing server, postgresql://user:pw@host:port/dbname")
@click.option("--mode", default="700", show_default=True, callback=_octal_mode,
              help="Permissions of a new DB directory, in octal")
@click.option("--no-backup", is_flag=True,
              help="Upgrade an existing SQLite database without first copying it to backup-schema-N-TIME.sqlite3 "
                   "in the DB directory")
@json_option
def init(db_path, path, db_type, url, mode, no_backup, as_json):
    """Create a DB directory, or bring an existing one's schema up to date

    PATH (or --path) defaults to the DB directory that `db which` shows.
    Running it again on a DB directory keeps every row and only upgrades
    what is out of date.  It refuses a file, a non-empty directory that
    is not a DB directory, and a db type other than the existing one.

    Example:

    \b
        db init ~/runs/db
        export BALSAM_DB_PATH=~/runs/db
        db init ~/runs/pgdb --db-type postgres
        db init ~/runs/labdb --db-type postgres --url postgresql://me:pw@dbhost/lab
    """
    if db_path and path and DBDirectory(db_path).path != DBDirectory(path).path:
        raise click.UsageError("give the DB directory either as PATH or with --path, not both")
    target, _source = resolve_db_path(db_path or path)
    dbdir = DBDirectory(target)
    bar = []

    said = []

    def progress(step):  # one tick per step of an upgrade of an existing schema, on stderr
        if not said:
            return
        if not bar:
            from tqdm import tqdm

            bar.append(tqdm(desc="upgrading", unit=" step", file=sys.stderr, disable=as_json))
        bar[0].set_postfix_str(step)
        bar[0].update(1)

    def say(text):
        said.append(text)
        if not as_json:
            click.echo(text, err=True)

    try:
        actions = init_db_directory(dbdir.path, db_type, mode=mode, url=url, backup=not no_backup,
                                    say=say, progress=progress)
    finally:
        if bar:
            bar[0].close()
    if as_json:
        echo_json({"path": str(dbdir.path), "db_type": db_type, "actions": actions})
        return
    for sentence in actions:
        click.echo(sentence)
