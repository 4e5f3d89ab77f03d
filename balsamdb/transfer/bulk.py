"""The fast path of ``db copy``: a SQLite DB directory into a new (empty) SQLite DB directory.

:func:`fast_path` says whether it applies and why (or why not).  :func:`bulk_pass` is the
first pass: the destination's write server copies the source's rows table by table, in
bounded keyset chunks, with the ``bulk_copy`` operation (:mod:`balsamdb.operations.store_bulk`:
``INSERT ... SELECT`` from the source file attached read-only; no item passes through Python).
The catch-up passes stay those of the general path.  :func:`verify_sql` then compares both
files in SQL on a read-only connection of this process (both attached, one snapshot each):
per table, the rows of every item not changed after the check's moment are counted on each
side, and the source's rows that have an equal row in the destination (matched through the
destination's indexes, column by column).

It does not apply (and the general path runs) for a dry run, a destination that holds
anything, PostgreSQL or HTTP on either side, different schema versions, a source on a file
system that is not local, or a destination whose server runs on another host: that server
would read the source's WAL from a host that does not write it, which SQLite does not support.
"""

import socket
import sqlite3
import time
from contextlib import closing
from urllib.parse import quote

from ..exceptions import BalsamDBError, TransferError
from ..operations.store_bulk import TABLES, source_identity, source_proof
from ..wording import plural

#: rows per bulk_copy request, each with the rows that belong to it: one chunk holds the destination's
#: writer about 0.1-0.2 s (measured at 100k jobs, each table in its own chunks: a record ~42 µs with its
#: full-text index, a job ~11 µs, a history row ~7 µs); fewer, larger chunks rewrite the same index
#: pages less often
CHUNK_ROWS = {"record": 2000, "job": 5000}
DEFAULT_CHUNK_ROWS = 10000

#: the tables whose rows are the items of each kind (the first one), for the report's counts
ITEM_TABLES = {"user": "user", "project": "project", "permission": "project_permission", "record": "record",
               "job": "job", "policy": "workflow_policy"}


def _sqlite_dbdir(store):
    dbdir = getattr(getattr(store, "db", None), "dbdir", None)
    if dbdir is None or dbdir.db_type != "sqlite3":
        return None
    return dbdir


def _schema_version(path):
    with _readonly(path) as conn:
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]


def _readonly(path, attach=None):
    """A read-only SQLite connection of this process (a WAL reader) to ``path``, with the file
    ``attach`` (if any) attached read-only as ``src``; closed on leaving the ``with``."""
    conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=30, isolation_level=None,
                           check_same_thread=False)
    if attach is not None:
        conn.execute("ATTACH ? AS src", (f"file:{quote(str(attach))}?mode=ro",))
    return closing(conn)


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
    server; returns ``({table: rows copied}, the longest round trip of one chunk in seconds)``: how long
    the destination's other writers may have waited behind one.  Raises :class:`BalsamDBError` when the server
    refuses (the caller falls back to the general path, which completes any partial copy)."""
    path = str(_sqlite_dbdir(src).sqlite_file.resolve())
    identity, host = source_identity(path), socket.gethostname()
    destination = str(_sqlite_dbdir(dst).sqlite_file.resolve())
    copied, longest = {}, 0.0
    detach(dst)  # a source left attached by a copy that was killed before its end
    try:
        for table in TABLES:
            after, copied[table] = None, 0
            while True:
                if stop is not None and stop.is_set():
                    raise TransferError("the copy was interrupted; run it again to finish (nothing is copied twice)")
                began = time.monotonic()
                answer = dst.db.call("bulk_copy", source=path, identity=identity, host=host,
                                     proof=source_proof(path, destination),
                                     table=table,
                                     after=after, limit=CHUNK_ROWS.get(table, DEFAULT_CHUNK_ROWS))
                longest = max(longest, time.monotonic() - began)
                for name, n in answer["rows"].items():
                    copied[name] = copied.get(name, 0) + n
                if bar is not None and table in ITEM_TABLES.values():
                    bar.update(answer["copied"], f"{table}s")
                after = answer["next"]
                if after is None:
                    break
    finally:
        detach(dst)
    return copied, longest


def detach(dst):
    """Let the destination's server let go of the source file (a process writing directly
    holds it until it closes)."""
    try:
        dst.db.call("bulk_copy_detach")
    except BalsamDBError:
        pass


def arrivals_sql(src, kinds, began):
    """What ``copying._arrivals`` answers, counted in SQL on a read-only connection of SRC's file (the
    jobs by their ``updated_at`` index; no item is made): records and jobs added or changed since
    ``began``."""
    out = {}
    with _readonly(_sqlite_dbdir(src).sqlite_file) as conn:
        for kind in ("record", "job"):
            if kind in kinds:
                added, updated = conn.execute(f"SELECT coalesce(sum(created_at >= ?), 0), coalesce(sum(created_at < ?), "
                                              f"0) FROM {kind} WHERE updated_at >= ?", (began, began, began)).fetchone()
                if added or updated:
                    out[kind] = {"added": added, "updated": updated}
    return out


# -- verification in SQL -------------------------------------------------------------------------------

def _columns(conn, table, skip=()):
    return [row[1] for row in conn.execute(f'PRAGMA main.table_info("{table}")') if row[1] not in skip]


def _same(columns, a="s", b="d"):
    return " AND ".join(f'{a}."{c}" IS {b}."{c}"' for c in columns) or "1"


def _same_content(columns, a="s", b="d"):
    """:func:`_same` of content columns, which no index may drive the join by (unary ``+``): a
    history row's ``(to_state, time)`` is shared by every job of one ``bulk_create``, and at 1M jobs
    SQLite joined the copy's history to the source's through that index: 50,000 such rows cost
    minutes.  The rows are matched through their job's key and id only."""
    return " AND ".join(f'+{a}."{c}" IS +{b}."{c}"' for c in columns) or "1"


