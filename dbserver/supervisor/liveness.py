"""How a server of a DB directory proves that it lives, without the address file.

Two proofs, for two reaches:

* On one host (one mount), the **server lock**: the write server holds an
  exclusive ``flock`` on ``P/server.lock`` for its whole life and writes its
  identity into it.  The kernel drops the lock when the process dies, however it
  dies, so a held lock is a live server.  A new watchdog and ``db dbserver --stop``
  test it (:func:`lock_holder`) to find a server that nothing else names (an orphan
  whose watchdog was killed and whose address file was deleted), stop it, and wait
  until the lock is free.

* Across hosts, the **heartbeat**: ``flock`` is not shared between the hosts of
  most shared file systems (NFS without a lock manager, FUSE mounts, some
  Lustre set-ups), so the watchdog also rewrites ``P/heartbeat`` every
  :data:`HEARTBEAT_EVERY` seconds with its host and identity.  A start on another
  host refuses while the heartbeat names another host and is younger than the
  ``heartbeat_stale_after`` setting.  Its age is the time since the file last
  changed, by this host's clock: the hosts' clocks must agree to within a few
  seconds (NTP), which is far below the limit.

The watchdog holds a lock of its own, ``P/watchdog.lock`` (:func:`acquire_lock`), so that one
watchdog runs per DB directory, and stops an orphaned server before it starts one
(:func:`stop_orphan`).
"""

import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil

from balsamdb import address_file

log = logging.getLogger(__name__)

SERVER_LOCK = "server.lock"
HEARTBEAT = "heartbeat"
HEARTBEAT_EVERY = 2.0   # seconds between two refreshes of the heartbeat by the watchdog


class AlreadyRunning(Exception):
    """Another watchdog holds ``P/watchdog.lock``: one watchdog per DB directory."""


def acquire_lock(dbdir):
    """Open and lock ``watchdog.lock``; the returned file must stay open for the lock to hold."""
    handle = open(dbdir.lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"another watchdog holds {dbdir.lock_file}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


class LockHeld(Exception):
    """The server lock is held by another live process (its identity, when readable, in ``holder``)."""

    def __init__(self, message, holder=None):
        super().__init__(message)
        self.holder = holder


def server_lock_file(dbdir):
    return Path(dbdir.path) / SERVER_LOCK


def heartbeat_file(dbdir):
    return Path(dbdir.path) / HEARTBEAT


def hold_server_lock(dbdir, deadline=5.0):
    """Take the server lock for this process (the write server, at its start) and write who holds it.

    Waits up to ``deadline`` seconds for a server that is still exiting; raises
    :class:`LockHeld` when another server keeps it.  The returned file must stay
    open for the lock to hold (the descriptor is not inherited by children)."""
    path = server_lock_file(dbdir)
    try:
        handle = open(path, "a+")
    except OSError:
        if not path.exists():
            raise
        handle = open(path, "r")  # a read-only DB directory: the lock holds all the same, unsigned
    end = time.monotonic() + deadline
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= end:
                holder = _read_holder(path)
                handle.close()
                raise LockHeld(f"another write server holds {path} ({_describe(holder)})", holder) from None
            time.sleep(0.05)  # wait-ok: the poll interval of a wait with a deadline
    identity = dict(address_file.process_identity(os.getpid()), host=socket.gethostname())
    if handle.mode != "r":
        os.chmod(path, 0o600)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(identity) + "\n")
        handle.flush()
    return ServerLock(handle, identity)


class ServerLock:
    """The held server lock.  A daemon thread touches the file every :data:`HEARTBEAT_EVERY`
    seconds, so that another host sees the server live even when its watchdog was killed
    (the lock itself is not visible there); :meth:`close` empties the file (a clean stop:
    no host need wait) and releases the lock."""

    def __init__(self, handle, identity):
        self.handle = handle
        self.identity = identity
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._touch, name="server-lock-heartbeat", daemon=True)
        self.thread.start()

    def _touch(self):
        while not self.closed.wait(HEARTBEAT_EVERY):
            try:
                os.utime(self.handle.fileno())
            except (OSError, ValueError):  # read-only for now: the lock holds all the same
                pass

    def close(self):
        self.closed.set()
        self.thread.join(timeout=5)
        if self.handle.mode != "r":
            try:
                self.handle.seek(0)
                ours = json.loads(self.handle.read() or "null") == self.identity
                if ours:  # a server of another host (another mount) may have written it since
                    self.handle.seek(0)
                    self.handle.truncate()
                    self.handle.flush()
            except (OSError, ValueError):
                pass
        self.handle.close()


def lock_holder(dbdir):
    """None when no process holds the server lock on this mount; else what the lock file says
    of its holder (a dict, possibly empty when the file cannot be parsed)."""
    path = server_lock_file(dbdir)
    try:
        handle = open(path, "r")
    except FileNotFoundError:
        return None
    with handle:
        try:
            # A shared lock is refused only while the server holds its exclusive one;
            # taken, it is dropped at once by closing the file.
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            pass
    return _read_holder(path)


