"""Read-only connections for the web pages of ``db serve``.

The pages read the database directly, never through the write server: a page that
a lab keeps open and refreshes every few seconds must not take the single writer's
time from the jobs that write.  SQLite is opened read-only (``mode=ro``, a WAL
reader: it never blocks the writer, and the writer never blocks it); PostgreSQL with
``default_transaction_read_only``, on the cluster the address file names.

Queries are built from the models without binding them (``query.execute(database)``),
so that reading threads never touch the process-wide model binding of direct mode.
"""

import logging
import threading
from urllib.parse import quote

import peewee as pw

from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import ConfigError, StorageError

log = logging.getLogger(__name__)


def open_reader(dbdir, settings):
    """A new, unconnected peewee database reading DB directory ``dbdir`` and refusing writes."""
    if dbdir.db_type == "sqlite3":
        # A read-only WAL reader; query_only as a second lock on the door.
        return pw.SqliteDatabase(f"file:{quote(str(dbdir.sqlite_file))}?mode=ro", uri=True, timeout=5.0,
                                 pragmas={"query_only": 1})
    database = dbdir.open_database(settings)
    database.connect_params["options"] = "-c default_transaction_read_only=on -c statement_timeout=10000"
    return database


class ReadOnlyStore:
    """One read-only connection per thread (waitress runs each request on one thread).

    :meth:`run` calls ``function(database)``; a connection that broke (a PostgreSQL
    cluster that restarted on another port) is opened again once.
    """

    def __init__(self, path):
        from balsamdb.settings import load_settings

        self.dbdir = DBDirectory(path)
        self.settings = load_settings()
        self._local = threading.local()

    def _database(self, fresh=False):
        database = getattr(self._local, "database", None)
        if database is not None and fresh:
            database.close()
            database = None
        if database is None:
            try:
                database = open_reader(self.dbdir, self.settings)
            except ConfigError as exc:
                # A cluster of the DB directory's own that is not running: the pages answer 503
                # (try again), as reads through the write server do when it is down.
                raise StorageError(exc.message or str(exc)) from None
            self._local.database = database
        database.connect(reuse_if_open=True)
        return database

    def run(self, function):
        """``function(database)`` in one read-only transaction on this thread's connection (the
        queries of one page see one state of the database); its result."""
        try:
            return self._in_transaction(self._database(), function)
        except (pw.OperationalError, pw.InterfaceError) as first:
            log.info("read-only connection to %s failed (%s); opening it again", self.dbdir.path, first)
            try:
                return self._in_transaction(self._database(fresh=True), function)
            except pw.DatabaseError as exc:
                raise StorageError(f"cannot read {self.dbdir.path}: {exc}") from None

    @staticmethod
    def _in_transaction(database, function):
        with database.atomic():
            return function(database)
