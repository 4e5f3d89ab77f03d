"""The operation that copies a SQLite store's rows into this SQLite store as they are, in SQL:
the fast path of ``db copy`` from one DB directory into a new one (see
:mod:`balsamdb.transfer.bulk`).

The write server (the one writer of the destination) ATTACHes the source file read-only
(``file:...?mode=ro``: a WAL reader, which never blocks the source's own server and is never
blocked by it) and runs ``INSERT INTO main.t SELECT ... FROM source.t`` over one bounded keyset
chunk of one table per request, with the rows of other tables that belong to that chunk's rows
(a job's history and tags): each chunk is one request, applied exactly once under its request
id in the transaction of its batch like every write, so the destination's other writers wait
for one chunk at most, and no item is here without its rows.  No row passes through Python.

The tables are copied parents first (:data:`TABLES`); a row that belongs to a row that is not
(yet) in the destination (a job created in the source after the job table was copied) is left
out: the copy's catch-up passes bring it with its item.  Rows keep their ids (the destination is empty:
``db copy`` takes this path only then).  The job table's triggers keep ``job_state_count`` and
the records' keep the full-text index, as for every other insert.  A launcher's claim (owner,
lease) is not copied, as on the general path.
"""

import hashlib
import hmac
import os
import socket
import stat
import time
from urllib.parse import quote

import peewee as pw

from ..exceptions import BadRequest
from ..job_fields import LEASE_FIELDS
from ..models import Job, quoter
from .checks import check_number, check_text
from .registry import operation

#: the tables named in a bulk_copy request, parents first (the destination's foreign keys hold at
#: every chunk), each with the tables whose rows belong to its rows: those are copied in the same
#: request as the chunk of rows they belong to, so that no item is ever here without them (a copy
#: killed between a job's chunk and its tags' chunk left jobs that the general path's re-run found
#: unchanged, and never tagged).  Every table is read in rowid order, and each row keeps its rowid:
#: the copy is laid out as the source is (the indexes on creation times fill at their end), and ids
#: stay as they are.
TABLES = {
    "user": (),
    "project": (),
    "project_permission": (),
    "record": ("record_version", "record_tag", "record_job", "record_file"),
    "job": ("job_state_change", "job_tag", "job_parent"),
    "workflow_policy": (),
}
#: table of rows that belong to others -> (the table of those, the columns that name them): a row is
#: copied with the chunk of the last of the rows it names to arrive here (a job's link to a parent
#: job copied in a later chunk comes with that parent)
CHILDREN = {"record_version": ("record", ("record_id",)), "record_tag": ("record", ("record_id",)),
            "record_job": ("record", ("record_id",)), "record_file": ("record", ("record_id",)),
            "job_state_change": ("job", ("job_key",)), "job_tag": ("job", ("job_key",)),
            "job_parent": ("job", ("child", "parent"))}
#: the column of each parent table that a child's column names (default ``id``)
PARENT_KEY = {"job_key": "key"}
#: the child columns that hold a job's internal key (schema 11).  A copied job takes this store's next
#: key (another writer's new job may hold the source's), so each is mapped through the job's id: the
#: key of the job here that has the id of the source's job with that key (NULL: not here).
JOB_KEYED = {"job_state_change": "job_key", "job_tag": "job_key"}
#: the columns beyond the id that name the item of a parent row (a job's id is its key): a child row
#: is copied only under the parent that is the same item on both sides.  A record that another
#: writer adds to this store during a copy takes the next id, which may be the id of a record the
#: source gained after its table was copied: that record's tags, files and job must not become its.
PARENT_ITEM = {"record": ("project_id", "label"), "job": ()}
#: columns copied as NULL: a launcher's claim on a job of the source means nothing in the copy
#: (the general path leaves them out too)
BLANK = {"job": frozenset(LEASE_FIELDS) | {"key"}}  # a NULL key: this store's next
MAX_ROWS = 20000
#: milliseconds a chunk waits for a source that another process holds locked (a WAL reader is never
#: blocked but for a moment), before it is refused
SOURCE_WAIT_MS = 1000
ALIAS = "bdb_copy_source"
_MAPPED_KEY = f"(SELECT p.key FROM main.job p JOIN {ALIAS}.job q ON q.id = p.id WHERE q.key = s.job_key)"


#: an identifier quoted as SQLite (and peewee) quotes it
_q = quoter(pw.SqliteDatabase)


