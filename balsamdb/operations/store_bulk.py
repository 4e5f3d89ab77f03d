"""The operation that copies a SQLite store's rows into this SQLite store as they are, in SQL:
the fast path of ``db copy`` from one DB directory into a new one (see
:mod:`balsamdb.transfer.bulk`).

The write server (the one writer of the destination) ATTACHes the source file read-only
(``file:...?mode=ro``: a WAL reader, which never blocks the source's own server and is never
blocked by it) and runs ``INSERT INTO main.t SELECT ... FROM source.t`` over one bounded keyset
chunk of one table per request: each chunk is one request, applied exactly once under its
request id in the transaction of its batch like every write, so the destination's other writers
wait for one chunk at most.  No row passes through Python.

The tables are copied parents first (:data:`TABLES`); a child row whose parent is not (yet) in
the destination (a job created in the source after the job table was copied) is left out: the
copy's catch-up passes bring it with its item.  Rows keep their ids (the destination is empty:
``db copy`` takes this path only then).  The job table's triggers keep ``job_state_count`` and
the records' keep the full-text index, as for every other insert.  A launcher's claim (owner,
lease) is not copied, as on the general path.
"""

import hashlib
import hmac
import os
import socket
from urllib.parse import quote

from ..exceptions import BadRequest
from ..job_fields import LEASE_FIELDS
from ..models import Job
from .checks import check_number, check_text
from .registry import operation

#: table -> its parent table and the column that names the parent row (None: no parent), in the
#: order they are copied: parents first (the destination's foreign keys hold at every chunk).
#: Every table is read in rowid order, and each row keeps its rowid: the copy is laid out as the
#: source is (the indexes on creation times fill at their end), and ids stay as they are.
TABLES = {
    "user": None,
    "project": None,
    "project_permission": None,
    "record": None,
    "record_version": ("record", "record_id"),
    "record_tag": ("record", "record_id"),
    "record_job": ("record", "record_id"),
    "record_file": ("record", "record_id"),
    "job": None,
    "job_state_change": ("job", "job_id"),
    "job_tag": ("job", "job_id"),
    "job_parent": ("job", "child"),
    "workflow_policy": None,
}
#: the column that names a row of each parent table
PARENT_KEY = {"record": "id", "job": "id"}
#: columns copied as NULL: a launcher's claim on a job of the source means nothing in the copy
#: (the general path leaves them out too)
BLANK = {"job": frozenset(LEASE_FIELDS)}
MAX_ROWS = 20000
ALIAS = "bdb_copy_source"


def _q(name):
    return '"' + name.replace('"', '""') + '"'


def source_proof(path):
    """What shows that the caller may read the source DB directory of the SQLite file ``path``:
    an HMAC of the path under the directory's own secret (mode 0600, its owner's).  A caller who
    may write to this store (an admin of its HTTP store, say) but not read that directory cannot
    make the server copy it, nor learn from the server whether a file is there."""
    with open(os.path.join(os.path.dirname(path), "secret"), "rb") as handle:
        key = handle.read()
    return hmac.new(key, b"bulk_copy\0" + os.fsencode(path), hashlib.sha256).hexdigest()


def source_identity(path):
    """``[st_dev, st_ino]`` of the file at ``path``: the caller and the server agree on which
    file they mean (a path names another file on another host, or after a rename)."""
    info = os.stat(path)
    return [info.st_dev, info.st_ino]


def attached(database, alias=ALIAS):
    """The file attached as ``alias`` on ``database``'s connection, or None."""
    for _seq, name, path in database.execute_sql("PRAGMA database_list").fetchall():
        if name == alias:
            return path
    return None


def _attach(database, path, identity, host, proof):
    try:
        proven = isinstance(proof, str) and hmac.compare_digest(source_proof(path), proof)
    except OSError:
        proven = False
    if not proven:
        raise BadRequest(f"the server may not read {path} for this copy: the proof of its DB directory's "
                         "secret is missing or wrong")
    if host != socket.gethostname():
        raise BadRequest(f"the source {path} is on host {host}; this server runs on {socket.gethostname()} "
                         "(SQLite's WAL is read safely only on the host that writes it)")
    try:
        if source_identity(path) != list(identity):
            raise BadRequest(f"{path} is not the file the copy was asked for (another file by that name here)")
    except OSError as exc:
        raise BadRequest(f"the server cannot read the source {path}: {exc.strerror}") from None
    current = attached(database)
    if current is not None and os.path.realpath(current) != os.path.realpath(path):
        raise BadRequest(f"another copy's source ({current}) is attached; try again when it is done")
    if current is None:
        # ATTACH is allowed inside the batch's transaction (DETACH is not: bulk_copy_detach, after).
        database.execute_sql(f"ATTACH DATABASE ? AS {ALIAS}", (f"file:{quote(path)}?mode=ro",))
        if os.path.realpath(attached(database) or "") != os.path.realpath(path):
            raise BadRequest(f"the server could not attach {path} read-only")


