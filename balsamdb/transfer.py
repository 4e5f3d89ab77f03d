"""Moving stores: ``db copy``, ``db configure --store``, ``db export`` and ``db import``.

A store is named by a DB directory path, a ``postgresql://`` URL, or an
``http(s)://`` URL (balsamdb's own HTTP store, or any server of the Sumatra
Server API).  :func:`open_store` turns the name into an endpoint with four
methods: ``counts()``, ``export(kind, after, limit, since)``, ``import_(items,
dry_run)`` and ``digest(until, exclude)``, built on the operations of
:mod:`balsamdb.operations.stores` (a plain Sumatra server gets the same methods from
its HTTP API, for projects and records only).

:func:`copy_store` copies every item (pass 1), then catches up with what
writers changed meanwhile (passes 2.. over items changed since the previous pass
began, until one finds nothing new), then verifies by comparing the per-project
counts and digests of both stores up to one moment of the source's clock.  Every
write is idempotent, so a copy that was killed is simply run again.
"""

import json
import os
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from .exceptions import BadRequest, ConfigError, StorageError, TransferError
from .operations import sort_time
from .operations.stores import KINDS, Digester, canonical, digest_of, item_key
from .wording import plural

PAGE = 1000
SLACK = 5.0          # seconds: a catch-up pass re-reads what changed this long before the previous one began
MAX_PASSES = 8       # catch-up passes before the copy reports the source as still changing
VERIFY_TRIES = 4
EXPORT_FORMAT = 1


# -- endpoints -----------------------------------------------------------------------------------------

class OperationStore:
    """A store that runs balsamdb operations: a DB directory, a PostgreSQL URL, a balsamdb HTTP store."""

    kinds = KINDS
    limits = None
    keeps_versions = True

    def __init__(self, name, db):
        self.name, self.db = name, db
        self.versions = True  # records are read with their versions (off for a copy to a plain Sumatra server)

    def counts(self):
        return self.db.call("store_counts")

    def export(self, kind, after=None, limit=PAGE, since=None):
        if kind == "record" and self.versions:
            return self.db.call("export_items", kind=kind, after=after, limit=limit, since=since, versions=True)
        return self.db.call("export_items", kind=kind, after=after, limit=limit, since=since)

    def import_(self, items, dry_run=False):
        return self.db.call("import_items", items=items, dry_run=dry_run)

    def digest(self, until=None, exclude=None):
        return digest_pages(self, until, exclude)

    def close(self):
        self.db.close()


class SQLDatabase:
    """``call(op, **params)`` straight on a peewee database (a PostgreSQL URL, an old SQLite file)."""

    def __init__(self, database):
        self.database = database

    def call(self, op, **params):
        from .applier import DATABASE_ERRORS, StorageFailure, apply_requests, root_cause
        from .direct import _BIND_LOCK
        from .exceptions import error_from_dict
        from .models import MODELS

        try:
            self.database.connect(reuse_if_open=True)
            with _BIND_LOCK, self.database.bind_ctx(MODELS), self.database.atomic():
                answer = apply_requests(self.database, [(os.urandom(16).hex(), op, params)])[0]
        except (StorageFailure,) + DATABASE_ERRORS as exc:
            raise StorageError(f"the database refused {op}: {root_cause(getattr(exc, 'original', exc))}") from None
        if answer.get("ok"):
            return answer["result"]
        raise error_from_dict(answer["error"])

    def close(self):
        if not self.database.is_closed():
            self.database.close()


def _postgres_store(url, create):
    import peewee as pw

    from . import models
    from .dbdir import check_postgres_url, parse_postgres_url, redact_url

    check_postgres_url(url)
    params = parse_postgres_url(url)
    database = pw.PostgresqlDatabase(params.pop("database"), connect_timeout=5, **params)
    database.connect()
    try:
        from .sumatra_store import is_sumatra_postgres

        if is_sumatra_postgres(database):
            database.close()
            if create:
                raise ConfigError(f"{redact_url(url)} is Sumatra's own record store (Django): balsamdb reads it, "
                                  "never writes it")
            return SumatraDjangoStore(url, redact_url(url))
        version = models.current_version(database)
        if version == 0 and not create:
            raise ConfigError(f"{redact_url(url)} holds no balsamdb store (no schema)")
        if version < models.SCHEMA_VERSION:
            if not create:
                raise ConfigError(f"{redact_url(url)} has schema {version}; upgrade it first "
                                  "(db configure or db init on a DB directory using it)")
            models.upgrade(database)
    except Exception:
        database.close()
        raise
    return OperationStore(redact_url(url), SQLDatabase(database))