#: seconds a proof holds (the copy makes one per chunk; a chunk's retry is answered from the record
#: of applied requests before the proof is looked at again)
PROOF_SECONDS = 600


def source_proof(path, destination, expires=None):
    """What shows that the caller may read the source DB directory of the SQLite file ``path``, for a
    copy into the store whose database file is ``destination`` (its real path), until ``expires``
    (a Unix time; default :data:`PROOF_SECONDS` from now): ``"EXPIRES:HMAC"``, the HMAC of the
    three under the source directory's own secret (mode 0600, its owner's).  A caller who may write
    to this store (an admin of its HTTP store, say) but not read that directory cannot make the
    server copy it, nor learn from the server whether a file is there; and whoever sees one
    request cannot replay its proof into another store, nor after it expired."""
    expires = int(time.time()) + PROOF_SECONDS if expires is None else int(expires)
    with open(os.path.join(os.path.dirname(path), "secret"), "rb") as handle:
        key = handle.read()
    signed = b"\0".join((b"bulk_copy", os.fsencode(path), os.fsencode(destination), str(expires).encode()))
    return f"{expires}:" + hmac.new(key, signed, hashlib.sha256).hexdigest()


def _proof_holds(path, destination, proof):
    """True when ``proof`` is :func:`source_proof` of ``path`` for ``destination``, not expired."""
    if not isinstance(proof, str) or proof.count(":") != 1:
        return False
    expires, _mac = proof.split(":")
    if not expires.isdigit() or not time.time() <= int(expires) <= time.time() + PROOF_SECONDS + 60:
        return False
    return hmac.compare_digest(source_proof(path, destination, int(expires)), proof)


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


def _owned_here(path):
    """Why the server may not open ``path`` as a copy's source (None when it may): the file, its
    directory and the directory's secret must be this server's user's own, not links (the path is
    its own real path), the file a regular one, the directory writable by nobody else.  A caller who
    may write to this store but is another user can then neither swap in a link to a file that
    only this server's user may read (behind a secret of the caller's own), nor a FIFO or a crafted
    database of the caller's that would hang or mislead the writer; and what was checked cannot be
    swapped before the ATTACH opens it."""
    if os.path.realpath(path) != path:
        return "it is not its own real path (a symbolic link, or . or ..)"
    directory, me = os.path.dirname(path), os.geteuid()
    info, folder, secret = os.lstat(path), os.lstat(directory), os.lstat(os.path.join(directory, "secret"))
    if not stat.S_ISREG(info.st_mode) or not stat.S_ISREG(secret.st_mode):
        return "it or its directory's secret is not a regular file"
    if {info.st_uid, folder.st_uid, secret.st_uid} != {me}:
        return "it, its directory or its secret belongs to another user than the server's"
    if folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "its directory is writable by other users"
    return None


def _attach(database, path, identity, host, proof):
    try:
        refused = _owned_here(path)
        proven = refused is None and _proof_holds(path, os.path.realpath(database.database), proof)
    except OSError:
        proven = False
    if not proven:
        raise BadRequest(f"the server may not read {path} for this copy: the proof of its DB directory's "
                         "secret is missing, wrong, for another store or expired, or the file, its directory "
                         "or its secret is not the server's user's own (a regular file, not a link, in a "
                         "directory no other user writes)")
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
    if current is not None and getattr(database, "_bulk_copy_source", None) != (path, list(identity)):
        # The file attached by that name is not this one any more (replaced since: a restore, an
        # upgrade), or was attached by someone else: its rows are not the source's.
        raise BadRequest(f"an earlier file by the name {path} is attached; bulk_copy_detach, then copy again")
    if current is None:
        # ATTACH is allowed inside the batch's transaction (DETACH is not: bulk_copy_detach, after).
        database.execute_sql(f"ATTACH DATABASE ? AS {ALIAS}", (f"file:{quote(path)}?mode=ro",))
        if os.path.realpath(attached(database) or "") != os.path.realpath(path):
            raise BadRequest(f"the server could not attach {path} read-only")
        database._bulk_copy_source = (path, list(identity))  # what was checked, for the next chunks


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
    if JOB_KEYED.get(table) == column:
        return _MAPPED_KEY
    return "NULL" if column in BLANK.get(table, ()) else f"s.{_q(column)}"


