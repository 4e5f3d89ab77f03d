"""The write server's batch thread: one batch's apply and COMMIT at a time, beside the loop.

The loop thread receives, checks and answers; while it does, the batch thread applies the
previous batch and commits it on the server's one connection.  sqlite3 and psycopg2 release
the GIL while SQLite (or the round trip to PostgreSQL) works, so the loop's Python overlaps the
database's C work.  The connection is not moved: it is used by one thread at a time, handed
over with the batch (:meth:`BatchThread.submit`) and back with its result (:meth:`take`,
:meth:`settle`); the committer settles a running batch before any other use of the
connection (spool drain, pruning, lost runs, status), so the order of writes is the order of
the calls, and a batch's answers go to the outbox, which the loop alone touches, in order.

Nothing of the ZeroMQ socket is touched here (a socket is not thread-safe): the batch thread only
runs ``run(requests)`` and wakes the loop through a pipe (:attr:`BatchThread.wake_fd`).
"""

import sys
import threading

from balsamdb.server.writer.wake_pipe import WakePipe

#: The GIL switch interval while the batch thread runs (as the flusher's): a thread back from
#: SQLite's C code waits at most this long for the other to let it go on.
SWITCH_INTERVAL = 0.0005


class BatchThread:
    """Runs ``run(requests)`` for one batch at a time in a thread; the loop takes the results."""

    def __init__(self, run):
        self._run_batch = run
        self._cond = threading.Condition()
        self._job = None        # the batch handed over, not yet taken up by the thread
        self._running = False   # the thread works on a batch
        self._result = None     # (result, exception) of the last batch, not yet taken
        self._closing = False
        self._pipe = WakePipe()
        self.wake_fd = self._pipe.fd
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._loop, name="batch-commit", daemon=True)
        self._thread.start()

    def busy(self):
        """True from :meth:`submit` until its result is taken (:meth:`take`, :meth:`settle`)."""
        with self._cond:
            return self._job is not None or self._running or self._result is not None

    def submit(self, requests):
        with self._cond:
            if self._job is not None or self._running or self._result is not None:
                raise RuntimeError("a batch is handed to the batch thread while another one is not taken")
            self._job = requests
            self._cond.notify_all()

    def take(self):
        """The result of the batch, once done (and no longer running); else None.  An exception of
        ``run`` is raised here, in the loop, which calls this when :attr:`wake_fd` is readable."""
        # The pipe is emptied first, whatever is found: the thread wakes it after it hands the
        # result over, so a :meth:`settle` in between takes the result and the wake comes later.
        # Left in the pipe, that wake made the loop poll without waiting, and spin at 100% CPU
        # (the GIL taken from the batch thread) until the next batch was done.
        self.woken()
        with self._cond:
            if self._result is None:
                return None
            result, error = self._result
            self._result = None
        if error is not None:
            raise error
        return result

    def settle(self):
        """Wait until no batch runs; its result (None when there was none)."""
        with self._cond:
            while self._job is not None or self._running:
                self._cond.wait()
        return self.take()

    def woken(self):
        self._pipe.drain()

    def close(self):
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(60)
        self._pipe.close()

    def _loop(self):
        while True:
            with self._cond:
                while self._job is None and not self._closing:
                    self._cond.wait()
                if self._job is None:
                    return
                requests, self._job = self._job, None
                self._running = True
            result = error = None
            try:
                result = self._run_batch(requests)
            except BaseException as exc:  # handed to the loop, which raises it
                error = exc
            with self._cond:
                self._result = (result, error)
                self._running = False
                self._cond.notify_all()
            self._pipe.wake()