def sqlite_file_store(path):
    """The store in one SQLite file (a DB directory's old database after ``db configure``)."""
    import peewee as pw

    from . import models

    database = pw.SqliteDatabase(str(path), timeout=60, pragmas={"journal_mode": "wal", "foreign_keys": 1})
    version = models.current_version(database)
    if version != models.SCHEMA_VERSION:
        database.close()
        raise ConfigError(f"{path} has schema {version}, not {models.SCHEMA_VERSION}: upgrade its DB directory "
                          "first (db init PATH upgrades in place)")
    return OperationStore(str(path), SQLDatabase(database))


def open_store(spec, create=False, **settings):
    """The endpoint for a store named by ``spec`` (see the module docs).

    ``create``: the store is a destination (a PostgreSQL database without the
    schema gets it).  A DB directory must exist (``db init``).
    """
    spec = str(spec)
    if spec.startswith(("postgres://", "postgresql://")):
        return _postgres_store(spec, create)
    if spec.startswith(("http://", "https://")):
        return _http_store(spec, **settings)
    import balsamdb

    db = balsamdb.connect(spec, spool=False, **settings)  # a copy never leaves writes in a spool
    return OperationStore(str(db.path), db)


def _http_store(url, **settings):
    from .exceptions import ServerUnavailable
    from .remote import RemoteDatabase, redact, split_url
    from .settings import load_settings

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
    source of projects and records, read once through Sumatra's classes (see
    :mod:`balsamdb.sumatra_store`): each record as ``smt`` would send it to an HTTP store."""

    kinds = ("project", "record")
    limits = "a Sumatra record store holds projects and records only"
    keeps_versions = False
    versions = False

    def __init__(self, url, name):
        from .sumatra_store import read_sumatra_store

        self.name = name
        self._records = []
        for project, document in read_sumatra_store(url, "django-postgres", name=name):
            when = sort_time(document.get("timestamp"))
            self._records.append({"kind": "record", "project": project, "label": document["label"],
                                  "document": document, "created_at": when, "updated_at": when})
        self._records.sort(key=item_key)
        self._projects = [{"kind": "project", "name": name, "description": "", "public": False, "created_at": None}
                          for name in sorted({r["project"] for r in self._records})]

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
    here: no request has to digest a whole large store inside the write server."""
    now = time.time()
    items = (item for kind in store.kinds for page in _pages(store, kind) for item in page["items"])
    return digest_of(items, until, {tuple(k) for k in exclude or ()}, now=now)


def _pages(store, kind, since=None, after=None):
    """The pages of ``kind`` in ``store``, in key order (records and jobs changed since
    ``since``), starting after key ``after``."""
    while True:
        page = store.export(kind, after, PAGE, since)
        yield page
        after = page["next"]
        if after is None:
            return


def _import(dst, items, dry_run, counts):
    """Import ``items`` into ``dst`` in requests bounded in bytes; adds the outcomes
    (added, updated, unchanged) to ``counts`` and returns it."""
    for chunk in _by_size(items):
        for key, value in dst.import_(chunk, dry_run=dry_run).items():
            counts[key] = counts.get(key, 0) + value
    return counts


# -- copying -----------------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar with counts and rate on a terminal; silent otherwise."""

    def __init__(self, enabled, total, description):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=description, unit=" items", dynamic_ncols=True, leave=True)

    def update(self, n, postfix=None):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix_str(postfix)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _differences(src, dst, kinds):
    """The groups whose digests differ: ``[(group, what, source entry, destination entry)]``,
    group being ``("project", name)`` or ``(kind, None)``; only the kinds both stores hold."""
    out = []
    if "record" in kinds or "project" in kinds:
        for name in sorted(src["projects"]):
            a, b = src["projects"][name], dst["projects"].get(name)
            if a != b:
                out.append((("record", name), f"project {name!r}", a["records"], b["records"] if b else None))
    for kind in ("job", "user", "permission"):
        if kind in kinds and src[kind + "s"] != dst[kind + "s"]:
            out.append(((kind, None), kind + "s", src[kind + "s"]["count"], dst[kind + "s"]["count"]))
    return out


