"""The HTTP record store: the Sumatra Server API over a DB directory (``db serve``).

A Flask application served by waitress.  Every read and write goes through
``balsamdb.connect(P)``, so through the write server while one runs, exactly
like the writes of job processes.  The protocol is the one Sumatra's ``smt``
client speaks (see docs/http.md for the reference table):

    GET          {base}                    projects the caller may read
    GET, PUT     {base}{p}/                project info and its records (absolute URLs, newest first)
    GET, PUT,    {base}{p}/{label}/        one record (PUT 200 or 201, DELETE 204)
      DELETE
    GET          {base}{p}/last/           the newest record by timestamp
    GET, DELETE  {base}{p}/tag/{t}/        records tagged t; DELETE answers the count as plain text
    GET, DELETE  {base}{p}/tagged/{t}/     the same
    GET, POST    {base}{p}/permissions/    users of the project; POST {"user": name} grants one

Authentication is HTTP Basic against the users of the DB directory (``db user``);
an anonymous request for anything not public gets 401 with a ``WWW-Authenticate``
challenge, because httplib2 (smt's HTTP library) sends credentials only then.

Use :func:`create_app` for any WSGI server, or :func:`serve` to run waitress.
"""

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
from base64 import b64decode
from binascii import Error as Base64Error
from urllib.parse import quote

import flask
from markupsafe import Markup
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.dispatcher import DispatcherMiddleware

import balsamdb
from balsamdb.api import SpooledWrite
from balsamdb.exceptions import (AuthenticationError, BadRequest, BalsamDBError, ConfigError, Conflict,
                                 DatabaseBusy, InvalidTransition, NotFound, RequestTooLarge, ServerUnavailable,
                                 StorageError, TryAgain)
from balsamdb.operations import bind_params, lookup
from balsamdb.protocol import MAX_AGE, SERVER_OPS, loads_strict
from balsamdb.passwords import verify_password

from . import http_auth

log = logging.getLogger("balsamdb.server.http_store")

REALM = "balsamdb"
MAX_BODY_BYTES = 64 * 1024 * 1024
# A PUT {p}/ that changes nothing answers 201 for this long after the project was
# made: smt accepts only 201 from its create call, and two jobs racing to create
# one project must both see it (see docs/http.md, "Project creation").
CREATE_RACE_WINDOW = 60.0
PASSWORD_CACHE_SECONDS = 60.0   # since the last successful use
USER_CACHE_SECONDS = 1.0         # a user's record (hash, projects) is read again after this
HTML_RECORD_LIMIT = 50           # records shown on a project's HTML page (whole documents are read)
HTML_OUTPUT_CHARS = 100_000      # program output shown on a record's HTML page
# Sub-paths of a project that are not record labels.
API_PATH = "_balsamdb"           # {base}_balsamdb/ is balsamdb's own endpoint, not a project
RESERVED_LABELS = ("last", "permissions")
RESERVED_PREFIXES = ("tag/", "tagged/")
SUMATRA_MEDIA_TYPE = re.compile(r"application/vnd\.sumatra\.[a-z-]+-v\d+\+json")

# Operations a user who is not an admin may call on the projects they may use: op -> parameter naming it.
PROJECT_PARAMS = {"project_save": "name", "project_get": "name", "record_save": "project", "record_get": "project",
                  "record_list": "project", "record_labels": "project", "record_delete": "project",
                  "record_delete_by_tag": "project", "record_tag": "project", "permission_list": "project",
                  "permission_grant": "project", "record_versions": "project"}
CODE_OF_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 405: "bad_request",
                  406: "bad_request", 409: "conflict", 413: "too_large", 429: "auth", 500: "internal",
                  503: "unavailable"}
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# A request stamped (``sent``) further in the future than this is refused: the client's clock is
# wrong, and the retention check (which refuses writes too old to be applied only once) cannot work.
MAX_CLOCK_SKEW = MAX_AGE

STATUS_OF_ERROR = [  # library error -> HTTP status; the first match wins
    (RequestTooLarge, 413),
    (AuthenticationError, 403),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidTransition, 409),
    ((ServerUnavailable, TryAgain, DatabaseBusy, StorageError), 503),  # try again later
    (BalsamDBError, 500),  # a bug of the write server, a broken configuration: its log says why
]


