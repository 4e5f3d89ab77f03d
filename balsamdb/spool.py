"""The spool: writes that could not reach a server wait here, and the server applies them.

Maildir style, so that a reader never sees half a file::

    P/spool/tmp/      being written
    P/spool/new/      waiting: one signed request per file
    P/spool/failed/   refused by the server (bad request, illegal transition, ...),
                      each with a ``.answer.json`` beside it saying why
    P/spool/seq/      the positions claimed so far (never emptied by the drain): the order

A file is written to ``tmp/``, fsynced, and renamed into ``new/``; its name
``p<position>-<ns since epoch>-<client>-<seq>.req`` sorts by its *position*, which
the write claims before it is stored, by creating ``seq/<position>`` exclusively
(``O_CREAT|O_EXCL``: atomic on local file systems and NFSv3+), walking up past every
position already taken.  So the rule holds whatever the clocks of the hosts that share
the DB directory: a spooled write that began after another spooled write's call returned
is applied after it (the other's position was taken, and every position below the highest
is taken too: claims leave no gaps, see :meth:`Spool.claim_position`).  The time stamp
in the name is only for people (``db spool``).  Names of an older balsamdb
(``<ns>-<client>-<seq>.req``) sort before every positioned one.

The content is the same signed frame that would have gone over the wire (see
:mod:`balsamdb.protocol`), with the same request id: the server applies it exactly once
(a file applied but not yet removed when the server died is answered from the record of
applied requests the second time).
"""

import json
import os
import shutil
import stat
import time
from pathlib import Path

from .exceptions import StorageError
from .private_files import make_private_directories


class StrayEntry(Exception):
    """An entry of ``spool/new`` that is no spooled write (a directory, a FIFO, an unreadable file)."""


def fsync_dir(path):
    """Make a directory's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def order_key(name):
    """How the waiting files sort: an older balsamdb's (time-stamped) first, then by position."""
    return (1, name) if name.startswith("p") else (0, name)


def written_ns(name):
    """The time stamp (ns) in a spool file's name (for people; the order is the position)."""
    parts = name.split("-")
    try:
        return int(parts[1] if name.startswith("p") else parts[0])
    except (IndexError, ValueError):
        return 0


#: positions kept in ``seq/`` below the highest when the server trims it (see :meth:`Spool.trim_positions`)
KEEP_POSITIONS = 1000


