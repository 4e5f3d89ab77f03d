"""The HTTP record store: the Sumatra Server API over a DB directory (``db serve``).

A Flask application served by waitress.  Every write goes through
``balsamdb.connect(P)``, so through the write server while one runs, exactly
like the writes of job processes; every read (log-in and permission checks, the
Sumatra API's answers, the web pages) is made on read-only connections
(:mod:`balsamdb.server.http.reads`: a :class:`balsamdb.reads.Reader`, the read layer of
clients and the read service), never through the write server.  The protocol is the one Sumatra's ``smt``
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

Modules: :mod:`.app` (the application: request life cycle, errors), :mod:`.state` (what the views
share, in ``app.extensions["balsamdb"]``), :mod:`.access` and :mod:`.replies` (the views' helpers),
:mod:`.sumatra_api` and :mod:`.operation_api` (module-level views on blueprints), :mod:`.auth`
(credentials, password cache, the store connection of each thread), :mod:`.negotiation`
(JSON or HTML), :mod:`.html` (the pages; templates in ``dbserver/http/templates/store_*.html``),
:mod:`.errors` (HTTP statuses), :mod:`.urls`, :mod:`.process` (waitress).
"""

from balsamdb.server.http.app import CREATE_RACE_WINDOW, MAX_BODY_BYTES, create_app
from balsamdb.server.http.auth import PASSWORD_CACHE_SECONDS, PasswordCache, Store
from balsamdb.server.http.errors import REALM, HTTPError
from balsamdb.server.http.operation_api import MAX_CLOCK_SKEW, PROJECT_PARAMS
from balsamdb.server.http.process import make_server, serve
from balsamdb.server.http.urls import API_PATH

__all__ = ["API_PATH", "CREATE_RACE_WINDOW", "MAX_BODY_BYTES", "MAX_CLOCK_SKEW", "PASSWORD_CACHE_SECONDS",
           "PROJECT_PARAMS", "REALM", "HTTPError", "PasswordCache", "Store", "create_app",
           "make_server", "serve"]
