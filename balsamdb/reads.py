"""The one read layer: read operations on read-only connections, never on the write server.

Three readers use it: a client on the write server's host whose SQLite file is on a local file
system reads the file itself (:class:`Reader`, models bound per call); the read service beside
the write server (``balsamdb.server.reader.service``, models bound for its process, one
connection per worker thread) answers every other client, for PostgreSQL too; and the HTTP
store (``db serve``) reads its log-ins, permissions, records and pages with :meth:`Reader.query`
(queries built from the models and run on the reader's database, never bound: its threads read
at once).  One connection per thread (peewee keeps connection state per thread).

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
import threading
import time
from urllib.parse import quote

import peewee as pw

from . import operations
from .exceptions import BadRequest, BalsamDBError, ConfigError, ReadTimeout, ServerError, StorageError, TryAgain

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
    """Runs read operations on read-only connections, one per thread.

    ``bound``: one database for all threads (peewee keeps a connection per thread), its models
    bound to it for the whole process (the read service).  Otherwise each thread has a database of
    its own, opened again after a failed read (a PostgreSQL cluster restarted on another port: the
    address file is read again), and a read operation binds the models for its duration, under the
    process-wide lock of direct mode; :meth:`query` binds nothing.  ``lazy``: opened at the first
    read (a cluster not running then: that read is :class:`StorageError`, 503 over HTTP).
    """

    def __init__(self, dbdir, settings, bound=False, postgres_port=None, time_limit=None, lazy=False):
        self.dbdir = dbdir
        self.settings = settings
        self.time_limit = settings.read_time_limit if time_limit is None else time_limit
        self.postgres_port = postgres_port
        self.bound = bound
        self.pid = os.getpid()
        self._local = threading.local()
        self.database = None  # the database of a bound reader
        if bound:
            from .models import MODELS

            self.database = self._open()
            self.database.bind(MODELS)
        elif not lazy:
            self._local.database, self._local.pid = self._open(), self.pid

    def _open(self):
        return open_reader(self.dbdir, self.settings, postgres_port=self.postgres_port, time_limit=self.time_limit)

    def _database(self):
        """This thread's database (a new one in a forked child: never the parent's connection)."""
        if self.bound:
            if self.pid != os.getpid():
                self.database, self.pid = self._open(), os.getpid()
            return self.database
        database = getattr(self._local, "database", None)
        if database is None or self._local.pid != os.getpid():
            try:
                database = self._open()
            except ConfigError as exc:
                # A cluster of the DB directory's own that is not running: 503 (try again), as
                # reads through the write server answer while it is down.
                raise StorageError(exc.message or str(exc)) from None
            self._local.database, self._local.pid = database, os.getpid()
        return database

    def close(self):
        """Close this thread's connection (an unbound reader opens its database again at the next read)."""
        database = self.database if self.bound else getattr(self._local, "database", None)
        if database is not None and not database.is_closed():
            database.close()
        if not self.bound:
            self._local.database = None

    def _binding(self, database):
        if self.bound:
            return contextlib.nullcontext()
        from .direct import BIND_LOCK
        from .models import MODELS

        stack = contextlib.ExitStack()
        stack.enter_context(BIND_LOCK)
        stack.enter_context(database.bind_ctx(MODELS))
        return stack

    def run(self, op, params):
        """The answer of read ``op``: ``{"ok": True, "result": ...}`` or ``{"ok": False, "error": ...}``
        (a bad request, a read over its time limit, a database that cannot be read)."""
        try:
            operation = check_read(op, params)
            return {"ok": True, "result": self._read(lambda database: operation.function(**params), op, bind=True)}
        except BalsamDBError as exc:
            return {"ok": False, "error": exc.to_dict()}
        except Exception as exc:  # a bug in a read must not stop the reader: an error answer
            log.exception("read %s failed", op)
            return {"ok": False, "error": ServerError(f"the read failed: {type(exc).__name__}").to_dict()}

    def query(self, function, what="the read"):
        """``function(database)`` in one read transaction on this thread's connection, with the time
        limit (the queries of one page see one state of the database), for queries that name the
        database themselves (``query.execute(database)``): nothing is bound, threads read at once.
        Its result; :class:`ReadTimeout`, :class:`TryAgain` or :class:`StorageError` when it fails."""
        return self._read(function, what, bind=False)

    def _read(self, function, what, bind):
        try:
            try:
                return self._run(function, bind)
            except (pw.OperationalError, pw.InterfaceError) as first:
                if _timed_out(first):
                    raise
                log.info("read-only connection to %s failed (%s); opening it again", self.dbdir.path, first)
                self.close()
                return self._run(function, bind)
        except pw.DatabaseError as exc:
            if _timed_out(exc):
                raise ReadTimeout(f"{what} ran longer than read_time_limit ({self.time_limit:g} s) and was "
                                  "stopped; nothing was changed. Narrow it or page it") from None
            if "no such table" in str(exc) or "does not exist" in str(exc):
                raise TryAgain(f"cannot read {self.dbdir.path} yet: {exc}") from None
            raise StorageError(f"cannot read {self.dbdir.path}: {exc}") from None

    def _run(self, function, bind):
        database = self._database()
        if database.connect(reuse_if_open=True) and not self.bound:
            # A client reading the file itself meets the schema as direct mode does: a newer one is
            # refused with both versions named (the read service's server checked it at its start).
            from .migrations import check_schema_not_newer

            with self._binding(database):
                check_schema_not_newer(database, self.dbdir.path)
        binding = self._binding(database) if bind else contextlib.nullcontext()
        with binding, self._time_limit(database):
            with database.atomic():  # one read transaction: the read sees one state of the database
                # The driver's errors raised while rows are fetched (a read interrupted at its time
                # limit, seen at 1M jobs) become peewee's, as those of execute() are: ReadTimeout, not 500
                with pw.__exception_wrapper__:
                    return function(database)

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
