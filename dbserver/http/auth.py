"""Who is asking: HTTP Basic credentials, the cache of verified passwords, and the store
connection of each thread (users and projects for the log-in and permission checks are read on
read-only connections, not through the write server)."""

import hashlib
import threading
import time
from base64 import b64decode
from binascii import Error as Base64Error

import balsamdb
from balsamdb.facades import SpooledWrite
from balsamdb.passwords import verify_password

from balsamdb.server.http.reads import (page_reader, read_listing, read_permissions, read_projects, read_record,
                                        read_record_counts, read_user, read_versions)
from balsamdb.server.http.errors import HTTPError, challenge

PASSWORD_CACHE_SECONDS = 60.0   # since the last successful use


# -- the store, one connection per thread ---------------------------------------------------------------

class Store:
    """``balsamdb.connect(path)`` once per thread (a Database is not thread-safe) for the writes and the
    record reads; users, projects and records from ``reader`` (a :class:`~balsamdb.reads.Reader`, see
    :func:`~balsamdb.server.http.reads.page_reader`)."""

    def __init__(self, path, reader=None):
        self.path = str(path)
        self._local = threading.local()
        # log-in and permission checks: read-only reads, shared with the web pages
        self.reader = reader if reader is not None else page_reader(path)

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
        """Project ``name`` (without its record count), or None; read on the read-only connection."""
        from balsamdb.operations.checks import check_project_name

        name = check_project_name(name)  # a name no project can have: 400, as the store answers it
        found = self.reader.query(lambda database: read_projects(database, name))
        return found[0] if found else None

    def projects(self):
        """Every project, by name (read on the read-only connection)."""
        return self.reader.query(read_projects)

    def record_counts(self):
        """``{project: number of records}`` (read on the read-only connection), for the projects page."""
        return self.reader.query(read_record_counts)

    def record(self, project, label, version=None):
        """The document of record ``label`` (or of its ``version``), read on the read-only connection."""
        return self.reader.query(lambda database: read_record(database, project, label, version))

    def versions(self, project, label):
        """The versions of record ``label`` (see ``record_versions``), read on the read-only connection."""
        return self.reader.query(lambda database: read_versions(database, project, label))

    def listing(self, project, tags=None, limit=None, documents=False):
        """Labels (or documents) of the records of ``project`` with any of ``tags``, newest first."""
        return self.reader.query(lambda database: read_listing(database, project, tags, limit, documents))

    def permissions(self, project):
        """The users of ``project``, by name."""
        return self.reader.query(lambda database: read_permissions(database, project))

    def user(self, name):
        """User ``name`` (with hash, admin flag and projects) as the database holds it now, or None.

        Read on the read-only connection of :mod:`balsamdb.server.http.reads`, never through the write
        server (every request of a logged-in user needs it), and never cached: a grant, a removal or a
        new password shows on the next request."""
        return self.reader.query(lambda database: read_user(database, name))


class PasswordCache:
    """Remembers successful password checks for a while: scrypt is slow on purpose, and
    each smt command sends about 30 requests.  Keyed by the stored hash too, so that a
    changed password takes effect on the next request (the user's record is read on every
    request); failures are never cached."""

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


def basic_credentials(header):
    """(name, password) from an ``Authorization: Basic`` header; HTTPError 401 when unreadable."""
    scheme, _, data = header.partition(" ")
    if scheme.lower() != "basic":
        raise challenge("only HTTP Basic authentication is supported")
    try:
        name, sep, password = b64decode(data.strip(), validate=True).decode("utf-8").partition(":")
    except (Base64Error, UnicodeDecodeError, ValueError):
        raise challenge("the Authorization header is not valid HTTP Basic") from None
    if not sep or not name:
        raise challenge("the Authorization header is not valid HTTP Basic")
    return name, password
