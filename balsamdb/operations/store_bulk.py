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

import os
import socket
from urllib.parse import quote

from ..exceptions import BadRequest
from ..job_fields import LEASE_FIELDS
from ..models import Job
from .checks import check_number, check_text
from .registry import operation

#: table -> (key columns in keyset order, the parent table and the column that names its row)
#: in the order they are copied: parents first (the destination's foreign keys hold at every chunk).
TABLES = {
    "user": (("name",), None),
    "project": (("name",), None),
    "project_permission": (("project_id", "user_id"), None),
    "record": (("id",), None),
    "record_version": (("id",), ("record", "record_id")),
    "record_tag": (("record_id", "tag"), ("record", "record_id")),
    "record_job": (("record_id",), ("record", "record_id")),
    "record_file": (("id",), ("record", "record_id")),
    "job": (("id",), None),
    "job_state_change": (("id",), ("job", "job_id")),
    "job_tag": (("job_id", "tag"), ("job", "job_id")),
    "job_parent": (("child", "parent"), ("job", "child")),
}
#: columns copied as NULL: a launcher's claim on a job of the source means nothing in the copy
#: (the general path leaves them out too)
BLANK = {"job": frozenset(LEASE_FIELDS)}
MAX_ROWS = 20000
ALIAS = "bdb_copy_source"


def _q(name):
    return '"' + name.replace('"', '""') + '"'


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


def _attach(database, path, identity, host):
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
    main_version = database.execute_sql("SELECT max(version) FROM main.schema_version").fetchone()[0]
    source_version = database.execute_sql(f"SELECT max(version) FROM {ALIAS}.schema_version").fetchone()[0]
    if main_version != source_version:
        raise BadRequest(f"the source has schema {source_version}, this store {main_version}: "
                         "the rows cannot be copied as they are")
    columns = _columns(database, "main", table)
    if columns != _columns(database, ALIAS, table):
        raise BadRequest(f"the table {table} differs between the source and this store")
    return columns


def _select(table, column):
    return "NULL" if column in BLANK.get(table, ()) else f"s.{_q(column)}"


def _after_condition(keys, prefix):
    """``(k1, k2) > (?, ?)`` of the keyset."""
    left = ", ".join(f"{prefix}.{_q(k)}" for k in keys)
    return f"({left}) > ({', '.join('?' for _ in keys)})"


@operation(write=True)
def bulk_copy(source, identity, host, table, after=None, limit=5000):
    """Copy one chunk of SQLite table ``table`` (one of :data:`TABLES`) from the SQLite file
    ``source`` (an absolute path on this server's host ``host``, whose ``os.stat`` gives
    ``identity`` = ``[st_dev, st_ino]``) into this store, as they are: the rows whose key is
    after ``after`` (a list, or null for the first chunk), at most ``limit`` of them, in key
    order.  Same schema version on both sides; SQLite only.  A child row whose parent row
    is not here is left out.  Returns ``{"copied": rows inserted, "next": the last key
    read, or null when the table is done}``.  A row already here is refused (the copy is
    made into an empty store; a rerun of ``db copy`` takes the general path).
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
    keys, parent = TABLES[table]
    if after is not None and not (isinstance(after, list) and len(after) == len(keys)
                                  and all(isinstance(k, (str, int)) for k in after)):
        raise BadRequest(f"after must be the key of {table}: a list of {len(keys)} values, or null")
    _attach(database, source, identity, check_text(host, "host", max_len=255))
    columns = _check_schema(database, table)
    order = ", ".join(f"s.{_q(k)}" for k in keys)
    where = _after_condition(keys, "s") if after is not None else "1"
    params = list(after or [])
    last = database.execute_sql(f"SELECT {order} FROM {ALIAS}.{_q(table)} s WHERE {where} ORDER BY {order} "
                                f"LIMIT 1 OFFSET ?", params + [limit - 1]).fetchone()
    upto = ""
    if last is not None:
        upto = f" AND ({order}) <= ({', '.join('?' for _ in keys)})"
        params += list(last)
    if parent is not None:
        parent_table, column = parent
        parent_key = TABLES[parent_table][0][0]
        upto += f" AND EXISTS (SELECT 1 FROM main.{_q(parent_table)} p WHERE p.{_q(parent_key)} = s.{_q(column)})"
    names = ", ".join(_q(c) for c in columns)
    try:
        cursor = database.execute_sql(
            f"INSERT INTO main.{_q(table)} ({names}) SELECT {', '.join(_select(table, c) for c in columns)} "
            f"FROM {ALIAS}.{_q(table)} s WHERE {where}{upto} ORDER BY {order}", params)
    except pw.IntegrityError as exc:
        raise BadRequest(f"{table}: rows clash with this store's own ({exc}); copy into an empty store") from None
    return {"copied": cursor.rowcount, "next": list(last) if last is not None else None}
