"""Who may do what, for the views of the HTTP store: the logged-in user (``flask.g.user``), the
projects they may read and write (read on read-only connections, see :mod:`.reads`)."""

import logging

import flask

from balsamdb.server.http.errors import HTTPError, challenge
from balsamdb.server.http.state import state
from balsamdb.server.http.urls import API_PATH

log = logging.getLogger("balsamdb.server.http")


def at_operation_endpoint():
    """True for a request to ``{base}_balsamdb/call``: its errors are answered as the write server
    answers them, and it never spools (its client does)."""
    return flask.request.path.endswith(f"/{API_PATH}/call")


def require_user():
    g = flask.g
    if g.user is None:
        raise challenge()
    return g.user


def may_use(name):
    g = flask.g
    if g.user is None:
        return False
    if g.user.get("admin"):
        return True  # admins may do everything, on every project
    if name not in g.user["projects"]:
        # Read again: a racing request of this user may have created the project since
        # this one logged in (16 `smt run` of one project start together).
        g.user["projects"] = (state().store.user(g.user["name"]) or {"projects": []})["projects"]
    return name in g.user["projects"]


def readable_project(name):
    """The project, when the caller may read it; else 401 (anonymous) or 404.

    A logged-in user who may not use a project gets the same 404 as for one that does not
    exist, so that reads do not tell who has which projects (see docs/http.md)."""
    project = state().store.project(name)
    if project is not None and project["public"]:
        return project
    require_user()
    g = flask.g
    if project is None or not may_use(name):
        raise HTTPError(404, f"no project {name!r} that user {g.user['name']!r} may use (an admin "
                             f"grants one with: db user grant {g.user['name']} {name})")
    return project


def may_write_before_body(name):
    """401 for an anonymous caller, 403 for an existing project the caller may not write: checked
    before a request's body is read, so that nobody else makes the store read and parse it."""
    require_user()
    if state().store.project(name) is not None and not may_use(name):
        raise HTTPError(403, f"user {flask.g.user['name']!r} may not write project {name!r}")


def writable_project(name, create=False):
    """The project, when the caller may write it (None when ``create`` made it now)."""
    require_user()
    g, store = flask.g, state().store
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
