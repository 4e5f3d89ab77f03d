"""Read the record store that ``smt`` keeps itself: ``.smt/records`` (or ``smt init --store=FILE``).

Sumatra keeps its records in a SQLite file through Django when Django is installed (its default),
and in a Python ``shelve`` file otherwise.  Either way each record comes out as the very JSON
document that ``smt`` would send to an HTTP store (``serialization.encode_record``): what
``db serve`` stores for ``smt run``.

The Django store (SQLite, or PostgreSQL with ``smt init --store=postgres://...``) is read with
plain SQL by :mod:`balsamdb.sumatra_django`: neither Django nor Sumatra is needed.  A shelve file
holds pickled Sumatra objects; :mod:`balsamdb.sumatra_shelve` reads them into inert stand-ins,
never building one of Sumatra's objects (some of whose constructors run commands).
"""

import os
import sqlite3
import stat
from pathlib import Path

from .exceptions import BadRequest, TransferError, database_busy
from .sumatra_django import LOCK_WAIT, locked, read_sqlite

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(first_bytes):
    return bytes(first_bytes).startswith(SQLITE_MAGIC)


def _django_tables(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=LOCK_WAIT)
    try:
        return {row[0] for row in con.execute("select name from sqlite_master where type = 'table'")}
    finally:
        con.close()


def is_sumatra_django_store(path, first_bytes):
    """True for a SQLite file that holds Sumatra's Django tables."""
    if not is_sqlite(first_bytes):
        return False
    try:
        return {"django_store_record", "django_store_project"} <= _django_tables(path)
    except sqlite3.OperationalError as exc:
        if database_busy(exc):
            raise locked(path, LOCK_WAIT) from None
        return False
    except sqlite3.DatabaseError as exc:  # a truncated or damaged SQLite file: say so, not "no end line"
        raise TransferError(f"cannot read {path}: a SQLite file that SQLite cannot read ({exc}); "
                            "nothing was imported") from None
    except sqlite3.Error:
        return False


def _refuse_special(path):
    """TransferError when ``path`` (symlinks followed) is there but is no regular file: a FIFO,
    a device such as /dev/zero, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        raise TransferError(f"{path} is not a regular file (a FIFO, a device or a socket): nothing was imported")


def store_kind(path):
    """"django" for Sumatra's Django store in a SQLite file, "shelve" for its shelve store
    (``.smt/records`` is ``records``, ``records.db`` or ``records.dat``/``.dir`` on disk,
    depending on the dbm module), else None."""
    import dbm

    path = Path(path)
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in (".pag", ".dir", ".db", ".dat"))):
        _refuse_special(candidate)  # what dbm.whichdb and the import open: a FIFO would block them for ever
    if path.is_file():
        with open(path, "rb") as handle:
            if is_sumatra_django_store(path, handle.read(len(SQLITE_MAGIC))):
                return "django"
    try:
        return "shelve" if dbm.whichdb(str(path)) else None
    except OSError:
        return None


def is_sumatra_postgres(database):
    """True when the peewee ``database`` (PostgreSQL) holds Sumatra's Django tables."""
    row = database.execute_sql("SELECT to_regclass('django_store_record') IS NOT NULL AND "
                               "to_regclass('django_store_project') IS NOT NULL").fetchone()
    return bool(row and row[0])





def read_sumatra_store(path, kind, name=None):
    """``[(project, document)]`` of every record of the Sumatra store ``path`` (``kind``
    "django" or "shelve"; a Django store on PostgreSQL is read by
    :class:`balsamdb.transfer.sumatra_endpoints.SumatraDjangoStore`).  ``name``: how to name the store in errors.
    Neither reads with Sumatra's code: a shelve store's pickles are read into inert stand-ins
    (:mod:`balsamdb.sumatra_shelve`), so a crafted store cannot run anything."""
    from .sumatra_shelve import read_shelve

    name = name or path
    if kind == "django":
        return read_sqlite(path)[1]
    if kind == "shelve":
        return read_shelve(path, name)
    raise BadRequest(f"unknown kind of Sumatra store {kind!r}")