def _compare_changed(src, dst, kinds, until):
    """(items of ``src`` changed after ``until``, how many of them differ in ``dst``)."""
    checked, counts = 0, {}
    for kind in ("record", "job"):
        if kind in kinds:
            for page in _pages(src, kind, since=until):
                checked += len(page["items"])
                _import(dst, page["items"], True, counts)
    return checked, counts.get("added", 0) + counts.get("updated", 0)


def _contained(src, dst, group, until, changed):
    """True when every item of ``group`` in ``src`` (not changed after ``until``) is in ``dst``,
    equal: for a destination that holds more than the source (a copy into a store in use)."""
    kind, project = group
    changed = {tuple(key) for key in changed}
    after = [project, ""] if kind == "record" else None  # just before the project's first label
    for page in _pages(src, kind, after=after):
        items = [i for i in page["items"] if (kind != "record" or i["project"] == project)
                 and not (kind in ("record", "job") and (i["updated_at"] > until or tuple(item_key(i)) in changed))]
        counts = _import(dst, items, True, {})
        if counts.get("added") or counts.get("updated"):
            return False
        if kind == "record" and page["items"] and page["items"][-1]["project"] != project:
            return True  # past the project's records
    return True


def copy_store(src, dst, dry_run=False, progress=False, log=None, stop=None):
    """Copy every item of store ``src`` to store ``dst`` (endpoints of :func:`open_store`).

    Returns a report dict: per-kind counts of the first pass, what arrived during
    the copy (catch-up passes), the verification (digests per project), and the
    rate.  Raises :class:`TransferError` when the copy cannot be verified.
    ``log(sentence)`` hears about each pass; ``stop`` (a threading.Event) ends it early.
    """
    say = log or (lambda sentence: None)
    versions_note = None
    carry = src.keeps_versions and dst.keeps_versions
    for end in (src, dst):
        end.versions = carry  # both sides are read alike, or their digests differ
    if src.keeps_versions and not dst.keeps_versions:
        versions_note = (f"{dst.name} keeps no record versions: the current version of each record is copied, "
                         "its earlier versions are not")
        say(versions_note)
    kinds = [k for k in KINDS if k in src.kinds and k in dst.kinds]
    skipped = [k for k in KINDS if k in src.kinds and k not in dst.kinds]
    started = time.monotonic()
    counts = src.counts()
    total = sum(counts.get(k, 0) for k in kinds)
    report = {"source": src.name, "destination": dst.name, "dry_run": dry_run, "kinds": kinds,
              "limits": [x for x in (src.limits, dst.limits) if x and skipped],
              "skipped_kinds": {k: counts.get(k, 0) for k in skipped}, "source_counts": counts,
              "first_pass": {}, "during_copy": {}, "passes": 0,
              "record_versions": "current only" if versions_note else "all"}
    if versions_note:
        report["limits"].append(versions_note)
    bar = Progress(progress, total, "copy" if not dry_run else "dry run")
    try:
        pass_start, totals = _one_pass(src, dst, kinds, None, dry_run, bar, stop)
        report["first_pass"] = totals
        report["passes"] = 1
        first_seconds = time.monotonic() - started
        moved = sum(v["added"] + v["updated"] + v["unchanged"] for v in totals.values())
        report["first_pass_seconds"] = round(first_seconds, 3)
        report["first_pass_items_per_second"] = round(moved / first_seconds, 1) if first_seconds > 0 else None
    finally:
        bar.close()
    say(f"pass 1: {_summary(report['first_pass'])}")
    if dry_run:
        report["seconds"] = round(time.monotonic() - started, 3)
        return report
    copy_began = pass_start
    for number in range(2, MAX_PASSES + 2):
        next_start, totals = _one_pass(src, dst, kinds, pass_start - SLACK, dry_run, None, stop)
        report["passes"] = number
        moved = {k: v["added"] + v["updated"] for k, v in totals.items() if k in ("record", "job")}
        say(f"pass {number} (catching up with writes since the previous pass): {_summary(totals)}")
        pass_start = next_start
        if not any(moved.values()):
            break
    report["verification"] = verify(src, dst, kinds, pass_start, say)
    report["during_copy"] = _arrivals(src, kinds, copy_began)
    seconds = time.monotonic() - started
    report["seconds"] = round(seconds, 3)
    copied = sum(v["added"] + v["updated"] + v["unchanged"] for v in report["first_pass"].values())
    report["items_per_second"] = round(copied / seconds, 1) if seconds > 0 else None
    return report


