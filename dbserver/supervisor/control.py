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
from balsamdb.exceptions import BalsamDBError, ConfigError, ServerUnavailable
from balsamdb.wording import shell_path

from balsamdb.server.supervisor import liveness
from balsamdb.server.supervisor.watchdog import EXIT_ALREADY_RUNNING


class ControlError(BalsamDBError):
    """Starting or stopping a server failed; the message says why and what to do."""

    code = "control"


class RunsElsewhere(ControlError):
    """A watchdog on another host keeps this DB directory's heartbeat fresh: no start here."""

    code = "runs_elsewhere"


@dataclass
class StartResult:
    already_running: bool
    address: dict


def check_other_host(dbdir, stale_after=None):
    """Raise :class:`RunsElsewhere` while a watchdog on another host keeps the heartbeat of
    ``dbdir`` fresh, whether or not its server can be reached from here (``flock`` is not
    shared between the hosts of most shared file systems, so no lock can tell)."""
    if stale_after is None:
        from balsamdb.settings import load_settings

        stale_after = load_settings().heartbeat_stale_after
    record = liveness.foreign_heartbeat(dbdir, stale_after)
    if record is None:
        return
    info = dbdir.read_address()
    host = record.get("host")
    where = f", address {info['address']}" if info.get("host") == host and info.get("address") else ""
    raise RunsElsewhere(
        f"a server for {dbdir.path} runs on host {host} ({_whose(record)}, heartbeat {record['age']:.1f} s ago"
        f"{where}). Stop it there with `db dbserver --stop --path {shell_path(dbdir.path)}` "
        f"on {host}. If host {host} is down, a start here is allowed once its heartbeat is older than "
        f"{stale_after:.0f} s (setting heartbeat_stale_after), or at once with `db dbserver --force`")


def _whose(record):
    if record.get("watchdog"):
        return f"watchdog pid {record['watchdog'].get('pid')}"
    return f"write server pid {record['server'].get('pid')}, its watchdog dead"


def unapplied(info, bind=None, port=None, encrypt=None):
    """The start options (those given, not None) that a server already running from ``info`` does not have,
    as ``[(option, requested, actual), ...]``."""
    out = []
    if bind is not None and info.get("bind") not in (None, bind):
        out.append(("--bind", bind, info.get("bind")))
    actual_port = _port_of(info.get("address"))
    if port and actual_port is not None and port != actual_port:
        out.append(("--port", port, actual_port))
    if encrypt is not None and encrypt != bool(info.get("curve_public")):
        out.append(("--encrypt" if encrypt else "--no-encrypt", encrypt, bool(info.get("curve_public"))))
    return out


