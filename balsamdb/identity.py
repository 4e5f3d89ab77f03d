"""Who this process is, for what it writes: ``user@host`` (who saved a record version) and
``user@host:pid`` (the owner of a launcher's claims)."""

import os

_WHO = []


def default_owner():
    """The owner name of this process's claims: ``user@host:pid``."""
    return f"{who()}:{os.getpid()}"


def who():
    """``user@host`` of this process: who saved a record version (an HTTP store puts its
    logged-in user instead)."""
    if not _WHO:
        import getpass
        import socket

        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (some containers)
            user = str(os.getuid())
        _WHO.append(f"{user}@{socket.gethostname()}")
    return _WHO[0]