def _arrivals(src, kinds, began):
    """Records and jobs the source gained (``added``) or changed (``updated``) since ``began``
    (its clock when the copy began): what arrived while the copy ran, whichever pass took it."""
    out = {}
    for kind in ("record", "job"):
        if kind not in kinds:
            continue
        counts = {"added": 0, "updated": 0}
        for page in _pages(src, kind, since=began):
            for item in page["items"]:
                counts["added" if item["created_at"] >= began else "updated"] += 1
        if counts["added"] or counts["updated"]:
            out[kind] = counts
    return out


MAX_CHUNK_BYTES = 8 * 1024 * 1024  # one import request stays well below max_request_bytes (64 MiB)


def _by_size(items):
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


def _summary(totals):
    parts = [f"{k}s +{v['added']} ~{v['updated']} ={v['unchanged']}" for k, v in totals.items()
             if v["added"] or v["updated"] or v["unchanged"]]
    return ", ".join(parts) or "nothing"


def _one_pass(src, dst, kinds, since, dry_run, bar, stop):
    """Copy every item of ``kinds`` (changed since ``since``, for records and jobs);
    returns (the source's clock when the pass began, per-kind counts)."""
    began = None
    totals = {}
    for kind in kinds:
        counts = totals.setdefault(kind, {"added": 0, "updated": 0, "unchanged": 0})
        for page in _pages(src, kind, since=since if kind in ("record", "job") else None):
            if stop is not None and stop.is_set():
                raise TransferError("the copy was interrupted; run it again to finish (nothing is copied twice)")
            began = page["now"] if began is None else began
            _import(dst, page["items"], dry_run, counts)
            if bar is not None and page["items"]:
                bar.update(len(page["items"]), f"{kind}s")
    return began if began is not None else time.time(), totals


def verify(src, dst, kinds, until, say=lambda s: None):
    """Compare counts and digests of ``src`` and ``dst`` up to the source's clock
    ``until``; items that changed after it are left out on both sides (and caught
    up first).  Where the destination holds more than the source (it was in use),
    each item of the source is checked to be there, equal.  Returns the
    verification report; raises :class:`TransferError`."""
    for attempt in range(1, VERIFY_TRIES + 1):
        source = src.digest(until=until)
        if source.get("too_many_changed"):
            raise TransferError("the source changes too fast to verify the copy (more than 50000 items changed "
                                "during it); run db copy again when fewer writers are busy")
        destination = dst.digest(until=until, exclude=source["changed_after"])
        problems, extra = [], []
        for group, what, count, other in _differences(source, destination, kinds):
            if other is not None and other > count and _contained(src, dst, group, until, source["changed_after"]):
                extra.append(f"{what}: the destination holds {other - count} more")
            else:
                problems.append(f"{what}: source {count}, destination {other if other is not None else 'none'}"
                                + (" with different content" if other == count else ""))
        if not problems:
            # The items left out of the digests (changed after ``until``, or stamped in the future by a
            # skewed clock) are compared one by one: only those that differ are still changing.
            checked, changing = _compare_changed(src, dst, kinds, until)
            say(f"verified: {plural(len(source['projects']), 'project')}, {plural(source['jobs']['count'], 'job')}, "
                f"{plural(source['users']['count'], 'user')}; {plural(checked, 'item')} that changed after the check began "
                f"compared one by one, {changing} of them still changing"
                + (f"; {'; '.join(extra)}" if extra else ""))
            return {"verified": True, "until": until, "compared_one_by_one": checked, "left_out_changing": changing,
                    "destination_holds_more": extra, "projects": source["projects"], "jobs": source["jobs"],
                    "users": source["users"], "permissions": source["permissions"]}
        say(f"check {attempt}: {'; '.join(problems[:5])}: catching up again")
        if attempt == VERIFY_TRIES:
            raise TransferError("the copy differs from its source: " + "; ".join(problems[:10]) +
                                ". Run db copy again (it copies only what is missing)")
        next_until, _totals = _one_pass(src, dst, kinds, until - SLACK, False, None, None)
        until = next_until


