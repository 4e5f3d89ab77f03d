"""Files and directories that only the owner of a DB directory may read: secrets,
passwords, the URL of an external PostgreSQL server.  Written once with mode 0600
(directories 0700), whatever the umask.  And files written outside a DB directory (an
export), perhaps in a directory that others may write: :func:`private_replacement`."""

import errno
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
    umask (``os.makedirs`` gives the ones between the umask's mode); returns the path.

    What is made belongs to the owner of ``root`` (the DB directory), also when root makes it
    (``sudo db job add --path /home/alice/db``): root gives each new directory to that owner, as
    SQLite gives it its WAL file, so that the owner's jobs can use their folders.  Root then works
    only inside directories that the owner owns, walked with directory descriptors: a symlink
    that the owner put in ``data/`` (to a scratch file system of theirs: fine) may not lead root to
    make a directory of theirs anywhere else (/etc): refused with an OSError (EPERM)."""
    root = Path(root)
    owner = None
    if os.geteuid() == 0:
        info = os.stat(root)
        if info.st_uid != 0:
            owner = (info.st_uid, info.st_gid)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    path = root
    try:
        for part in Path(relative).parts:
            path = path / part
            try:
                os.mkdir(part, mode, dir_fd=fd)
                made = True
            except FileExistsError:
                made = False
            # The directory just made is opened as itself (never a symlink put there since); one
            # that was there may be a symlink (data/ on a scratch file system).
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | (os.O_NOFOLLOW if made else 0), dir_fd=fd)
            os.close(fd)
            fd = inner
            if made:
                os.fchmod(fd, mode)  # the umask may have taken bits that the mode asks for
                if owner is not None and os.fstat(fd).st_uid == 0:
                    os.fchown(fd, *owner)
            if owner is not None and os.fstat(fd).st_uid != owner[0]:
                raise PermissionError(errno.EPERM, f"{path} does not belong to user id {owner[0]}, the owner of "
                                      f"{root}: root makes nothing there for them")
    finally:
        os.close(fd)
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
