"""The same API over HTTP: ``balsamdb.connect("http://user:password@host:port/prefix/")``.

A :class:`RemoteDatabase` speaks to a balsamdb HTTP store (``db serve``)
through its operation endpoint, ``POST {base}_balsamdb/call``: every call is one
operation of :mod:`balsamdb.operations` with a request id made here, and the
store applies each id at most once, so a retry after a lost answer changes
nothing.  See docs/http.md, "The operation endpoint".

When the store cannot be reached (connection refused or reset, a timeout, or an
answer 502/503/504) the call is retried with backoff until ``client_deadline``;
then a write waits in a local spool (``remote_spool_dir``, one subdirectory per
store) and the call returns a :class:`~balsamdb.facades.SpooledWrite`.  Spooled
writes are sent, oldest first and before any newer write, as soon as the store
answers again (or by ``db spool --drain --url URL``); nothing is lost, and
nothing is applied twice.

Credentials come from the URL, or from the ``user``/``password`` arguments.
Non-admin users reach the records of their projects; jobs, users and whole-store
operations need an admin (``db user add NAME --admin``).
"""

import hashlib
import json
import os
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import urllib3

from .backoff import Backoff
from .handle import UNREACHABLE_FOR, StoreHandle
from .exceptions import (AuthenticationError, BadRequest, ConfigError, DatabaseBusy, RequestTooLarge, ServerUnavailable,
                         TryAgain, error_from_dict)
from .protocol import dumps_request
from .spool import Spool, SpoolWriter
from .urls import redact

RETRY_STATUSES = (502, 503, 504)
RETRY_CODES = (ServerUnavailable.code, TryAgain.code, DatabaseBusy.code)  # answers of the store that a later try may change
_PROBE_EVERY = 1.0  # seconds between single tries of such a store (a success ends the spooling at once)


def split_url(url, user=None, password=None):
    """``(base URL without credentials, user, password)``; the base ends with ``/``.

    A password holding ``/``, ``?``, ``#`` or ``@`` must be %-encoded in the URL."""
    try:
        parts = urlsplit(str(url))
        parts.port  # noqa: B018  (raises for a port that is not a number)
    except ValueError as exc:
        raise ConfigError(f"{redact(url)} is not a usable URL ({exc}); %-encode / ? # @ in the password") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{redact(url)} is not an http(s):// URL of a balsamdb HTTP store")
    netloc = parts.netloc.rpartition("@")[2]
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urlunsplit((parts.scheme, netloc, path, "", ""))
    if parts.username and user is None:
        user = unquote(parts.username)
    if parts.password and password is None:
        password = unquote(parts.password)
    return base, user, password


def default_spool_dir(base, user):
    root = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    tag = hashlib.sha256(f"{user or ''}@{base}".encode()).hexdigest()[:16]
    return Path(root) / "balsamdb" / "remote-spool" / tag


