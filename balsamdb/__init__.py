"""balsamdb: a record store for HPC jobs and provenance that many processes can write at once.

    import balsamdb
    db = balsamdb.connect()            # the DB directory chosen as `db which` says
    job = db.jobs.create(name="sim-1", workflow="sweep", application="python sim.py")
    db.jobs.update_state(job.id, "RUNNING", message="started")
"""

__version__ = "0.1.0"

from .api import Database, connect  # noqa: E402
from .facades import Job  # noqa: E402
from .exceptions import (  # noqa: E402
    BadRequest, BalsamDBError, ConfigError, Conflict, DatabaseBusy, InvalidTransition,
    NotADBDirectory, NotFound, ServerUnavailable, StorageError,
)



def capture(project, **options):
    """Record this run's provenance as a Sumatra record linked to its job: a context manager
    and a decorator (``@balsamdb.capture(project="p")``); see :class:`balsamdb.provenance.Capture`."""
    from .provenance.capture import Capture

    return Capture(project, **options)


__all__ = [
    "capture", "connect", "Database", "Job", "BalsamDBError", "BadRequest", "ConfigError", "Conflict",
    "DatabaseBusy", "InvalidTransition", "NotADBDirectory", "NotFound", "ServerUnavailable",
    "StorageError",
]
