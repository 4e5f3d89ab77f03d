"""Logins of the HTTP record store: one password check per attempt, known user or not, and failed
logins throttled.

- An unknown user name costs the same scrypt as a known one (a check against a dummy hash), so the
  time of an answer does not tell which user names exist.
- Failed logins are counted in a sliding window per (client address, user) and per user.  After
  :data:`PAIR_LIMIT` failures of one address for one user, that address is refused for that user
  with 429 and ``Retry-After`` (no password check at all) until the window frees up; after
  :data:`USER_LIMIT` failures for one user from anywhere (a guessing run spread over addresses), every
  address that has failed for that user is refused the same way.
- A successful login is never throttled: a password already verified (the cache of
  :class:`PasswordCache`) is accepted before any throttle, and an address that has not failed for a
  user is never refused for the guessing of others.
"""

import collections
import math
import threading
import time

from balsamdb.passwords import hash_password, verify_password

WINDOW = 60.0     # seconds during which a failure counts
PAIR_LIMIT = 10   # failures of one address for one user within WINDOW
USER_LIMIT = 50   # failures for one user, from any address, within WINDOW
MAX_KEYS = 10_000  # remembered (address, user) pairs and users; beyond, the oldest are forgotten

OK, DENIED, THROTTLED = "ok", "denied", "throttled"


class _Failures:
    """Times of recent failures per key, bounded in keys and in times per key."""

    def __init__(self, limit):
        self.limit = limit
        self._times = collections.OrderedDict()

    def _recent(self, key, now):
        times = self._times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - WINDOW:
            times.popleft()
        if not times:
            del self._times[key]
            return None
        return times

    def count(self, key, now):
        times = self._recent(key, now)
        return len(times) if times else 0

    def retry_after(self, key, now):
        """Seconds until this key is below its limit again."""
        times = self._recent(key, now)
        if not times or len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[-self.limit] + WINDOW - now))

    def add(self, key, now):
        times = self._recent(key, now)
        if times is None:
            times = self._times[key] = collections.deque(maxlen=self.limit)
        times.append(now)
        self._times.move_to_end(key)
        while len(self._times) > MAX_KEYS:
            self._times.popitem(last=False)

    def clear(self, key):
        self._times.pop(key, None)


class LoginGuard:
    """``check(address, name, password, user)`` -> ``(OK, user)``, ``(DENIED, None)`` or
    ``(THROTTLED, seconds)``.  ``user`` is the stored user (a dict with ``password_hash``) or None.
    ``passwords`` is the :class:`~balsamdb.server.http.PasswordCache` of the application."""

    def __init__(self, passwords, clock=time.monotonic):
        self.passwords = passwords
        self.clock = clock
        self._pairs = _Failures(PAIR_LIMIT)
        self._users = _Failures(USER_LIMIT)
        self._lock = threading.Lock()
        self._dummy = None

    def dummy_hash(self):
        """A hash no password matches in practice, made once: what an unknown user is checked against."""
        if self._dummy is None:
            self._dummy = hash_password("balsamdb: no such user")
        return self._dummy

    def throttled(self, address, name):
        """Seconds the pair must wait, or 0."""
        now = self.clock()
        with self._lock:
            pair_wait = self._pairs.retry_after((address, name), now)
            if pair_wait:
                return pair_wait
            if self._pairs.count((address, name), now):
                return self._users.retry_after(name, now)
        return 0

    def check(self, address, name, password, user):
        if user is not None and self.passwords.known(name, password, user["password_hash"]):
            return OK, user  # verified a moment ago: never throttled
        wait = self.throttled(address, name)
        if wait:
            return THROTTLED, wait
        if user is None:
            verify_password(password, self.dummy_hash())  # the same cost as a known user's check
            good = False
        else:
            good = self.passwords.check(name, password, user["password_hash"])
        now = self.clock()
        with self._lock:
            if good:
                self._pairs.clear((address, name))
                return OK, user
            self._pairs.add((address, name), now)
            self._users.add(name, now)
        return DENIED, None
