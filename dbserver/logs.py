"""Logging set-up for the server processes (entry points only, never at import)."""

import logging
import logging.handlers
import os


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
    """Log to ``path``, rotated at 10 MB with 5 old files kept; messages escaped to one line each."""
    level = level or os.environ.get("BALSAMDB_LOG_LEVEL", "INFO")
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=5)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
