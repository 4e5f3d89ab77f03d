"""The relay's files (see :mod:`balsamdb.server.relay.app`): its token, its spool of saves not
forwarded yet, and its cache of the last known document of each record."""

import hashlib
import json
import logging
import os
import secrets
import stat
import threading
import time
from pathlib import Path

from balsamdb.exceptions import ConfigError
from balsamdb.spool import fsync_dir

log = logging.getLogger("balsamdb.server.relay.app")


def make_token(directory):
    """``DIR/token`` (``relay:<random>``, 0600), made when missing; returns (user, password).

    A token file that others may read or write (any group or other permission bit), that
    another user owns, or that holds no ``user:password`` is refused (ConfigError), as ssh
    refuses a private key that others can read."""
    directory = Path(directory)
    path = directory / "token"
    info = directory.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o022:
        raise ConfigError(f"{directory} belongs to user id {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}: "
                          "others could change the relay's token and spool; give the relay a directory of yours "
                          "that only you may write")
    if not os.path.lexists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"relay:{secrets.token_urlsafe(18)}\n")
    try:  # the file itself, never what a symlink points to; a FIFO must not block the start
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise ConfigError(f"{path} cannot be opened ({exc.strerror}): the token must be a plain file, "
                          "not a symlink") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())  # what is read is what was checked
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a plain file")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(f"{path} is mode {stat.S_IMODE(info.st_mode):04o}: others may read the relay's "
                              f"password; make it 0600 (chmod 600 {path}) and start again")
        if info.st_uid != os.getuid():
            raise ConfigError(f"{path} belongs to user id {info.st_uid}, not to you ({os.getuid()})")
        text = handle.read(4096).decode("utf-8", "replace")
    user, _, password = text.strip().partition(":")
    if not user or not password:
        raise ConfigError(f"{path} must hold one line user:password")
    return user, password


class SpoolError(Exception):
    """A save that could not be kept in the spool (a full disk): refused, never answered."""


class RelaySpool:
    """Saves waiting to be forwarded, in order, on disk (one file each, named by a sequence number)."""

    def __init__(self, directory):
        self.tmp, self.new = Path(directory) / "tmp", Path(directory) / "new"
        for path in (Path(directory), self.tmp, self.new):
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.pending = {}  # (project, label) -> [sequence numbers], oldest first
        self.documents = {}  # sequence -> (project, label, document)
        self.saved = {}  # sequence -> (UNIX time the save was answered, or None for an old spool file; by whom)
        for path in self.tmp.iterdir():  # a save cut short by a crash: never answered, so never kept
            path.unlink()
        for path in sorted(self.new.iterdir()):
            try:  # each was fsynced before its rename: only a damaged disk or a stray file fails here
                seq = int(path.name.removesuffix(".json")) if path.name.endswith(".json") else int("not a save")
                entry = json.loads(path.read_text())
                project, label, document = entry["project"], entry["label"], entry["document"]
            except (OSError, ValueError, KeyError, TypeError) as exc:  # kept aside: the relay still starts
                damaged = Path(directory) / "damaged"
                damaged.mkdir(mode=0o700, exist_ok=True)
                os.replace(path, damaged / path.name)
                log.error("%s is no save the relay can read (%s): moved to %s", path, exc, damaged)
                continue
            self._remember(seq, project, label, document)
            self.saved[seq] = (entry.get("saved_at"), entry.get("saved_by", ""))
        # saves kept aside (refused by the store, or damaged): their numbers are never given again
        used = [int(p.stem) for aside in ("failed", "damaged") if (Path(directory) / aside).is_dir()
                for p in (Path(directory) / aside).iterdir() if p.stem.isdigit()]
        self._next = max([*self.documents, *used], default=0) + 1

    def _remember(self, seq, project, label, document):
        self.pending.setdefault((project, label), []).append(seq)
        self.documents[seq] = (project, label, document)

    def put(self, project, label, document, saved_by=""):
        """Keep one save durably (fsync + rename) before it is answered, with the time
        (forwarded to the store as the version's time) and who saved it."""
        with self._lock:
            seq = self._next
            self._next += 1
            name = f"{seq:012d}.json"
            saved_at = time.time()
            data = json.dumps({"project": project, "label": label, "document": document, "saved_at": saved_at,
                               "saved_by": saved_by}, ensure_ascii=False)
            try:
                fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(self.tmp / name, self.new / name)
                fsync_dir(self.new)
            except OSError as exc:  # a full disk: the save is refused (SpoolError), nothing half kept
                for leftover in (self.tmp / name, self.new / name):
                    leftover.unlink(missing_ok=True)
                raise SpoolError(f"the relay could not keep the save in its spool ({exc.strerror or exc}); "
                                 "it was not saved: try again") from None
            self._remember(seq, project, label, document)
            self.saved[seq] = (saved_at, saved_by)
        return seq

    def saved_of(self, seq):
        """(saved_at, saved_by) of the save ``seq``."""
        with self._lock:
            return self.saved.get(seq, (None, ""))

    def oldest(self):
        with self._lock:
            if not self.documents:
                return None
            seq = min(self.documents)
            return (seq, *self.documents[seq])

    def done(self, seq):
        with self._lock:
            project, label, _document = self.documents.pop(seq)
            self.saved.pop(seq, None)
            self.pending[(project, label)].remove(seq)
            if not self.pending[(project, label)]:
                del self.pending[(project, label)]
            (self.new / f"{seq:012d}.json").unlink()

    def latest(self, project, label):
        """The newest save of (project, label) not forwarded yet, or None."""
        with self._lock:
            seqs = self.pending.get((project, label))
            return self.documents[seqs[-1]][2] if seqs else None

    def labels(self, project):
        with self._lock:
            return {label: self.documents[seqs[-1]][2] for (p, label), seqs in self.pending.items() if p == project}

    def count(self):
        with self._lock:
            return len(self.documents)


class Cache:
    """The last known document of each record (saved through the relay, or read from the store)."""

    def __init__(self, directory):
        self.dir = Path(directory)
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _path(self, project, label):
        return self.dir / hashlib.sha256(f"{project}\0{label}".encode()).hexdigest()

    def put(self, project, label, document):
        path = self._path(project, label)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"project": project, "label": label, "document": document}, ensure_ascii=False))
        os.replace(tmp, path)

    def get(self, project, label):
        try:
            return json.loads(self._path(project, label).read_text())["document"]
        except (OSError, ValueError):
            return None

    def drop(self, project, label):
        self._path(project, label).unlink(missing_ok=True)

    def labels(self, project):
        out = {}
        for path in self.dir.iterdir():
            if path.suffix:
                continue
            try:
                entry = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if entry["project"] == project:
                out[entry["label"]] = entry["document"]
        return out
