"""Files and directories that only the owner of a DB directory may read: secrets,
passwords, the URL of an external PostgreSQL server.  Written once with mode 0600
(directories 0700), whatever the umask."""

import os
from pathlib import Path

from .exceptions import ConfigError


def read_private(path):
    try:
        return Path(path).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; the DB directory is incomplete") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: only the owner of the DB directory may use it") from None


def write_private(path, content):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def make_private_directories(root, relative, mode=0o700):
    """Make ``root/relative`` and any missing directory between, each with ``mode`` whatever the
    umask (``os.makedirs`` gives the ones between the umask's mode); returns the path."""
    path = Path(root)
    for part in Path(relative).parts:
        path = path / part
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            continue
        os.chmod(path, mode)  # the umask may have taken bits that the mode asks for
    return path
