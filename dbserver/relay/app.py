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
refused).  It binds loopback by default.  Its files: :mod:`balsamdb.server.relay.spool`; its way
to the store: :mod:`balsamdb.server.relay.forwarder`.
Run it with ``db relay --to URL --dir DIR`` (detached; ``--stop``, ``--status``).
"""

import base64
import hmac
import json
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import flask
from flask import request
from werkzeug.exceptions import HTTPException

from balsamdb.dbdir import PRIVATE_UMASK
from balsamdb.exceptions import BadRequest
from balsamdb.operations.checks import check_project_name
from balsamdb.operations.records import check_record_save
from balsamdb.protocol import loads_strict
from balsamdb.remote import redact

from balsamdb.server.http import connections
from balsamdb.server.http.app import MAX_BODY_BYTES
from balsamdb.server.http.process import run_until_sigterm
from balsamdb.server.http.urls import API_PATH
from balsamdb.server.relay.forwarder import STORE_TIMEOUT, Forwarder, StoreDown, Upstream, store_path
from balsamdb.server.relay.spool import Cache, RelaySpool, SpoolError, make_token

log = logging.getLogger("balsamdb.server.relay.app")

REALM = "balsamdb relay"
HOST = socket.gethostname()
EXTENSION = "balsamdb"


class RelayState:
    """What the relay's views share, kept in ``app.extensions["balsamdb"]``."""

    def __init__(self, user, password, spool, cache, upstream, forwarder):
        self.user, self.password = user, password
        self.spool, self.cache, self.upstream, self.forwarder = spool, cache, upstream, forwarder
        self.projects_seen = set()


def state():
    """The :class:`RelayState` of the application handling this request."""
    return flask.current_app.extensions[EXTENSION]


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
    app.extensions[EXTENSION] = RelayState(user, password, spool, cache, upstream, forwarder)
    app.before_request(login)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, internal_error)
    app.register_blueprint(bp)
    return app, forwarder, spool


bp = flask.Blueprint("relay", __name__)


def reply(data, status=200, content_type="application/json"):
    return flask.Response(json.dumps(data, ensure_ascii=False), status, content_type=content_type,
                          headers={"Cache-Control": "no-cache"})


def login():
    # Before anything reads the body.  Compared as bytes: compare_digest refuses str with
    # characters beyond ASCII (a TypeError, which was a 500), and any byte may be sent.
    header = request.headers.get("Authorization", "")
    scheme, _, data = header.partition(" ")
    try:
        name, _, given = base64.b64decode(data.strip(), validate=True).partition(b":")
    except ValueError:
        name, given = b"", b""
    if scheme.lower() != "basic" or not (hmac.compare_digest(name, state().user.encode()) &
                                         hmac.compare_digest(given, state().password.encode())):
        return flask.Response("log in with the user and password of the relay's token file\n", 401,
                              {"WWW-Authenticate": f'Basic realm="{REALM}"'})


def http_error(exc):  # 404, 405, 413 ...: JSON, as every other answer of the relay
    return reply({"error": exc.description or exc.name}, exc.code or 400)


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
    return f"{request.url_root}{store_path(project, label)}"


@bp.get("/")
def project_list():
    try:
        status, body = state().upstream.request("GET", "")
        if status == 200:
            return flask.Response(body, 200, content_type="application/json")
    except StoreDown:
        pass
    return reply([{"id": p, "name": p} for p in sorted(state().projects_seen)])