_JOB_KEPT = "EXISTS (SELECT 1 FROM src.job k WHERE k.id = {}.{} AND k.updated_at <= :until)"
_PARENT_IN_SRC = "EXISTS (SELECT 1 FROM src.job p WHERE p.id = {}.parent)"
_RECORD_KEPT = ("EXISTS (SELECT 1 FROM src.record k WHERE k.project_id = {0}.project_id AND k.label = {0}.label "
                "AND k.updated_at <= :until)")


def _comparisons(conn):
    """``(table, rows kept in the source, rows kept in the destination, rows of the source with an
    equal row in the destination)``: three counts that are equal when the table is copied.  Rows
    are matched by content through an index of the destination (never by a surrogate id, which a
    catch-up may renumber); only the items kept for the check count (not changed after ``:until``)."""
    from ..job_fields import JOB_KEYS

    out = []
    for table, keys in (("user", ("name",)), ("project", ("name",)), ("project_permission", ("project_id", "user_id")),
                        ("workflow_policy", ("workflow",))):
        content = _columns(conn, table)
        out.append((table, f'SELECT count(*) FROM src."{table}"', f'SELECT count(*) FROM main."{table}"',
                    f'SELECT count(*) FROM src."{table}" s JOIN main."{table}" d ON {_same(keys)} AND {_same(content)}'))
    out.append(("job", "SELECT count(*) FROM src.job s WHERE s.updated_at <= :until",
                f"SELECT count(*) FROM main.job d WHERE {_JOB_KEPT.format('d', 'id')}",
                f"SELECT count(*) FROM src.job s JOIN main.job d ON d.id = s.id AND {_same(JOB_KEYS)} "
                "WHERE s.updated_at <= :until"))
    for table in ("job_state_change", "job_tag"):
        # A job's rows here are those of the job with the same id: keys are each store's own (schema 11).
        content = _columns(conn, table, skip=("id", "job_key"))
        src_kept = "JOIN src.job sj ON sj.key = s.job_key WHERE sj.updated_at <= :until"
        out.append((table, f'SELECT count(*) FROM src."{table}" s {src_kept}',
                    f'SELECT count(*) FROM main."{table}" d JOIN main.job dj ON dj.key = d.job_key '
                    f"WHERE {_JOB_KEPT.format('dj', 'id')}",
                    f'SELECT count(*) FROM src."{table}" s JOIN src.job sj ON sj.key = s.job_key '
                    f'JOIN main.job dj ON dj.id = sj.id JOIN main."{table}" d ON d.job_key = dj.key '
                    f'AND {_same_content(content)} WHERE sj.updated_at <= :until'))
    content = _columns(conn, "job_parent", skip=("id",))
    # A link to a parent that the source no longer has (job_delete forgets its links, not the
    # children's parents column, from which a catch-up makes a replaced job's links) is not
    # compared: the server never reads it (its joins go through the parent's row).
    src_kept = f"{_JOB_KEPT.format('s', 'child')} AND {_PARENT_IN_SRC.format('s')}"
    dst_kept = f"{_JOB_KEPT.format('d', 'child')} AND {_PARENT_IN_SRC.format('d')}"
    out.append(("job_parent", f"SELECT count(*) FROM src.job_parent s WHERE {src_kept}",
                f"SELECT count(*) FROM main.job_parent d WHERE {dst_kept}",
                f"SELECT count(*) FROM src.job_parent s JOIN main.job_parent d ON d.child = s.child "
                f"AND {_same(content)} WHERE {src_kept}"))
    content = _columns(conn, "record", skip=("id",))
    out.append(("record", "SELECT count(*) FROM src.record s WHERE s.updated_at <= :until",
                f"SELECT count(*) FROM main.record d WHERE {_RECORD_KEPT.format('d')}",
                "SELECT count(*) FROM src.record s JOIN main.record d ON d.project_id = s.project_id "
                f"AND d.label = s.label AND {_same(content)} WHERE s.updated_at <= :until"))
    for table, keys in (("record_version", ("number",)), ("record_tag", ("tag",)), ("record_job", ()),
                        ("record_file", ())):
        content = _columns(conn, table, skip=("id", "record_id"))
        out.append((table, f'SELECT count(*) FROM src."{table}" s JOIN src.record r ON r.id = s.record_id '
                           "WHERE r.updated_at <= :until",
                    f'SELECT count(*) FROM main."{table}" d JOIN main.record r ON r.id = d.record_id '
                    f"WHERE {_RECORD_KEPT.format('r')}",
                    f'SELECT count(*) FROM src."{table}" s JOIN src.record r ON r.id = s.record_id '
                    "JOIN main.record r2 ON r2.project_id = r.project_id AND r2.label = r.label "
                    f'JOIN main."{table}" d ON d.record_id = r2.id AND {_same(keys)} AND {_same(content)} '
                    "WHERE r.updated_at <= :until"))
    return out


