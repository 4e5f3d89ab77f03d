"""What the views of the HTTP store share, kept in ``app.extensions["balsamdb"]``.

:func:`balsamdb.server.http.create_app` makes one :class:`HTTPState` per application; every view
is a module-level function that reads it with :func:`state` (``flask.current_app``), so a view can
be called alone in a test's application context against a real store.
"""

from dataclasses import dataclass
from typing import Any

import flask

EXTENSION = "balsamdb"


@dataclass
class HTTPState:
    store: Any            # auth.Store: writes through balsamdb.connect(), reads on read-only connections
    logins: Any           # login_guard.LoginGuard: password checks, failed logins throttled
    web: Any              # pages.WebContext: the hooks the web pages use
    history: Any          # job_pages.HistoryCache: the jobs dashboard's state history
    max_body: int         # bytes a request body may have (413 beyond)
    create_window: float  # seconds a PUT {p}/ that changes nothing still answers 201 (see app.py)
    retention: float      # seconds a request's id is kept as applied: older requests are refused (409)


def state():
    """The :class:`HTTPState` of the application handling this request."""
    return flask.current_app.extensions[EXTENSION]
