"""The write server's WAL flush, off its loop: group commit with a deferred ``fdatasync``.

Under the default ``sqlite_synchronous`` FULL, the write server's one SQLite connection commits
with ``synchronous=NORMAL`` (in WAL mode the COMMIT then only ``write()``s its frames to the
``-wal`` file), and the :class:`Flusher` thread makes them durable: it ``fdatasync``s the live
``-wal`` file, opened by path (Python's sqlite3 gives no file descriptor).  The committing thread
(the batch thread, or the loop) numbers each COMMIT (:meth:`Flusher.committed`, after the COMMIT
returned) and the loop holds the batch's answers and
its spool-file effects until :attr:`Flusher.flushed` reaches that number: a flush covers every
COMMIT numbered before it *began*, so one flush serves every batch committed meanwhile, while
the loop already receives, checks and applies the next one.  The thread wakes the loop through
a pipe (:attr:`Flusher.wake_fd`, polled with the socket).

SQLite deletes the ``-wal`` file when its last connection closes (the committer's reconnect)
and creates a new one: before every flush the device and inode of the open file are compared
with the file now at the path, and a changed file is opened again.  A deleted WAL was
checkpointed first, and a checkpoint syncs the WAL and the database file under NORMAL too
(``walSyncFlags``: the checkpoint's sync stays on at NORMAL), so nothing is left unsynced in
a file the flusher no longer sees.

A failed flush is final (:attr:`Flusher.failed`): after an ``fdatasync`` error the kernel may
have dropped the dirty pages and a retry can succeed with them gone, so the server answers
nothing more and stops (fail-stop; its clients resend to the next server, which answers each
write once from the record of applied requests).

Tests only: while the file named by ``BALSAMDB_TEST_FLUSH_HOLD`` (an environment variable read
once, at start) exists, each flush waits before its ``fdatasync`` (as a slow disk would).
"""

import logging
import os
import sys
import threading
import time

from balsamdb.server.writer.wake_pipe import WakePipe

log = logging.getLogger("balsamdb.server.writer.server")

HOLD_ENV = "BALSAMDB_TEST_FLUSH_HOLD"
HOLD_POLL = 0.01  # seconds between looks at the hold file (tests only)
#: The GIL switch interval while a flusher runs: a flusher whose fdatasync returned waits at most
#: this long for the loop's thread to let it answer (Python's default, 5 ms, is longer than the flush).
SWITCH_INTERVAL = 0.0005


class Flusher:
    """fdatasyncs ``wal_path`` in a thread for the COMMITs the loop reports."""

    def __init__(self, wal_path):
        self.wal_path = str(wal_path)
        self.hold_file = os.environ.get(HOLD_ENV) or None
        self._cond = threading.Condition()
        self._fd = None
        self._identity = None          # (st_dev, st_ino) of the open file
        self.commits = 0               # COMMITs reported by the loop (their numbers: 1, 2, ...)
        self.flushed = 0               # every COMMIT numbered up to this one is on disk
        self.covering = 0              # the COMMITs up to this one are in a flush begun (or done)
        self.flushes = 0
        self.flush_seconds = 0.0
        self.reopens = 0               # times the -wal file was (re)opened
        self.failed = None             # the OSError of a failed flush: nothing more may be answered
        self._closing = False
        self._thread = None
        self.thread_id = None          # the flusher thread's native id (strace -f names it)
        self._pipe = WakePipe()
        self.wake_fd = self._pipe.fd

    # -- the loop's side ----------------------------------------------------
    def start(self):
        """Flush once now (what was committed before, e.g. a schema upgrade), then start the thread."""
        self._flush_once(hold=False)
        if self.failed is not None:
            raise self.failed
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._run, name="wal-flusher", daemon=True)
        self._thread.start()

    def committed(self):
        """Note a COMMIT that just returned; its number."""
        with self._cond:
            self.commits += 1
            self._cond.notify()
            return self.commits

    def waiting(self):
        """True while a COMMIT waits for a flush to begin (one is running): the loop gathers the
        work that arrives meanwhile into one batch, committed once that flush begins (one COMMIT
        per flush, large batches)."""
        return self.commits > self.covering

    def woken(self):
        """Empty the wake pipe (the loop saw it readable)."""
        self._pipe.drain()

    def wait_flushed(self, number, deadline):
        """Wait (at most ``deadline`` s) until COMMIT ``number`` is flushed or a flush failed;
        True when flushed."""
        end = time.monotonic() + deadline
        with self._cond:
            while self.flushed < number and self.failed is None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.flushed >= number

    def close(self, deadline=30.0):
        """Flush what is committed, stop the thread and close the file."""
        if self._thread is not None:
            self.wait_flushed(self.commits, deadline)
            with self._cond:
                self._closing = True
                self._cond.notify()
            self._thread.join(deadline)
            self._thread = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._pipe.close()
        self._fd = self.wake_fd = None

    def counters(self):
        with self._cond:
            return {"flusher": True, "commits": self.commits, "flushed_commits": self.flushed,
                    "flushes": self.flushes, "flush_seconds": self.flush_seconds, "wal_opens": self.reopens,
                    "flusher_thread": self.thread_id,
                    "mean_flush_ms": 1000 * self.flush_seconds / self.flushes if self.flushes else 0.0,
                    "commits_per_flush": self.flushed / self.flushes if self.flushes else 0.0}

    # -- the thread ---------------------------------------------------------
    def _run(self):
        self.thread_id = threading.get_native_id()
        while True:
            with self._cond:
                while self.commits == self.flushed and not self._closing:
                    self._cond.wait()
                if self.commits == self.flushed:
                    return
            if not self._flush_once():
                return

    def _flush_once(self, hold=True):
        """One flush of every COMMIT reported before it began; False once a flush failed."""
        with self._cond:
            target = self.commits  # read before the fdatasync begins: only these are covered
            self.covering = target
        self._wake()  # the loop may commit the work it gathered meanwhile
        if hold:
            self._hold()
        started = time.monotonic()
        try:
            fd = self._live_fd()
            if fd is not None:
                os.fdatasync(fd)
        except OSError as exc:
            log.critical("the flush of %s failed: %s; the writes committed since the last flush may be lost "
                         "at a power cut, so none of them is answered and the server stops", self.wal_path, exc)
            with self._cond:
                self.failed = exc
                self._cond.notify_all()
            self._wake()
            return False
        took = time.monotonic() - started
        with self._cond:
            self.flushed = max(self.flushed, target)
            self.flushes += 1
            self.flush_seconds += took
            self._cond.notify_all()
        self._wake()
        return True

    def _live_fd(self):
        """A descriptor of the file now at ``wal_path`` (reopened when SQLite made a new one);
        None when there is none: SQLite deletes it only after a checkpoint that synced it."""
        try:
            live = os.stat(self.wal_path)
        except FileNotFoundError:
            return None
        identity = (live.st_dev, live.st_ino)
        if self._fd is None or identity != self._identity:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != identity:  # replaced between stat and open: look again
                os.close(fd)
                return self._live_fd()
            if self._fd is not None:
                os.close(self._fd)
                log.info("the WAL file %s was made anew (inode %s); flushing the new one", self.wal_path, live.st_ino)
            self._fd, self._identity = fd, identity
            self.reopens += 1
        return self._fd

    def _wake(self):
        self._pipe.wake()

    def _hold(self):
        if self.hold_file is None:
            return
        while os.path.exists(self.hold_file):
            time.sleep(HOLD_POLL)  # wait-ok: the test hook that holds a flush while its file exists