_EXTRA = {"job": ("job", "k.id = t.id"), "record": ("record", "k.project_id = t.project_id AND k.label = t.label"),
          "user": ("user", "k.name = t.name"), "project": ("project", "k.name = t.name"),
          "permission": ("project_permission", "k.project_id = t.project_id AND k.user_id = t.user_id"),
          "policy": ("workflow_policy", "k.workflow = t.workflow")}


VERIFY_THREADS = 2  # the tables are compared on this many connections at once (SQLite runs without the GIL)


def _connect_both(src, dst):
    return _readonly(_sqlite_dbdir(dst).sqlite_file, attach=_sqlite_dbdir(src).sqlite_file)


def _compare_table(src, dst, until, table, counts):
    """``(table, rows of the source, of the destination, equal)``, on a connection of its own, in one
    read transaction (one snapshot of each file; another table's may be later, which is sound:
    each comparison keeps only the items not changed after ``until``)."""
    with _connect_both(src, dst) as conn:
        conn.execute("BEGIN")
        if all(conn.execute(f'SELECT 1 FROM {db}."{table}" LIMIT 1').fetchone() is None for db in ("src", "main")):
            return table, 0, 0, 0  # empty on both sides (the joins would read every record for nothing)
        found = [conn.execute(sql, {"until": until}).fetchone()[0] for sql in counts]
        conn.execute("COMMIT")
    return (table, *found)


def _extra_and_projects(src, dst, until):
    with _connect_both(src, dst) as conn:
        conn.execute("BEGIN")
        extra = []
        for kind, (table, match) in _EXTRA.items():
            more = conn.execute(f'SELECT count(*) FROM main."{table}" t WHERE NOT EXISTS '
                                f'(SELECT 1 FROM src."{table}" k WHERE {match})').fetchone()[0]
            if more:
                extra.append(f"{kind}s: the destination holds {more} more")
        projects = {name: {"records": 0, "digest": None} for (name,) in conn.execute("SELECT name FROM src.project")}
        for name, count in conn.execute("SELECT project_id, count(*) FROM src.record WHERE updated_at <= ? "
                                        "GROUP BY project_id", (until,)):
            projects[name] = {"records": count, "digest": None}
        conn.execute("COMMIT")
    return extra, projects


def compare_sql(src, dst, until):
    """Compare the files of ``src`` and ``dst`` up to ``until``, table by table on
    :data:`VERIFY_THREADS` read-only connections: ``(problems, extra, summary)``: what differs,
    what the destination holds more (items the source deleted during the copy), and the counts
    of the report (``projects``, ``jobs``, ``users``, ``permissions``, ``policies``, ``tables``: rows compared
    per table)."""
    from concurrent.futures import ThreadPoolExecutor

    with _connect_both(src, dst) as conn:
        comparisons = _comparisons(conn)
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        extra_projects = pool.submit(_extra_and_projects, src, dst, until)
        found = list(pool.map(lambda c: _compare_table(src, dst, until, c[0], c[1:]), comparisons))
        extra, projects = extra_projects.result()
    problems, tables = [], {}
    for table, n_src, n_dst, n_equal in found:
        tables[table] = n_src
        if not n_src == n_dst == n_equal:
            problems.append(f"{table}: source {n_src} rows, destination {n_dst}, "
                            f"{n_src - n_equal} of the source's missing or different")
    summary = {"projects": projects, "jobs": {"count": tables["job"], "digest": None},
               "users": {"count": tables["user"], "digest": None},
               "permissions": {"count": tables["project_permission"], "digest": None},
               "policies": {"count": tables["workflow_policy"], "digest": None}, "tables": tables}
    return problems, extra, summary
