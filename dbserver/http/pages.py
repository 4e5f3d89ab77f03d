"""What the web pages of ``db serve`` share: the hooks into the application, rendering, formats.

The pages live in blueprints (:mod:`.job_pages`) and page modules (:mod:`.record_pages`) with
their Jinja templates as files under ``templates/`` and their script and style under
``static/`` (served at ``{base}_balsamdb/static/``).  :func:`install` wires them into the
application that :func:`balsamdb.server.http.create_app` makes; the application passes
in the few things the pages need from it (who is logged in, who may read a project, its
error class), so that the pages never reach into its internals.
"""

import json
import time
from dataclasses import dataclass
from typing import Callable

import flask

from balsamdb.reads import Reader

STATIC_PATH = "_balsamdb/static"


@dataclass
class WebContext:
    """The application's hooks, as the pages use them."""

    reader: Reader                     # read-only connections (query()): pages never read through the write server
    require_user: Callable             # () -> the logged-in user, else raises the 401 challenge
    readable_project: Callable         # (name) -> the project, when the caller may read it; else raises
    error: Callable                    # (status, message) -> an exception the application answers with
    url_part: Callable                 # (text) -> a project name or label as it goes into a URL

    def require_admin(self):
        """The logged-in user when an admin (jobs are for admins, as over the operation endpoint)."""
        user = self.require_user()
        if not user.get("admin"):
            raise self.error(403, f"the jobs pages need an admin user (db user add NAME --admin); "
                                  f"{user['name']!r} may use the records of their projects")
        return user

    def respond(self, payload, template, title, /, status=200, **context):
        """``payload`` as JSON, or ``template`` rendered for a browser (as the application negotiated)."""
        if flask.g.get("format") == "html":
            user = flask.g.get("user")
            body = flask.render_template(template, title=title, base=flask.request.url_root,
                                         static=flask.request.url_root + STATIC_PATH + "/",
                                         user=user["name"] if user else None,
                                         admin=bool(user and user.get("admin")), **context)
            return flask.Response(body, status, content_type="text/html; charset=utf-8")
        return flask.Response(json.dumps(payload, ensure_ascii=False), status,
                              content_type=flask.g.get("content_type") or "application/json")


def clock(seconds):
    """UNIX seconds as ``YYYY-MM-DD HH:MM:SS`` (UTC); empty for anything else."""
    if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return ""


def span(seconds):
    """A duration for people: ``40 ms``, ``2.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 4 h``."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def web_context(reader):
    """The pages' hooks into the application (kept in its state: ``state().web``)."""
    from balsamdb.server.http.access import readable_project, require_user
    from balsamdb.server.http.errors import HTTPError
    from balsamdb.server.http.html import url_part

    return WebContext(reader=reader, require_user=require_user, readable_project=readable_project,
                      error=HTTPError, url_part=url_part)


def web():
    """The :class:`WebContext` of the application handling this request."""
    from balsamdb.server.http.state import state

    return state().web


def install(app, api_path):
    """Register the pages on ``app``: the jobs blueprint under ``/{api_path}/jobs/``, the static
    files under ``/{api_path}/static/``, the template filters."""
    from balsamdb.server.http import job_pages

    app.jinja_env.filters.update(clock=clock, span=span)
    app.register_blueprint(job_pages.bp, url_prefix=f"/{api_path}/jobs")
    app.register_blueprint(STATIC)


STATIC = flask.Blueprint("web_static", __name__, static_folder="static", static_url_path="/" + STATIC_PATH)
