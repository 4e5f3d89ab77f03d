"""Logging set-up for the server processes (entry points only, never at import)."""

import logging
import logging.handlers
import os
import sys

FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


#: Control characters (and Unicode line breaks) -> visible escapes, so that text from a request (a
#: path with %0a, a user name) can never start a forged line of its own in a log.
_ESCAPES = {code: f"\\x{code:02x}" for code in list(range(0x20)) + [0x7F]}
_ESCAPES.update({0x85: "\\x85", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def escape_controls(text):
    """``text`` with every control character written as an escape (``\\x0a``): one line, always."""
    return text.translate(_ESCAPES)


class OneLineFormatter(logging.Formatter):
    """Each record's message is escaped to one line; a traceback that follows it is ours, and stays."""

    def formatMessage(self, record):
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


def setup_logging(path, level=None):
    """Log to ``path``, rotated at 10 MB with 5 old files kept.

    When ``path`` or its directory (``log/``) is removed while the process runs, the next
    record recreates ``log/`` and reopens the file (messages escaped to one line each); when that is impossible (a read-only
    DB directory), records go to syslog (or stderr where there is none) until it works again."""
    level = level or os.environ.get("BALSAMDB_LOG_LEVEL", "INFO")
    handler = ResilientFileHandler(path)
    handler.setFormatter(OneLineFormatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def fallback_handler():
    """syslog when this host has one (``/dev/log``), else stderr."""
    if os.path.exists("/dev/log"):
        try:
            handler = logging.handlers.SysLogHandler(address="/dev/log")
            handler.setFormatter(logging.Formatter("balsamdb[%(process)d]: %(name)s %(levelname)s %(message)s"))
            return handler
        except OSError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


class ResilientFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that notices its file (or ``log/``) was removed or replaced,
    recreates ``log/`` and reopens it, and falls back to syslog/stderr while it cannot."""

    def __init__(self, path):
        self.fallback = None
        self._identity = None
        super().__init__(path, maxBytes=10 * 1024 * 1024, backupCount=5, delay=True)
        try:
            self._reopen()
        except OSError as exc:
            self._use_fallback(exc)

    def _reopen(self, reopened=False):
        if self.stream is not None:
            stream, self.stream = self.stream, None
            try:
                stream.close()
            except OSError:
                pass
        directory = os.path.dirname(self.baseFilename)
        recreated = not os.path.isdir(directory)
        if recreated:
            # Only log/ itself, never its parents: a deleted DB directory is not brought back.
            os.mkdir(directory, 0o700)
        self.stream = self._open()
        st = os.fstat(self.stream.fileno())
        self._identity = (st.st_dev, st.st_ino)
        if self.fallback is not None:
            self.fallback.close()
            self.fallback = None
        if reopened:
            note = (f"log/ was removed; recreated {directory}" if recreated
                    else f"{self.baseFilename} was removed or replaced; reopened it")
            super().emit(logging.LogRecord("balsamdb.server.logs", logging.WARNING, __file__, 0, note, None, None))

    def _use_fallback(self, exc):
        if self.fallback is None:
            self.fallback = fallback_handler()
            if not isinstance(self.fallback, logging.handlers.SysLogHandler) and self.formatter is not None:
                self.fallback.setFormatter(self.formatter)
            self.fallback.emit(logging.LogRecord(
                "balsamdb.server.logs", logging.ERROR, __file__, 0,
                "cannot write %s (%s); logging here until it can be written again",
                (self.baseFilename, exc), None))

    def _still_ours(self):
        try:
            st = os.stat(self.baseFilename)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def emit(self, record):
        if self.stream is None or not self._still_ours():
            try:
                self._reopen(reopened=self._identity is not None)
            except OSError as exc:
                self._use_fallback(exc)
        if self.fallback is not None:
            self.fallback.emit(record)
            return
        super().emit(record)

    def doRollover(self):
        super().doRollover()
        if self.stream is not None:
            st = os.fstat(self.stream.fileno())
            self._identity = (st.st_dev, st.st_ino)