class HTTPError(Exception):
    """An answer other than success, raised anywhere in a view."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _challenge(message="log in to see this"):
    return HTTPError(401, message, {"WWW-Authenticate": f'Basic realm="{REALM}"'})


# -- the store, one connection per thread ---------------------------------------------------------------

class Store:
    """``balsamdb.connect(path)`` once per thread (a Database is not thread-safe)."""

    def __init__(self, path):
        self.path = str(path)
        self._local = threading.local()
        self._users = {}  # name -> (user, valid until): dict operations are atomic under the GIL

    def db(self, spool=True):
        """This thread's connection; ``spool=False``: one that raises instead of spooling
        (for the operation endpoint, whose clients spool and retry themselves, in order)."""
        name = "db" if spool else "db_nospool"
        db = getattr(self._local, name, None)
        if db is None:
            db = balsamdb.connect(self.path) if spool else balsamdb.connect(self.path, spool=False)
            setattr(self._local, name, db)
        return db

    def read(self, op, **params):
        return self.db().call(op, **params)

    def write(self, op, spool=True, **params):
        result = self.db(spool).call(op, **params)
        if isinstance(result, SpooledWrite):
            # No server answered: the write waits in the spool and will be applied, but it
            # cannot be read back now, which no Sumatra client expects after a success.
            raise HTTPError(202, "the store's server is unreachable: this write waits in the spool "
                                 "and will be stored when the server is back", {"Retry-After": "10"})
        return result

    def project(self, name):
        """Project ``name`` with its record count, or None."""
        try:
            return self.read("project_get", name=name, count=False)
        except NotFound:
            return None

    def user(self, name):
        """User ``name`` (with hash and projects) as read at most ``USER_CACHE_SECONDS`` ago, or None.

        Every request of a logged-in user needs it; reading it from the store each time
        doubled the work of the write server.  A grant or a removal shows within that time."""
        now = time.monotonic()
        cached = self._users.get(name)
        if cached is not None and cached[1] > now:
            return dict(cached[0], projects=list(cached[0]["projects"]))
        try:
            user = self.read("user_get", name=name)
        except (NotFound, BadRequest):
            user = None
        if user is not None:
            if len(self._users) > 4096:
                self._users.clear()
            self._users[name] = (user, now + USER_CACHE_SECONDS)
        else:
            self._users.pop(name, None)
        return None if user is None else dict(user, projects=list(user["projects"]))

    def forget_user(self, name):
        self._users.pop(name, None)


class PasswordCache:
    """Remembers successful password checks for a while: scrypt is slow on purpose, and
    each smt command sends about 30 requests.  Keyed by the stored hash too, so that a
    changed password takes effect as soon as the user's record is read again (within
    ``USER_CACHE_SECONDS``); failures are never cached."""

    def __init__(self, seconds=PASSWORD_CACHE_SECONDS, max_entries=4096):
        self.seconds, self.max_entries = seconds, max_entries
        self._valid_until = {}
        self._lock = threading.Lock()

    def known(self, name, password, stored_hash):
        """True when this password was verified for this user and hash a moment ago (no scrypt)."""
        key = (name, hashlib.sha256(password.encode()).hexdigest(), stored_hash)
        with self._lock:
            return self._valid_until.get(key, 0) > time.monotonic()

    def check(self, name, password, stored_hash):
        key = (name, hashlib.sha256(password.encode()).hexdigest(), stored_hash)
        now = time.monotonic()
        with self._lock:
            if self._valid_until.get(key, 0) > now:
                self._valid_until[key] = now + self.seconds  # in use: kept (no stampede of scrypt checks)
                return True
        if not verify_password(password, stored_hash):
            return False
        with self._lock:
            if len(self._valid_until) >= self.max_entries:
                self._valid_until = {k: t for k, t in self._valid_until.items() if t > now}
                if len(self._valid_until) >= self.max_entries:
                    self._valid_until.clear()
            self._valid_until[key] = now + self.seconds
        return True


def _basic_credentials(header):
    """(name, password) from an ``Authorization: Basic`` header; HTTPError 401 when unreadable."""
    scheme, _, data = header.partition(" ")
    if scheme.lower() != "basic":
        raise _challenge("only HTTP Basic authentication is supported")
    try:
        name, sep, password = b64decode(data.strip(), validate=True).decode("utf-8").partition(":")
    except (Base64Error, UnicodeDecodeError, ValueError):
        raise _challenge("the Authorization header is not valid HTTP Basic") from None
    if not sep or not name:
        raise _challenge("the Authorization header is not valid HTTP Basic")
    return name, password


# -- content negotiation ------------------------------------------------------------------------------------

def _negotiate(request):
    """("json" | "html", Content-Type of the answer), from ?format= or Accept; HTTPError 406."""
    wanted = request.args.get("format")
    if wanted is not None:
        if wanted.lower() == "json":
            return "json", "application/json"
        if wanted.lower() == "html":
            return "html", "text/html; charset=utf-8"
        raise HTTPError(406, f"unknown format {wanted!r}: use ?format=json or ?format=html")
    if not request.headers.get("Accept", "").strip():
        return "json", "application/json"
    accept = request.accept_mimetypes
    best = accept.best_match(["application/json", "text/html"])
    for value, quality in accept:  # highest quality first
        if quality > 0 and SUMATRA_MEDIA_TYPE.fullmatch(value) and quality >= accept.quality(best or "x/x"):
            return "json", value  # the client named a Sumatra media type: answer in it
    if best == "text/html":
        return "html", "text/html; charset=utf-8"
    if best == "application/json":
        return "json", "application/json"
    raise HTTPError(406, "this store answers application/json (or a Sumatra media type) and text/html; "
                         f"the request accepts only {request.headers.get('Accept')!r}")


# -- HTML pages: small, escaped by Jinja's autoescaping ----------------------------------------------------

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} - balsamdb</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;
vertical-align:top}th{background:#f4f4f4}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.tag{display:inline-block;background:#e8eef8;border-radius:.3em;padding:0 .4em;margin:0 .2em .2em 0;
text-decoration:none;color:#234}.muted{color:#777}nav{margin-bottom:1em}
</style></head><body>
<nav><a href="{{ base }}">projects</a>{% if project %} / <a href="{{ base }}{{ project|urlpart }}/">{{ project }}</a>{% endif %}
<span class="muted">{% if user %}&middot; logged in as {{ user }}{% endif %}</span></nav>
{{ body }}
</body></html>"""

