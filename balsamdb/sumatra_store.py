"""Read the record store that ``smt`` keeps itself: ``.smt/records`` (or ``smt init --store=FILE``).

Sumatra keeps its records in a SQLite file through Django when Django is installed (its default),
and in a Python ``shelve`` file otherwise.  Both are read here through Sumatra's own classes, so
each record comes out as the very JSON document that ``smt`` would send to an HTTP store
(``serialization.encode_record``): what ``db serve`` stores for ``smt run``.

Django can be configured once per process, with every store fixed before the first is used, and
Sumatra's classes change the working directory's state, so the reading runs in a child process
(``python -m balsamdb.sumatra_store FILE``), which prints one JSON line per record:
``{"project": name, "document": {...}}``.  A SQLite store is first copied with SQLite's backup
API (which waits for, and restarts after, the writes of an ``smt`` that is running), so the
records read are one consistent state of the store, and the store itself is never written.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from .exceptions import BadRequest, TransferError

SQLITE_MAGIC = b"SQLite format 3\x00"
READ_DEADLINE = 600.0  # seconds for the child that reads a store
BUSY_TIMEOUT = 60.0    # seconds the snapshot waits for a running smt's write to end


def is_sqlite(first_bytes):
    return bytes(first_bytes).startswith(SQLITE_MAGIC)


def _django_tables(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
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
    except sqlite3.Error:
        return False


def store_kind(path):
    """"django" for Sumatra's Django store in a SQLite file, "shelve" for its shelve store
    (``.smt/records`` is ``records``, ``records.db`` or ``records.dat``/``.dir`` on disk,
    depending on the dbm module), else None."""
    import dbm

    path = Path(path)
    if path.is_file():
        with open(path, "rb") as handle:
            if is_sumatra_django_store(path, handle.read(len(SQLITE_MAGIC))):
                return "django"
    try:
        return "shelve" if dbm.whichdb(str(path)) else None
    except OSError:
        return None


def snapshot(path, directory):
    """A consistent copy of the SQLite file ``path`` in ``directory`` (SQLite's backup API)."""
    target = Path(directory) / "records"
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT)
    destination = sqlite3.connect(str(target))
    try:
        source.backup(destination)
    except sqlite3.Error as exc:
        raise TransferError(f"cannot read {path}: {exc}") from None
    finally:
        destination.close()
        source.close()
    return target


def is_sumatra_postgres(database):
    """True when the peewee ``database`` (PostgreSQL) holds Sumatra's Django tables."""
    row = database.execute_sql("SELECT to_regclass('django_store_record') IS NOT NULL AND "
                               "to_regclass('django_store_project') IS NOT NULL").fetchone()
    return bool(row and row[0])


KIND_NAMES = {"django": "Django (SQLite)", "shelve": "shelve", "django-postgres": "Django (PostgreSQL)"}


def read_sumatra_store(path, kind, name=None):
    """``[(project, document)]`` of every record of the Sumatra store ``path`` (``kind``
    "django", "shelve", or "django-postgres" with ``path`` a ``postgresql://`` URL), read by
    Sumatra's own classes in a child process.  ``name``: how to name the store in errors."""
    import importlib.util

    name = name or path
    if importlib.util.find_spec("sumatra") is None or (kind != "shelve" and importlib.util.find_spec("django") is None):
        needs = "sumatra" if kind == "shelve" else "sumatra and Django below 6 (pip install 'sumatra[web]')"
        raise TransferError(f"{name} is Sumatra's own {KIND_NAMES[kind]} record store; reading it needs {needs} "
                            "installed here")
    with tempfile.TemporaryDirectory(prefix="balsamdb-smt-") as work:
        env = dict(os.environ)
        if kind == "django-postgres":  # the URL, with its password, in the environment, not in argv
            env["BALSAMDB_SUMATRA_STORE"] = str(path).replace("postgresql://", "postgres://", 1)
            source = "-"
        else:
            source = str((snapshot(path, work) if kind == "django" else Path(path)).resolve())
        proc = subprocess.run([sys.executable, "-m", "balsamdb.sumatra_store", kind, source],
                              cwd=work, env=env, capture_output=True, text=True, timeout=READ_DEADLINE)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise TransferError(f"cannot read the Sumatra record store {name}: {last}")
    pairs = []
    for line in proc.stdout.splitlines():
        entry = json.loads(line)
        pairs.append((entry["project"], entry["document"]))
    return pairs


def _print_records(kind, path):
    """In the child: print every record of the store as one JSON line."""
    from sumatra.recordstore import serialization

    if kind in ("django", "django-postgres"):
        from sumatra.recordstore.django_store import DjangoRecordStore

        store = DjangoRecordStore(db_file=os.environ["BALSAMDB_SUMATRA_STORE"] if path == "-" else path)
    elif kind == "shelve":
        from sumatra.recordstore.shelve_store import ShelveRecordStore

        store = ShelveRecordStore(shelf_name=path)
    else:
        raise BadRequest(f"unknown kind of Sumatra store {kind!r}")
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
