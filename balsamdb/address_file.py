"""The ``dbwriter_address`` file: where the write server listens, and whether it lives.

The watchdog writes it atomically (temporary file, fsync, rename, fsync of the
directory), so a reader never sees a torn file.  Readers never trust it blindly:
:func:`read` turns a missing, empty or corrupt file into "no server", and
:func:`server_alive` checks the named processes when they run on this host.
"""

import json
import os
import socket
import tempfile
from pathlib import Path

import psutil

PROTOCOL_VERSION = 1


def write_atomic(path, data):
    """Write ``data`` (a dict) as JSON to ``path`` so that readers see old or new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # private like everything in a DB directory (mkstemp made it so; say it)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def stopped_record(db_type, reason="no server has run yet"):
    return {"state": "stopped", "db_type": db_type, "reason": reason, "protocol": PROTOCOL_VERSION}


def check_protocol(info, where):
    """Refuse, with one line naming both versions, the address of a server that speaks a newer
    protocol than this balsamdb (an older client would send what it no longer reads)."""
    theirs = info.get("protocol", PROTOCOL_VERSION)
    if isinstance(theirs, int) and theirs > PROTOCOL_VERSION:
        from .exceptions import ConfigError

        raise ConfigError(f"the server of {where} speaks protocol {theirs}, newer than this balsamdb's "
                          f"({PROTOCOL_VERSION}): upgrade balsamdb on this host")


def read(path):
    """Return the address record, or ``{"state": "stopped", "reason": ...}`` when unusable."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return {"state": "stopped", "reason": "the address file is missing"}
    except OSError as exc:
        return {"state": "stopped", "reason": f"the address file cannot be read: {exc}"}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or "state" not in data:
            raise ValueError("not an address record")
    except ValueError:
        return {"state": "stopped", "reason": "the address file is corrupt", "corrupt": True}
    if data["state"] == "running" and not data.get("address"):
        return {"state": "stopped", "reason": "the address file names no address", "corrupt": True}
    return data


def _start_ticks(pid):
    """The start of ``pid`` in clock ticks since boot, and the boot's id (Linux), or None.

    Unlike a wall-clock start time, these do not move when the clock is stepped."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        with open("/proc/sys/kernel/random/boot_id") as handle:
            return int(fields[19]), handle.read().strip()
    except (OSError, IndexError, ValueError):
        return None


def process_identity(pid):
    """Who ``pid`` is, in a way that survives pid reuse: its start in ticks since boot (and
    the boot) where /proc has them, and its start time (for people, and elsewhere)."""
    ident = {"pid": pid, "started": psutil.Process(pid).create_time()}
    ticks = _start_ticks(pid)
    if ticks:
        ident["ticks"], ident["boot"] = ticks
    return ident


def live_process(ident):
    """The :class:`psutil.Process` that ``ident`` names, if it still runs (not a zombie), else None."""
    if not ident:
        return None
    try:
        proc = psutil.Process(int(ident["pid"]))
        if "ticks" in ident:
            same = _start_ticks(proc.pid) == (ident["ticks"], ident["boot"])
        else:
            same = abs(proc.create_time() - float(ident["started"])) < 0.01
        return proc if same and proc.status() != psutil.STATUS_ZOMBIE else None
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def _same_process(ident):
    return live_process(ident) is not None


def server_alive(data):
    """False when ``data`` names a server that certainly does not run.

    On this host the server's pid is checked (with its start time, so a reused
    pid does not count); for a server on another host only a request can tell,
    so the answer is True.  A dead watchdog does not stop a live server.
    """
    if data.get("state") != "running":
        return False
    if data.get("host") != socket.gethostname():
        return True
    return _same_process(data.get("server"))


def watchdog_alive(data):
    """Like :func:`server_alive`, for the watchdog named in ``data``."""
    if data.get("host") != socket.gethostname():
        return True
    return _same_process(data.get("watchdog"))


def network_namespace():
    """Which network namespace this process is in: a local (abstract Unix) socket is
    reachable only from the same one."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None
