"""What ``db init`` does around a schema upgrade (say its size and time, back the database up),
and the SQLite connection that keeps itself fit (``PRAGMA optimize`` at close)."""

import os
import time

import peewee as pw

from . import crash_points, migrations
from .exceptions import StorageError
from .spool import fsync_dir

#: bytes a checkpointed WAL is truncated to (SQLite otherwise keeps the largest it ever grew to)
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


class OptimizingSqlite(pw.SqliteDatabase):
    """A SQLite database that runs ``PRAGMA optimize`` as each connection closes (SQLite's advice
    for long-lived connections: it analyzes the tables whose queries would gain from it), when the
    connection wrote something."""

    def _close(self, conn):
        try:
            if conn.total_changes:  # a connection that only read leaves the file as it found it
                conn.execute("PRAGMA optimize")
        except Exception:  # noqa: BLE001 - a read-only or broken connection still closes
            pass
        super()._close(conn)


#: rows per second an upgrade to schema 8 indexes (measured: 100k jobs + 10k records, loaded host)
UPGRADE_ROWS_PER_S = 100_000


def before_upgrade(self, database):
    """Say what an upgrade of an existing schema will touch and how long it may take; back the
    SQLite database up first (``VACUUM INTO`` a file in the DB directory).  Returns sentences."""
    options = getattr(self, "_upgrade_options", {"backup": True, "say": lambda text: None})
    version = migrations.check_schema_not_newer(database, self.path)
    if version == 0 or version >= migrations.SCHEMA_VERSION:
        return []
    counts = migrations.row_counts(database)
    rows = sum(counts.values())
    seconds = max(1, round(rows / UPGRADE_ROWS_PER_S))
    options["say"](f"upgrading the schema of {self.path} from version {version} to {migrations.SCHEMA_VERSION}: "
                   + ", ".join(f"{n:,} {table}" for table, n in counts.items())
                   + f" rows; about {seconds} s")
    if not options["backup"] or not isinstance(database, pw.SqliteDatabase):
        return ["no backup made (--no-backup)" if not options["backup"] else
                "no backup made: back a PostgreSQL database up with pg_dump"]
    target = backup_name(self.path, version)
    free = free_bytes(self.path)
    size = self.sqlite_file.stat().st_size
    if free is not None and free < size:
        raise StorageError(f"a backup of {self.sqlite_file} needs about {size / 1e6:.0f} MB and "
                           f"{self.path} has {free / 1e6:.0f} MB free; free space or run db init --no-backup")
    # Made under a name that says it is not done, and given its own name once whole on disk: a db init
    # killed while it copied left an empty file (and its journal) under the backup's name.
    partial = target.with_name(target.name + PARTIAL)
    for leftover in (partial, partial.with_name(partial.name + "-journal")):
        leftover.unlink(missing_ok=True)
    database.execute_sql("VACUUM INTO ?", (str(partial),))
    os.chmod(partial, 0o600)
    crash_points.reach(crash_points.BACKUP_COPIED)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, target)
    fsync_dir(self.path)
    return [f"backed the schema {version} database up to {target} ({target.stat().st_size / 1e6:.1f} MB)"]


#: what the name of a backup being made ends with (a db init killed then leaves it so named)
PARTIAL = ".partial"


def backup_name(path, version):
    """A new file name in the DB directory ``path`` for a backup of schema ``version``: its time to the
    second, and a number after it when that name is taken (a db init run again at once, after one that
    was killed once its backup was made: the copy refused to overwrite, and the upgrade never ran)."""
    stem = f"backup-schema-{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = path / f"{stem}.sqlite3", 1
    while target.exists():
        target, n = path / f"{stem}-{n}.sqlite3", n + 1
    return target


def free_bytes(path):
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except OSError:
        return None