def _port_of(address):
    try:
        return int(str(address).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return None


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


def start(dbdir, bind="127.0.0.1", port=0, deadline=30.0, encrypt=None, force=False, say=None):
    """Start a watchdog and server for ``dbdir``; returns a :class:`StartResult`.

    ``encrypt`` None (the default) encrypts (ZeroMQ CURVE) exactly when the
    server listens on an interface other than loopback.  Refuses
    (:class:`RunsElsewhere`) while a watchdog on another host keeps the heartbeat
    fresh, unless ``force``: the other host's watchdog then yields.  While the new watchdog first
    stops a server left by a killed one (up to its stop deadline), ``say(line)`` is told once and
    the wait is extended by that time."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port {port!r} is not a TCP port: give 1 to 65535, or 0 for a free one")
    if encrypt is None:
        encrypt = not is_loopback(bind)
    dbdir.config()
    if not force:
        check_other_host(dbdir)
    dbdir.secret()  # a missing, empty or short secret: refused here, with what to do, before anything starts
    info = dbdir.read_address()
    elsewhere = info.get("host") not in (None, socket.gethostname())
    # A server whose watchdog was killed is left alone only until now: a new watchdog
    # stops it and starts a supervised one.
    if server_state(info) == "up" and address_file.watchdog_alive(info) and not (force and elsewhere):
        try:
            _ping(dbdir)
            return StartResult(True, info)
        except BalsamDBError:
            pass  # named but not answering: let a new watchdog sort it out
    try:
        dbdir.log_dir.mkdir(mode=0o700, exist_ok=True)  # log/ may have been removed: bring it back
        out = os.fdopen(os.open(dbdir.log_dir / "watchdog.out", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")
    except OSError as exc:
        raise ControlError(f"cannot write {dbdir.log_dir / 'watchdog.out'} ({exc.strerror or exc}): a server "
                           f"needs a writable DB directory") from None
    cmd = [sys.executable, "-m", "balsamdb.server.supervisor.watchdog", "--path", str(dbdir.path), "--bind", bind,
           "--port", str(port)] + (["--encrypt"] if encrypt else [])
    # umask 077: whatever the watchdog, the server and postgres create in P is private to its owner.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                            start_new_session=True, close_fds=True, umask=PRIVATE_UMASK)
    out.close()
    end = time.monotonic() + deadline
    told = False
    while time.monotonic() < end:
        code = proc.poll()
        info = dbdir.read_address()
        ours = (info.get("watchdog") or {}).get("pid") == proc.pid
        orphan = info.get("orphan") if ours and info.get("state") == "restarting" else None
        if isinstance(orphan, dict) and isinstance(orphan.get("until"), (int, float)):
            end = max(end, time.monotonic() + max(0.0, orphan["until"] - time.time()) + deadline)
            if not told and say is not None:
                say(f"the new watchdog (pid {proc.pid}) first stops pid {orphan.get('pid')}, a server left "
                    f"running by a killed watchdog (up to {max(0.0, orphan['until'] - time.time()):.0f} s); waiting")
            told = True
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
    """Stop the server of ``dbdir`` gracefully; returns what was stopped (pids), [] when nothing ran.

    Besides the processes that the address file names, it stops those that hold the
    DB directory's locks (a watchdog's ``watchdog.lock``, a server's ``server.lock``), so
    that a server whose watchdog was killed and whose address file was deleted is found
    too: no process of the DB directory is left."""
    info = dbdir.read_address()
    if info.get("host") not in (None, socket.gethostname()) and info.get("state") != "stopped":
        beat = liveness.read_heartbeat(dbdir)
        silent = (f"; its heartbeat is {beat['age']:.0f} s old: if host {info['host']} is down, "
                  f"`db dbserver` here takes over once it is stale" if beat and beat.get("host") == info["host"]
                  else "")
        raise ControlError(f"the server runs on host {info['host']}; stop it there with "
                           f"`db dbserver --stop --path {shell_path(dbdir.path)}` on {info['host']}{silent}")
    watchdogs = _unique([address_file.live_process(info.get("watchdog")), _watchdog_lock_process(dbdir)])
    servers = _unique([address_file.live_process(info.get("server")), _server_lock_process(dbdir)])
    servers = [p for p in servers if p.pid not in {w.pid for w in watchdogs}]
    procs = watchdogs + servers
    if not procs:
        _stop_orphaned_postgres(dbdir)
        liveness.clear_dead_heartbeat(dbdir)
        if info.get("state") != "stopped":
            _mark_stopped(dbdir, info, "the server was found dead")
        return []
    # A watchdog stops its server; a server without a watchdog is asked directly.
    for proc in watchdogs:
        proc.terminate()
    alive = _wait_gone(watchdogs, deadline)
    left = [p for p in servers if _running(p)]
    for proc in left:
        proc.terminate()
    alive += _wait_gone(left, deadline)
    if alive:
        raise ControlError(f"pids {[p.pid for p in alive]} did not stop within {deadline:.0f} s")
    holder = liveness.wait_lock_free(dbdir, 5.0)
    if holder is not None:
        raise ControlError(f"{liveness.server_lock_file(dbdir)} is still held ({holder or 'by an unknown process'}) "
                           "after the server stopped: a server of this DB directory runs under another mount")
    _stop_orphaned_postgres(dbdir)
    liveness.clear_dead_heartbeat(dbdir)
    if dbdir.read_address().get("state") != "stopped":
        _mark_stopped(dbdir, info, "stopped by db dbserver --stop")
    return [p.pid for p in procs]


def _unique(procs):
    seen, out = set(), []
    for proc in procs:
        if proc is not None and proc.pid not in seen:
            seen.add(proc.pid)
            out.append(proc)
    return out


def _server_lock_process(dbdir):
    """The process that holds ``server.lock`` on this host, or None."""
    holder = liveness.lock_holder(dbdir)
    if not holder or holder.get("host") != socket.gethostname():
        return None
    return address_file.live_process(holder)


def _watchdog_lock_process(dbdir):
    """The process that holds ``watchdog.lock`` (it wrote its pid into it after locking), or None."""
    import fcntl

    try:
        handle = open(dbdir.lock_file)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None  # nobody holds it
        except BlockingIOError:
            pass
        try:
            proc = psutil.Process(int(handle.read().split()[0]))
            return proc if any("balsamdb.server.supervisor.watchdog" in part for part in proc.cmdline()) else None
        except (psutil.Error, ValueError, IndexError):
            return None


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
        from balsamdb.server.postgres import cluster as postgres

        if postgres.cluster_pid(dbdir.path) is not None:
            postgres.stop_cluster(dbdir.path, mode="fast")


#: exit codes of ``db dbserver --status`` (not 2: click's usage errors exit 2)
STATUS_RUNNING, STATUS_STOPPED, STATUS_UNHEALTHY = 0, 1, 3


def status(dbdir):
    """The address record plus, when a server answers, its counters under ``"server_status"``,
    and the verdict: ``"exit_code"`` (:data:`STATUS_RUNNING`: running and supervised,
    :data:`STATUS_STOPPED`, :data:`STATUS_UNHEALTHY`: unsupervised, not answering, restarting)
    with a one-line ``"summary"``."""
    from balsamdb.spool import Spool

    info = dict(dbdir.read_address())
    info["health"] = server_state(info)
    info["spool_pending"] = Spool(dbdir.spool_dir).count()
    if dbdir.db_type == "sqlite3":  # what db vacuum and the WAL's journal_size_limit act on
        info["files"] = {name: (dbdir.path / name).stat().st_size if (dbdir.path / name).exists() else 0
                         for name in ("db.sqlite3", "db.sqlite3-wal")}
    if info["health"] == "up":
        from balsamdb.api import Database
        from balsamdb.settings import load_settings

        try:
            with Database(dbdir, load_settings(client_timeout=2.0, client_deadline=5.0,
                                               require_server=True)) as db:
                info["server_status"] = db.call("status")
                if info.get("read_address"):
                    info["reader_status"] = db.read_service_status()
        except BalsamDBError as exc:
            info["health"] = f"not answering: {exc}"
    info["exit_code"], info["summary"] = _verdict(dbdir, info)
    return info


def _verdict(dbdir, info):
    from balsamdb.settings import load_settings

    here = socket.gethostname()
    host = info.get("host")
    watchdog = info.get("watchdog") or {}
    if info["health"] == "down":
        orphan = _server_lock_process(dbdir)
        if orphan is not None:
            return STATUS_UNHEALTHY, (f"a write server runs unsupervised as pid {orphan.pid} although the address "
                                      f"file says {info.get('state')}: `db dbserver --stop` stops it")
        return STATUS_STOPPED, "stopped"
    if host not in (None, here):
        beat = liveness.read_heartbeat(dbdir)
        stale_after = load_settings().heartbeat_stale_after
        if not beat or beat.get("host") != host or beat["age"] >= stale_after:
            age = f"{beat['age']:.0f} s ago" if beat and beat.get("host") == host else "never"
            return STATUS_UNHEALTHY, (f"unsupervised: the watchdog on host {host} last beat {age} "
                                      f"(dead after {stale_after:.0f} s)")
        info["heartbeat_age"] = beat["age"]
        if "server_status" not in info:
            return STATUS_UNHEALTHY, (f"running on host {host} (heartbeat {beat['age']:.1f} s ago) but not answering "
                                      f"from this host (it listens on {info.get('bind')})")
        return STATUS_RUNNING, f"running on host {host}, supervised (heartbeat {beat['age']:.1f} s ago)"
    if info["health"] == "coming":
        orphan = info.get("orphan")
        if isinstance(orphan, dict) and info.get("state") == "restarting":
            until = orphan.get("until")
            left = f", up to {max(0.0, until - time.time()):.0f} s more" if isinstance(until, (int, float)) else ""
            return STATUS_UNHEALTHY, (f"starting: watchdog pid {watchdog.get('pid')} is stopping pid {orphan.get('pid')}, "
                                      f"a server left by a killed watchdog{left}; then it starts its own")
        return STATUS_UNHEALTHY, f"no server answers; watchdog pid {watchdog.get('pid')} is (re)starting it"
    if not address_file.watchdog_alive(info):
        return STATUS_UNHEALTHY, f"server up, unsupervised: watchdog pid {watchdog.get('pid')} is dead"
    if "server_status" not in info:
        return STATUS_UNHEALTHY, f"server {info['health']}"
    return STATUS_RUNNING, "running, supervised"
