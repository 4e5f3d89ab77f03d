"""The write server's database thread: the one thread that uses the database connection.

Pipelined group commit: the ZeroMQ loop (the main thread, the only one that touches the
sockets) receives, checks and prepares the next batch while this thread applies and
commits the one before.  SQLite and psycopg2 release the GIL while they wait on the disk or
the network, so the main thread runs during the fsync of a COMMIT.  Work runs here one
callable at a time, in the order submitted (one writer of the database; a batch sees every
earlier batch's writes, so a retry finds the stored answer of its first copy).

A finished batch wakes the main loop through a pipe (registered in its ZeroMQ poller), and
the main thread sends its replies: a batch is answered only after its own COMMIT.  strace
must follow threads (``strace -f``) to see the COMMIT: it runs in this thread.
"""

import collections
import concurrent.futures
import os


class DBThread:
    """One worker thread fed in order; ``call`` waits, ``submit`` does not."""

    def __init__(self):
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="balsamdb-db")
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        self._finished = collections.deque()  # (future, tag) of submitted work that ended
        self.inflight = 0                      # submitted and not yet taken back with finished()

    def call(self, function, *args, **kwargs):
        """Run ``function`` in the database thread after everything submitted before; its result."""
        return self.executor.submit(function, *args, **kwargs).result()

    def submit(self, tag, function, *args):
        """Run ``function`` in the database thread; ``finished()`` hands back ``(future, tag)``."""
        future = self.executor.submit(function, *args)
        self.inflight += 1
        future.add_done_callback(lambda done: self._done(done, tag))

    def _done(self, future, tag):
        self._finished.append((future, tag))  # deque.append is atomic
        os.write(self._wake_w, b"\0")

    def finished(self):
        """The submitted work that has ended, oldest first (the main thread calls this)."""
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass
        done = []
        while self._finished:
            done.append(self._finished.popleft())
        self.inflight -= len(done)
        return done

    def close(self):
        self.executor.shutdown(wait=True)
        for fd in (self.wake_fd, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