# -- export and import files ---------------------------------------------------------------------------------

def export_store(src, out, progress=False):
    """Write every item of ``src`` to the binary file object ``out``, one JSON object per line:
    a header ``{"balsamdb_export": 1, "kinds": [...]}``, the items in kind and key order,
    and a footer ``{"end": true, "counts": {...}, "digests": {...}}``.  Returns the footer."""
    kinds = [k for k in KINDS if k in src.kinds]
    counts = src.counts()
    bar = Progress(progress, sum(counts.get(k, 0) for k in kinds), "export")
    digester = Digester()
    written = {}
    out.write((canonical({"balsamdb_export": EXPORT_FORMAT, "kinds": kinds}) + "\n").encode())
    try:
        for kind in kinds:
            written[kind] = 0
            for page in _pages(src, kind):
                for item in page["items"]:
                    out.write((canonical(item) + "\n").encode())
                    digester.add(item)
                written[kind] += len(page["items"])
                bar.update(len(page["items"]), f"{kind}s")
    finally:
        bar.close()
    footer = {"end": True, "counts": written, "digests": digester.result()}
    out.write((canonical(footer) + "\n").encode())
    return footer


def _last_line(path):
    """The last non-empty line of a file, however long, read from the end."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = handle.tell()
        data = b""
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            data = handle.read(end - start) + data
            end = start
            stripped = data.rstrip(b"\n")
            if b"\n" in stripped:
                return stripped.rsplit(b"\n", 1)[1]
        return data.rstrip(b"\n")


def read_footer(path):
    """The footer of an export file; :class:`TransferError` when it has none (a truncated file)."""
    try:
        footer = json.loads(_last_line(path))
    except ValueError:
        footer = None
    if not isinstance(footer, dict) or footer.get("end") is not True:
        raise TransferError(f"{path} has no end line: it is truncated or not a balsamdb export; nothing was imported")
    return footer


def check_export(path, footer):
    """Count the items of an export file against its end line, before anything is written."""
    counts = {}
    for item in _export_items(path):
        counts[item["kind"]] = counts.get(item["kind"], 0) + 1
    expected = {k: v for k, v in (footer.get("counts") or {}).items() if v}
    if counts != expected:
        raise TransferError(f"{path} holds {counts} items but its end line says {expected}: the file is damaged; "
                            "nothing was imported")


def _export_items(path):
    with open(path, "rb") as handle:
        header = handle.readline()
        try:
            head = json.loads(header)
        except ValueError:
            head = None
        if not isinstance(head, dict) or "balsamdb_export" not in head:
            raise BadRequest(f"{path} is not a balsamdb export (its first line is not the header)")
        if head["balsamdb_export"] != EXPORT_FORMAT:
            raise BadRequest(f"{path} is export format {head['balsamdb_export']}; this balsamdb reads format "
                             f"{EXPORT_FORMAT}")
        for number, line in enumerate(handle, start=2):
            try:
                item = json.loads(line)
            except ValueError:
                raise BadRequest(f"{path}, line {number}: not JSON") from None
            if isinstance(item, dict) and item.get("end") is True:
                return
            if not isinstance(item, dict) or item.get("kind") not in KINDS:
                raise BadRequest(f"{path}, line {number}: not an item")
            yield item


def _smt_items(path, project):
    from .sumatra_export import read_smt_export

    # Records only: their project is made when missing, and an existing one keeps its settings.
    for name, document in read_smt_export(path, project=project):
        when = sort_time(document.get("timestamp"))
        yield {"kind": "record", "project": name, "label": document["label"], "document": document,
               "created_at": when, "updated_at": when}


def _sumatra_store_items(path, project, kind):
    """The records of Sumatra's own store (each as ``smt`` would send it), as items."""
    from .sumatra_store import read_sumatra_store

    items = []
    for name, document in read_sumatra_store(path, kind):
        when = sort_time(document.get("timestamp"))
        items.append({"kind": "record", "project": project or name, "label": document["label"],
                      "document": document, "created_at": when, "updated_at": when})
    return items