class RemoteDatabase(StoreHandle):
    """A balsamdb HTTP store used like a DB directory: ``jobs``, ``records``,
    ``projects`` and :meth:`call` behave as on :class:`balsamdb.api.Database`.
    Job working directories are not made here: they live beside the store."""

    db_type = "http"
    root = None

    def __init__(self, url, settings, user=None, password=None, http=None):
        """``http``: what sends the requests, an object with urllib3's ``request()`` and ``clear()``
        (default: a urllib3 pool; the in-process tests pass Flask's test client through one)."""
        self.url, self.user, password = split_url(url, user, password)
        self.settings = settings
        self.attach_facades()
        self.last_route = None
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "balsamdb-remote"}
        if self.user is not None:
            headers.update(urllib3.make_headers(basic_auth=f"{self.user}:{password or ''}"))
        self._headers = headers
        timeout = urllib3.Timeout(connect=min(5.0, settings.client_deadline), read=max(30.0, settings.client_timeout))
        self._http = http or urllib3.PoolManager(maxsize=4, timeout=timeout, retries=False)
        spool_dir = Path(settings.remote_spool_dir).expanduser() / default_spool_dir(self.url, self.user).name \
            if settings.remote_spool_dir else default_spool_dir(self.url, self.user)
        self.spool = Spool(spool_dir)
        self._spool_writer = SpoolWriter(self.spool)
        self._unreachable_until = 0.0
        self._next_probe = 0.0
        self.drained = 0  # spooled writes this connection sent and the store applied

    def __repr__(self):
        return f"<balsamdb.RemoteDatabase {self.url} as {self.user or 'anonymous'}>"

    def close(self):
        self._http.clear()

    @property
    def path(self):
        return self.url

    # -- calls --------------------------------------------------------------------------------------------

    def _body(self, request):
        """The JSON text sent (and spooled) for ``request``: NaN and infinities refused here, before
        sending or spooling.  Its time stamp is made once, when the call was made (never renewed): the
        store refuses a write that waited longer than it keeps the ids of applied writes, which could
        otherwise be applied a second time.  The store reads it as ``sent``."""
        body = dumps_request(request.message(stamp="sent"))
        if len(body) > self.settings.max_request_bytes:
            raise RequestTooLarge(f"the request is {len(body)} bytes, more than max_request_bytes "
                                  f"({self.settings.max_request_bytes}); send less at a time")
        return body

    def _read(self, request):
        return self._post(self._body(request), request.op)

    def _route(self, request):
        """A write's (or the store's own operation's) answer: the store's, or the local spool's."""
        body, op, write = self._body(request), request.op, request.write
        spool = self.settings.spool and request.spooled  # never a claim (job_acquire)
        if spool:
            if time.monotonic() < self._unreachable_until:
                # The store failed a moment ago: spool at once, and look once a second whether it is back.
                if time.monotonic() < self._next_probe:
                    return self._spool(request, body)
                self._next_probe = time.monotonic() + _PROBE_EVERY
                if not self.drain_spool(quick=True):
                    return self._spool(request, body)
                answer = self._post(body, op, spool_on_failure=True, quick=True)  # one try, not a deadline
                return self._spool(request, body) if answer is None else answer
            elif not self.drain_spool():
                return self._spool(request, body)
        elif write and time.monotonic() < self._unreachable_until:
            raise ServerUnavailable(f"{op} needs an answer now and is never spooled, and the HTTP store {self.url} "
                                    "did not answer a whole deadline just now")
        answer = self._post(body, op, spool_on_failure=spool)
        if answer is None:
            return self._spool(request, body)
        return answer

    def _post(self, body, op, spool_on_failure=False, quick=False):
        """The store's answer (a dict), retrying until ``client_deadline`` (one try when
        ``quick``); None when the store stayed unreachable and ``spool_on_failure``; else
        :class:`ServerUnavailable`."""
        backoff = Backoff(0.05, 2.0, time.monotonic() + (0.0 if quick else self.settings.client_deadline))
        why = "no try yet"
        while True:
            try:
                response = self._http.request("POST", self.url + "_balsamdb/call", body=body,
                                              headers=self._headers, preload_content=True)
            except urllib3.exceptions.HTTPError as exc:
                why = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
            else:
                if response.status not in RETRY_STATUSES or self._final(response):
                    self.last_route = "http"
                    self._unreachable_until = 0.0
                    return self._answer(response, op)
                why = f"HTTP {response.status}: {self._message(response)}"
            if not backoff.sleep():
                break
        self._unreachable_until = time.monotonic() + UNREACHABLE_FOR
        if spool_on_failure:
            return None
        raise ServerUnavailable(f"the HTTP store {self.url} did not answer {op} within "
                                f"{self.settings.client_deadline:.0f} s ({why})")

    @staticmethod
    def _final(response):
        """True for a 5xx answer that the store itself gave and that no retry can change
        (a storage error, a bug): raised, never retried or spooled."""
        try:
            data = json.loads(response.data)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("ok") is False and \
            (data.get("error") or {}).get("code") not in RETRY_CODES

    @staticmethod
    def _message(response):
        try:
            data = json.loads(response.data)
            return (data.get("error") or {}).get("message") if isinstance(data.get("error"), dict) \
                else data.get("error")
        except (ValueError, AttributeError):
            return response.data[:200].decode("utf-8", "replace")

    def _answer(self, response, op):
        try:
            data = json.loads(response.data)
        except ValueError:
            data = None
        if isinstance(data, dict) and ("ok" in data or "spooled" in data):
            return data
        message = self._message(response) or f"HTTP {response.status}"
        if response.status == 401:
            raise AuthenticationError(f"the HTTP store {self.url} refused the login of "
                                      f"{self.user or 'an anonymous user'}: {message}")
        if response.status == 403:
            raise AuthenticationError(f"{message}")
        if response.status == 404:
            raise ConfigError(f"{self.url} does not offer balsamdb's operation endpoint (HTTP 404): is it a "
                              "balsamdb HTTP store (db serve)? A plain Sumatra server can only be copied "
                              "(db copy)")
        if response.status == 413:
            raise RequestTooLarge(f"the HTTP store refused {op}: {message}")
        raise BadRequest(f"the HTTP store answered {op} with HTTP {response.status}: {message}")

    # -- the local spool ----------------------------------------------------------------------------------

    def drain_spool(self, quick=False):
        """Send the writes waiting in the local spool, oldest first.  Returns True when
        none waits any more (a refused one is moved to ``failed/`` with its answer).
        ``quick``: give up after one failed try instead of retrying for ``client_deadline``.
        A refused login keeps every file waiting (fix the password, then drain again)."""
        for path in self.spool.pending():
            try:
                body = path.read_bytes()
                op = json.loads(body).get("op", "?")
            except FileNotFoundError:
                continue  # another process of ours sent it
            except (OSError, ValueError) as exc:
                self._fail(path, {"ok": False, "error": {"code": BadRequest.code,
                                                         "message": f"unreadable spool file: {exc}"}})
                continue
            try:
                answer = self._post(body, op, spool_on_failure=True, quick=quick)
            except AuthenticationError:
                raise  # not this write's fault: every waiting write stays
            except (ConfigError, BadRequest) as exc:
                answer = {"ok": False, "error": exc.to_dict()}
            if answer is None:
                return False
            if answer.get("ok"):
                self.spool.done(path)
                self.drained += 1
            elif (answer.get("error") or {}).get("code") == AuthenticationError.code:
                raise error_from_dict(answer["error"])  # a refused login, or a right taken away: keep them
            else:
                self._fail(path, answer)
        return True

    def _fail(self, path, answer):
        try:
            self.spool.fail(path, answer)
        except FileNotFoundError:
            pass  # another process of ours met the same refusal first

    def ping(self):
        return self.call("ping")

    def info(self):
        """``(HTTP status, the store's self-description or None)`` from ``GET {base}_balsamdb/``:
        a balsamdb store answers 200 ``{"balsamdb", "api", "user", "admin"}``; another server 404.
        Raises :class:`ServerUnavailable` when nothing answers."""
        try:
            answer = self._http.request("GET", self.url + "_balsamdb/", headers=self._headers)
        except urllib3.exceptions.HTTPError as exc:
            raise ServerUnavailable(f"cannot reach {self.url}: {exc}") from None
        try:
            data = json.loads(answer.data) if answer.status == 200 else None
        except ValueError:
            data = None
        return answer.status, data if isinstance(data, dict) and data.get("api") == 1 else None
