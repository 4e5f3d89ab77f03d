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
import hashlib
import math
import threading
import time

from balsamdb.passwords import hash_password, verify_password

WINDOW = 60.0     # seconds during which a failure counts
PAIR_LIMIT = 10   # failures of one address for one user within WINDOW
USER_LIMIT = 50   # failures for one user, from any address, within WINDOW
SHARED_CHECK_WAIT = 30.0  # seconds a request waits for the check of the same credentials
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
        self._checking = collections.Counter()  # checks in flight, per (address, user) and per user
        self._running = {}  # (name, SHA-256 of the password, stored hash) -> its _Check in flight
        self._lock = threading.Lock()
        self._dummy = None

    def dummy_hash(self):
        """A hash no password matches in practice, made once: what an unknown user is checked against."""
        if self._dummy is None:
            self._dummy = hash_password("balsamdb: no such user")
        return self._dummy

    def _throttled(self, address, name, now):
        """Seconds the pair must wait, or 0 (the caller holds the lock).  Checks in flight count
        as failures until they are known."""
        pair = (address, name)
        failed = self._pairs.count(pair, now) + self._checking[pair]
        if failed >= PAIR_LIMIT:
            return self._pairs.retry_after(pair, now) or 1
        if failed and self._users.count(name, now) + self._checking[name] >= USER_LIMIT:
            return self._users.retry_after(name, now) or 1
        return 0

    def throttled(self, address, name):
        """Seconds the pair must wait, or 0."""
        with self._lock:
            return self._throttled(address, name, self.clock())

    def check(self, address, name, password, user):
        if user is not None and self.passwords.known(name, password, user["password_hash"]):
            return OK, user  # verified a moment ago: never throttled
        # The attempt is counted before its password check, in the same locked step as the look at
        # the throttle: 64 concurrent guesses get at most PAIR_LIMIT checks, not one for every
        # request that looked before any had failed.  The same credentials sent at once (16 `smt
        # run` starting together) share one check: they are one attempt, and one scrypt.
        pair = (address, name)
        same = (name, hashlib.sha256(password.encode()).hexdigest(), user and user["password_hash"])
        with self._lock:
            running = self._running.get(same)
            if running is None:
                wait = self._throttled(address, name, self.clock())
                if wait:
                    return THROTTLED, wait
                self._checking[pair] += 1
                self._checking[name] += 1
                running = self._running[same] = _Check()
                mine = True
            else:
                mine = False
        if not mine:
            if not running.done.wait(SHARED_CHECK_WAIT):
                return THROTTLED, 1
            return (OK, user) if running.good else (DENIED, None)
        try:
            if user is None:
                verify_password(password, self.dummy_hash())  # the same cost as a known user's check
            else:
                running.good = self.passwords.check(name, password, user["password_hash"])
        finally:
            now = self.clock()
            with self._lock:
                del self._running[same]
                for key in (pair, name):
                    self._checking[key] -= 1
                    if not self._checking[key]:
                        del self._checking[key]
                if running.good:
                    self._pairs.clear(pair)
                else:
                    self._pairs.add(pair, now)
                    self._users.add(name, now)
            running.done.set()
        return (OK, user) if running.good else (DENIED, None)


class _Check:
    """A password check in flight, which requests with the same credentials wait for."""

    def __init__(self):
        self.done = threading.Event()
        self.good = False
