"""The `db` command (also `balsamdb` and `python -m balsamdb.cli`)."""

import click

import balsamdb

from .bench import bench
from .common import CONTEXT_SETTINGS, BalsamGroup
from .dbserver import dbserver
from .init import init
from .job import job
from .ls import ls
from .project import project
from .provenance import record_run
from .record import record
from .relay import relay
from .run import run
from .spool import spool
from .transfer import configure, copy, export, import_
from .upkeep import prune, vacuum
from .serve import serve
from .user import user
from .which import which


@click.group(cls=BalsamGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(balsamdb.__version__, "--version", prog_name="balsamdb")
def main():
    """balsamdb: a record store for HPC jobs and provenance that many processes can write at once

    Commands take --path DIR; without it they use $BALSAM_DB_PATH, then the
    settings file, then a default directory (`db which` shows the choice).

    Example:

    \b
        db init ~/runs/db
        export BALSAM_DB_PATH=~/runs/db
        db job add sim-1 --workflow sweep --application 'python sim.py'
        db ls
    """


record.add_command(record_run)  # `db record run`: lives with the exports of provenance
for command in (init, which, ls, job, run, record, project, dbserver, spool, user, serve, relay, copy, configure,
                export, import_, prune, vacuum, bench):
    main.add_command(command)