def _columns(database, schema, table):
    return [row[1] for row in database.execute_sql(f"PRAGMA {schema}.table_info({_q(table)})").fetchall()]


def _check_schema(database, table):
    """The columns of ``table`` to copy, ``rowid`` first unless a column is the rowid already."""
    main_version = database.execute_sql("SELECT max(version) FROM main.schema_version").fetchone()[0]
    source_version = database.execute_sql(f"SELECT max(version) FROM {ALIAS}.schema_version").fetchone()[0]
    if main_version != source_version:
        raise BadRequest(f"the source has schema {source_version}, this store {main_version}: "
                         "the rows cannot be copied as they are")
    info = database.execute_sql(f"PRAGMA main.table_info({_q(table)})").fetchall()
    columns = [row[1] for row in info]
    if columns != _columns(database, ALIAS, table):
        raise BadRequest(f"the table {table} differs between the source and this store")
    keys = [row for row in info if row[5]]
    if len(keys) == 1 and keys[0][2].upper() == "INTEGER":
        return columns  # an INTEGER PRIMARY KEY is the rowid
    return ["rowid"] + columns


def _select(table, column):
    return "NULL" if column in BLANK.get(table, ()) else f"s.{_q(column)}"


@operation(write=True)
def bulk_copy(source, identity, host, proof, table, after=None, limit=5000):
    """Copy one chunk of SQLite table ``table`` (one of :data:`TABLES`) from the SQLite file
    ``source`` (an absolute path on this server's host ``host``, whose ``os.stat`` gives
    ``identity`` = ``[st_dev, st_ino]``; ``proof``: :func:`source_proof`, made by a caller who
    can read the source's DB directory) into this store, as they are, with their rowids: the
    rows whose rowid is above ``after`` (null for the first chunk), at most ``limit`` of them.
    Same schema version on both sides; SQLite only.  A child row whose parent row is not here
    is left out.  Returns ``{"copied": rows inserted, "next": the last rowid read, or null when
    the table is done}``.  A row already here is refused (the copy is made into an empty
    store; a rerun of ``db copy`` takes the general path).
    """
    import peewee as pw

    database = Job._meta.database
    if not isinstance(database, pw.SqliteDatabase):
        raise BadRequest("bulk_copy copies SQLite into SQLite only")
    source = check_text(source, "source", max_len=4096)
    if not os.path.isabs(source):
        raise BadRequest("source must be an absolute path")
    if table not in TABLES:
        raise BadRequest(f"table must be one of {', '.join(TABLES)}, not {table!r}")
    if not (isinstance(identity, list) and len(identity) == 2 and all(isinstance(i, int) for i in identity)):
        raise BadRequest("identity must be [st_dev, st_ino] of the source file")
    limit = check_number(limit, "limit", int, 1)
    if limit > MAX_ROWS:
        raise BadRequest(f"limit is at most {MAX_ROWS}")
    after = -(1 << 63) if after is None else check_number(after, "after", int, -(1 << 63))
    _attach(database, source, identity, check_text(host, "host", max_len=255), proof)
    columns = _check_schema(database, table)
    last = database.execute_sql(f"SELECT rowid FROM {ALIAS}.{_q(table)} WHERE rowid > ? ORDER BY rowid "
                                "LIMIT 1 OFFSET ?", (after, limit - 1)).fetchone()
    where, params = "s.rowid > ?", [after]
    if last is not None:
        where, params = where + " AND s.rowid <= ?", params + [last[0]]
    parent = TABLES[table]
    if parent is not None:
        parent_table, column = parent
        where += (f" AND EXISTS (SELECT 1 FROM main.{_q(parent_table)} p "
                  f"WHERE p.{_q(PARENT_KEY[parent_table])} = s.{_q(column)})")
    names = ", ".join(_q(c) for c in columns)
    try:
        cursor = database.execute_sql(
            f"INSERT INTO main.{_q(table)} ({names}) SELECT {', '.join(_select(table, c) for c in columns)} "
            f"FROM {ALIAS}.{_q(table)} s WHERE {where} ORDER BY s.rowid", params)
    except pw.IntegrityError as exc:
        raise BadRequest(f"{table}: rows clash with this store's own ({exc}); copy into an empty store") from None
    return {"copied": cursor.rowcount, "next": last[0] if last is not None else None}
