"""The public Python API: ``balsamdb.connect()`` and what it returns.

Every call becomes one :class:`~balsamdb.request.Request` of :mod:`balsamdb.operations` with a
fresh id, made once (:meth:`balsamdb.handle.StoreHandle.request`, the route skeleton it shares
with :class:`balsamdb.remote.RemoteDatabase`).
While a server runs for the DB directory, a write goes through it; when none runs
and the database is SQLite, it is applied directly (unless ``require_server``);
see :meth:`Database._route`.  Reads never go to the write server: on its host, with
the SQLite file on a local file system, the client reads the file itself on a
read-only connection; otherwise the read service beside the write server answers
them (see :mod:`balsamdb.reads` and ``Database._read``).
"""

import logging
import os
import time

from . import address_file, protocol
from .client import ServerClient, server_state, unavailable
from .dbdir import DBDirectory
from .exceptions import NotADBDirectory, RequestTooLarge, ServerUnavailable, TryAgain
from .handle import UNREACHABLE_FOR, StoreHandle
from .read_route import ReadRoute
from .settings import CHECKOUT_SOURCE, USER_DIR_SOURCE, load_settings, resolve_db_path
from .spool import Spool, SpoolWriter
from .wording import shell_path

log = logging.getLogger(__name__)

_COMING_POLL = 0.02  # seconds between looks at the address file while a server restarts


def connect(path=None, **settings):
    """Open the DB directory ``path`` (or the default one; see ``db which``).

    ``settings`` override the user settings for this connection, e.g.
    ``connect(require_server=True, client_deadline=300)``.  The default DB
    directory is created on first use; any other must exist (``db init``).

    ``path`` may also be the URL of a balsamdb HTTP store,
    ``http(s)://user:password@host:port/prefix/`` (as may ``BALSAM_DB_PATH``):
    the same API then runs over HTTP, with retries and a local spool; see
    :class:`balsamdb.remote.RemoteDatabase`.
    """
    url = str(path) if path is not None else os.environ.get("BALSAM_DB_PATH", "")
    if url.startswith(("http://", "https://")):
        from .remote import RemoteDatabase

        return RemoteDatabase(url, load_settings(**settings))
    resolved = load_settings(**settings)
    db_path, source = resolve_db_path(path, resolved)
    dbdir = DBDirectory(db_path)
    if not dbdir.is_db_directory():
        if source in (CHECKOUT_SOURCE, USER_DIR_SOURCE):
            dbdir.init("sqlite3", settings=resolved)
        else:
            dbdir.config()  # raises the precise reason
            raise NotADBDirectory(f"{shell_path(db_path)} is not a DB directory; "
                                  f"create it with: db init {shell_path(db_path)}")
    return Database(dbdir, resolved)


