"""Exponential backoff: the one rule for how long to wait before trying again.

Every retry in balsamdb doubles its delay from ``first`` up to ``most``: a client
retrying a locked SQLite file or an unreachable HTTP store (with jitter, so that
hundreds of job processes do not retry in step), and the watchdog restarting a
server that keeps dying (counted in failures, without jitter).
"""

import random
import time


def delay_after(attempt, first, most):
    """The delay before try ``attempt + 1``: ``first * 2 ** attempt``, at most ``most``
    (``attempt`` 0 gives ``first``)."""
    if attempt <= 0:
        return min(first, most)
    # 2 ** attempt overflows a float only for absurd counts; cap the exponent instead
    return min(first * 2.0 ** min(attempt, 64), most)


class Backoff:
    """Delays for one retried call that must end by ``deadline`` (a ``time.monotonic()`` value)::

        backoff = Backoff(0.05, 2.0, time.monotonic() + 30)
        while True:
            ...try, return on success...
            if not backoff.sleep():
                raise ...  # the next delay would pass the deadline

    Each :meth:`sleep` waits the current delay times a random factor in [0.5, 1.5)
    and doubles the delay, up to ``most``."""

    def __init__(self, first, most, deadline):
        self.delay, self.most, self.deadline = first, most, deadline

    def sleep(self):
        """Wait the next delay and return True; return False at once when that delay would
        reach the deadline (the caller gives up)."""
        if time.monotonic() + self.delay >= self.deadline:
            return False
        time.sleep(self.delay * (0.5 + random.random()))  # wait-ok: the retry interval of a call with a deadline
        self.delay = min(self.delay * 2, self.most)
        return True
