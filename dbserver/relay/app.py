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

Each forwarded save carries the time the relay answered it and ``user@host`` of its client
(headers ``Balsamdb-Saved-At`` and ``Balsamdb-Saved-By``): a balsamdb store keeps them as the
version's time and author, so a save forwarded an hour late still says when it was made.

Its clients log in with HTTP Basic as the user and password of the token file ``DIR/token``
(``user:password``, mode 0600, made at the first start; a token file that others may read is
refused).  It binds loopback by default.  Its files: :mod:`balsamdb.server.relay.spool`.
Run it with ``db relay --to URL --dir DIR`` (detached; ``--stop``, ``--status``).
"""

import base64
import hmac
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import flask
from werkzeug.exceptions import HTTPException

from balsamdb.backoff import delay_after
from balsamdb.dbdir import PRIVATE_UMASK
from balsamdb.exceptions import BadRequest
from balsamdb.operations.checks import check_project_name
from balsamdb.operations.records import check_record_save
from balsamdb.protocol import loads_strict
from balsamdb.remote import redact, split_url

from balsamdb.server.http import connections
from balsamdb.server.http.app import MAX_BODY_BYTES
from balsamdb.server.http.process import run_until_sigterm
from balsamdb.server.http.urls import API_PATH
from balsamdb.server.relay.spool import Cache, RelaySpool, SpoolError, make_token

log = logging.getLogger("balsamdb.server.relay.app")

REALM = "balsamdb relay"
HOST = socket.gethostname()
MAX_BACKOFF = 10.0
STORE_TIMEOUT = 30.0


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

    def request(self, method, path, body=None, content_type=None, extra=None):
        """(status, bytes) of one request to ``{base}{path}``; StoreDown when unreachable."""
        import urllib3

        headers = dict(self.headers, **(extra or {}))
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
        failures = 0
        while not self.stopping.is_set():
            item = self.spool.oldest()
            if item is None:
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                self.forward(*item)
                failures, self.store_up = 0, True
            except StoreDown as exc:
                if self.store_up:
                    log.warning("the store %s is unreachable (%s): saves wait in the spool", self.upstream.name, exc)
                self.store_up = False
                self.stopping.wait(delay_after(failures, 0.2, MAX_BACKOFF))  # wait-ok: retry interval while the store is down
                failures += 1
            except Exception:  # a full disk, an odd answer: the save stays in the spool, the thread goes on
                log.exception("forwarding save %s failed; it stays in the spool and is tried again", item[0])
                self.stopping.wait(delay_after(failures, 0.2, MAX_BACKOFF))  # wait-ok: retry interval after an unexpected failure
                failures += 1

    def forward(self, seq, project, label, document):
        if project not in self.known_projects:
            status, _ = self.upstream.request("GET", _path(project))
            if status == 404 or status == 401:
                status, body = self.upstream.request("PUT", _path(project), b"{}", "application/json")
                if status not in (200, 201):
                    log.error("the store refused to create project %r: HTTP %s %s", project, status, body[:200])
            self.known_projects.add(project)
        body = json.dumps(document, ensure_ascii=False).encode()
        saved_at, saved_by = self.spool.saved_of(seq)
        extra = {} if saved_at is None else {"Balsamdb-Saved-At": repr(saved_at)}  # the store keeps it as the
        if saved_by:  # version's time and author (see relayed_save in balsamdb.server.http.sumatra_api)
            extra["Balsamdb-Saved-By"] = saved_by
        status, answer = self.upstream.request("PUT", _path(project, label), body,
                                               "application/vnd.sumatra.record-v4+json", extra)
        if status in (200, 201, 202):  # 202: a balsamdb store keeps it in its own spool, durably
            try:
                self.cache.put(project, label, document)
            except OSError as exc:  # the copy for reads while the store is down; the save itself is stored
                log.warning("could not keep a copy of %r in %r in the cache: %s", label, project, exc)
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


def create_relay_app(directory, upstream_url):
    """The relay's WSGI application and its forwarder (started by the caller)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    user, password = make_token(directory)
    spool = RelaySpool(directory / "spool")
    cache = Cache(directory / "cache")
    upstream = Upstream(upstream_url)
    forwarder = Forwarder(spool, cache, upstream)
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    request = flask.request
    projects_seen = set()

    def reply(data, status=200, content_type="application/json"):
        return flask.Response(json.dumps(data, ensure_ascii=False), status, content_type=content_type,
                              headers={"Cache-Control": "no-cache"})

    @app.before_request
    def login():
        # Before anything reads the body.  Compared as bytes: compare_digest refuses str with
        # characters beyond ASCII (a TypeError, which was a 500), and any byte may be sent.
        header = request.headers.get("Authorization", "")
        scheme, _, data = header.partition(" ")
        try:
            name, _, given = base64.b64decode(data.strip(), validate=True).partition(b":")
        except ValueError:
            name, given = b"", b""
        if scheme.lower() != "basic" or not (hmac.compare_digest(name, user.encode()) &
                                             hmac.compare_digest(given, password.encode())):
            return flask.Response("log in with the user and password of the relay's token file\n", 401,
                                  {"WWW-Authenticate": f'Basic realm="{REALM}"'})

    @app.errorhandler(HTTPException)
    def http_error(exc):  # 404, 405, 413 ...: JSON, as every other answer of the relay
        return reply({"error": exc.description or exc.name}, exc.code or 400)

    @app.errorhandler(Exception)
    def internal_error(exc):
        log.exception("%s %s failed", request.method, request.path)
        return reply({"error": "internal error of the relay (its log has the details)"}, 500)

    def checked_save(project, label):
        """The record of a ``PUT {p}/{l}/`` as the store would check it (strict JSON, then the
        store's own checks of a save), or the 400 answer that says why not."""
        try:
            if project == API_PATH:
                raise BadRequest(f"{API_PATH!r} names the store's operation endpoint; choose another project name")
            document = loads_strict(request.get_data(), "the record")
            if not isinstance(document, dict) or document.get("label") != label:
                raise BadRequest("the record's label differs from the label in the URL")
            check_record_save(project, document)
        except BadRequest as exc:
            return None, reply({"error": exc.message}, 400)
        return document, None

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
            try:
                if project == API_PATH:
                    raise BadRequest(f"{API_PATH!r} names the store's operation endpoint; choose another project name")
                check_project_name(project)
            except BadRequest as exc:
                return reply({"error": exc.message}, 400)
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
            known = dict(cache.labels(project), **mine) if status is None else {}
            labels = [label for label, doc in sorted(known.items(), key=lambda i: str(i[1].get("timestamp")),
                                                     reverse=True)  # newest first, as the store lists them
                      if not tags or set(tags) & set(doc.get("tags") or [])]
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
            document, refused = checked_save(project, label)
            if refused is not None:  # answered now: smt says the save failed, nothing waits in the spool
                return refused
            new = spool.latest(project, label) is None and cache.get(project, label) is None
            try:
                spool.put(project, label, document, saved_by=f"{user}@{HOST}")
            except SpoolError as exc:  # 507 Insufficient Storage: refused, smt says the save failed
                log.error("%s", exc)
                return reply({"error": str(exc)}, 507)
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
    from balsamdb.server.logs import setup_logging

    directory = Path(directory)
    os.umask(PRIVATE_UMASK)  # relay.log, relay.json, the spool (failed/ too) and the cache: its owner's only
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    setup_logging(directory / "relay.log")
    app, forwarder, spool = create_relay_app(directory, upstream_url)
    # The bounds of `db serve` on connections and bodies (see balsamdb.server.http.connections)
    server = connections.create_server(app, host, port, threads, MAX_BODY_BYTES, ident="balsamdb-relay")
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

    from balsamdb.exceptions import ConfigError

    try:
        serve(sys.argv[1], os.environ["BALSAMDB_RELAY_TO"], host=sys.argv[2], port=int(sys.argv[3]))
    except ConfigError as exc:
        sys.exit(f"Error: {exc}")
