"""Start, stop and inspect the server of a DB directory: what ``db dbserver`` calls.

:func:`start` launches a detached watchdog and returns once the server answers
a ping; :func:`stop` asks the watchdog to stop and returns once nothing of it
runs; :func:`status` reads the address file and asks the server for its
counters.  Each touches only its own DB directory.
"""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import psutil

from balsamdb import address_file
from balsamdb.client import server_state
from balsamdb.dbdir import PRIVATE_UMASK
from balsamdb.exceptions import BalsamDBError, ServerUnavailable

from .watchdog import EXIT_ALREADY_RUNNING


class ControlError(BalsamDBError):
    """Starting or stopping a server failed; the message says why and what to do."""

    code = "control"


@dataclass
class StartResult:
    already_running: bool
    address: dict


def log_tail(dbdir, lines=15):
    """The last lines of the server and watchdog logs, for error messages."""
    out = []
    for name in ("watchdog.log", "server.log", "server.err", "watchdog.out"):
        path = dbdir.log_dir / name
        if path.exists():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                out.append(f"--- {path} ---")
                out.extend(text)
    return "\n".join(out)


def _ping(dbdir, deadline_s=5.0):
    from balsamdb.api import Database
    from balsamdb.settings import load_settings

    settings = load_settings(client_timeout=min(2.0, deadline_s), client_deadline=deadline_s,
                             require_server=True)
    with Database(dbdir, settings) as db:
        return db.call("ping")


def is_loopback(host):
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start(dbdir, bind="127.0.0.1", port=0, deadline=30.0, encrypt=None):
    """Start a watchdog and server for ``dbdir``; returns a :class:`StartResult`.

    ``encrypt`` None (the default) encrypts (ZeroMQ CURVE) exactly when the
    server listens on an interface other than loopback."""
    if encrypt is None:
        encrypt = not is_loopback(bind)
    dbdir.config()
    dbdir.secret()  # a missing, empty or short secret: refused here, with what to do, before anything starts
    info = dbdir.read_address()
    # A server whose watchdog was killed is left alone only until now: a new watchdog
    # stops it and starts a supervised one.
    if server_state(info) == "up" and address_file.watchdog_alive(info):
        try:
            _ping(dbdir)
            return StartResult(True, info)
        except BalsamDBError:
            pass  # named but not answering: let a new watchdog sort it out
    out = os.fdopen(os.open(dbdir.log_dir / "watchdog.out", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    cmd = [sys.executable, "-m", "balsamdb.server.watchdog", "--path", str(dbdir.path), "--bind", bind,
           "--port", str(port)] + (["--encrypt"] if encrypt else [])
    # umask 077: whatever the watchdog, the server and postgres create in P is private to its owner.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True, close_fds=True, umask=PRIVATE_UMASK)
    out.close()
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        code = proc.poll()
        info = dbdir.read_address()
        ours = (info.get("watchdog") or {}).get("pid") == proc.pid
        if code == EXIT_ALREADY_RUNNING or (ours or code is not None) and server_state(info) == "up":
            try:
                _ping(dbdir, max(0.5, end - time.monotonic()))
                return StartResult(not ours, dbdir.read_address())
            except ServerUnavailable:
                continue
        if code is not None and code != EXIT_ALREADY_RUNNING:
            raise ControlError(f"the watchdog exited with code {code}.\n{log_tail(dbdir)}")
        time.sleep(0.02)
    raise ControlError(f"no server answered within {deadline:.0f} s.\n{log_tail(dbdir)}")


def _running(proc):
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(procs, deadline):
    """Wait until ``procs`` have exited; returns those still running at the deadline.

    A process that exited but was not yet reaped (a zombie: we are not its parent)
    counts as gone."""
    end = time.monotonic() + deadline
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < end:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


def stop(dbdir, deadline=60.0):
    """Stop the server of ``dbdir`` gracefully; returns what was stopped (pids), [] when nothing ran."""
    info = dbdir.read_address()
    if info.get("host") not in (None, socket.gethostname()) and info.get("state") != "stopped":
        raise ControlError(f"the server runs on host {info['host']}; stop it there")
    procs = [p for p in (address_file.live_process(info.get(k)) for k in ("watchdog", "server")) if p]
    if not procs:
        _stop_orphaned_postgres(dbdir)
        if info.get("state") != "stopped":
            _mark_stopped(dbdir, info, "the server was found dead")
        return []
    # The watchdog stops its server; a server without a watchdog is asked directly.
    for proc in procs[:1]:
        proc.terminate()
    alive = _wait_gone(procs[:1], deadline)
    if len(procs) > 1 and _running(procs[1]):
        procs[1].terminate()
        alive += _wait_gone(procs[1:], deadline)
    if alive:
        raise ControlError(f"pids {[p.pid for p in alive]} did not stop within {deadline:.0f} s")
    _stop_orphaned_postgres(dbdir)
    if dbdir.read_address().get("state") != "stopped":
        _mark_stopped(dbdir, info, "stopped by db dbserver --stop")
    return [p.pid for p in procs]


def _mark_stopped(dbdir, info, reason):
    try:
        address_file.write_atomic(dbdir.address_file, address_file.stopped_record(
            info.get("db_type", dbdir.db_type), reason))
    except OSError as exc:  # a read-only or full disk: the processes are stopped all the same
        raise ControlError(f"the server is stopped, but {dbdir.address_file} could not be updated "
                           f"({exc.strerror or exc}); clients see it as stale, which is safe") from None


def _stop_orphaned_postgres(dbdir):
    """A cluster whose watchdog was killed keeps running: stop it with the rest."""
    if dbdir.db_type == "postgres" and not dbdir.external_postgres():
        from . import postgres

        if postgres.cluster_pid(dbdir.path) is not None:
            postgres.stop_cluster(dbdir.path, mode="fast")


def status(dbdir):
    """The address record plus, when a server answers, its counters under ``"server"``."""
    from balsamdb.spool import Spool

    info = dict(dbdir.read_address())
    info["health"] = server_state(info)
    info["spool_pending"] = Spool(dbdir.spool_dir).count()
    if info["health"] == "up":
        from balsamdb.api import Database
        from balsamdb.settings import load_settings

        try:
            with Database(dbdir, load_settings(client_timeout=2.0, client_deadline=5.0,
                                               require_server=True)) as db:
                info["server_status"] = db.call("status")
        except BalsamDBError as exc:
            info["health"] = f"not answering: {exc}"
    return info
