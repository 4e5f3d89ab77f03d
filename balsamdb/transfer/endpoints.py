"""Store endpoints: :func:`open_store` turns a store's name into an object with ``counts()``,
``export()``, ``import_()`` and ``digest()`` (see :mod:`balsamdb.transfer`).

balsamdb's own stores are here: :class:`OperationStore`, which runs balsamdb operations on a DB
directory, a PostgreSQL URL (through :class:`SQLDatabase`) or balsamdb's HTTP store, and the
functions that open each.  Sumatra's own stores are in :mod:`.sumatra_endpoints`; paging, digests
and bounded imports, the same for every endpoint, in :mod:`.paging`.
"""

from urllib.parse import quote

from ..exceptions import ConfigError, StorageError
from ..operations.stores import KINDS
from .line_reads import read_ahead
from .paging import PAGE, digest_pages
from .sumatra_endpoints import SumatraDjangoStore, SumatraStore

READER_PAGE = 5000  # items per page read on a read-only connection of this process (the most export_items gives)
LINES_PAGE = 1000  # records or jobs per page of export lines: a page is held whole (5000 held ~50 MB more)


class OperationStore:
    """A store that runs balsamdb operations: a DB directory, a PostgreSQL URL, a balsamdb HTTP store."""

    kinds = KINDS
    limits = None
    keeps_versions = True

    def __init__(self, name, db, reader=None):
        self.name, self.db = name, db
        # Reads (counts, pages, the digest of a verification) go to ``reader`` when there is one: a
        # read-only connection of this process, never the write server (issue 22, item 7).
        self.reader = reader
        self.versions = True  # records are read with their versions (off for a copy to a plain Sumatra server)

    def counts(self):
        return (self.reader or self.db).call("store_counts")

    def export(self, kind, after=None, limit=PAGE, since=None):
        source = self.reader or self.db
        if self.reader is not None and limit == PAGE:
            limit = READER_PAGE
        if kind == "record" and self.versions:
            return source.call("export_items", kind=kind, after=after, limit=limit, since=since, versions=True)
        return source.call("export_items", kind=kind, after=after, limit=limit, since=since)

    def import_(self, items, dry_run=False):
        return self.db.call("import_items", items=items, dry_run=dry_run)

    def line_pages(self, kind):
        """The pages of records or jobs as the lines of an export file (each as
        :func:`balsamdb.operations.store_lines.export_lines` answers), read on this process's own
        connection; None when the store has none here (an HTTP store: read its items instead).

        The rows of the next page are read on a thread while the lines of a page are made here: the
        database (PostgreSQL's backend, SQLite's B-tree walk) works on the other core meanwhile."""
        local = self.reader or (self.db if isinstance(self.db, SQLDatabase) else None)
        if local is None:
            return None
        return read_ahead(local, kind, self.versions, LINES_PAGE)

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        if self.reader is not None:
            self.reader.close()
        self.db.close()


class SQLDatabase:
    """``call(op, **params)`` straight on a peewee database (a PostgreSQL URL, an old SQLite file)."""

    def __init__(self, database):
        self.database = database

    def call(self, op, **params):
        from ..applier import DATABASE_ERRORS, StorageFailure, apply, root_cause
        from ..direct import BIND_LOCK
        from ..handle import answer_result
        from ..models import MODELS
        from ..request import Request

        request = Request.make(op, params)
        try:
            self.database.connect(reuse_if_open=True)
            with BIND_LOCK, self.database.bind_ctx(MODELS):
                apply(self.database, [request], self.database.atomic, optimistic=False)
        except (StorageFailure,) + DATABASE_ERRORS as exc:
            raise StorageError(f"the database refused {op}: {root_cause(getattr(exc, 'original', exc))}") from None
        return answer_result(None, request.answer)

    def read(self, function, **params):
        """``function(**params)`` with the models bound to this database, in one read transaction."""
        from ..applier import DATABASE_ERRORS, root_cause
        from ..direct import BIND_LOCK
        from ..models import MODELS

        try:
            self.database.connect(reuse_if_open=True)
            with BIND_LOCK, self.database.bind_ctx(MODELS), self.database.atomic():
                return function(**params)
        except DATABASE_ERRORS as exc:
            raise StorageError(f"the database refused a read: {root_cause(exc)}") from None

    def close(self):
        if not self.database.is_closed():
            self.database.close()


