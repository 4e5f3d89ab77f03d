"""The fast path of ``db copy``: a SQLite DB directory into a new (empty) SQLite DB directory.

:func:`fast_path` says whether it applies and why (or why not).  :func:`bulk_pass` is the
first pass: the destination's write server copies the source's rows table by table, in
bounded keyset chunks, with the ``bulk_copy`` operation (:mod:`balsamdb.operations.store_bulk`:
``INSERT ... SELECT`` from the source file attached read-only; no item passes through Python).
The catch-up passes stay those of the general path.  :func:`verify_sql` then compares both
files in SQL on a read-only connection of this process (both attached, one snapshot each):
per table, the rows of every item not changed after the check's moment, as sets (``EXCEPT``)
and as counts.

It does not apply (and the general path runs) for a dry run, a destination that holds
anything, PostgreSQL or HTTP on either side, different schema versions, a source on a file
system that is not local, or a destination whose server runs on another host: that server
would read the source's WAL from a host that does not write it, which SQLite does not support.
"""

import socket
import sqlite3
from urllib.parse import quote

from ..exceptions import BalsamDBError, TransferError
from ..operations.store_bulk import TABLES, source_identity
from ..wording import plural

CHUNK_ROWS = 5000  # rows per bulk_copy request: one chunk holds the destination's writer ~20-100 ms

#: the tables whose rows are the items of each kind (the first one), for the report's counts
ITEM_TABLES = {"user": "user", "project": "project", "permission": "project_permission", "record": "record",
               "job": "job"}


def _sqlite_dbdir(store):
    dbdir = getattr(getattr(store, "db", None), "dbdir", None)
    if dbdir is None or dbdir.db_type != "sqlite3":
        return None
    return dbdir


def _schema_version(path):
    with _readonly(path) as conn:
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]


class _readonly:
    """A read-only SQLite connection of this process (a WAL reader), closed on exit."""

    def __init__(self, path):
        self.conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30, isolation_level=None)

    def __enter__(self):
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


def fast_path(src, dst, dry_run=False):
    """``(True, why)`` when the fast path applies to copying ``src`` into ``dst`` (endpoints of
    :func:`balsamdb.transfer.open_store`), else ``(False, why not)``."""
    from ..filesystems import describe

    if dry_run:
        return False, "a dry run counts items one by one"
    source, destination = _sqlite_dbdir(src), _sqlite_dbdir(dst)
    if source is None or destination is None:
        return False, "both sides must be SQLite DB directories"
    if not source.sqlite_file.exists() or not destination.sqlite_file.exists():
        return False, "a side has no database file yet"
    if source.sqlite_file.resolve() == destination.sqlite_file.resolve():
        return False, "the source and the destination are one database"
    versions = _schema_version(source.sqlite_file), _schema_version(destination.sqlite_file)
    if versions[0] != versions[1]:
        return False, f"the schema versions differ (source {versions[0]}, destination {versions[1]})"
    where = describe(source.sqlite_file)
    if not where["local"]:
        return False, f"the source is on {where['type']}, not a local file system"
    info = destination.read_address()
    if info.get("state") == "running" and info.get("host") != socket.gethostname():
        return False, (f"the destination's server runs on {info.get('host')}, not on this host "
                       "(it would read the source's WAL from another host)")
    counts = dst.counts()
    if any(counts.values()):
        return False, "the destination is not empty (" + ", ".join(plural(n, k) for k, n in counts.items() if n) + ")"
    return True, "SQLite DB directory into an empty SQLite DB directory, same schema: rows copied in SQL"


def bulk_pass(src, dst, bar=None, stop=None):
    """Copy every table of ``src`` into ``dst`` with ``bulk_copy`` requests to ``dst``'s write
    server; returns ``{table: rows copied}``.  Raises :class:`BalsamDBError` when the server
    refuses (the caller falls back to the general path, which completes any partial copy)."""
    path = str(_sqlite_dbdir(src).sqlite_file.resolve())
    identity, host = source_identity(path), socket.gethostname()
    copied = {}
    try:
        for table in TABLES:
            after, copied[table] = None, 0
            while True:
                if stop is not None and stop.is_set():
                    raise TransferError("the copy was interrupted; run it again to finish (nothing is copied twice)")
                answer = dst.db.call("bulk_copy", source=path, identity=identity, host=host, table=table,
                                     after=after, limit=CHUNK_ROWS)
                copied[table] += answer["copied"]
                if bar is not None and table in ITEM_TABLES.values():
                    bar.update(answer["copied"], f"{table}s")
                after = answer["next"]
                if after is None:
                    break
    finally:
        detach(dst)
    return copied


def detach(dst):
    """Let the destination's server let go of the source file (a process writing directly
    holds it until it closes)."""
    try:
        dst.db.call("bulk_copy_detach")
    except BalsamDBError:
        pass


