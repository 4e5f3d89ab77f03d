"""`db relay`: the cache that Sumatra's docs promise, between `smt` and a record store.

Sumatra's docs: "if the network connection fails the simulation record will be lost ... In the
future we plan to add a caching mechanism which will keep a local copy of the record and retry
the connection to the server later".  The relay runs next to the jobs, speaks the Sumatra
Server API to ``smt``, and:

- answers each save (``PUT {p}/{l}/``) at once from a local spool: the record is written to
  ``DIR/spool/tmp/``, fsynced and renamed into ``DIR/spool/new/`` under a sequence number before
  the answer, so an answered save survives a crash of the relay;
- forwards the spooled saves to the store in their order, one at a time, with retries (backing
  off up to 10 s) while the store is down; a save is removed from the spool only after the store
  answered 200 or 201.  A retry of a save whose answer was lost is harmless: the store keeps no
  new version for a save identical to the current one, so each save is stored once;
- answers reads from the store, with the saves it has not forwarded yet laid over them (``smt``
  reads a record right after saving it: read your writes), or, while the store is down, from the
  records it saved or read before (``DIR/cache/``).

Its clients log in with HTTP Basic as the user and password of the token file ``DIR/token``
(``user:password``, mode 0600, made at the first start).  It binds loopback by default.
Run it with ``db relay --to URL --dir DIR`` (detached; ``--stop``, ``--status``).
"""

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import flask

from balsamdb.remote import redact, split_url

from .http_store.process import run_until_sigterm

log = logging.getLogger("balsamdb.server.relay")

REALM = "balsamdb relay"
MAX_BACKOFF = 10.0
STORE_TIMEOUT = 30.0


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_token(directory):
    """``DIR/token`` (``relay:<random>``, 0600), made when missing; returns (user, password)."""
    path = Path(directory) / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"relay:{secrets.token_urlsafe(18)}\n")
    user, _, password = path.read_text().strip().partition(":")
    return user, password


class Spool:
    """Saves waiting to be forwarded, in order, on disk (one file each, named by a sequence number)."""

    def __init__(self, directory):
        self.tmp, self.new = Path(directory) / "tmp", Path(directory) / "new"
        for path in (Path(directory), self.tmp, self.new):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.pending = {}  # (project, label) -> [sequence numbers], oldest first
        self.documents = {}  # sequence -> (project, label, document)
        for path in sorted(self.new.iterdir()):
            entry = json.loads(path.read_text())
            self._remember(int(path.stem), entry["project"], entry["label"], entry["document"])
        self._next = max(self.documents, default=0) + 1

    def _remember(self, seq, project, label, document):
        self.pending.setdefault((project, label), []).append(seq)
        self.documents[seq] = (project, label, document)

    def put(self, project, label, document):
        """Keep one save durably (fsync + rename) before it is answered."""
        with self._lock:
            seq = self._next
            self._next += 1
            name = f"{seq:012d}.json"
            data = json.dumps({"project": project, "label": label, "document": document}, ensure_ascii=False)
            fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.rename(self.tmp / name, self.new / name)
            _fsync_dir(self.new)
            self._remember(seq, project, label, document)
        return seq

    def oldest(self):
        with self._lock:
            if not self.documents:
                return None
            seq = min(self.documents)
            return (seq, *self.documents[seq])

    def done(self, seq):
        with self._lock:
            project, label, _document = self.documents.pop(seq)
            self.pending[(project, label)].remove(seq)
            if not self.pending[(project, label)]:
                del self.pending[(project, label)]
            (self.new / f"{seq:012d}.json").unlink()

    def latest(self, project, label):
        """The newest save of (project, label) not forwarded yet, or None."""
        with self._lock:
            seqs = self.pending.get((project, label))
            return self.documents[seqs[-1]][2] if seqs else None

    def labels(self, project):
        with self._lock:
            return {label: self.documents[seqs[-1]][2] for (p, label), seqs in self.pending.items() if p == project}

    def count(self):
        with self._lock:
            return len(self.documents)