class Database(ReadRoute, StoreHandle):
    """A connection to one DB directory.  Use :func:`connect` to make one."""

    def __init__(self, dbdir, settings):
        self.dbdir = dbdir
        self.root = dbdir.path  # job working directories are relative to it
        self.settings = settings
        self._config_signature = self._config_stat()  # before the type is read: a later change is seen
        self.db_type = dbdir.db_type
        self.attach_facades()
        self.last_route = None  # "server", "direct" or "spool": where the last write (or server op) went
        self.last_read_route = None  # "local" (this process read SQLite) or "reader" (the read service)
        self._server = None
        self._direct = None
        self._read_client = None  # ServerClient of the read service
        self._local_store = None  # balsamdb.reads.Reader on this host's SQLite file
        self._address_cache = None
        self._address_signature = None
        self._address_path = str(dbdir.address_file)
        self._unreachable = None  # (epoch, until): a server that did not answer a whole deadline
        self._direct_check = None  # (allowed, why): may SQLite be written directly here (file system)
        self._spool_writer = SpoolWriter(Spool(dbdir.spool_dir))
        self._warned = False  # that writes spool behind other processes' spooled writes

    def __repr__(self):
        return f"<balsamdb.Database {self.dbdir.path} ({self.db_type})>"

    def close(self):
        for backend in (self._server, self._direct, self._read_client, self._local_store):
            if backend is not None:
                backend.close()
        self._server = self._direct = self._read_client = self._local_store = None

    @property
    def path(self):
        return self.dbdir.path

    def _server_client(self):
        if self._server is None:
            self._server = ServerClient(self.dbdir.secret(), self.settings)
        return self._server

    def _direct_store(self):
        if self._direct is None:
            from .direct import DirectStore

            self._direct = DirectStore(self.dbdir, self.settings)
        return self._direct

    def _address(self, recheck=False):
        """The address record and its health, re-read only when the file changed.

        The happy path costs one stat(); liveness (a look at /proc) is checked
        again only when the file changed or a try failed (``recheck``).
        """
        path = self._address_path
        try:
            st = os.stat(path)
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            signature = None
        if signature != self._address_signature or recheck or self._address_cache is None:
            info = address_file.read(path)
            address_file.check_protocol(info, self.dbdir.path)
            self._address_cache = (info, server_state(info))
            self._address_signature = signature
        return self._address_cache

    def _route(self, request):
        """The answer to a write (or an operation of the write server): from the server while one
        runs, else from SQLite written directly, else the spool's (or the reason none can answer)."""
        write = request.write
        spool = self.settings.spool and request.spooled  # never for a claim (job_acquire)
        started = time.monotonic()
        deadline = started + self.settings.client_deadline
        path = self._address_path
        recheck = False
        while True:
            info, state = self._address(recheck)
            if state == "up" and write and self._known_unreachable(info):
                if spool:
                    return self._spool_request(request)  # this server did not answer a whole deadline just now
                raise self._never_spooled(request, "it did not answer a whole deadline just now")
            if state == "up":
                request.stamp()  # signed afresh on every try: never refused as a replay
                answer = self._send(info, request, path)
                if answer is not None and (answer.get("error") or {}).get("code") == TryAgain.code:
                    time.sleep(_COMING_POLL)  # the server lost its database for a moment: resend
                elif answer is not None:
                    self.last_route = "server"
                    self._unreachable = None
                    return answer
            elif state == "down":
                self._check_config()
                if self.db_type == "sqlite3" and not self.settings.require_server \
                        and not request.server and not self._spool_waits(write) and self._direct_allowed():
                    protocol.dumps_request(request.message())  # NaN refused as on the other routes, never stored
                    self.last_route = "direct"
                    return self._direct_store().call(request)
                if spool:
                    if self.db_type == "sqlite3" and not self.settings.require_server and not self._warned:
                        self._warned = True
                        log.warning("spooled writes wait in %s (no server runs): this write waits behind them; "
                                    "db dbserver --path %s applies them", self._spool_writer.spool.new, self.dbdir.path)
                    return self._spool_request(request)
                if write and not request.spooled:
                    raise self._never_spooled(request, info.get("reason") or info.get("state"))
                raise ServerUnavailable(
                    f"no balsamdb server runs for {self.dbdir.path} ({info.get('reason') or info.get('state')}"
                    f"{self._direct_refusal()}); start one with: db dbserver --path {shell_path(self.dbdir.path)}"
                )
            else:
                time.sleep(_COMING_POLL)
            recheck = True
            if time.monotonic() >= deadline:
                if state == "up":
                    # Remember it: the next writes to this same server spool at once for a while,
                    # instead of each waiting a whole deadline (a login node that went away).
                    self._unreachable = (info.get("epoch"), time.monotonic() + UNREACHABLE_FOR)
                if spool:
                    return self._spool_request(request)
                raise unavailable(path, time.monotonic() - started)

    def _never_spooled(self, request, why):
        return ServerUnavailable(
            f"{request.op} needs an answer now and is never spooled, and the server of {self.dbdir.path} cannot "
            f"answer ({why}{self._direct_refusal()}); start one with: db dbserver --path {self.dbdir.path}")

    def _config_stat(self):
        try:
            st = os.stat(self.dbdir.config_file)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            return None

    def _check_config(self):
        """Notice a DB directory moved to another database (``db configure --store``) while this
        connection was open: writing the old SQLite file directly would strand the write there."""
        signature = self._config_stat()
        if signature is not None and signature != self._config_signature:
            self._config_signature = signature
            self.db_type = self.dbdir.db_type
            if self._direct is not None:
                self._direct.close()
                self._direct = None

    def _direct_allowed(self):
        """True when the SQLite file is on a local file system as this host sees it (statfs, looked
        at once per connection): elsewhere writes spool instead (see balsamdb.filesystems)."""
        if self._direct_check is None:
            from .filesystems import direct_writes_allowed

            try:
                self._direct_check = direct_writes_allowed(self.dbdir)
            except OSError as exc:
                self._direct_check = (False, f"its file system cannot be told ({exc})")
        return self._direct_check[0]

    def _direct_refusal(self):
        if self._direct_check is None or self._direct_check[0] or self.db_type != "sqlite3":
            return ""
        return f"; and no direct writes: {self._direct_check[1]}"

    def _known_unreachable(self, info):
        if self._unreachable is None:
            return False
        epoch, until = self._unreachable
        if epoch != info.get("epoch") or time.monotonic() >= until:
            self._unreachable = None  # a new server, or time for another try
            return False
        return True

    def _encoded(self, request, info=None):
        """The signed frames of ``request``; refused here, at once, when too large to send (for
        this client, or for the server of ``info``, which drops a larger message unread)."""
        # encode_request: NaN and infinities are refused here, before sending or spooling.
        frames = protocol.encode_request(self.dbdir.secret() if self._server is None else self._server.secret,
                                         request.message())
        size = len(frames[0]) - protocol.ENVELOPE_BYTES
        if size > self.settings.max_request_bytes:
            raise RequestTooLarge(f"the request is {size} bytes, more than max_request_bytes "
                                  f"({self.settings.max_request_bytes}); send less at a time")
        check_server_limit(size, info if info is not None else self._address()[0])
        return frames

    def _spool_waits(self, write):
        """Whether spooled writes must go first: for a write, those of any process (a direct
        write must not overtake them: it is spooled behind them); for a read, this client's own."""
        if write:
            return self._spool_writer.spool.any_waiting()
        return self._spool_writer.waiting()

    def _send(self, info, request, path):
        """One try at the server.  The server applies every spooled write that waits when a
        request arrives before that request (holding it meanwhile), so none is overtaken."""
        return self._server_client().try_once(info, request, path, self._encoded(request, info))

    def _spool_request(self, request):
        return self._spool(request, self._encoded(request)[0])  # the signed frame, as sent to a server

    def ping(self):
        """The server's ping answer (raises :class:`ServerUnavailable` when none runs)."""
        return self.call("ping")

    def server_status(self):
        """Counters of the running server (see ``db dbserver --status``)."""
        return self.call("status")


def check_server_limit(size, info):
    """Refuse a request body of ``size`` bytes that the server named in ``info`` would drop unread
    (with the connection: the client would only time out); the limit is in the address file."""
    limit = info.get("max_request_bytes")
    if isinstance(limit, int) and not isinstance(limit, bool) and size > limit:
        raise RequestTooLarge(f"the request is {size} bytes: it exceeds the limit of {limit} bytes of the "
                              "server (its max_request_bytes); send less at a time")