def wait_lock_free(dbdir, deadline):
    """Wait until no process holds the server lock; returns the holder still there at the deadline."""
    end = time.monotonic() + deadline
    holder = lock_holder(dbdir)
    while holder is not None and time.monotonic() < end:
        time.sleep(0.02)  # wait-ok: the poll interval of a wait with a deadline
        holder = lock_holder(dbdir)
    return holder


def stop_orphan(dbdir, stop_deadline, announce=None):
    """Stop a server left running by a watchdog that was killed, so that one server at a time owns
    the database.  The server lock finds it even when the address file was deleted or names another
    server.  SIGCONT (a stopped orphan could not act on SIGTERM) and SIGTERM, SIGKILL after
    ``stop_deadline`` seconds; ``announce(proc, stop_deadline)`` is called first, so that the watchdog
    can say what it waits for.  Returns the pid it stopped (or None); raises RuntimeError when a
    server that is not on this host (or not visible here) still holds the lock."""
    holder = lock_holder(dbdir)
    info = address_file.read(dbdir.address_file)
    named = address_file.server_alive(info) and info.get("host") == socket.gethostname()
    if holder is None and not named:
        return None
    ident = holder if holder and holder.get("host") == socket.gethostname() else info.get("server")
    proc = address_file.live_process(ident)
    if proc is None and named:
        proc = address_file.live_process(info.get("server"))
    if proc is not None:
        log.warning("a server left by a dead watchdog runs as pid %s; stopping it first", proc.pid)
        if announce is not None:
            announce(proc, stop_deadline)
        try:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(timeout=stop_deadline)
        except psutil.TimeoutExpired:
            log.error("pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, stop_deadline)
            proc.kill()
            proc.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass
    left = wait_lock_free(dbdir, stop_deadline if proc is None else 5.0)
    if left is not None:
        raise RuntimeError(f"a write server that is not on this host or not visible here holds "
                           f"{server_lock_file(dbdir)} ({left or 'no identity written'}); stop it first")
    return None if proc is None else proc.pid


def _read_holder(path):
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _describe(holder):
    if not holder:
        return "its holder did not say who it is"
    return f"pid {holder.get('pid')} on host {holder.get('host')}"


# -- the heartbeat ---------------------------------------------------------------------------

def write_heartbeat(dbdir, watchdog_identity, state="running"):
    """Replace the heartbeat (temporary file and rename, no fsync: a lost beat only looks older)."""
    path = heartbeat_file(dbdir)
    record = {"host": socket.gethostname(), "watchdog": watchdog_identity, "beat": time.time(),
              "every": HEARTBEAT_EVERY, "state": state}
    tmp = path.with_name(f".{HEARTBEAT}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_heartbeat(dbdir):
    """The heartbeat record with its ``age`` in seconds (since the file last changed), or None when absent."""
    try:
        with open(heartbeat_file(dbdir), "rb") as handle:
            # open() then fstat: on NFS, close-to-open consistency makes the attributes fresh.
            mtime = os.fstat(handle.fileno()).st_mtime
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"unreadable": str(exc), "age": 0.0}
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError
    except ValueError:
        record = {"corrupt": True}
    record["age"] = time.time() - mtime
    return record


def same_watchdog(record, identity):
    """True when the heartbeat ``record`` was written by the watchdog ``identity`` on this host."""
    theirs = (record or {}).get("watchdog") or {}
    return (record or {}).get("host") == socket.gethostname() and theirs.get("pid") == identity.get("pid") \
        and theirs.get("started") == identity.get("started")


def remove_heartbeat(dbdir, identity):
    """Remove the heartbeat if this watchdog wrote it (a clean stop: another host may start at once)."""
    if same_watchdog(read_heartbeat(dbdir), identity):
        try:
            heartbeat_file(dbdir).unlink()
        except OSError:
            pass


def clear_dead_heartbeat(dbdir):
    """Remove a heartbeat written on this host by a watchdog that no longer runs (one killed with
    SIGKILL), so that other hosts need not wait for it to turn stale after a stop."""
    record = read_heartbeat(dbdir)
    if record and record.get("host") == socket.gethostname() \
            and address_file.live_process(record.get("watchdog")) is None:
        try:
            heartbeat_file(dbdir).unlink()
        except OSError:
            pass


def foreign_heartbeat(dbdir, stale_after):
    """The heartbeat of a live watchdog, or of a live write server, on another host (fresh:
    changed less than ``stale_after`` seconds ago), or None.  The server's comes from
    ``server.lock``, which it touches itself: it counts when its watchdog was killed.  On this
    host the pids tell instead, whatever the files' age."""
    here = socket.gethostname()
    record = read_heartbeat(dbdir)
    if record and record.get("state") != "stopped" and record.get("host") not in (None, here) \
            and record["age"] < stale_after:
        return record
    server = _read_server_lock(dbdir)
    if server and server.get("host") not in (None, here) and server["age"] < stale_after:
        return {"host": server["host"], "server": server, "age": server["age"]}
    return None


def _read_server_lock(dbdir):
    """What ``server.lock`` says of its last holder, with the ``age`` of its last touch, or None."""
    try:
        with open(server_lock_file(dbdir), "rb") as handle:
            mtime = os.fstat(handle.fileno()).st_mtime
            data = json.loads(handle.read() or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data["age"] = time.time() - mtime
    return data
