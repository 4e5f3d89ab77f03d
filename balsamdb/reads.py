"""The one read layer: read operations on read-only connections, never on the write server.

Three readers use it: a client on the write server's host whose SQLite file is on a local file
system reads the file itself (:class:`Reader`, models bound per call); the read service beside
the write server (``balsamdb.server.reader.service``, models bound for its process, one
connection per worker thread) answers every other client, for PostgreSQL too; and the HTTP
store's pages open their connections with :func:`open_reader`.

SQLite is opened read-only (``mode=ro``, ``query_only``): a WAL reader never blocks the writer
and the writer never blocks it.  PostgreSQL with ``default_transaction_read_only``.  Every read
runs in one short read transaction (a page of a listing is one read), so a long listing never
holds a snapshot that would stop a checkpoint, and every read has a time limit
(``read_time_limit``): SQLite's progress handler interrupts it, PostgreSQL's
``statement_timeout`` cancels it, and the caller gets :class:`ReadTimeout`.
"""

import contextlib
import logging
import os
import time
from urllib.parse import quote

import peewee as pw

from . import operations
from .exceptions import BadRequest, BalsamDBError, ReadTimeout, ServerError, StorageError, TryAgain

log = logging.getLogger(__name__)

_PROGRESS_STEPS = 20000  # SQLite virtual machine steps between looks at the clock (well under 1 ms)


def open_reader(dbdir, settings, postgres_port=None, time_limit=None):
    """A new, unconnected peewee database reading DB directory ``dbdir`` and refusing writes.
    On PostgreSQL each statement is cancelled after ``time_limit`` seconds (default: the
    ``read_time_limit`` setting); on SQLite :meth:`Reader.run` times the read."""
    if dbdir.db_type == "sqlite3":
        # A read-only WAL reader; query_only as a second lock on the door.
        return pw.SqliteDatabase(f"file:{quote(str(dbdir.sqlite_file))}?mode=ro", uri=True, timeout=5.0,
                                 pragmas={"query_only": 1})
    limit = settings.read_time_limit if time_limit is None else time_limit
    database = dbdir.open_database(settings, postgres_port=postgres_port)
    database.connect_params["options"] = (f"-c default_transaction_read_only=on "
                                          f"-c statement_timeout={max(1, int(limit * 1000))}")
    return database


def check_read(op, params):
    """The registered read operation ``op`` with ``params`` checked; :class:`BadRequest` for a
    write, an operation of the write server (ping, status) or bad parameters."""
    operation = operations.lookup(op)
    if operation.write or operation.server:
        raise BadRequest(f"{op} is not a read; it goes to the write server")
    operations.bind_params(operation, params)
    return operation


def _timed_out(exc):
    text = str(exc).lower()
    return "interrupted" in text or "statement timeout" in text or "canceling statement" in text


class Reader:
    """Runs read operations on one read-only database (one connection per thread: peewee keeps
    connection state per thread).

    ``bound``: the models are bound to this database for the whole process (the read service);
    otherwise each read binds them for its duration, under the process-wide lock of direct mode.
    """

    def __init__(self, dbdir, settings, bound=False, postgres_port=None):
        self.dbdir = dbdir
        self.settings = settings
        self.time_limit = settings.read_time_limit
        self.postgres_port = postgres_port
        self.database = open_reader(dbdir, settings, postgres_port=postgres_port)
        self.pid = os.getpid()
        self.bound = bound
        if bound:
            from .models import MODELS

            self.database.bind(MODELS)

    def close(self):
        if not self.database.is_closed():
            self.database.close()

    def _binding(self):
        if self.bound:
            return contextlib.nullcontext()
        from .direct import BIND_LOCK
        from .models import MODELS

        stack = contextlib.ExitStack()
        stack.enter_context(BIND_LOCK)
        stack.enter_context(self.database.bind_ctx(MODELS))
        return stack

    def run(self, op, params):
        """The answer of read ``op``: ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ...}``
        (a bad request, a read over its time limit, a database that cannot be read)."""
        try:
            operation = check_read(op, params)
            try:
                return {"ok": True, "result": self._run(operation, params)}
            except (pw.OperationalError, pw.InterfaceError) as first:
                if _timed_out(first):
                    raise
                log.info("read-only connection to %s failed (%s); opening it again", self.dbdir.path, first)
                self.close()
                return {"ok": True, "result": self._run(operation, params)}
        except BalsamDBError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except pw.DatabaseError as exc:
            if _timed_out(exc):
                error = ReadTimeout(f"{op} ran longer than read_time_limit ({self.time_limit:g} s) and was "
                                    "stopped; nothing was changed. Narrow it or page it")
            elif "no such table" in str(exc) or "does not exist" in str(exc):
                error = TryAgain(f"cannot read {self.dbdir.path} yet: {exc}")
            else:
                error = StorageError(f"cannot read {self.dbdir.path}: {exc}")
            return {"ok": False, "error": error.to_dict()}
        except Exception as exc:  # a bug in a read must not stop the reader: an error answer
            log.exception("read %s failed", op)
            return {"ok": False, "error": ServerError(f"the read failed: {type(exc).__name__}").to_dict()}

    def _run(self, operation, params):
        if self.pid != os.getpid():
            # Forked: never use the parent's connection; open our own.
            self.database = open_reader(self.dbdir, self.settings, postgres_port=self.postgres_port)
            self.pid = os.getpid()
        database = self.database
        if database.connect(reuse_if_open=True) and not self.bound:
            # A client reading the file itself meets the schema as direct mode does: a newer one is
            # refused with both versions named (the read service's server checked it at its start).
            from .migrations import check_schema_not_newer

            with self._binding():
                check_schema_not_newer(database, self.dbdir.path)
        with self._binding(), self._time_limit(database):
            with database.atomic():  # one read transaction: the read sees one state of the database
                return operation.function(**params)

    @contextlib.contextmanager
    def _time_limit(self, database):
        if not isinstance(database, pw.SqliteDatabase):
            yield  # PostgreSQL: statement_timeout, set on the connection
            return
        connection = database.connection()
        deadline = time.monotonic() + self.time_limit

        def over_time():
            return 1 if time.monotonic() > deadline else 0  # non-zero: SQLite interrupts the statement

        connection.set_progress_handler(over_time, _PROGRESS_STEPS)
        try:
            yield
        finally:
            connection.set_progress_handler(None, 0)