@bp.route("/<project>/", methods=["GET", "PUT"])
def project_view(project):
    if request.method == "PUT":
        try:
            if project == API_PATH:
                raise BadRequest(f"{API_PATH!r} names the store's operation endpoint; choose another project name")
            check_project_name(project)
        except BadRequest as exc:
            return reply({"error": exc.message}, 400)
        state().projects_seen.add(project)
        try:
            status, body = state().upstream.request("PUT", store_path(project), request.get_data(), "application/json")
        except StoreDown:  # the forwarder makes it in the store before its first record
            return reply({"id": project, "name": project}, 201)
        return flask.Response(body, status, content_type="application/json")
    tags = [t for t in request.args.get("tags", "").split(",") if t]
    mine = state().spool.labels(project)
    try:
        query = f"?tags={quote(','.join(tags))}" if tags else ""
        status, body = state().upstream.request("GET", store_path(project) + query)
    except StoreDown:
        status, body = None, b""
    if status == 200:
        data = json.loads(body)
        labels = [unquote(urlsplit(u).path).rstrip("/").rsplit("/", 1)[-1] for u in data.get("records", [])]
    elif status in (401, 403) or (status not in (None, 404)):
        return flask.Response(body, status, content_type="application/json")
    else:
        if not mine and project not in state().projects_seen and status == 404:
            return reply({"error": f"no project {project!r}"}, 404)
        known_here = project in state().projects_seen or state().cache.labels(project)
        if status is None and not mine and not known_here:
            return reply({"error": f"the store is unreachable and the relay knows no project {project!r}"}, 503)
        data = {"id": project, "name": project, "description": ""}
        known = dict(state().cache.labels(project), **mine) if status is None else {}
        labels = [label for label, doc in sorted(known.items(), key=lambda i: str(i[1].get("timestamp")),
                                                 reverse=True)  # newest first, as the store lists them
                  if not tags or set(tags) & set(doc.get("tags") or [])]
    state().projects_seen.add(project)
    extra = [label for label, doc in mine.items() if label not in labels
             and (not tags or set(tags) & set(doc.get("tags") or []))]
    data["records"] = [relay_url(project, label) for label in extra + labels]
    return reply(data)


@bp.route("/<project>/<path:label>/", methods=["GET", "PUT", "DELETE"])
def record(project, label):
    if label.startswith(("tag/", "tagged/")) or label in ("last", "permissions"):
        return special(project, label)
    if request.method == "PUT":
        document, refused = checked_save(project, label)
        if refused is not None:  # answered now: smt says the save failed, nothing waits in the spool
            return refused
        new = state().spool.latest(project, label) is None and state().cache.get(project, label) is None
        try:
            state().spool.put(project, label, document, saved_by=f"{state().user}@{HOST}")
        except SpoolError as exc:  # 507 Insufficient Storage: refused, smt says the save failed
            log.error("%s", exc)
            return reply({"error": str(exc)}, 507)
        state().projects_seen.add(project)
        state().forwarder.wake.set()
        return reply({"project": project, "label": label, "spooled": True}, 201 if new else 200)
    if request.method == "DELETE":
        if not drained(project):
            return reply({"error": "saves of this project still wait to be forwarded; try again"}, 503)
        state().cache.drop(project, label)
        return passthrough("DELETE", store_path(project, label))
    pending = state().spool.latest(project, label)
    if pending is not None:
        return reply(pending)
    try:
        status, body = state().upstream.request("GET", store_path(project, label))
    except StoreDown:
        cached = state().cache.get(project, label)
        return reply(cached) if cached is not None else reply({"error": "the store is unreachable"}, 503)
    if status == 200:
        state().cache.put(project, label, json.loads(body))
    return flask.Response(body, status, content_type="application/json")


def drained(project, deadline=30.0):
    end = time.monotonic() + deadline
    while state().spool.labels(project):
        if time.monotonic() > end:
            return False
        state().forwarder.wake.set()
        time.sleep(0.05)  # wait-ok: polls the spool with the deadline above
    return True


def passthrough(method, path):
    try:
        status, body = state().upstream.request(method, path)
    except StoreDown:
        return reply({"error": "the store is unreachable"}, 503)
    return flask.Response(body, status, content_type=("text/plain" if method == "DELETE" and status == 200
                                                      else "application/json"))


def special(project, label):
    if label == "last" and request.method == "GET":
        candidates = list(state().spool.labels(project).values())
        try:
            status, body = state().upstream.request("GET", store_path(project) + "last/")
            if status == 200:
                candidates.append(json.loads(body))
        except StoreDown:
            candidates.extend(state().cache.labels(project).values())
        if not candidates:
            return reply({"error": "no records"}, 404)
        return reply(max(candidates, key=lambda d: str(d.get("timestamp") or "")))
    if request.method == "DELETE" and not drained(project):
        return reply({"error": "saves of this project still wait to be forwarded; try again"}, 503)
    return passthrough(request.method, store_path(project) + label + "/")


@bp.get("/_relay/status")
def status():
    relay = state()
    return reply({"waiting": relay.spool.count(), "forwarded": relay.forwarder.forwarded,
                  "refused": relay.forwarder.failed, "store": relay.upstream.name,
                  "store_up": relay.forwarder.store_up})


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
