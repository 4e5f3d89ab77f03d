"""Files and directories that only the owner of a DB directory may read: secrets,
passwords, the URL of an external PostgreSQL server.  Written once with mode 0600
(directories 0700), whatever the umask.  And files written outside a DB directory (an
export), perhaps in a directory that others may write: :func:`private_replacement`."""

import os
import tempfile
from contextlib import contextmanager
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


@contextmanager
def private_replacement(path):
    """Write ``path`` whole or not at all, in a way no other user can read, pre-empt or redirect:
    yields a binary file made by ``mkstemp`` beside ``path`` (a random name, ``O_CREAT|O_EXCL|O_NOFOLLOW``,
    mode 0600 whatever the umask), flushed to disk and renamed over ``path`` when the block ends;
    removed when it raises.  A file or symlink that someone else made at ``path`` (or at any name
    balsamdb might have chosen) is never opened: it is replaced, or (a sticky directory such as
    /tmp, another user's file) the rename fails with PermissionError and nothing is written there."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        try:
            os.replace(tmp, path)
        except PermissionError as exc:  # a sticky directory (/tmp) keeps another user's file from being replaced
            try:
                owner = os.lstat(path).st_uid
            except OSError:
                raise exc from None
            if owner == os.geteuid():
                raise
            raise PermissionError(exc.errno, f"{path.name} there belongs to user id {owner}, and the directory lets "
                                  "only its owner replace it: choose another name") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
