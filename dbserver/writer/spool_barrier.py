"""The order of spooled and live writes: a live request waits until every spooled write
that was in ``spool/new`` when it arrived has been applied (or refused).

The write server drains the spool one batch per turn of its loop.  A live request that
arrives while files wait is *held* here, with the names of the files that were waiting
when it arrived (one shared set for all requests of a turn).  After each drain batch the
held requests whose names are all gone are released, oldest first, and applied.  A
request held for :data:`HOLD_REPLY_EVERY` seconds is answered with a holding reply
("draining, N left") and forgotten: its client resends it on the same socket, so the
client never times out, and the server never keeps a request for long (memory stays
bounded by the number of connected clients, as without a spool).
"""

import collections
import logging
import os
import queue
import threading
import time

log = logging.getLogger(__name__)

#: Seconds a live request waits behind the spool before its client gets a holding reply
#: (well inside the default client_timeout of 2 s, after which a client would resend).
HOLD_REPLY_EVERY = 0.3

#: Seconds over which the drain rate is measured for ``status``.
RATE_WINDOW = 10.0


class HeldGroup:
    """The live requests of one turn that wait for the spooled files ``waiting_for``."""

    __slots__ = ("waiting_for", "work", "since")

    def __init__(self, waiting_for, work, since):
        self.waiting_for = waiting_for
        self.work = work
        self.since = since


class SpoolBarrier:
    """Live requests held behind spooled ones, and how fast the spool drains."""

    def __init__(self):
        self.groups = collections.deque()
        self.stuck = set()       # names the drain could not read or move: they hold nobody up
        self.applied = set()     # names applied and being removed (by SpoolCleaner): they hold nobody up
        self._names = frozenset()
        self._drained = collections.deque()  # (start, end: monotonic times, files taken) of recent drain batches

    def waiting(self, names):
        """The set of spooled files a request arriving now waits for (``names``: what
        ``spool/new`` holds now), shared with the previous arrivals while unchanged."""
        names = set(names)
        self.stuck &= names
        self.applied &= names
        current = names - self.stuck - self.applied
        if current != self._names:
            self._names = frozenset(current)
        return self._names

    def hold(self, waiting_for, work):
        self.groups.append(HeldGroup(waiting_for, work, time.monotonic()))

    def release(self, waiting_for_now):
        """The work of every group none of whose files still waits, oldest first."""
        released, kept = [], collections.deque()
        for group in self.groups:
            if group.waiting_for.isdisjoint(waiting_for_now):
                released.extend(group.work)
            else:
                kept.append(group)
        self.groups = kept
        return released

    def overdue(self, now=None):
        """The work held longer than :data:`HOLD_REPLY_EVERY`: it gets a holding reply and is forgotten."""
        now = time.monotonic() if now is None else now
        out = []
        while self.groups and now - self.groups[0].since >= HOLD_REPLY_EVERY:
            out.extend(self.groups.popleft().work)
        return out

    def take_all(self):
        out = [item for group in self.groups for item in group.work]
        self.groups.clear()
        return out

    def held(self):
        return sum(len(group.work) for group in self.groups)

    def drained(self, count, seconds):
        """Note ``count`` spooled files taken in the last ``seconds`` (for the rates)."""
        now = time.monotonic()
        self._drained.append((now - seconds, now, count))
        while now - self._drained[0][1] > RATE_WINDOW:
            self._drained.popleft()

    def rate(self):
        """Spooled writes taken per second over the last :data:`RATE_WINDOW` seconds."""
        now = time.monotonic()
        recent = [(start, n) for start, end, n in self._drained if now - end <= RATE_WINDOW]
        if not recent:
            return 0.0
        return sum(n for _s, n in recent) / max(now - recent[0][0], 1.0)

    def last_rate(self):
        """Spooled writes taken per second in the last :data:`RATE_WINDOW` seconds of draining
        (the rate of the latest drain, also once it is over)."""
        if not self._drained:
            return 0.0
        span = self._drained[-1][1] - self._drained[0][0]
        return sum(n for _s, _e, n in self._drained) / max(span, 1e-3)


class SpoolCleaner:
    """Removes applied spool files in a thread of its own.

    An unlink costs milliseconds on a busy disk, more than applying the write: done in
    the loop it would set the pace of the drain.  A file applied but not yet removed when
    the server dies is applied again by the next one, which answers it from the record of
    applied requests: nothing happens twice."""

    def __init__(self):
        self._queue = queue.SimpleQueue()
        self._thread = None

    def remove(self, path):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spool-cleaner", daemon=True)
            self._thread.start()
        self._queue.put(path)

    def _run(self):
        while True:
            path = self._queue.get()
            if path is None:
                return
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a read-only disk: the next server answers it from the record
                log.error("cannot remove the applied spool file %s (%s); it stays", path, exc)

    def close(self, deadline=30.0):
        """Finish the removals queued so far (waits at most ``deadline`` seconds)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(deadline)
            self._thread = None
