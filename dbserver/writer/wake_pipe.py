"""How a thread of the write server wakes its loop: one byte into a pipe that the loop polls
beside its socket (the flusher after a flush, the batch thread after a batch).  Non-blocking on
both ends: a full pipe already wakes the loop, and the loop empties it when it wakes."""

import os


class WakePipe:
    def __init__(self):
        self.fd, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self):
        """From the thread: make :attr:`fd` readable."""
        try:
            os.write(self._write, b"x")
        except (OSError, TypeError):  # a full pipe (BlockingIOError) wakes the loop already; a closed one: stopping
            pass

    def drain(self):
        """From the loop, woken: empty the pipe."""
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def close(self):
        """Close both ends, once (a second call closes nothing: the numbers may be another file's)."""
        fds, self.fd, self._write = (self.fd, self._write), None, None
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
