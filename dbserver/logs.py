"""Logging set-up for the server processes (entry points only, never at import)."""

import logging
import logging.handlers
import os


def setup_logging(path, level=None):
    """Log to ``path``, rotated at 10 MB with 5 old files kept."""
    level = level or os.environ.get("BALSAMDB_LOG_LEVEL", "INFO")
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=5)
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
