"""The WSGI application of the HTTP store: request life cycle, errors, the helpers its views share;
the views are blueprints (:mod:`.sumatra_api`, :mod:`.operation_api`, and the web pages)."""

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import flask
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from balsamdb.exceptions import BadRequest, BalsamDBError
from balsamdb.protocol import loads_strict

from balsamdb.server.http import login_guard
from balsamdb.server.http import operation_api, sumatra_api
from balsamdb.server.http.auth import PasswordCache, Store, basic_credentials
from balsamdb.server.http.errors import CODE_OF_STATUS, HTTPError, challenge
from balsamdb.server.http.html import ERROR, LAYOUT, PROJECTS, seconds, url_part, utc
from balsamdb.server.http.negotiation import negotiate
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
    from balsamdb.server.http.reads import ReadOnlyStore

    reader = ReadOnlyStore(path)  # the log-in, permission checks and pages read here, not via the write server
    store = Store(path, reader)
    passwords = PasswordCache()
    logins = login_guard.LoginGuard(passwords)
    from balsamdb.settings import load_settings

    keep = load_settings().applied_retention_days * 86400.0
    retention = max(keep - 3600.0, keep / 2)  # a margin for clocks and for the server's own delay
    app = flask.Flask("balsamdb.server.http", root_path=str(ROOT))
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.url_map.merge_slashes = False  # a label may hold "//": never redirect it to another record
    app.jinja_env.filters.update(urlpart=url_part, seconds=seconds, utc=utc)
    request = flask.request
    g = flask.g

    # -- request life cycle ----------------------------------------------------------------------

    @app.before_request
    def begin():
        g.started, g.user = time.monotonic(), None
        g.format = "json"  # how a 406 from negotiate is answered
        g.format, g.content_type = negotiate(request)
        header = request.headers.get("Authorization")
        if header:
            g.user = _authenticate(*basic_credentials(header))

    def _authenticate(name, password):
        # One scrypt per attempt, known user or not; failed logins throttled (see login_guard.py).
        outcome, detail = logins.check(request.remote_addr, name, password, store.user(name))
        if outcome == login_guard.THROTTLED:
            log.warning("throttled login as %r from %s (%s s)", name, request.remote_addr, detail)
            raise HTTPError(429, f"too many failed logins as {name!r}: try again in {detail} s",
                            {"Retry-After": str(detail)})
        if outcome != login_guard.OK:
            log.warning("failed login as %r from %s", name, request.remote_addr)
            raise challenge("wrong user name or password")
        return detail

    @app.after_request
    def finish(response):
        response.headers["Cache-Control"] = "no-cache"
        response.headers.add("Vary", "Accept")
        log.info("%s %s %s %s %.1f ms", request.method, request.full_path.rstrip("?"), response.status_code,
                 (g.get("user") or {}).get("name", "-"), (time.monotonic() - g.get("started", 0)) * 1000)
        return response

    def at_operation_endpoint():
        """True for a request to ``{base}_balsamdb/call``: its errors are answered as the write server
        answers them, and it never spools (its client does)."""
        return request.path.endswith(f"/{API_PATH}/call")

    def _error_response(status, message, headers=None, error=None):
        if at_operation_endpoint():
            # The operation endpoint answers errors as the write server does, for error_from_dict.
            error = error or {"code": CODE_OF_STATUS.get(status, "error"), "type": "HTTPError", "message": message}
            response = flask.Response(json.dumps({"ok": False, "error": error}, ensure_ascii=False), status,
                                      content_type="application/json")
        elif g.get("format") == "html":
            body = _page(str(status), ERROR, status=status, message=message)
            response = flask.Response(body, status, content_type="text/html; charset=utf-8")
        else:
            response = flask.Response(json.dumps({"status": status, "error": message}, ensure_ascii=False),
                                      status, content_type="application/json")
        response.headers.update(headers or {})
        return response

    @app.errorhandler(HTTPError)
    def http_error(exc):
        if exc.status == 401 and g.get("format") == "html" and not g.get("user") and request.path == "/":
            # A browser that cancels the login dialog still sees what is public.
            return _error_response_with_projects(exc)
        return _error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def werkzeug_error(exc):
        if exc.code == 413:
            return _error_response(413, f"the request body is larger than {max_body} bytes")
        return _error_response(exc.code or 400, exc.description or exc.name)

    @app.errorhandler(Exception)
    def library_error(exc):
        if isinstance(exc, BalsamDBError):
            status = exc.http_status
            if status >= 500 and status != 503:
                log.error("%s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
            headers = {"Retry-After": "10"} if status == 503 else None
            return _error_response(status, exc.message or str(exc) or type(exc).__name__, headers, exc.to_dict())
        log.exception("%s %s failed", request.method, request.path)
        return _error_response(500, "internal error of the HTTP record store (its log has the details)")

    # -- helpers ------------------------------------------------------------------------------------

    def base_url():
        return request.url_root  # scheme://host[:port]/prefix/ as the client reached us

    def project_url(name):
        return f"{base_url()}{url_part(name)}/"

    def _page(title, template, project=None, **context):
        body = flask.render_template_string(template, base=base_url(), project=project, **context)
        return flask.render_template_string(LAYOUT, title=title, body=Markup(body), base=base_url(),
                                            project=project, user=g.user["name"] if g.get("user") else None)

    def reply(data, status=200, html=None):
        """``data`` as JSON, or the HTML page ``html()`` (title, template, context) for a browser."""
        if g.format == "html" and html is not None:
            title, template, context = html()
            return flask.Response(_page(title, template, **context), status,
                                  content_type="text/html; charset=utf-8")
        return flask.Response(json.dumps(data, ensure_ascii=False), status, content_type=g.content_type)

    def require_user():
        if g.user is None:
            raise challenge()
        return g.user

    def may_use(name):
        if g.user is None:
            return False
        if g.user.get("admin"):
            return True  # admins may do everything, on every project
        if name not in g.user["projects"]:
            # Read again: a racing request of this user may have created the project since
            # this one logged in (16 `smt run` of one project start together).
            g.user["projects"] = (store.user(g.user["name"]) or {"projects": []})["projects"]
        return name in g.user["projects"]

    def readable_project(name):
        """The project, when the caller may read it; else 401 (anonymous) or 404.

        A logged-in user who may not use a project gets the same 404 as for one that does not
        exist, so that reads do not tell who has which projects (see docs/http.md)."""
        project = store.project(name)
        if project is not None and project["public"]:
            return project
        require_user()
        if project is None or not may_use(name):
            raise HTTPError(404, f"no project {name!r} that user {g.user['name']!r} may use (an admin "
                                 f"grants one with: db user grant {g.user['name']} {name})")
        return project

    def may_write_before_body(name):
        """401 for an anonymous caller, 403 for an existing project the caller may not write: checked
        before a request's body is read, so that nobody else makes the store read and parse it."""
        require_user()
        if store.project(name) is not None and not may_use(name):
            raise HTTPError(403, f"user {g.user['name']!r} may not write project {name!r}")

    def writable_project(name, create=False):
        """The project, when the caller may write it (None when ``create`` made it now)."""
        require_user()
        if create and name == API_PATH:
            raise HTTPError(400, f"{API_PATH!r} names balsamdb's operation endpoint; choose another project name")
        project = store.project(name)
        if project is None:
            if not create:
                raise HTTPError(404, f"no project {name!r}")
            # creates the project; from the operation endpoint never spooled (its client does that)
            store.write("permission_grant", spool=not at_operation_endpoint(), project=name, user=g.user["name"])
            g.user["projects"].append(name)
            log.info("user %s created project %r", g.user["name"], name)
            return None
        if not may_use(name):
            raise HTTPError(403, f"user {g.user['name']!r} may not write project {name!r}")
        return project

    def json_body(kind):
        data = request.get_data(cache=False)
        if not data.strip():
            return {}
        try:
            # Strict: NaN and infinities (never stored as invalid JSON) and too deep nesting answer 400.
            value = loads_strict(data, f"the {kind}")
        except BadRequest as exc:
            raise HTTPError(400, exc.message) from None
        if not isinstance(value, dict):
            raise HTTPError(400, f"the {kind} must be a JSON object")
        return value

    def tags_param():
        return [t.strip() for t in (request.args.get("tags") or "").split(",") if t.strip()]

    def _error_response_with_projects(exc):
        public = [p for p in store.projects() if p["public"]]
        body = _page("Projects", PROJECTS, projects=public,
                     message="Log in to see every project you may use. Public projects:")
        response = flask.Response(body, 401, content_type="text/html; charset=utf-8")
        response.headers.update(exc.headers)
        return response

    # -- the web pages (pages.py, job_pages.py, record_pages.py): read on read-only connections ---------
    from balsamdb.server.http import pages

    web = pages.WebContext(reader=reader, require_user=require_user,
                               readable_project=readable_project, error=HTTPError, url_part=url_part)

    # -- the views: the Sumatra Server API, balsamdb's operation endpoint, the web pages ------------
    context = SimpleNamespace(
        store=store,
        reply=reply,
        require_user=require_user,
        may_use=may_use,
        readable_project=readable_project,
        writable_project=writable_project,
        may_write_before_body=may_write_before_body,
        json_body=json_body,
        tags_param=tags_param,
        project_url=project_url,
        base_url=base_url,
        at_operation_endpoint=at_operation_endpoint,
        create_window=create_window,
        retention=retention,
        web=web,
    )
    app.register_blueprint(sumatra_api.blueprint(context))
    app.register_blueprint(operation_api.blueprint(context))
    pages.install(app, web, API_PATH)
    if prefix.strip("/"):
        mount = "/" + prefix.strip("/")
        return DispatcherMiddleware(_outside_prefix(mount), {mount: app})
    return app


def _outside_prefix(mount):
    def not_found(environ, start_response):
        body = f"not found: this store serves {mount}/\n".encode()
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                         ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
        return [body]
    return not_found