class Cache:
    """The last known document of each record (saved through the relay, or read from the store)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, project, label):
        return self.dir / hashlib.sha256(f"{project}\0{label}".encode()).hexdigest()

    def put(self, project, label, document):
        path = self._path(project, label)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"project": project, "label": label, "document": document}, ensure_ascii=False))
        os.replace(tmp, path)

    def get(self, project, label):
        try:
            return json.loads(self._path(project, label).read_text())["document"]
        except (OSError, ValueError):
            return None

    def drop(self, project, label):
        self._path(project, label).unlink(missing_ok=True)

    def labels(self, project):
        out = {}
        for path in self.dir.iterdir():
            if path.suffix:
                continue
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if entry["project"] == project:
                out[entry["label"]] = entry["document"]
        return out


class StoreDown(Exception):
    pass


class Upstream:
    """The record store the relay forwards to (any server of the Sumatra Server API)."""

    def __init__(self, url):
        import urllib3

        self.base, user, password = split_url(url)
        self.name = redact(url)
        self.headers = {"Accept": "application/json"}
        if user is not None:
            self.headers.update(urllib3.make_headers(basic_auth=f"{user}:{password or ''}"))
        self.http = urllib3.PoolManager(maxsize=8, timeout=urllib3.Timeout(connect=5, read=STORE_TIMEOUT),
                                        retries=False)

    def request(self, method, path, body=None, content_type=None):
        """(status, bytes) of one request to ``{base}{path}``; StoreDown when unreachable."""
        import urllib3

        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        try:
            response = self.http.request(method, self.base + path, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise StoreDown(str(exc)) from None
        if response.status >= 500 or response.status in (408, 429):  # try again later
            raise StoreDown(f"HTTP {response.status}")
        return response.status, response.data


def _path(project, label=None):
    return quote(project, safe="") + "/" + ("" if label is None else quote(label, safe="") + "/")


class Forwarder(threading.Thread):
    """Sends the spooled saves to the store, oldest first, until stopped."""

    def __init__(self, spool, cache, upstream):
        super().__init__(name="forwarder", daemon=True)
        self.spool, self.cache, self.upstream = spool, cache, upstream
        self.wake, self.stopping = threading.Event(), threading.Event()
        self.forwarded, self.failed = 0, 0
        self.store_up = True
        self.known_projects = set()

    def run(self):
        backoff = 0.2
        while not self.stopping.is_set():
            item = self.spool.oldest()
            if item is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self.forward(*item)
                backoff, self.store_up = 0.2, True
            except StoreDown as exc:
                if self.store_up:
                    log.warning("the store %s is unreachable (%s): saves wait in the spool", self.upstream.name, exc)
                self.store_up = False
                self.stopping.wait(backoff)  # wait-ok: retry interval while the store is down
                backoff = min(backoff * 2, MAX_BACKOFF)

    def forward(self, seq, project, label, document):
        if project not in self.known_projects:
            status, _ = self.upstream.request("GET", _path(project))
            if status == 404 or status == 401:
                status, body = self.upstream.request("PUT", _path(project), b"{}", "application/json")
                if status not in (200, 201):
                    log.error("the store refused to create project %r: HTTP %s %s", project, status, body[:200])
            self.known_projects.add(project)
        body = json.dumps(document, ensure_ascii=False).encode()
        status, answer = self.upstream.request("PUT", _path(project, label), body,
                                               "application/vnd.sumatra.record-v4+json")
        if status in (200, 201, 202):  # 202: a balsamdb store keeps it in its own spool, durably
            self.cache.put(project, label, document)
            self.forwarded += 1
        else:  # refused for good (400, 401, 403, 409, 413): kept aside, never retried in a loop
            failed = self.spool.new.parent / "failed"
            failed.mkdir(mode=0o700, exist_ok=True)
            (failed / f"{seq:012d}.json").write_text(json.dumps(
                {"project": project, "label": label, "status": status, "answer": answer[:1000].decode("utf-8", "replace"),
                 "document": document}, ensure_ascii=False))
            self.failed += 1
            log.error("the store refused the save of %r in %r: HTTP %s %s (kept in %s)", label, project, status,
                      answer[:200], failed)
        self.spool.done(seq)


def create_app(directory, upstream_url):
    """The relay's WSGI application and its forwarder (started by the caller)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    user, password = make_token(directory)
    spool = Spool(directory / "spool")
    cache = Cache(directory / "cache")
    upstream = Upstream(upstream_url)
    forwarder = Forwarder(spool, cache, upstream)
    app = flask.Flask(__name__)
    request = flask.request
    projects_seen = set()

    def reply(data, status=200, content_type="application/json"):
        return flask.Response(json.dumps(data, ensure_ascii=False), status, content_type=content_type,
                              headers={"Cache-Control": "no-cache"})

    @app.before_request
    def login():
        header = request.headers.get("Authorization", "")
        scheme, _, data = header.partition(" ")
        try:
            name, _, given = base64.b64decode(data.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            name, given = "", ""
        if scheme.lower() != "basic" or not (hmac.compare_digest(name, user) and
                                             hmac.compare_digest(given, password)):
            return flask.Response("log in with the user and password of the relay's token file\n", 401,
                                  {"WWW-Authenticate": f'Basic realm="{REALM}"'})

    def relay_url(project, label):
        return f"{request.url_root}{_path(project, label)}"

    @app.get("/")
    def project_list():
        try:
            status, body = upstream.request("GET", "")
            if status == 200:
                return flask.Response(body, 200, content_type="application/json")
        except StoreDown:
            pass
        return reply([{"id": p, "name": p} for p in sorted(projects_seen)])

    @app.route("/<project>/", methods=["GET", "PUT"])
    def project_view(project):
        if request.method == "PUT":
            projects_seen.add(project)
            try:
                status, body = upstream.request("PUT", _path(project), request.get_data(), "application/json")
            except StoreDown:  # the forwarder makes it in the store before its first record
                return reply({"id": project, "name": project}, 201)
            return flask.Response(body, status, content_type="application/json")
        tags = [t for t in request.args.get("tags", "").split(",") if t]
        mine = spool.labels(project)
        try:
            status, body = upstream.request("GET", _path(project) + (f"?tags={quote(','.join(tags))}" if tags else ""))
        except StoreDown:
            status, body = None, b""
        if status == 200:
            data = json.loads(body)
            labels = [unquote(urlsplit(u).path).rstrip("/").rsplit("/", 1)[-1] for u in data.get("records", [])]
        elif status in (401, 403) or (status not in (None, 404)):
            return flask.Response(body, status, content_type="application/json")
        else:
            if not mine and project not in projects_seen and status == 404:
                return reply({"error": f"no project {project!r}"}, 404)
            if status is None and not mine and project not in projects_seen and not cache.labels(project):
                return reply({"error": f"the store is unreachable and the relay knows no project {project!r}"}, 503)
            data = {"id": project, "name": project, "description": ""}
            labels = sorted(cache.labels(project)) if status is None else []
        projects_seen.add(project)
        extra = [label for label, doc in mine.items() if label not in labels
                 and (not tags or set(tags) & set(doc.get("tags") or []))]
        data["records"] = [relay_url(project, label) for label in extra + labels]
        return reply(data)

    @app.route("/<project>/<path:label>/", methods=["GET", "PUT", "DELETE"])
    def record(project, label):
        if label.startswith(("tag/", "tagged/")) or label in ("last", "permissions"):
            return special(project, label)
        if request.method == "PUT":
            try:
                document = json.loads(request.get_data())
            except ValueError:
                return reply({"error": "the record is not valid JSON"}, 400)
            if not isinstance(document, dict) or document.get("label") != label:
                return reply({"error": "the record's label differs from the label in the URL"}, 400)
            new = spool.latest(project, label) is None and cache.get(project, label) is None
            spool.put(project, label, document)
            projects_seen.add(project)
            forwarder.wake.set()
            return reply({"project": project, "label": label, "spooled": True}, 201 if new else 200)
        if request.method == "DELETE":
            if not drained(project):
                return reply({"error": "saves of this project still wait to be forwarded; try again"}, 503)
            cache.drop(project, label)
            return passthrough("DELETE", _path(project, label))
        pending = spool.latest(project, label)
        if pending is not None:
            return reply(pending)
        try:
            status, body = upstream.request("GET", _path(project, label))
        except StoreDown:
            cached = cache.get(project, label)
            return reply(cached) if cached is not None else reply({"error": "the store is unreachable"}, 503)
        if status == 200:
            cache.put(project, label, json.loads(body))
        return flask.Response(body, status, content_type="application/json")

    def drained(project, deadline=30.0):
        end = time.monotonic() + deadline
        while spool.labels(project):
            if time.monotonic() > end:
                return False
            forwarder.wake.set()
            time.sleep(0.05)  # wait-ok: polls the spool with the deadline above
        return True

    def passthrough(method, path):
        try:
            status, body = upstream.request(method, path)
        except StoreDown:
            return reply({"error": "the store is unreachable"}, 503)
        return flask.Response(body, status, content_type=("text/plain" if method == "DELETE" and status == 200
                                                          else "application/json"))

    def special(project, label):
        if label == "last" and request.method == "GET":
            candidates = list(spool.labels(project).values())
            try:
                status, body = upstream.request("GET", _path(project) + "last/")
                if status == 200:
                    candidates.append(json.loads(body))
            except StoreDown:
                candidates.extend(cache.labels(project).values())
            if not candidates:
                return reply({"error": "no records"}, 404)
            return reply(max(candidates, key=lambda d: str(d.get("timestamp") or "")))
        if request.method == "DELETE" and not drained(project):
            return reply({"error": "saves of this project still wait to be forwarded; try again"}, 503)
        return passthrough(request.method, _path(project) + label + "/")

    @app.get("/_relay/status")
    def status():
        return reply({"waiting": spool.count(), "forwarded": forwarder.forwarded, "refused": forwarder.failed,
                      "store": upstream.name, "store_up": forwarder.store_up})

    return app, forwarder, spool


def serve(directory, upstream_url, host="127.0.0.1", port=0, threads=16, ready=None):
    """Run the relay until SIGTERM; ``ready(url)`` once it listens."""
    import waitress

    from .logs import setup_logging

    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    setup_logging(directory / "relay.log")
    app, forwarder, spool = create_app(directory, upstream_url)
    server = waitress.create_server(app, host=host, port=port, threads=threads, ident="balsamdb-relay")
    forwarder.start()
    url = f"http://{server.effective_host}:{server.effective_port}/"
    (directory / "relay.json").write_text(json.dumps({"pid": os.getpid(), "url": url, "store": redact(upstream_url)}))
    log.info("relay at %s to %s, %d saves waiting in the spool", url, redact(upstream_url), spool.count())
    try:
        run_until_sigterm(server, url, ready)
    finally:
        forwarder.stopping.set()
        forwarder.join(STORE_TIMEOUT + 5)
        (directory / "relay.json").unlink(missing_ok=True)
        log.info("relay stopped; %d saves wait in the spool for its next start", spool.count())


if __name__ == "__main__":
    import sys

    serve(sys.argv[1], os.environ["BALSAMDB_RELAY_TO"], host=sys.argv[2], port=int(sys.argv[3]))