_PROJECTS = """<h1>Projects</h1>
{% if message %}<p>{{ message }}</p>{% endif %}
{% if projects %}<table><tr><th>project</th><th>description</th><th>access</th></tr>
{% for p in projects %}<tr><td><a href="{{ base }}{{ p.name|urlpart }}/">{{ p.name }}</a></td>
<td>{{ p.description }}</td><td>{{ "public" if p.public else "members" }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No projects to show.</p>{% endif %}"""

_PROJECT = """<h1>{{ project }}</h1>
{% if info.description %}<p>{{ info.description }}</p>{% endif %}
{% if info.public %}<p class="muted">public: anyone may read it</p>{% endif %}
{% if info.write_once %}<p class="muted">write-once: a save may not change a record's provenance</p>{% endif %}
<p class="muted">{{ total }} record{{ "" if total == 1 else "s" }}{% if tags %} tagged {{ tags|join(", ") }}
(<a href="{{ base }}{{ project|urlpart }}/">all records</a>){% endif %}{% if total > records|length %};
the newest {{ records|length }} shown{% endif %} &middot; <a href="?format=json{% if tags %}&amp;tags={{ tags|join(",")|urlencode }}{% endif %}">JSON</a></p>
{% if records %}<table><tr><th>label</th><th>timestamp</th><th>reason</th><th>outcome</th><th>duration</th><th>tags</th></tr>
{% for r in records %}<tr><td><a href="{{ base }}{{ project|urlpart }}/{{ r.label|urlpart }}/">{{ r.label }}</a></td>
<td>{{ r.timestamp }}</td><td>{{ r.reason }}</td><td>{{ r.outcome }}</td><td>{{ r.duration|seconds }}</td>
<td>{% for t in r.tags or [] %}<a class="tag" href="?tags={{ t|urlencode }}">{{ t }}</a>{% endfor %}</td></tr>{% endfor %}
</table>{% endif %}"""

