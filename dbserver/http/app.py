"""The WSGI application of the HTTP store: its state, request life cycle and errors.

The views are module-level functions on blueprints (:mod:`.sumatra_api`, :mod:`.operation_api`,
:mod:`.job_pages`); what they share is one :class:`~.state.HTTPState` in
``app.extensions["balsamdb"]``, and their helpers are :mod:`.access` (who may do what) and
:mod:`.replies` (how to answer).  The hooks below are module-level functions too.
"""

import json
import logging
import time
from pathlib import Path

import flask
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from balsamdb.exceptions import BalsamDBError

from balsamdb.server.http import login_guard
from balsamdb.server.http.access import at_operation_endpoint
from balsamdb.server.http.auth import PasswordCache, Store, basic_credentials
from balsamdb.server.http.errors import CODE_OF_STATUS, HTTPError, challenge
from balsamdb.server.http.html import ERROR, PROJECTS, seconds, url_part, utc
from balsamdb.server.http.negotiation import negotiate
from balsamdb.server.http.replies import page
from balsamdb.server.http.state import EXTENSION, HTTPState, state
from balsamdb.server.http.urls import API_PATH

log = logging.getLogger("balsamdb.server.http")

MAX_BODY_BYTES = 64 * 1024 * 1024
# A PUT {p}/ that changes nothing answers 201 for this long after the project was
# made: smt accepts only 201 from its create call, and two jobs racing to create
# one project must both see it (see docs/http.md, "Project creation").
CREATE_RACE_WINDOW = 60.0
ROOT = Path(__file__).resolve().parent  # dbserver/http/: its templates/ and static/


def create_app(path, prefix="/", max_body=MAX_BODY_BYTES, create_window=CREATE_RACE_WINDOW):
    """The WSGI application serving DB directory ``path`` under URL ``prefix``.

    ``create_window``: seconds after a project's creation during which a PUT of it
    that changes nothing still answers 201 (see :data:`CREATE_RACE_WINDOW`).
    """
    from balsamdb.server.http import job_pages, operation_api, pages, sumatra_api
    from balsamdb.server.http.reads import page_reader
    from balsamdb.settings import load_settings

    reader = page_reader(path)  # the log-in, permission checks and pages read here, not via the write server
    keep = load_settings().applied_retention_days * 86400.0
    retention = max(keep - 3600.0, keep / 2)  # a margin for clocks and for the server's own delay
    app = flask.Flask("balsamdb.server.http", root_path=str(ROOT))
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.url_map.merge_slashes = False  # a label may hold "//": never redirect it to another record
    app.jinja_env.filters.update(urlpart=url_part, seconds=seconds, utc=utc)
    app.extensions[EXTENSION] = HTTPState(
        store=Store(path, reader), logins=login_guard.LoginGuard(PasswordCache()), web=pages.web_context(reader),
        history=job_pages.start_history(reader), max_body=max_body, create_window=create_window,
        retention=retention)
    app.before_request(begin)
    app.after_request(finish)
    app.register_error_handler(HTTPError, http_error)
    app.register_error_handler(HTTPException, werkzeug_error)
    app.register_error_handler(Exception, library_error)
    app.register_blueprint(sumatra_api.bp)
    app.register_blueprint(operation_api.bp)
    pages.install(app, API_PATH)
    if prefix.strip("/"):
        mount = "/" + prefix.strip("/")
        return DispatcherMiddleware(_outside_prefix(mount), {mount: app})
    return app


# -- request life cycle ----------------------------------------------------------------------------

def begin():
    g, request = flask.g, flask.request
    g.started, g.user = time.monotonic(), None
    g.format = "json"  # how a 406 from negotiate is answered
    g.format, g.content_type = negotiate(request)
    header = request.headers.get("Authorization")
    if header:
        g.user = _authenticate(*basic_credentials(header))


def _authenticate(name, password):
    # One scrypt per attempt, known user or not; failed logins throttled (see login_guard.py).
    request, current = flask.request, state()
    outcome, detail = current.logins.check(request.remote_addr, name, password, current.store.user(name))
    if outcome == login_guard.THROTTLED:
        log.warning("throttled login as %r from %s (%s s)", name, request.remote_addr, detail)
        raise HTTPError(429, f"too many failed logins as {name!r}: try again in {detail} s",
                        {"Retry-After": str(detail)})
    if outcome != login_guard.OK:
        log.warning("failed login as %r from %s", name, request.remote_addr)
        raise challenge("wrong user name or password")
    return detail


def finish(response):
    g, request = flask.g, flask.request
    response.headers["Cache-Control"] = "no-cache"
    response.headers.add("Vary", "Accept")
    log.info("%s %s %s %s %.1f ms", request.method, request.full_path.rstrip("?"), response.status_code,
             (g.get("user") or {}).get("name", "-"), (time.monotonic() - g.get("started", 0)) * 1000)
    return response


# -- errors -------------------------------------------------------------------------------------------

def _error_response(status, message, headers=None, error=None):
    if at_operation_endpoint():
        # The operation endpoint answers errors as the write server does, for error_from_dict.
        error = error or {"code": CODE_OF_STATUS.get(status, "error"), "type": "HTTPError", "message": message}
        response = flask.Response(json.dumps({"ok": False, "error": error}, ensure_ascii=False), status,
                                  content_type="application/json")
    elif flask.g.get("format") == "html":
        body = page(str(status), ERROR, status=status, message=message)
        response = flask.Response(body, status, content_type="text/html; charset=utf-8")
    else:
        response = flask.Response(json.dumps({"status": status, "error": message}, ensure_ascii=False),
                                  status, content_type="application/json")
    response.headers.update(headers or {})
    return response


def http_error(exc):
    g = flask.g
    if exc.status == 401 and g.get("format") == "html" and not g.get("user") and flask.request.path == "/":
        # A browser that cancels the login dialog still sees what is public.
        return _error_response_with_projects(exc)
    return _error_response(exc.status, exc.message, exc.headers)


def werkzeug_error(exc):
    if exc.code == 413:
        return _error_response(413, f"the request body is larger than {state().max_body} bytes")
    return _error_response(exc.code or 400, exc.description or exc.name)


def library_error(exc):
    request = flask.request
    if isinstance(exc, BalsamDBError):
        status = exc.http_status
        if status >= 500 and status != 503:
            log.error("%s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
        headers = {"Retry-After": "10"} if status == 503 else None
        return _error_response(status, exc.message or str(exc) or type(exc).__name__, headers, exc.to_dict())
    log.exception("%s %s failed", request.method, request.path)
    return _error_response(500, "internal error of the HTTP record store (its log has the details)")


def _error_response_with_projects(exc):
    public = [p for p in state().store.projects() if p["public"]]
    body = page("Projects", PROJECTS, projects=public,
                message="Log in to see every project you may use. Public projects:")
    response = flask.Response(body, 401, content_type="text/html; charset=utf-8")
    response.headers.update(exc.headers)
    return response


def _outside_prefix(mount):
    def not_found(environ, start_response):
        body = f"not found: this store serves {mount}/\n".encode()
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
        return [body]
    return not_found
