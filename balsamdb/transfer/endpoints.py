"""Store endpoints: :func:`open_store` turns a store's name into an object with ``counts()``,
``export()``, ``import_()`` and ``digest()`` (see :mod:`balsamdb.transfer`)."""

import json
import time
from urllib.parse import quote, unquote, urlsplit

from ..exceptions import ConfigError, StorageError, TransferError
from ..operations import sort_time
from ..operations.store_lines import LINE_KINDS
from ..operations.stores import KINDS, Digester, canonical, digest_of, item_key
from .line_reads import digest_lines, read_ahead


PAGE = 1000
READER_PAGE = 5000  # items per page read on a read-only connection of this process (the most export_items gives)
LINES_PAGE = 1000  # records or jobs per page of export lines: a page is held whole (5000 held ~50 MB more)


# -- endpoints -----------------------------------------------------------------------------------------

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


class SumatraStore:
    """Any server of the Sumatra Server API: projects and records only."""

    kinds = ("project", "record")
    limits = "a Sumatra record store holds projects and records only"
    keeps_versions = False  # it keeps the current version of each record only
    versions = False

    def __init__(self, base, user, password, name):
        import urllib3

        self.base, self.name = base, name
        self._headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if user is not None:
            self._headers.update(urllib3.make_headers(basic_auth=f"{user}:{password or ''}"))
        self._http = urllib3.PoolManager(maxsize=4, timeout=urllib3.Timeout(connect=5, read=120), retries=3)
        self._records = None

    def _get(self, url):
        response = self._request("GET", url)
        if response.status != 200:
            raise TransferError(f"GET {url} answered HTTP {response.status}: {response.data[:200]!r}")
        try:
            return json.loads(response.data)
        except ValueError:
            raise TransferError(f"GET {url} did not answer JSON: is {self.name} a Sumatra record store?") from None

    def _request(self, method, url, body=None):
        import urllib3

        try:
            return self._http.request(method, url, body=body, headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise TransferError(f"{method} {url}: {exc}") from None

    def _project_url(self, name):
        return f"{self.base}{quote(name, safe='')}/"

    def _projects(self):
        data = self._get(self.base)
        entries = data if isinstance(data, list) else data.get("projects", [])
        return sorted((p.get("id") or p.get("name")) for p in entries if isinstance(p, dict))

    def _listing(self):
        """Every (project, label) the server lists now, sorted: labels come from the record
        URIs, which are never fetched as given (the password goes only to the base URL)."""
        keys = []
        for project in self._projects():
            marker = f"/{project}/"
            for uri in self._get(self._project_url(project)).get("records", []):
                path = unquote(urlsplit(str(uri)).path)
                if marker in path:
                    keys.append((project, path.split(marker, 1)[1].rstrip("/")))
        return sorted(keys)

    def _record_url(self, project, label):
        return f"{self._project_url(project)}{quote(label, safe='')}/"

    def counts(self):
        return {"project": len(self._projects()), "record": len(self._listing())}

    def export(self, kind, after=None, limit=PAGE, since=None):
        now = time.time()
        if kind == "project":
            items = []
            for name in self._projects():
                info = self._get(self._project_url(name))
                items.append({"kind": "project", "name": name, "description": info.get("description") or "",
                              "public": bool(info.get("public", False)), "created_at": None})
            items = [i for i in items if after is None or item_key(i) > after]
            return {"items": items, "next": None, "now": now}
        if kind != "record":
            return {"items": [], "next": None, "now": now}

        if after is None or self._records is None:
            self._records = self._listing()  # listed afresh by every pass: new records are seen
        keys = [k for k in self._records if after is None or list(k) > after]
        items = []
        for project, label in keys[:limit]:
            document = self._get(self._record_url(project, label))
            when = sort_time(document.get("timestamp"))
            items.append({"kind": "record", "project": project, "label": document.get("label", label),
                          "document": document, "created_at": when, "updated_at": when})
        return {"items": items, "next": list(keys[limit - 1]) if len(keys) > limit else None, "now": now}

    def import_(self, items, dry_run=False):
        counts = {"added": 0, "updated": 0, "unchanged": 0}
        for item in items:
            if item["kind"] == "project":
                url = self._project_url(item["name"])
                exists = self._request("GET", url).status == 200
                if not dry_run:
                    body = json.dumps({"name": item["name"], "description": item["description"],
                                       "public": item["public"]}).encode()
                    answer = self._request("PUT", url, body)
                    if answer.status not in (200, 201):
                        raise TransferError(f"PUT {url} answered HTTP {answer.status}: {answer.data[:200]!r}")
                counts["unchanged" if exists else "added"] += 1
            elif item["kind"] == "record":
                url = self._record_url(item["project"], item["label"])
                old = self._request("GET", url)
                same = old.status == 200 and canonical(json.loads(old.data)) == canonical(item["document"])
                if not dry_run and not same:
                    answer = self._request("PUT", url, json.dumps(item["document"]).encode())
                    if answer.status not in (200, 201):
                        raise TransferError(f"PUT {url} answered HTTP {answer.status}: {answer.data[:200]!r}")
                counts["unchanged" if same else "updated" if old.status == 200 else "added"] += 1
        self._records = None
        return counts

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        self._http.clear()


class SumatraDjangoStore:
    """Sumatra's own Django record store on PostgreSQL (``smt init --store=postgres://...``), a
    source of projects and records, read once with plain SQL (see :mod:`balsamdb.sumatra_django`;
    no Django needed): each record as ``smt`` would send it to an HTTP store."""

    kinds = ("project", "record")
    limits = "a Sumatra record store holds projects and records only"
    keeps_versions = False
    versions = False

    def __init__(self, url, name):
        from ..dbdir import parse_postgres_url
        from ..sumatra_django import read_postgres

        self.name = name
        projects, records = read_postgres(parse_postgres_url(url), name)
        self._records = []
        for project, document in records:
            when = sort_time(document.get("timestamp"))
            self._records.append({"kind": "record", "project": project, "label": document["label"],
                                  "document": document, "created_at": when, "updated_at": when})
        self._records.sort(key=item_key)
        self._projects = [{"kind": "project", "name": p["name"], "description": p["description"], "public": False,
                           "created_at": None} for p in projects]
        self._projects.sort(key=item_key)

    def counts(self):
        return {"project": len(self._projects), "record": len(self._records)}

    def export(self, kind, after=None, limit=PAGE, since=None):
        items = {"project": self._projects, "record": self._records}.get(kind, [])
        items = [i for i in items if (after is None or item_key(i) > after)
                 and (since is None or kind != "record" or i["updated_at"] >= since)]
        page = items[:limit]
        return {"items": page, "next": item_key(page[-1]) if len(items) > limit else None, "now": time.time()}

    def import_(self, items, dry_run=False):
        raise TransferError(f"{self.name} is Sumatra's own record store: balsamdb reads it, never writes it")

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        pass


def digest_pages(store, until=None, exclude=None):
    """What the ``store_digest`` operation computes, from ``export_items`` pages read
    here: no request has to digest a whole large store inside the write server.  Records and
    jobs of a store read on this process's own connection are digested from the canonical text
    of their rows (:meth:`OperationStore.line_pages`, as ``db export`` does), not from items."""
    now = time.time()
    excluded = {tuple(k) for k in exclude or ()}
    line_pages = getattr(store, "line_pages", None)
    by_lines = {kind: line_pages(kind) for kind in LINE_KINDS if kind in store.kinds and line_pages is not None}
    items = (item for kind in store.kinds if by_lines.get(kind) is None
             for page in pages(store, kind) for item in page["items"])
    digester, changed = Digester(), []
    for kind in LINE_KINDS:
        digest_lines(by_lines.get(kind) or (), until, excluded, digester, changed)
    return digest_of(items, until, excluded, now=now, digester=digester, changed=changed)


def pages(store, kind, since=None, after=None):
    """The pages of ``kind`` in ``store``, in key order (records and jobs changed since
    ``since``), starting after key ``after``."""
    while True:
        page = store.export(kind, after, PAGE, since)
        yield page
        after = page["next"]
        if after is None:
            return


MAX_CHUNK_BYTES = 8 * 1024 * 1024  # one import request stays well below max_request_bytes (64 MiB)


def by_size(items):
    """``items`` in runs of at most MAX_CHUNK_BYTES of JSON (one item may be larger alone)."""
    chunk, size = [], 0
    for item in items:
        length = len(canonical(item))
        if chunk and size + length > MAX_CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += length
    if chunk:
        yield chunk


def import_batch(dst, items, dry_run, counts):
    """Import ``items`` into ``dst`` in requests bounded in bytes; adds the outcomes
    (added, updated, unchanged) to ``counts`` and returns it."""
    for chunk in by_size(items):
        for key, value in dst.import_(chunk, dry_run=dry_run).items():
            counts[key] = counts.get(key, 0) + value
    return counts
