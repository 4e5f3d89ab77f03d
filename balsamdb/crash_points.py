"""Deterministic crashes for the tests (issue 25): a process dies at a named point of its code
when a *fault file* says so, instead of a test killing it at a random moment and hoping.

``BALSAMDB_FAULT_FILE=F`` in a process's environment arms it: at :func:`reach` of point ``P`` the
process removes ``F`` and SIGKILLs itself if ``F`` holds ``P`` (one crash per file: a restarted
process with the same environment runs on).  Without the variable (always, outside tests) a point
costs one comparison with None.
"""

import os
import signal

_FAULT_FILE = os.environ.get("BALSAMDB_FAULT_FILE") or None

#: The points, in the group commit (balsamdb.applier): after a batch's writes, before its request
#: ids and answers are inserted; after they were, before the COMMIT.
AFTER_WRITES = "after-writes"
AFTER_APPLIED_INSERT = "after-applied-insert"


def reach(point):
    """Die here (SIGKILL, no clean-up) when the fault file names ``point``."""
    if _FAULT_FILE is None:
        return
    try:
        with open(_FAULT_FILE) as handle:
            wanted = handle.read().strip()
    except OSError:
        return
    if wanted == point:
        os.unlink(_FAULT_FILE)
        os.kill(os.getpid(), signal.SIGKILL)
