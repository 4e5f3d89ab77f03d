"""How the views of the HTTP store read a request and answer it: URLs as the client reached the
store, JSON or an HTML page (as :mod:`.negotiation` chose), strict JSON bodies, ``?tags``."""

import json

import flask
from markupsafe import Markup

from balsamdb.exceptions import BadRequest
from balsamdb.protocol import loads_strict

from balsamdb.server.http.errors import HTTPError
from balsamdb.server.http.html import LAYOUT, url_part


def base_url():
    return flask.request.url_root  # scheme://host[:port]/prefix/ as the client reached us


def project_url(name):
    return f"{base_url()}{url_part(name)}/"


def page(title, template, project=None, **context):
    """An HTML page of the store: ``template`` rendered with ``context`` in the layout."""
    g = flask.g
    body = flask.render_template_string(template, base=base_url(), project=project, **context)
    return flask.render_template_string(LAYOUT, title=title, body=Markup(body), base=base_url(),
                                        project=project, user=g.user["name"] if g.get("user") else None)


def reply(data, status=200, html=None):
    """``data`` as JSON, or the HTML page ``html()`` (title, template, context) for a browser."""
    g = flask.g
    if g.format == "html" and html is not None:
        title, template, context = html()
        return flask.Response(page(title, template, **context), status, content_type="text/html; charset=utf-8")
    return flask.Response(json.dumps(data, ensure_ascii=False), status, content_type=g.content_type)


def json_body(kind):
    data = flask.request.get_data(cache=False)
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
    return [t.strip() for t in (flask.request.args.get("tags") or "").split(",") if t.strip()]