def _runs(items, kinds, skipped):
    """``(kind, items)`` in runs of one kind, at most a page each; items of a kind not in
    ``kinds`` are counted in ``skipped`` instead."""
    batch = []
    for item in items:
        if item["kind"] not in kinds:
            skipped[item["kind"]] = skipped.get(item["kind"], 0) + 1
            continue
        if batch and (batch[0]["kind"] != item["kind"] or len(batch) >= PAGE):
            yield batch[0]["kind"], batch
            batch = []
        batch.append(item)
    if batch:
        yield batch[0]["kind"], batch


def import_file(path, dst, project=None, dry_run=False, progress=False):
    """Import an export file (balsamdb's, or the JSON of Sumatra's ``smt export``) into ``dst``.

    A balsamdb export is checked for its end line before anything is written, and
    after the import every item of the file is checked to be present and equal.
    Returns a report dict."""
    from .sumatra_export import is_smt_export
    from .sumatra_store import store_kind

    path = Path(path)
    store = store_kind(path)
    start = b""
    if store is None:
        try:
            with open(path, "rb") as handle:
                start = handle.read(4096)
        except OSError as exc:
            raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    if store is not None:  # read once: the check below compares with the same records
        records = _sumatra_store_items(path, project, store)
        items, footer = records, None
        kind_of_file = "Sumatra record store (Django, SQLite)" if store == "django" else "Sumatra record store (shelve)"
    elif is_smt_export(start):
        items, kind_of_file, footer = _smt_items(path, project), "smt export", None
    else:
        footer = read_footer(path)
        check_export(path, footer)
        items, kind_of_file = _export_items(path), "balsamdb export"
    started = time.monotonic()
    totals, skipped = {}, {}
    bar = Progress(progress, sum((footer or {}).get("counts", {}).values()) or None, "import")
    try:
        for kind, batch in _runs(items, dst.kinds, skipped):
            _import(dst, batch, dry_run, totals.setdefault(kind, {"added": 0, "updated": 0, "unchanged": 0}))
            bar.update(len(batch), f"{kind}s")
    finally:
        bar.close()
    report = {"file": str(path), "format": kind_of_file, "destination": dst.name, "dry_run": dry_run,
              "items": totals, "skipped_kinds": skipped}
    if not dry_run:
        # Check: the same items again, counted only: every one must now be present and equal.
        check = {}
        again = _export_items(path) if footer is not None else records if store else _smt_items(path, project)
        for _kind, batch in _runs(again, dst.kinds, {}):
            _import(dst, batch, True, check)
        if check.get("added") or check.get("updated"):
            raise TransferError(f"after the import, {check.get('added', 0)} items of {path} are missing from "
                                f"{dst.name} and {check.get('updated', 0)} differ (writers changing them?)")
        report["verified"] = True
    seconds = time.monotonic() - started
    report["seconds"] = round(seconds, 3)
    return report


def copy_applied_requests(source, destination, chunk=2000):
    """Copy the record of applied request ids (id, time, answer) between two peewee
    databases, keeping what the destination already holds; returns how many were read."""
    import peewee as pw

    from .models import AppliedRequest
    from .statements import _quoter

    q_src, q_dst = _quoter(source), _quoter(destination)
    table = AppliedRequest._meta.table_name
    select = (f"SELECT {q_src('request_id')}, {q_src('applied_at')}, {q_src('response')} FROM {q_src(table)} "
              f"WHERE {q_src('request_id')} > {source.param} ORDER BY {q_src('request_id')} LIMIT {int(chunk)}")
    columns = f"INSERT INTO {q_dst(table)} ({q_dst('request_id')}, {q_dst('applied_at')}, {q_dst('response')})"
    postgres = isinstance(destination, pw.PostgresqlDatabase)
    last, total = "", 0
    while True:
        rows = source.execute_sql(select, (last,)).fetchall()
        if not rows:
            from .answers import copy_bases  # what compact answers refer to

            copy_bases(source, destination)
            return total
        with destination.atomic():
            if postgres:  # one round trip per chunk, not per row
                from psycopg2.extras import execute_values

                execute_values(destination.cursor(), columns + " VALUES %s ON CONFLICT DO NOTHING", rows,
                               page_size=len(rows))
            else:
                p = destination.param
                destination.cursor().executemany(f"{columns} VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING", rows)
        total += len(rows)
        last = rows[-1][0]


