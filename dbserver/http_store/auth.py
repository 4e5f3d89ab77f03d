"""Who is asking: HTTP Basic credentials, the cache of verified passwords, and the store
connection of each thread (with its short cache of users)."""

import hashlib
import threading
import time
from base64 import b64decode
from binascii import Error as Base64Error

import balsamdb
from balsamdb.api import SpooledWrite
from balsamdb.exceptions import BadRequest, NotFound
from balsamdb.passwords import verify_password

from .errors import HTTPError, challenge

PASSWORD_CACHE_SECONDS = 60.0   # since the last successful use
USER_CACHE_SECONDS = 1.0         # a user's record (hash, projects) is read again after this


# -- the store, one connection per thread ---------------------------------------------------------------

class Store:
    """``balsamdb.connect(path)`` once per thread (a Database is not thread-safe)."""

    def __init__(self, path):
        self.path = str(path)
        self._local = threading.local()
        self._users = {}  # name -> (user, valid until): dict operations are atomic under the GIL

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
        """Project ``name`` with its record count, or None."""
        try:
            return self.read("project_get", name=name, count=False)
        except NotFound:
            return None

    def user(self, name):
        """User ``name`` (with hash and projects) as read at most ``USER_CACHE_SECONDS`` ago, or None.

        Every request of a logged-in user needs it; reading it from the store each time
        doubled the work of the write server.  A grant or a removal shows within that time."""
        now = time.monotonic()
        cached = self._users.get(name)
        if cached is not None and cached[1] > now:
            return dict(cached[0], projects=list(cached[0]["projects"]))
        try:
            user = self.read("user_get", name=name)
        except (NotFound, BadRequest):
            user = None
        if user is not None:
            if len(self._users) > 4096:
                self._users.clear()
            self._users[name] = (user, now + USER_CACHE_SECONDS)
        else:
            self._users.pop(name, None)
        return None if user is None else dict(user, projects=list(user["projects"]))

    def forget_user(self, name):
        self._users.pop(name, None)


class PasswordCache:
    """Remembers successful password checks for a while: scrypt is slow on purpose, and
    each smt command sends about 30 requests.  Keyed by the stored hash too, so that a
    changed password takes effect as soon as the user's record is read again (within
    ``USER_CACHE_SECONDS``); failures are never cached."""

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