_RECORD = """<h1>{{ r.label }}</h1>
<p class="muted"><a href="?{% if version %}version={{ version }}&amp;{% endif %}format=json">JSON</a>{% if version %} &middot; version {{ version }}{% endif %}
&middot; <a href="?versions">versions</a></p>
<table>
{% for name, value in fields %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}
<tr><th>tags</th><td>{% for t in r.tags or [] %}<a class="tag" href="{{ base }}{{ project|urlpart }}/?tags={{ t|urlencode }}">{{ t }}</a>{% endfor %}</td></tr>
</table>
{% if r.parameters and r.parameters.content %}<h2>Parameters</h2><pre>{{ r.parameters.content }}</pre>{% endif %}
{% if r.output_data %}<h2>Output data</h2><table><tr><th>path</th><th>digest</th><th>created</th></tr>
{% for o in r.output_data %}<tr><td>{{ o.path }}</td><td>{{ o.digest }}</td><td>{{ o.creation }}</td></tr>{% endfor %}
</table>{% endif %}
<h2>Program output</h2>{% set lines = output.count("\n") + 1 %}{% if lines > 40 or output|length > 4000 %}
<details class="output"><summary>{{ lines }} lines, {{ (r.stdout_stderr or "")|string|length }} characters (show)</summary><pre>{{ output }}</pre></details>
{% else %}<pre>{{ output }}</pre>{% endif %}
{% if r.diff %}<h2>Uncommitted changes</h2><pre>{{ r.diff }}</pre>{% endif %}"""

_VERSIONS = """<h1>{{ label }}: versions</h1>
<p class="muted">every save that changed the record, oldest first; the last is the current record
&middot; <a href="?versions&amp;format=json">JSON</a></p>
<table><tr><th>version</th><th>saved at (UTC)</th><th>saved by</th><th>bytes</th><th>changed</th></tr>
{% for v in versions %}<tr><td><a href="?version={{ v.version }}">{{ v.version }}</a></td><td>{{ v.saved_at|utc }}</td>
<td>{{ v.saved_by }}</td><td>{{ v.bytes }}</td><td>{{ v.changed|join(", ") }}</td></tr>{% endfor %}
</table>"""

_ERROR = """<h1>{{ status }}</h1><p>{{ message }}</p>"""


def _seconds(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.2f} s"
    return ""


def _utc(seconds):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds)) if isinstance(seconds, (int, float)) else ""


def _record_fields(doc):
    executable = doc.get("executable") or {}
    repository = doc.get("repository") or {}
    return [
        ("timestamp", doc.get("timestamp")), ("reason", doc.get("reason")), ("outcome", doc.get("outcome")),
        ("duration", _seconds(doc.get("duration"))), ("user", doc.get("user")),
        ("main file", doc.get("main_file")), ("version", doc.get("version")),
        ("repository", repository.get("url") if isinstance(repository, dict) else repository),
        ("executable", " ".join(str(executable.get(k) or "") for k in ("name", "version", "path"))
         if isinstance(executable, dict) else executable),
        ("arguments", doc.get("script_arguments")),
    ]


# -- the application ---------------------------------------------------------------------------------------

def _url_part(text):
    """A project name or label as it goes into a URL (``/`` kept: labels may hold it)."""
    return quote(str(text), safe="/:|@!$'()*+,;=-._~")