# -- verification in SQL -------------------------------------------------------------------------------

def _columns(conn, table, skip=()):
    return [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")') if row[1] not in skip]


def _comparisons(conn):
    """``(table, select(schema))``: the rows compared, keyed by content (never by a surrogate id a
    catch-up may renumber), of the items kept for the check (not changed after ``:until``)."""
    from ..job_fields import JOB_KEYS

    job_kept = "EXISTS (SELECT 1 FROM src.job k WHERE k.id = t.{} AND k.updated_at <= :until)"
    record_kept = ("EXISTS (SELECT 1 FROM src.record k WHERE k.project_id = r.project_id AND k.label = r.label "
                   "AND k.updated_at <= :until)")
    out = []
    for table in ("user", "project", "project_permission"):
        cols = ", ".join(f't."{c}"' for c in _columns(conn, table))
        out.append((table, lambda db, cols=cols, table=table: f'SELECT {cols} FROM {db}."{table}" t'))
    job_cols = ", ".join(f't."{c}"' for c in JOB_KEYS)
    out.append(("job", lambda db: f"SELECT {job_cols} FROM {db}.job t WHERE {job_kept.format('id')}"))
    for table, key in (("job_state_change", "job_id"), ("job_tag", "job_id"), ("job_parent", "child")):
        cols = ", ".join(f't."{c}"' for c in _columns(conn, table, skip=("id",)))
        out.append((table, lambda db, cols=cols, table=table, key=key:
                    f'SELECT {cols} FROM {db}."{table}" t WHERE {job_kept.format(key)}'))
    record_cols = ", ".join(f'r."{c}"' for c in _columns(conn, "record", skip=("id",)))
    out.append(("record", lambda db: f"SELECT {record_cols} FROM {db}.record r WHERE {record_kept}"))
    for table in ("record_version", "record_tag", "record_job", "record_file"):
        cols = ", ".join(["r.project_id", "r.label"] + [f't."{c}"' for c in _columns(conn, table, skip=("id", "record_id"))])
        out.append((table, lambda db, cols=cols, table=table:
                    f'SELECT {cols} FROM {db}."{table}" t JOIN {db}.record r ON r.id = t.record_id WHERE {record_kept}'))
    return out


_EXTRA = {"job": ("job", "k.id = t.id"), "record": ("record", "k.project_id = t.project_id AND k.label = t.label"),
          "user": ("user", "k.name = t.name"), "project": ("project", "k.name = t.name"),
          "permission": ("project_permission", "k.project_id = t.project_id AND k.user_id = t.user_id")}


def compare_sql(src, dst, until):
    """Compare the files of ``src`` and ``dst`` (one snapshot each) up to ``until``: ``(problems,
    extra, summary)``: what differs, what the destination holds more (items the source deleted
    during the copy), and the counts of the report (``projects``, ``jobs``, ``users``,
    ``permissions``, ``tables``: rows compared per table)."""
    with _readonly(_sqlite_dbdir(dst).sqlite_file) as conn:
        conn.execute("ATTACH ? AS src", (f"file:{quote(str(_sqlite_dbdir(src).sqlite_file))}?mode=ro",))
        conn.execute("BEGIN")  # one snapshot of each file for every statement below
        problems, extra, tables = [], [], {}
        arg = {"until": until}
        for table, select in _comparisons(conn):
            a, b = select("src"), select("main")
            n_src, n_dst, missing = conn.execute(
                f"SELECT (SELECT count(*) FROM ({a})), (SELECT count(*) FROM ({b})), "
                f"(SELECT count(*) FROM ({a} EXCEPT {b}))", arg).fetchone()
            tables[table] = n_src
            if missing or n_src != n_dst:
                problems.append(f"{table}: source {n_src} rows, destination {n_dst}, {missing} of the source's "
                                "missing or different")
        for kind, (table, match) in _EXTRA.items():
            more = conn.execute(f'SELECT count(*) FROM main."{table}" t WHERE NOT EXISTS '
                                f'(SELECT 1 FROM src."{table}" k WHERE {match})').fetchone()[0]
            if more:
                extra.append(f"{kind}s: the destination holds {more} more")
        projects = {name: {"records": 0, "digest": None} for (name,) in conn.execute("SELECT name FROM src.project")}
        for name, count in conn.execute("SELECT project_id, count(*) FROM src.record WHERE updated_at <= :until "
                                        "GROUP BY project_id", arg):
            projects[name] = {"records": count, "digest": None}
        summary = {"projects": projects, "jobs": {"count": tables["job"], "digest": None},
                   "users": {"count": tables["user"], "digest": None},
                   "permissions": {"count": tables["project_permission"], "digest": None}, "tables": tables}
        conn.execute("COMMIT")
    return problems, extra, summary
