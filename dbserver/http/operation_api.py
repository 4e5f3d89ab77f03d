"""balsamdb's operation endpoint: the same API as ``balsamdb.connect()``, over HTTP."""

import hashlib
import re
import time

import flask
from flask import g, request

import balsamdb
from balsamdb.operations import bind_params, lookup
from balsamdb.protocol import MAX_AGE

from balsamdb.server.http.access import may_use, readable_project, require_user, writable_project
from balsamdb.server.http.errors import HTTPError
from balsamdb.server.http.replies import base_url, json_body, reply
from balsamdb.server.http.state import state
from balsamdb.server.http.urls import API_PATH

# Operations a user who is not an admin may call on the projects they may use: op -> parameter naming it.
PROJECT_PARAMS = {"project_save": "name", "project_get": "name", "record_save": "project", "record_get": "project",
                  "record_list": "project", "record_labels": "project", "record_delete": "project",
                  "record_delete_by_tag": "project", "record_tag": "project", "permission_list": "project",
                  "permission_grant": "project", "record_versions": "project", "record_page": "project"}
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# A request stamped (``sent``) further in the future than this is refused: the client's clock is
# wrong, and the retention check (which refuses writes too old to be applied only once) cannot work.
MAX_CLOCK_SKEW = MAX_AGE


bp = flask.Blueprint("operation", __name__)


@bp.get(f"/{API_PATH}/")
def api_info():
    user = g.get("user")
    return reply({"balsamdb": balsamdb.__version__, "api": 1, "call": f"{base_url()}{API_PATH}/call",
                  "user": user["name"] if user else None, "admin": bool(user and user.get("admin"))})


@bp.post(f"/{API_PATH}/call")
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
    if isinstance(sent, (int, float)) and not isinstance(sent, bool) and time.time() - sent > state().retention:
        raise HTTPError(409, f"this request was made {(time.time() - sent) / 86400:.1f} days ago, longer than "
                             "the store keeps the ids of applied writes (applied_retention_days, less an hour): "
                             "refused so that it cannot be applied twice; check whether it is there, and send "
                             "it again as a new request if not")
    if isinstance(sent, (int, float)) and not isinstance(sent, bool) and sent - time.time() > MAX_CLOCK_SKEW:
        raise HTTPError(400, f"this request is stamped {sent - time.time():.0f} s in the future: the clocks of "
                             f"client and store differ by more than {MAX_CLOCK_SKEW:.0f} s; set the client's "
                             "clock right (NTP) and send it again")
    operation = lookup(op)  # BadRequest (400) for an unknown one
    if op == "ping":  # answered by this HTTP store itself
        return reply({"ok": True, "result": {"pong": True, "store": "http", "balsamdb": balsamdb.__version__}})
    if operation.server:  # status, spool_drain: of the write server behind this store
        if not user.get("admin"):
            raise HTTPError(403, f"{op} needs an admin user (db user add NAME --admin)")
        return reply({"ok": True, "result": state().store.db().call(op, **params)})
    if "saved_by" in operation.signature.parameters:
        params = dict(params, saved_by=user["name"])  # who saved a record version: the logged-in user
    bind_params(operation, params)  # and for parameters it does not take, before any other answer
    authorize(operation, params)
    # One user's ids never meet another's: the store keys the request by both.
    scoped_id = hashlib.sha256(f"{user['name']}\0{request_id}".encode()).hexdigest()[:48]
    # Never spooled here: a write this store cannot pass on is answered 503, and the client
    # retries it or keeps it in its own spool, in its order.
    result = state().store.db(spool=False).request(op, params, request_id=scoped_id)
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