def create_app(path, prefix="/", max_body=MAX_BODY_BYTES, create_window=CREATE_RACE_WINDOW):
    """The WSGI application serving DB directory ``path`` under URL ``prefix``.

    ``create_window``: seconds after a project's creation during which a PUT of it
    that changes nothing still answers 201 (see :data:`CREATE_RACE_WINDOW`).
    """
    store = Store(path)
    passwords = PasswordCache()
    logins = http_auth.LoginGuard(passwords)
    from balsamdb.settings import load_settings

    keep = load_settings().applied_retention_days * 86400.0
    retention = max(keep - 3600.0, keep / 2)  # a margin for clocks and for the server's own delay
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.url_map.merge_slashes = False  # a label may hold "//": never redirect it to another record
    app.jinja_env.filters.update(urlpart=_url_part, seconds=_seconds, utc=_utc)
    request = flask.request
    g = flask.g

    # -- request life cycle ----------------------------------------------------------------------

    @app.before_request
    def begin():
        g.started, g.user = time.monotonic(), None
        g.format = "json"  # how a 406 from _negotiate is answered
        g.format, g.content_type = _negotiate(request)
        header = request.headers.get("Authorization")
        if header:
            g.user = _authenticate(*_basic_credentials(header))

    def _authenticate(name, password):
        # One scrypt per attempt, known user or not; failed logins throttled (see http_auth.py).
        outcome, detail = logins.check(request.remote_addr, name, password, store.user(name))
        if outcome == http_auth.THROTTLED:
            log.warning("throttled login as %r from %s (%s s)", name, request.remote_addr, detail)
            raise HTTPError(429, f"too many failed logins as {name!r}: try again in {detail} s",
                            {"Retry-After": str(detail)})
        if outcome != http_auth.OK:
            log.warning("failed login as %r from %s", name, request.remote_addr)
            raise _challenge("wrong user name or password")
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
            body = _page(str(status), _ERROR, status=status, message=message)
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
            status = next(code for cls, code in STATUS_OF_ERROR if isinstance(exc, cls))
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
        return f"{base_url()}{_url_part(name)}/"

    def _page(title, template, project=None, **context):
        body = flask.render_template_string(template, base=base_url(), project=project, **context)
        return flask.render_template_string(_LAYOUT, title=title, body=Markup(body), base=base_url(),
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
            raise _challenge()
        return g.user

    def may_use(name):
        if g.user is None:
            return False
        if g.user.get("admin"):
            return True  # admins may do everything, on every project
        if name not in g.user["projects"]:
            # Read again: a racing request of this user may have created the project since
            # this one logged in (16 `smt run` of one project start together).
            store.forget_user(g.user["name"])
            g.user["projects"] = (store.user(g.user["name"]) or {"projects": []})["projects"]
        return name in g.user["projects"]

    def readable_project(name):
        """The project, when the caller may read it; else 401, 403 or 404."""
        project = store.project(name)
        if project is not None and project["public"]:
            return project
        require_user()
        if project is None:
            raise HTTPError(404, f"no project {name!r}")
        if not may_use(name):
            raise HTTPError(403, f"user {g.user['name']!r} may not use project {name!r} "
                                 f"(grant it with: db user grant {g.user['name']} {name})")
        return project

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
            store.forget_user(g.user["name"])
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

    # -- views ----------------------------------------------------------------------------------------

    @app.get("/")
    def project_list():
        projects = store.read("project_list")
        mine = set(g.user["projects"]) if g.user else set()
        admin = bool(g.user and g.user.get("admin"))
        visible = [p for p in projects if admin or p["public"] or p["name"] in mine]
        if g.user is None and len(visible) < len(projects):
            raise _challenge("log in to see every project you may use")
        return reply(_project_entries(visible),
                     html=lambda: ("Projects", _PROJECTS, {"projects": visible, "message": None}))

    def _project_entries(projects):
        return [{"id": p["name"], "name": p["name"], "description": p["description"], "public": p["public"],
                 "uri": project_url(p["name"])} for p in projects]

    def _error_response_with_projects(exc):
        public = [p for p in store.read("project_list") if p["public"]]
        body = _page("Projects", _PROJECTS, projects=public,
                     message="Log in to see every project you may use. Public projects:")
        response = flask.Response(body, 401, content_type="text/html; charset=utf-8")
        response.headers.update(exc.headers)
        return response

    @app.route("/<project>/", methods=["GET", "PUT"])
    def project_view(project):
        if request.method == "PUT":
            return put_project(project)
        if web_records.takes_over(request):  # the HTML page, and ?search, ?sort, ?page, ?compare
            return web_records.project_page(web, project)
        return project_listing(project, tags_param())

    def project_listing(name, tags):
        """The project and its records; with ``tags``, the records having any of them (the
        Sumatra Server API's meaning of ``?tags=a,b``)."""
        project = readable_project(name)
        labels = store.read("record_labels", project=name, tags=tags, match="any")
        data = {"id": name, "name": name, "description": project["description"], "public": project["public"],
                "write_once": project["write_once"], "created_at": project["created_at"], "tags": tags,
                "records": [f"{project_url(name)}{_url_part(label)}/" for label in labels]}

        def html():
            records = store.read("record_list", project=name, tags=tags, limit=HTML_RECORD_LIMIT, match="any")
            return name, _PROJECT, {"project": name, "info": project, "records": records, "total": len(labels),
                                    "tags": tags}
        return reply(data, html=html)

    def put_project(name):
        body = json_body("project")
        description, public, write_once = body.get("description"), body.get("public"), body.get("write_once")
        for flag, value in (("public", public), ("write_once", write_once)):
            if value is not None and not isinstance(value, bool):
                raise HTTPError(400, f"{flag} must be true or false")
        if description is not None and not isinstance(description, str):
            raise HTTPError(400, "description must be a string")
        settings = {"description": description, "public": public, "write_once": write_once}
        existing = writable_project(name, create=True)
        if existing is None:  # made by this request (or by a racing one a moment ago)
            if any(v is not None for v in settings.values()):
                store.write("project_save", name=name, **settings)
            status = 201
        else:
            changes = any(v is not None and v != existing[k] for k, v in settings.items())
            if changes:
                store.write("project_save", name=name, **settings)
                status = 200
            else:
                young = time.time() - existing["created_at"] < create_window
                status = 201 if young or store.read("project_get", name=name)["records"] == 0 else 200
        project = store.read("project_get", name=name, count=False)
        return reply({"id": name, "name": name, "description": project["description"],
                      "public": project["public"], "write_once": project["write_once"],
                      "created_at": project["created_at"]}, status)

    @app.route("/<project>/<path:label>/", methods=["GET", "PUT", "DELETE", "POST"])
    def below_project(project, label):
        method = "GET" if request.method == "HEAD" else request.method
        if method == "PUT" and (label in RESERVED_LABELS or label.startswith(RESERVED_PREFIXES)):
            raise HTTPError(400, f"the label {label!r} names a part of the API "
                                 f"({', '.join(RESERVED_LABELS + RESERVED_PREFIXES)}); use another label")
        for start in RESERVED_PREFIXES:  # {p}/tag/{t}/ and {p}/tagged/{t}/
            if label.startswith(start):
                return tagged(project, label[len(start):], method)
        if label == "last":
            allow(method, "GET")
            readable_project(project)
            newest = store.read("record_list", project=project, limit=1)
            if not newest:
                raise HTTPError(404, f"project {project!r} has no records")
            return record_reply(project, newest[0])
        if label == "permissions":
            return permissions(project, method)
        allow(method, "GET", "PUT", "DELETE")
        if method == "GET":
            readable_project(project)
            if "versions" in request.args:
                return versions_reply(project, label)
            version = request.args.get("version")
            if version is not None:
                if not version.isdigit() or int(version) < 1:
                    raise HTTPError(400, f"version must be a number from 1, not {version!r} (see ?versions)")
                doc = store.read("record_get", project=project, label=label, version=int(version))
                return record_reply(project, doc, int(version))
            return record_reply(project, store.read("record_get", project=project, label=label))
        if method == "PUT":
            return put_record(project, label)
        writable_project(project)
        store.write("record_delete", project=project, label=label)
        return flask.Response(status=204)

    def allow(method, *methods):
        if method not in methods:
            raise HTTPError(405, f"{method} is not allowed here; use {', '.join(methods)}",
                            {"Allow": ", ".join(methods)})

    def versions_reply(project, label):
        versions = store.read("record_versions", project=project, label=label)
        return reply({"project": project, "label": label, "versions": versions},
                     html=lambda: (f"{label}: versions", _VERSIONS, {"project": project, "label": label,
                                                                      "versions": versions}))

    def record_reply(project, doc, version=None):
        def html():
            output = str(doc.get("stdout_stderr") or "")
            if len(output) > HTML_OUTPUT_CHARS:
                output = output[:HTML_OUTPUT_CHARS] + f"\n... ({len(output) - HTML_OUTPUT_CHARS} more characters: " \
                                                      "see the JSON)"
            return str(doc.get("label")), _RECORD, {"project": project, "r": doc, "output": output,
                                                    "fields": _record_fields(doc), "version": version}
        return reply(doc, html=html)

    def put_record(project, label):
        record = json_body("record")
        if record.get("label") != label:
            raise HTTPError(400, f"the record's label {record.get('label')!r} differs from the label in the "
                                 f"URL {label!r}")
        writable_project(project, create=True)
        created = store.write("record_save", project=project, record=record, saved_by=g.user["name"])["created"]
        return reply({"project": project, "label": label, "created": created}, 201 if created else 200)

    def tagged(project, tag, method):
        allow(method, "GET", "DELETE")
        if not tag:
            raise HTTPError(404, "give a tag: {project}/tag/{tag}/")
        if method == "DELETE":
            writable_project(project)
            deleted = store.write("record_delete_by_tag", project=project, tag=tag)["deleted"]
            return flask.Response(str(deleted), 200, content_type="text/plain; charset=utf-8")
        return project_listing(project, [tag])

    def permissions(project, method):
        allow(method, "GET", "POST")
        if method == "POST":
            writable_project(project)
            user = json_body("permission").get("user")
            if not isinstance(user, str) or not user:
                raise HTTPError(400, 'give the user to grant as {"user": "name"}')
            granted = store.write("permission_grant", project=project, user=user)["granted"]
            store.forget_user(user)
            users = store.read("permission_list", project=project)
            return reply({"project": project, "users": users, "granted": granted}, 201 if granted else 200)
        readable_project(project)
        if not may_use(project):
            require_user()
            raise HTTPError(403, f"only users of project {project!r} may see who they are")
        return reply({"project": project, "users": store.read("permission_list", project=project)})

    # -- balsamdb's operation endpoint: the same API as balsamdb.connect(), over HTTP --------------

    @app.get(f"/{API_PATH}/")
    def api_info():
        user = g.get("user")
        return reply({"balsamdb": balsamdb.__version__, "api": 1, "call": f"{base_url()}{API_PATH}/call",
                      "user": user["name"] if user else None, "admin": bool(user and user.get("admin"))})

    @app.post(f"/{API_PATH}/call")
    def api_call():
        user = require_user()
        message = json_body("request")
        request_id, op, params = message.get("id"), message.get("op"), message.get("params", {})
        if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
            raise HTTPError(400, "id must be 16 to 64 letters, digits, - or _ (made by the client, "
                                 "the same on every retry)")
        if not isinstance(params, dict):
            raise HTTPError(400, "params must be an object")
        sent = message.get("sent")
        if isinstance(sent, (int, float)) and not isinstance(sent, bool) and time.time() - sent > retention:
            raise HTTPError(409, f"this request was made {(time.time() - sent) / 86400:.1f} days ago, longer than "
                                 "the store keeps the ids of applied writes (applied_retention_days, less an hour): "
                                 "refused so that it cannot be applied twice; check whether it is there, and send "
                                 "it again as a new request if not")
        if isinstance(sent, (int, float)) and not isinstance(sent, bool) and sent - time.time() > MAX_CLOCK_SKEW:
            raise HTTPError(400, f"this request is stamped {sent - time.time():.0f} s in the future: the clocks of "
                                 f"client and store differ by more than {MAX_CLOCK_SKEW:.0f} s; set the client's "
                                 "clock right (NTP) and send it again")
        if op == "ping":  # answered by this HTTP store itself
            return reply({"ok": True, "result": {"pong": True, "store": "http", "balsamdb": balsamdb.__version__}})
        if op in SERVER_OPS:  # status, spool_drain: of the write server behind this store
            if not user.get("admin"):
                raise HTTPError(403, f"{op} needs an admin user (db user add NAME --admin)")
            return reply({"ok": True, "result": store.db().call(op, **params)})
        operation = lookup(op)  # BadRequest (400) for an unknown one
        if "saved_by" in operation.signature.parameters:
            params = dict(params, saved_by=user["name"])  # who saved a record version: the logged-in user
        bind_params(operation, params)  # and for parameters it does not take, before any other answer
        authorize(operation, params)
        # One user's ids never meet another's: the store keys the request by both.
        scoped_id = hashlib.sha256(f"{user['name']}\0{request_id}".encode()).hexdigest()[:48]
        # Never spooled here: a write this store cannot pass on is answered 503, and the client
        # retries it or keeps it in its own spool, in its order.
        result = store.db(spool=False).request(op, params, request_id=scoped_id)
        if op == "project_list" and not user.get("admin"):
            result = [p for p in result if p["public"] or p["name"] in user["projects"]]
        return reply({"ok": True, "result": result})

    def authorize(operation, params):
        """403 unless the caller may run ``operation`` with ``params`` (admins may run all)."""
        user = g.user
        if user.get("admin") or operation.name == "project_list":
            return
        field = PROJECT_PARAMS.get(operation.name)
        name = params.get(field) if field else None
        if field is None or not isinstance(name, str):
            raise HTTPError(403, f"{operation.name} needs an admin user (db user add NAME --admin); "
                                 f"{user['name']!r} may use the records of their projects")
        if name == API_PATH:
            raise HTTPError(400, f"{API_PATH!r} is reserved; choose another project name")
        if operation.write:
            writable_project(name, create=operation.name in ("record_save", "project_save"))
        else:
            readable_project(name)
            if operation.name == "permission_list" and not may_use(name):
                raise HTTPError(403, f"only users of project {name!r} may see who they are")

    # -- the web pages (dbserver/web_*.py, templates/, static/): read on read-only connections -------
    from . import web_pages, web_records  # web_records: project_view above uses it
    from .web_reads import ReadOnlyStore

    web = web_pages.WebContext(reader=ReadOnlyStore(path), require_user=require_user,
                               readable_project=readable_project, error=HTTPError, url_part=_url_part)
    web_pages.install(app, web, API_PATH)

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


# -- the server process ------------------------------------------------------------------------------------

def _stop_on_sigterm(signum, frame):
    # waitress's loop turns SystemExit into a graceful stop: requests in progress are
    # finished and answered first.  Raising is the only way into its loop from outside.
    raise SystemExit(0)


def make_server(path, host="127.0.0.1", port=8000, prefix="/", threads=16, max_body=MAX_BODY_BYTES,
                trusted_proxy=None, create_window=CREATE_RACE_WINDOW):
    """A waitress server for DB directory ``path`` (not yet running); see :func:`serve`."""
    import waitress

    options = {}
    if trusted_proxy:
        options = {"trusted_proxy": trusted_proxy, "clear_untrusted_proxy_headers": True,
                   "trusted_proxy_headers": "x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port"}
    app = create_app(path, prefix=prefix, max_body=max_body, create_window=create_window)
    return waitress.create_server(app, host=host, port=port,
                                  threads=threads, max_request_body_size=max_body, ident="balsamdb",
                                  **options)


def serve(path, host="127.0.0.1", port=8000, prefix="/", threads=16, max_body=MAX_BODY_BYTES,
          trusted_proxy=None, create_window=CREATE_RACE_WINDOW, ready=None):
    """Serve DB directory ``path`` over HTTP until SIGTERM or Ctrl-C.

    ``ready(url)`` is called once the socket listens.  Logs go to ``P/log/http.log``.
    """
    from balsamdb.dbdir import PRIVATE_UMASK, DBDirectory

    from .logs import setup_logging

    dbdir = DBDirectory(path)
    dbdir.config()  # a clear error for a path that is not a DB directory
    os.umask(PRIVATE_UMASK)  # this process's files in P (http.log, the spool) are private to its owner
    setup_logging(dbdir.log_dir / "http.log")
    # The worker threads block SIGTERM and SIGINT (they inherit the mask made here), so the kernel
    # gives those to the main thread: one given to a worker would wait for the loop's 1 s select.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = make_server(dbdir.path, host, port, prefix, threads, max_body, trusted_proxy, create_window)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another --port (or --host)") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    shown_host = f"[{server.effective_host}]" if ":" in str(server.effective_host) else server.effective_host
    url = f"http://{shown_host}:{server.effective_port}/{prefix.strip('/')}{'/' if prefix.strip('/') else ''}"
    log.info("serving %s (%s) at %s with %d threads, bodies up to %d bytes%s", dbdir.path, dbdir.db_type, url,
             threads, max_body, f", trusting proxy {trusted_proxy}" if trusted_proxy else "")
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        if ready is not None:
            ready(url)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
        log.info("stopped serving %s", dbdir.path)
    return url
