"""Read the record store that ``smt`` keeps itself: ``.smt/records`` (or ``smt init --store=FILE``).

Sumatra keeps its records in a SQLite file through Django when Django is installed (its default),
and in a Python ``shelve`` file otherwise.  Either way each record comes out as the very JSON
document that ``smt`` would send to an HTTP store (``serialization.encode_record``): what
``db serve`` stores for ``smt run``.

The Django store (SQLite, or PostgreSQL with ``smt init --store=postgres://...``) is read with
plain SQL by :mod:`balsamdb.sumatra_django`: neither Django nor Sumatra is needed.  A shelve file
holds pickled Sumatra objects, so it is read through Sumatra's own classes, in a child process
(``python -m balsamdb.sumatra_store shelve FILE``, which prints one JSON line per record:
``{"project": name, "document": {...}}``), since they change the working directory's state.
"""

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from .exceptions import BadRequest, TransferError
from .sumatra_django import LOCK_WAIT, locked, read_sqlite

SQLITE_MAGIC = b"SQLite format 3\x00"
READ_DEADLINE = 600.0  # seconds for the child that reads a store


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
        if "locked" in str(exc):
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


KIND_NAMES = {"django": "Django (SQLite)", "shelve": "shelve"}


def read_sumatra_store(path, kind, name=None):
    """``[(project, document)]`` of every record of the Sumatra store ``path`` (``kind``
    "django" or "shelve"; a Django store on PostgreSQL is read by
    :class:`balsamdb.transfer.endpoints.SumatraDjangoStore`).  ``name``: how to name the store in errors."""
    import importlib.util

    name = name or path
    if kind == "django":
        return read_sqlite(path)[1]
    try:
        found = importlib.util.find_spec("sumatra") is not None
    except ImportError:  # a broken or blocked installation counts as none
        found = False
    if not found:
        raise TransferError(f"{name} is Sumatra's own {KIND_NAMES[kind]} record store (pickled Sumatra objects); "
                            "reading it needs sumatra installed here (pip install sumatra)")
    with tempfile.TemporaryDirectory(prefix="balsamdb-smt-") as work:
        proc = subprocess.run([sys.executable, "-m", "balsamdb.sumatra_store", kind, str(Path(path).resolve())],
                              cwd=work, capture_output=True, text=True, timeout=READ_DEADLINE)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise TransferError(f"cannot read the Sumatra record store {name}: {last}")
    pairs = []
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        pairs.append((entry["project"], entry["document"]))
    return pairs


# What a shelve store's pickles may name: Sumatra's classes and the plain types they hold.  Any
# other global (os.system, builtins.eval, ...) is refused: a crafted store must not run code.
SAFE_GLOBALS = {("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")} | {
    ("builtins", n) for n in ("set", "frozenset", "object", "dict", "list", "tuple", "str", "int", "float",
                              "bool", "bytes", "bytearray", "complex")} | {
    ("copyreg", "_reconstructor"), ("collections", "OrderedDict"), ("_codecs", "encode")}


def _restricted_unpickler():
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in SAFE_GLOBALS:
                return super().find_class(module, name)
            if module == "sumatra" or module.startswith("sumatra."):
                found = super().find_class(module, name)
                if isinstance(found, type):  # a class of Sumatra's, never one of its functions
                    return found
            raise pickle.UnpicklingError(f"the store names {module}.{name}, which a Sumatra record never holds: "
                                         "refused (a crafted store?)")
    return Restricted


def _print_records(kind, path):
    """In the child: print every record of the store as one JSON line."""
    import shelve

    from sumatra.recordstore import serialization

    if kind != "shelve":
        raise BadRequest(f"unknown kind of Sumatra store {kind!r}")
    from sumatra.recordstore.shelve_store import ShelveRecordStore

    shelve.Unpickler = _restricted_unpickler()  # what shelve.Shelf unpickles each value with

    store = ShelveRecordStore(shelf_name=path)
    out = sys.stdout
    for project in sorted(store.list_projects()):
        for record in store.list(project):
            document = json.loads(serialization.encode_record(record))
            out.write(json.dumps({"project": project, "document": document}, ensure_ascii=False) + "\n")
    out.flush()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    _print_records(sys.argv[1], sys.argv[2])
    shutil.rmtree(Path(".smt"), ignore_errors=True)  # nothing Sumatra may have made here is kept
