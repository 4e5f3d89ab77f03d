"""Writing SQLite directly, for processes on the host that holds the file while no server runs.

Each request is one ``BEGIN IMMEDIATE`` transaction on a WAL database with a
busy timeout; a lock that outlasts it is retried with backoff until the
``direct_deadline`` setting runs out, and then :class:`DatabaseBusy` is raised:
a write either commits or raises, it never silently disappears.  Because the
request id is stored with the write, a retry after an ambiguous failure cannot
apply it twice.

Not for cluster file systems (Lustre, GPFS, NFS): SQLite's locking needs one
host.  Jobs on compute nodes go through the server.
"""

import logging
import os
import threading
import time

import peewee as pw

from .applier import StorageFailure, apply, root_cause
from .backoff import Backoff
from .exceptions import DatabaseBusy, StorageError, database_busy
from .migrations import check_schema_not_newer
from .models import MODELS
from .wording import shell_path

log = logging.getLogger(__name__)

# bind_ctx() binds the model classes for the whole process, so two threads (or two DB
# directories) in one process must not run operations at the same time: SQLite
# serializes the writers anyway.
BIND_LOCK = threading.RLock()


class DirectStore:
    """Runs requests against the DB directory's SQLite file in this process."""

    kind = "direct"

    def __init__(self, dbdir, settings):
        self.dbdir = dbdir
        self.settings = settings
        self.pid = os.getpid()
        if dbdir.db_type != "sqlite3":
            from .exceptions import ConfigError

            raise ConfigError(f"{dbdir.path} is a {dbdir.db_type} DB directory: it has no direct mode; "
                              f"start its server (db dbserver --path {shell_path(dbdir.path)})")
        # The busy timeout is short so that our own backoff, with jitter, spreads
        # out many waiting processes instead of all retrying inside SQLite.
        self.database = dbdir.open_database(settings, busy_timeout=5.0)

    def close(self):
        if not self.database.is_closed():
            self.database.close()

    def call(self, request):
        """Apply one :class:`~balsamdb.request.Request`; returns its answer dict (see :mod:`balsamdb.applier`)."""
        lock_type = "IMMEDIATE" if request.write else None
        backoff = Backoff(0.005, 0.5, time.monotonic() + self.settings.direct_deadline)
        while True:
            try:
                if self.pid != os.getpid():
                    # A forked child must never use its parent's SQLite connection: open its own.
                    self.database = self.dbdir.open_database(self.settings, busy_timeout=5.0)
                    self.pid = os.getpid()
                if self.database.connect(reuse_if_open=True):
                    with BIND_LOCK:  # it binds the models too (bind_ctx is process-wide: see BIND_LOCK)
                        check_schema_not_newer(self.database, self.dbdir.path)
                with BIND_LOCK, self.database.bind_ctx(MODELS):
                    apply(self.database, [request], lambda: self.database.atomic(lock_type=lock_type), optimistic=False)
                    return request.answer
            except (StorageFailure, pw.OperationalError) as exc:
                original = root_cause(getattr(exc, "original", exc))
                if not database_busy(original):
                    raise self._storage_error(original) from None
                log.debug("database locked; retrying %s in about %.3f s", request.op, backoff.delay)
                if not backoff.sleep():
                    raise DatabaseBusy(
                        f"{self.dbdir.sqlite_file} stayed locked for {self.settings.direct_deadline:.0f} s; "
                        "nothing was written. Start a server (db dbserver) for many writers."
                    ) from None
            except (pw.DatabaseError, pw.InterfaceError) as exc:
                raise self._storage_error(root_cause(exc)) from None

    def _storage_error(self, error):
        if not os.access(self.dbdir.path, os.W_OK):
            return StorageError(f"{self.dbdir.path} is read-only: {error}; nothing was written")
        return StorageError(f"{self.dbdir.sqlite_file}: {error}; nothing was written")