def postgres_store(url, create):
    import peewee as pw

    from .. import migrations
    from ..urls import check_postgres_url, parse_postgres_url, redact

    check_postgres_url(url)
    params = parse_postgres_url(url)
    # thread_safe=False: one connection, used in turn by this thread and an export's read-ahead
    database = pw.PostgresqlDatabase(params.pop("database"), connect_timeout=5, thread_safe=False, **params)
    database.connect()
    try:
        from ..sumatra_store import is_sumatra_postgres

        if is_sumatra_postgres(database):
            database.close()
            if create:
                raise ConfigError(f"{redact(url)} is Sumatra's own record store (Django): balsamdb reads it, "
                                  "never writes it")
            return SumatraDjangoStore(url, redact(url))
        version = migrations.current_version(database)
        if version == 0 and not create:
            raise ConfigError(f"{redact(url)} holds no balsamdb store (no schema)")
        if version < migrations.SCHEMA_VERSION:
            if not create:
                raise ConfigError(f"{redact(url)} has schema {version}; upgrade it first "
                                  "(db configure or db init on a DB directory using it)")
            migrations.upgrade(database)
    except Exception:
        database.close()
        raise
    return OperationStore(redact(url), SQLDatabase(database))


def sqlite_file_store(path):
    """The store in one SQLite file (a DB directory's old database after ``db configure``)."""
    import peewee as pw

    from .. import migrations

    database = pw.SqliteDatabase(str(path), timeout=60, pragmas={"journal_mode": "wal", "foreign_keys": 1},
                                 thread_safe=False, check_same_thread=False)  # as postgres_store's
    version = migrations.current_version(database)
    if version != migrations.SCHEMA_VERSION:
        database.close()
        raise ConfigError(f"{path} has schema {version}, not {migrations.SCHEMA_VERSION}: upgrade its DB directory "
                          "first (db init PATH upgrades in place)")
    return OperationStore(str(path), SQLDatabase(database))


def open_store(spec, create=False, **settings):
    """The endpoint for a store named by ``spec`` (see the module docs).

    ``create``: the store is a destination (a PostgreSQL database without the
    schema gets it).  A DB directory must exist (``db init``).
    """
    spec = str(spec)
    if spec.startswith(("postgres://", "postgresql://")):
        return postgres_store(spec, create)
    if spec.startswith(("http://", "https://")):
        return _http_store(spec, **settings)
    import balsamdb

    db = balsamdb.connect(spec, spool=False, **settings)  # a copy never leaves writes in a spool
    return OperationStore(str(db.path), db, reader=_reader(db))


def _reader(db):
    """A read-only connection to the database of DB directory ``db`` for the reads of a copy, an
    export and a verification: SQLite as a WAL reader (never blocks the writer, never is blocked);
    PostgreSQL on its own connection with read-only transactions.  None when it cannot be opened
    here (a PostgreSQL cluster that is not running: reads then go through the server).  One
    connection, which this thread and an export's read-ahead thread use in turn."""
    import peewee as pw

    dbdir = db.dbdir
    try:
        if dbdir.db_type == "sqlite3":
            if not dbdir.sqlite_file.exists():
                return None
            database = pw.SqliteDatabase(f"file:{quote(str(dbdir.sqlite_file))}?mode=ro", uri=True, timeout=30,
                                         pragmas={"query_only": 1, "cache_size": -65536}, thread_safe=False,
                                         check_same_thread=False)
        else:
            database = dbdir.open_database(db.settings, shared=True)
            database.connect_params["options"] = "-c default_transaction_read_only=on"
        database.connect()
    except (ConfigError, pw.OperationalError):
        return None
    return SQLDatabase(database)


def _http_store(url, **settings):
    from ..exceptions import ServerUnavailable
    from ..remote import RemoteDatabase, split_url
    from ..settings import load_settings
    from ..urls import redact

    remote = RemoteDatabase(url, load_settings(spool=False, **settings))
    try:
        status, data = remote.info()
    except ServerUnavailable as exc:
        remote.close()
        raise ConfigError(exc.message) from None  # the base URL: no password in it
    if status == 401:
        remote.close()
        raise ConfigError(f"{redact(url)} refused the login of {remote.user or 'an anonymous user'}")
    if data is not None and data.get("admin"):
        return OperationStore(redact(url), remote)
    remote.close()
    if status not in (200, 404):
        raise ConfigError(f"{redact(url)} answered HTTP {status}; try again later")
    base, user, password = split_url(url)
    store = SumatraStore(base, user, password, redact(url))
    if data is not None:
        store.limits = (f"{data.get('user') or 'anonymous'} is not an admin of this balsamdb store, so only the "
                        "projects and records it may use go through the Sumatra API")
    return store