# -- switching a DB directory to another store ------------------------------------------------------------------

def configure_store(path, url, progress=False, log=None):
    """Copy DB directory ``path`` into the PostgreSQL database ``url``, verify, then make
    ``path`` use it from now on.  The old database is left where it was.  Returns the
    copy's report with ``old_database`` and ``arrived_after_switch``."""
    from . import address_file
    from .client import server_state
    from .dbdir import DBDirectory, read_private, write_private, redact_url

    say = log or (lambda sentence: None)
    dbdir = DBDirectory(path)
    config = dbdir.config()
    if not str(url).startswith(("postgres://", "postgresql://")):
        raise ConfigError("--store takes a postgresql://user:password@host:port/dbname URL; to move to another "
                          "DB directory, use db copy and point BALSAM_DB_PATH at the new one")
    if server_state(dbdir.read_address()) != "down":
        raise ConfigError(f"a server runs for {dbdir.path}: stop it first (db dbserver --stop --path {dbdir.path}), "
                          "so that no write lands in the old database during the switch")
    from .spool import Spool

    waiting = Spool(dbdir.spool_dir).count()
    if waiting:
        raise ConfigError(f"{plural(waiting, 'write waits', 'writes wait')} in {dbdir.spool_dir}: start the server once (db dbserver --path "
                          f"{dbdir.path}) so that it applies them, stop it, then run db configure again")
    if config["db_type"] == "postgres" and not config.get("external"):
        raise ConfigError(f"{dbdir.path} has its own PostgreSQL cluster; copy it with db copy {dbdir.path} URL "
                          "while its server runs, then use the URL with db init --db-type postgres --url")
    if config["db_type"] == "sqlite3":
        old_name = str(dbdir.sqlite_file)
        src = sqlite_file_store(dbdir.sqlite_file)
    else:
        old_url = read_private(dbdir.postgres_url_file)
        if old_url == str(url):
            raise ConfigError(f"{dbdir.path} already uses {redact_url(url)}")
        old_name = redact_url(old_url)
        src = _postgres_store(old_url, create=False)
    dst = _postgres_store(str(url), create=True)
    try:
        report = copy_store(src, dst, progress=progress, log=say)
        # The ids of applied writes move too, before the switch: a client that retries a write
        # across it gets its first answer, not a second application (again after it, for late ones).
        report["request_ids_copied"] = copy_applied_requests(src.db.database, dst.db.database)
        # The switch: the URL first (0600), then the configuration that names it, each atomically.
        tmp_url = dbdir.postgres_url_file.with_name(dbdir.postgres_url_file.name + ".new")
        if tmp_url.exists():
            tmp_url.unlink()
        write_private(tmp_url, str(url).encode())
        os.replace(tmp_url, dbdir.postgres_url_file)
        previous = {"db_type": config["db_type"], "database": old_name, "until": time.time()}
        new_config = dict(config, db_type="postgres", external=True,
                          previous=(config.get("previous") or []) + [previous])
        address_file.write_atomic(dbdir.config_file, new_config)
        address_file.write_atomic(dbdir.address_file, address_file.stopped_record("postgres"))
        say(f"{dbdir.path} now uses {redact_url(url)}")
        # A process that opened the old database before the switch may still have written to it.
        _start, late = _one_pass(src, dst, report["kinds"], report["verification"]["until"] - SLACK, False, None,
                                 None)
        report["arrived_after_switch"] = {k: v["added"] + v["updated"] for k, v in late.items()
                                          if v["added"] or v["updated"]}
        copy_applied_requests(src.db.database, dst.db.database)
    finally:
        src.close()
        dst.close()
    report["old_database"] = old_name
    report["new_store"] = redact_url(url)
    return report