class Spool:
    def __init__(self, path):
        self.path = Path(path)
        self.tmp = self.path / "tmp"
        self.new = self.path / "new"
        self.failed = self.path / "failed"
        self.seq = self.path / "seq"

    def ensure(self):
        if all(sub.is_dir() for sub in (self.tmp, self.new, self.failed, self.seq)):
            return
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for sub in (self.tmp, self.new, self.failed, self.seq):
            # as root in someone else's DB directory: theirs, so that their server and writes can use them
            make_private_directories(self.path, sub.name)

    def _owner(self):
        """``(uid, gid)`` to give the files root makes here (the spool's owner), or None."""
        if os.geteuid() != 0:
            return None
        info = os.stat(self.path)
        return None if info.st_uid == 0 else (info.st_uid, info.st_gid)

    # -- positions -------------------------------------------------------------------------
    def _read_number(self, name):
        try:
            with open(self.seq / name, "rb") as handle:  # a fresh open: NFS revalidates (close-to-open)
                return int(handle.read(40).strip() or 0)
        except (OSError, ValueError):
            return 0

    def claim_position(self, start=0):
        """Claim the next position by creating ``seq/<n>`` exclusively; returns ``n``.

        Why this orders writes across hosts: claims leave no gaps.  A claim starts at a position
        that some claim took (the ``hint`` file, the caller's own last one, each at most the
        highest taken) or just above the ``floor``, and walks up past every taken one to the first
        free one, so every position from the floor to the highest is taken.  A write that began
        after another's call returned starts at or below the highest taken and so ends above the
        other's position.  The server removes old positions (:meth:`trim_positions`): it writes
        the new ``floor`` first, then removes those at or below it; a claim that landed on a removed
        one (a stale hint) sees the floor when it reads it after its create, and walks on above it."""
        n = max(start, self._read_number("hint"), self._read_number("floor") + 1, 1)
        while True:
            try:
                fd = os.open(self.seq / f"{n:020d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                n += 1
                continue
            owner = self._owner()
            if owner is not None:
                os.fchown(fd, *owner)
            os.close(fd)
            floor = self._read_number("floor")
            if n <= floor:  # a position the server had removed: not ours to take
                n = floor + 1
                continue
            fsync_dir(self.seq)  # the claim is durable before the write that carries it is stored
            self._write_hint(n)
            return n

    def _write_hint(self, n):
        """Where the next claim starts (a position taken: never above the highest one)."""
        tmp = self.seq / f".hint.{os.getpid()}.{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            owner = self._owner()
            if owner is not None:
                os.fchown(fd, *owner)
            with os.fdopen(fd, "w") as handle:
                handle.write(str(n))
            os.replace(tmp, self.seq / "hint")
        except OSError:  # only a starting point: a claim without it walks a little further
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def trim_positions(self, keep=KEEP_POSITIONS):
        """Remove the positions more than ``keep`` below the highest (the server calls this), so
        that ``seq/`` stays small: the new floor is written (and made durable) first, then the
        positions at or below it go.  Returns how many were removed."""
        try:
            taken = sorted(int(n) for n in os.listdir(self.seq) if n.isdigit())
        except FileNotFoundError:
            return 0
        if len(taken) <= 2 * keep:
            return 0
        floor = taken[-keep - 1]
        tmp = self.seq / f".floor.{os.getpid()}"
        with open(tmp, "w") as handle:
            handle.write(str(floor))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.seq / "floor")
        fsync_dir(self.seq)
        removed = 0
        for n in taken:
            if n > floor:
                break
            try:
                os.unlink(self.seq / f"{n:020d}")
                removed += 1
            except FileNotFoundError:
                pass
        return removed

    def put(self, frame, client, seq, start=0):
        """Store one signed request frame durably, at the next position (see
        :meth:`claim_position`; ``start``: the caller's own last position); returns the path of
        the waiting file."""
        try:
            self.ensure()
            position = self.claim_position(start)
            name = f"p{position:020d}-{time.time_ns():020d}-{client}-{seq:08d}.req"
            tmp = self.tmp / name
            # Private like the DB directory: a spooled write may hold a record nobody else may read.
            with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb") as handle:
                owner = self._owner()
                if owner is not None:  # root's write must be readable by the owner's server
                    os.fchown(handle.fileno(), *owner)
                handle.write(frame)
                handle.flush()
                os.fsync(handle.fileno())
            final = self.new / name
            os.rename(tmp, final)
            fsync_dir(self.new)
        except OSError as exc:
            raise StorageError(f"the server is unreachable and the spool {self.path} cannot take the write: "
                               f"{exc.strerror or exc}") from None
        return final

    def pending(self, limit=None, skip=()):
        """Waiting files, oldest first (the ``limit`` oldest; none named in ``skip``)."""
        try:
            names = sorted((n for n in os.listdir(self.new) if n.endswith(".req") and n not in skip), key=order_key)
        except FileNotFoundError:
            return []
        return [self.new / n for n in (names[:limit] if limit else names)]

    def names(self):
        """The names of the waiting files, in no particular order."""
        try:
            return [n for n in os.listdir(self.new) if n.endswith(".req")]
        except FileNotFoundError:
            return []

    def any_waiting(self):
        """True when any client's write waits in ``new/`` (stops at the first one)."""
        try:
            with os.scandir(self.new) as entries:
                return any(entry.name.endswith(".req") for entry in entries)
        except FileNotFoundError:
            return False

    def failures(self):
        try:
            return sorted((p for p in self.failed.iterdir() if p.suffix == ".req"), key=lambda p: order_key(p.name))
        except FileNotFoundError:
            return []

    def count(self):
        try:
            return sum(1 for n in os.listdir(self.new) if n.endswith(".req"))
        except FileNotFoundError:
            return 0

    def done(self, path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def read(self, path):
        """The bytes of a waiting file; :class:`StrayEntry` when the entry can never be one (not a
        regular file, or not readable), ``FileNotFoundError`` when it is gone (taken by another drain)."""
        mode = os.lstat(path).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a symbolic link" if stat.S_ISLNK(mode) else \
                "not a regular file"
            raise StrayEntry(f"{kind}, not a spooled write")
        try:
            # O_NONBLOCK: a FIFO swapped in after the lstat cannot hang the reader.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except PermissionError as exc:
            raise StrayEntry(f"unreadable: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: a symbolic link swapped in
                raise StrayEntry("a symbolic link, not a spooled write") from None
            raise
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise StrayEntry("not a regular file, not a spooled write")
            return handle.read()

    def quarantine(self, path, reason):
        """Move a stray entry of ``new/`` (see :meth:`read`) to ``failed/`` with the reason, so that it
        neither fills the log on every turn nor counts as a write that waits."""
        self.ensure()
        name = Path(path).name
        target = self.failed / name
        if os.path.lexists(target):
            target = self.failed / f"{name}.{time.time_ns()}"
        (self.failed / (target.name + ".answer.json")).write_text(json.dumps(
            {"ok": False, "error": {"code": "bad_request", "type": "StrayEntry",
                                    "message": f"stray entry in spool/new: {reason}"}}, indent=1))
        shutil.move(str(path), str(target))
        return target

    def fail(self, path, answer):
        """Move a refused request to ``failed/`` with the answer that refused it."""
        self.ensure()
        target = self.failed / Path(path).name
        (self.failed / (Path(path).name + ".answer.json")).write_text(json.dumps(answer, indent=1))
        os.replace(path, target)

    def describe(self, secret=None, decode=None):
        """What waits and what failed, for people: a dict of lists.  Files are read with
        ``decode(bytes) -> message`` (default: signed frames checked with ``secret``)."""
        from . import protocol

        if decode is None and secret is not None:
            def decode(data):
                return protocol.decode(secret, [data])

        def entry(path, answer=None):
            item = {"file": path.name, "age_s": round(time.time() - written_ns(path.name) / 1e9, 1)}
            if decode is not None:
                try:
                    message = decode(self.read(path))  # a stray FIFO must not hang `db spool`
                    item.update(id=message.get("id"), op=message.get("op"))
                except Exception as exc:  # a damaged file is shown, not fatal
                    item["unreadable"] = str(exc)
            if answer is not None:
                item["error"] = answer
            return item

        failed = []
        for path in self.failures():
            answer_file = path.with_name(path.name + ".answer.json")
            answer = json.loads(answer_file.read_text()) if answer_file.exists() else None
            failed.append(entry(path, (answer or {}).get("error")))
        return {"pending": [entry(p) for p in self.pending()], "failed": failed}


class SpoolWriter:
    """One client's writes into a spool: its files sort in the order of its calls, and
    it knows whether its newest one still waits (a later write must not overtake it).
    A forked child starts as a client of its own."""

    def __init__(self, spool):
        self.spool = spool
        self._pid = None

    def _renew(self):
        if self._pid != os.getpid():  # the parent's files and sequence are the parent's
            self._pid, self._seq, self._last, self._position = os.getpid(), 0, None, 0
            self.client = f"{os.getpid()}x{os.urandom(3).hex()}"

    def put(self, frame):
        """Spool ``frame`` after every write whose call returned before (this client's and any
        other's, on any host); returns its path (a str)."""
        self._renew()
        self._seq += 1
        path = self.spool.put(frame, self.client, self._seq, start=self._position + 1)
        self._position = int(path.name[1:].split("-")[0])
        self._last = str(path)
        return self._last

    def waiting(self):
        """True while this client's newest spooled write has not been applied."""
        self._renew()
        if self._last is not None and not os.path.exists(self._last):
            self._last = None
        return self._last is not None