@operation(write=True, spool=False)  # a chunk applied late, after its copy gave up, would add rows to another's
def bulk_copy(source, identity, host, proof, table, after=None, limit=5000):
    """Copy one chunk of SQLite table ``table`` (one of :data:`TABLES`) from the SQLite file
    ``source`` (an absolute path on this server's host ``host``, whose ``os.stat`` gives
    ``identity`` = ``[st_dev, st_ino]``; ``proof``: :func:`source_proof`, made by a caller who
    can read the source's DB directory) into this store, as they are, with their rowids: the
    rows whose rowid is above ``after`` (null for the first chunk), at most ``limit`` of them,
    and in the same transaction the rows that belong to them (a record's versions, tags, job and
    files; a job's history, tags and links to parents here).  Same schema version on both sides;
    SQLite only.  A row that belongs to a row that is not here is left out.  Returns ``{"copied":
    rows of ``table`` inserted, "rows": {table: rows inserted}, "next": the last rowid read, or
    null when the table is done}``.  A row already here is refused (the copy is made into an empty
    store; a rerun of ``db copy`` takes the general path).
    """
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
    host = check_text(host, "host", max_len=255)
    # The connection's busy timeout (a minute, for this store) is the source's too: a source that another
    # process holds locked (exclusive locking mode, a rollback journal) held this store's one writer, and
    # every writer behind it, for minutes.  This store is not waited on here: the batch holds its lock.
    waited = database.execute_sql("PRAGMA busy_timeout").fetchone()[0]
    database.execute_sql(f"PRAGMA busy_timeout = {SOURCE_WAIT_MS}")
    try:
        return _copy_chunk(database, source, identity, host, proof, table, after, limit)
    except pw.OperationalError as exc:
        if "locked" not in str(exc) and "busy" not in str(exc):
            raise
        raise BadRequest(f"the source {source} is locked by another process ({exc}); copy it when it is not") from None
    finally:
        database.execute_sql(f"PRAGMA busy_timeout = {int(waited)}")


def _copy_chunk(database, source, identity, host, proof, table, after, limit):
    _attach(database, source, identity, host, proof)
    last = database.execute_sql(f"SELECT rowid FROM {ALIAS}.{_q(table)} WHERE rowid > ? ORDER BY rowid "
                                "LIMIT 1 OFFSET ?", (after, limit - 1)).fetchone()
    bounds = [after] if last is None else [after, last[0]]

    def chunk(alias):  # the chunk's rows of ``table`` in the source, as ``alias``
        return f"{alias}.rowid > ?" + ("" if last is None else f" AND {alias}.rowid <= ?")

    rows = {table: _insert(database, table, chunk("s"), bounds)}
    for child in TABLES[table]:
        parent, columns = CHILDREN[child]

        def ids(column):
            return f"(SELECT c.{_q(PARENT_KEY.get(column, 'id'))} FROM {ALIAS}.{_q(parent)} c WHERE {chunk('c')})"
        where = "(" + " OR ".join(f"s.{_q(c)} IN {ids(c)}" for c in columns) + ")"
        rows[child] = _insert(database, child, where + "".join(_present(parent, c) for c in columns),
                              bounds * len(columns))
    return {"copied": rows[table], "rows": rows, "next": last[0] if last is not None else None}


def _present(parent, column):
    """The condition that the row of ``parent`` named by ``column`` of the child row ``s`` is here,
    and is the same item as in the source (another writer's record may have taken its id)."""
    if column == "job_key":
        return f" AND {_MAPPED_KEY} IS NOT NULL"
    key = _q("id")
    same = "".join(f" AND q.{_q(c)} = p.{_q(c)}" for c in PARENT_ITEM[parent])
    source_parent = f" JOIN {ALIAS}.{_q(parent)} q ON q.{key} = p.{key}" if same else ""
    return f" AND EXISTS (SELECT 1 FROM main.{_q(parent)} p{source_parent} WHERE p.{key} = s.{_q(column)}{same})"


def _insert(database, table, where, params):
    """Insert the rows of source table ``table`` that match ``where`` (on ``s``); how many."""
    columns = _check_schema(database, table)
    names = ", ".join(_q(c) for c in columns)
    try:
        cursor = database.execute_sql(
            f"INSERT INTO main.{_q(table)} ({names}) SELECT {', '.join(_select(table, c) for c in columns)} "
            f"FROM {ALIAS}.{_q(table)} s WHERE {where} ORDER BY s.rowid", params)
    except pw.IntegrityError as exc:
        raise BadRequest(f"{table}: rows clash with this store's own ({exc}); copy into an empty store") from None
    return cursor.rowcount
