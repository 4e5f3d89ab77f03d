"""Deterministic crashes and pauses for the tests (issue 25): a process dies, or waits, at a named
point of its code when a *fault file* says so, instead of a test killing it at a random moment, or
hoping that a race goes one way.

``BALSAMDB_FAULT_FILE=F`` in a process's environment arms it.  At :func:`reach` of point ``P`` the
process removes ``F`` and SIGKILLs itself if ``F`` holds ``P`` (one crash per file: a restarted
process with the same environment runs on).  :func:`paused` of a pause point is true while ``F``
holds its name: the code there waits (the process runs on: it answers, notices a SIGTERM), until the
test removes or rewrites ``F``.  Without the variable (always, outside tests) a point costs one
comparison with None.
"""

import os
import signal

_FAULT_FILE = os.environ.get("BALSAMDB_FAULT_FILE") or None

#: The crash points, in the group commit (balsamdb.applier): after a batch's writes, before its
#: request ids and answers are inserted; after they were, before the COMMIT.
AFTER_WRITES = "after-writes"
AFTER_APPLIED_INSERT = "after-applied-insert"
#: In a schema upgrade (balsamdb.migrations.upgrade): every table rebuilt and the version written,
#: before the COMMIT (``db init`` killed there leaves the old schema whole).
UPGRADE_BEFORE_COMMIT = "upgrade-before-commit"
#: In ``db init``'s backup before an upgrade (balsamdb.schema_upgrade): the copy made, not yet renamed
#: to its backup name (as a db init killed while it copies).
BACKUP_COPIED = "backup-copied"

#: The pause points, in the write server's drain of the spool (dbserver/writer/spool_order.py):
#: the drain takes no spooled file, so a live write stays held behind them; its holding replies go on.
DRAIN_PAUSED = "drain-paused"
#: ... and no holding reply goes out either: a held live write stays in the barrier, until the stop.
HELD_FROZEN = "held-frozen"


def _named():
    try:
        with open(_FAULT_FILE) as handle:
            return handle.read().strip()
    except OSError:
        return None


def reach(point):
    """Die here (SIGKILL, no clean-up) when the fault file names ``point``."""
    if _FAULT_FILE is None:
        return
    if _named() == point:
        os.unlink(_FAULT_FILE)
        os.kill(os.getpid(), signal.SIGKILL)


def paused(*points):
    """Whether the fault file names one of the pause ``points`` now (the file stays)."""
    return _FAULT_FILE is not None and _named() in points
