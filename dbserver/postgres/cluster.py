"""Control of the PostgreSQL cluster that lives in a DB directory: ``initdb``, ``pg_ctl start/stop``, health.

::

    P/
      pgdata/                the cluster, made by initdb; owned by the user that runs postgres
      postgres.password      password of the cluster's superuser role ``balsamdb``, mode 0600
      log/postgres/          initdb.log, pg_ctl.log (our commands and their output),
                             postgresql.log (the server's own log, appended to by postgres)

Who runs postgres.  PostgreSQL refuses to run as root.  A non-root caller runs every binary as itself
and nothing is chowned.  A root caller runs initdb, pg_ctl and postgres as an unprivileged account: the
owner of an existing ``pgdata``; else the ``postgres`` system user, which distribution packages create and
which owns nothing else of ours; else ``nobody`` (nothing is created: adding users is the administrator's
business).  ``pgdata`` and ``log/postgres`` are then owned by that account, ``P`` gets g+x and o+x
(0700 becomes 0711: the account may pass through it, not list it), and every directory above ``P`` must
already let the account pass, or :class:`ConfigError` says which one to open.

Connections.  Only TCP: ``listen_addresses`` always covers 127.0.0.1, clients connect to 127.0.0.1, and
``unix_socket_directories`` is empty, so starting never depends on /var/run/postgresql (nor on the
~107-character limit of socket paths).  Every address uses SCRAM password authentication; nothing is
``trust``.  Which interfaces postgres listens on is the only gate on who may try: loopback by default.

Ports.  ``start_cluster(port=None)`` takes a free port (and takes another if a different process grabs it
in the meantime).  An explicit port that is in use is refused at once with a message that says so.

Every subprocess runs from an argument list with its output in a log file and a deadline; a failure is a
:class:`ConfigError` that quotes the log's last lines and says what to do.  Nothing happens at import.
"""

import errno
import logging
import os
import re
import socket
import time

import psutil
import psycopg2
import psycopg2.errors

from balsamdb.exceptions import ConfigError
from balsamdb.wording import shell_path

from balsamdb.server.postgres.host import (find_binaries, log_tail, prepare_directories, run_as, service_account,
                                           user_name)
from balsamdb.server.postgres.layout import CONNECT_HOST, DATABASE, SUPERUSER, connection_params, layout, read_password

log = logging.getLogger(__name__)

# The server log keeps an error's message, not the statement that failed nor its DETAIL: both
# carry the values of the row (a password hash, a record), which a log must not.  Passed at
# every start, so that clusters made before this setting have it too (docs/postgres.md).
QUIET_ERRORS = "-c log_min_error_statement=panic -c log_error_verbosity=terse"
STOP_MODES = ("smart", "fast", "immediate")     # pg_ctl stop -m: wait for clients / roll back / crash-stop
_LISTEN_RE = re.compile(r"^[A-Za-z0-9.:*%,_-]+$")   # goes through pg_ctl's shell: no quotes, no spaces


# -- start, stop, inspect -------------------------------------------------------------------------------
def start_cluster(dbdir_path, port=None, listen="127.0.0.1", deadline=60):
    """Start the cluster with pg_ctl, make sure the database ``balsamdb`` exists, return the TCP port.

    ``port=None`` takes a free port.  ``listen`` is PostgreSQL's ``listen_addresses`` (127.0.0.1 is always
    added).  Already running: returns its port.  A stale ``postmaster.pid`` (postmaster killed with -9) and
    orphaned postgres processes of this ``pgdata`` are cleaned up first.  Raises ConfigError with the last
    lines of the server log and what to do.
    """
    paths = layout(dbdir_path)
    if not paths.is_initialized():
        raise ConfigError(f"{paths.pgdata} holds no PostgreSQL cluster; create it with: "
                          f"db init {shell_path(paths.root)} --db-type postgres")
    read_password(paths.root)       # a missing password file fails here, before anything starts
    _check_owner(paths)
    listen = _listen_addresses(listen)
    running = cluster_pid(paths.root)
    if running is not None:
        current = _postmaster_port(paths)
        if port is not None and int(port) != current:
            raise ConfigError(f"the cluster in {paths.pgdata} already runs (pid {running}) on port {current}, "
                              f"not {port}; stop it first (db dbserver --stop --path {shell_path(paths.root)})")
        _ensure_database(paths.root, current, deadline)
        return current
    _clear_leftovers(paths, deadline)
    binaries = find_binaries()
    account = service_account(paths.pgdata)
    for sentence in prepare_directories(paths, account):
        log.info("%s", sentence)
    attempts = 1 if port is not None else 3
    for attempt in range(1, attempts + 1):
        if port is not None:
            chosen = int(port)
            _check_port_free(listen, chosen)
        else:
            chosen = _free_port(listen)
        error = _pg_ctl_start(binaries, paths, account, chosen, listen, deadline)
        if error is None:
            break
        if port is None and attempt < attempts and "already in use" in error:
            log.warning("port %s was taken before postgres could bind it; trying another", chosen)
            continue
        raise ConfigError(f"PostgreSQL in {paths.pgdata} did not start on port {chosen}: {error}")
    _ensure_database(paths.root, chosen, deadline)
    log.info("postgres pid %s serves %s on %s port %s", cluster_pid(paths.root), paths.pgdata, listen, chosen)
    return chosen


def _pg_ctl_start(binaries, paths, account, port, listen, deadline):
    """Run ``pg_ctl start -w``; None on success, else a message with the log tail (nothing left running)."""
    options = f"-p {port} -c listen_addresses={listen} -c unix_socket_directories='' {QUIET_ERRORS}"
    cmd = [binaries.pg_ctl, "start", "-D", str(paths.pgdata), "-w", "-t", str(max(1, int(deadline))),
           "-l", str(paths.server_log), "-o", options]
    code = run_as(cmd, paths.pg_ctl_log, deadline + 15, account, "pg_ctl start")
    if code == 0 and cluster_pid(paths.root) is not None:
        return None
    # pg_ctl gives up after -t seconds but leaves a slow postmaster starting: stop what it left.
    _kill_processes(_cluster_processes(paths), deadline)
    tail = log_tail(paths.server_log) or log_tail(paths.pg_ctl_log)
    if "already in use" in tail:
        hint = f"port {port} is in use by another program: choose another port, or give none to take a free one"
    else:
        hint = f"fix the cause shown above (full logs in {paths.log_dir}) and start again"
    return f"pg_ctl exited with {code}; last lines of {paths.server_log}:\n{tail}\n{hint}"


def stop_cluster(dbdir_path, mode="fast", deadline=60):
    """Stop the cluster with ``pg_ctl stop -m MODE -w``; if it still runs after ``deadline`` seconds, kill
    the postmaster and its children.  Returns True when something was stopped; safe when nothing runs."""
    if mode not in STOP_MODES:
        raise ConfigError(f"unknown stop mode {mode!r}; choose one of: {', '.join(STOP_MODES)}")
    paths = layout(dbdir_path)
    pid = cluster_pid(paths.root)
    stopped = False
    if pid is not None:
        stopped = True
        try:
            cmd = [find_binaries().pg_ctl, "stop", "-D", str(paths.pgdata), "-m", mode, "-w",
                   "-t", str(max(1, int(deadline)))]
            code = run_as(cmd, paths.pg_ctl_log, deadline + 15, service_account(paths.pgdata), "pg_ctl stop")
            log.info("pg_ctl stop -m %s of %s (pid %s) exited with %s", mode, paths.pgdata, pid, code)
        except ConfigError as exc:     # no binaries any more, or pg_ctl hung: the kill below still works
            log.error("pg_ctl stop failed for %s: %s", paths.pgdata, exc)
    leftovers = _cluster_processes(paths)
    if leftovers:
        log.warning("killing %d postgres processes of %s that outlived pg_ctl stop: %s", len(leftovers),
                    paths.pgdata, [p.pid for p in leftovers])
        _kill_processes(leftovers, deadline)
        stopped = True
    return stopped


def cluster_pid(dbdir_path):
    """The pid of the postmaster named in ``pgdata/postmaster.pid`` when it is alive and really serves this
    ``pgdata`` (a reused pid does not count), else None."""
    paths = layout(dbdir_path)
    pid = _pidfile_pid(paths)
    return pid if pid is not None and _is_postmaster_of(pid, paths) is not False else None


def _pidfile_pid(paths):
    """Line 1 of ``postmaster.pid``, or None when there is no readable pid file."""
    try:
        return int((paths.pgdata / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _is_postmaster_of(pid, paths):
    """Whether ``pid`` is a live postgres process serving ``pgdata``: it runs in it (postgres chdirs to its
    data directory) or, when its cwd is hidden from us (root without CAP_SYS_PTRACE, as in Docker), names
    it on its command line.  None when even that is hidden: then nobody may treat it as dead."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or proc.name() not in ("postgres", "postmaster"):
            return False
        try:
            return proc.cwd() == os.path.realpath(paths.pgdata)
        except psutil.AccessDenied:
            cmdline = proc.cmdline()
            return os.path.realpath(paths.pgdata) in cmdline or str(paths.pgdata) in cmdline
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return None


def _check_owner(paths):
    """A non-root caller can only run a cluster that it owns; say whose it is instead of failing later."""
    owner = paths.pgdata.stat().st_uid
    if os.geteuid() != 0 and owner != os.geteuid():
        raise ConfigError(f"{paths.pgdata} belongs to user {user_name(owner)}; start it as that user (or root)")


def is_healthy(dbdir_path, port):
    """True when a connection to the ``balsamdb`` database opens within 2 s and answers ``select 1``."""
    try:
        conn = psycopg2.connect(dbname=DATABASE, connect_timeout=2, **connection_params(dbdir_path, port))
    except (psycopg2.Error, ConfigError):
        return False
    try:
        with conn.cursor() as cursor:
            cursor.execute("select 1")
            return cursor.fetchone() == (1,)
    except psycopg2.Error:
        return False
    finally:
        conn.close()


def _postmaster_port(paths):
    """Line 4 of postmaster.pid is the port."""
    return int((paths.pgdata / "postmaster.pid").read_text().splitlines()[3])


def _ensure_database(root, port, deadline):
    try:
        conn = psycopg2.connect(dbname="postgres", connect_timeout=max(2, int(deadline)),
                                **connection_params(root, port))
    except psycopg2.Error as exc:
        raise ConfigError(f"PostgreSQL started on port {port} but refused {SUPERUSER}'s password from "
                          f"{root / 'postgres.password'}: {str(exc).strip()}; restore that file or re-create "
                          f"the cluster") from None
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                try:
                    cursor.execute(f'CREATE DATABASE "{DATABASE}"')
                    log.info("created database %s on port %s", DATABASE, port)
                except psycopg2.errors.DuplicateDatabase:
                    pass    # made by a concurrent caller: what we wanted
    except psycopg2.Error as exc:
        raise ConfigError(f"cannot create the database {DATABASE} on port {port}: {str(exc).strip()}") from None
    finally:
        conn.close()


def _clear_leftovers(paths, deadline):
    """No live postmaster: kill its orphaned children (they hold the shared memory that a new postmaster
    would refuse) and remove a stale ``postmaster.pid`` (its pid may belong to an unrelated or zombie
    process now, which postgres itself would take for a running server)."""
    orphans = _cluster_processes(paths)
    if orphans:
        log.warning("killing %d postgres processes left by a dead postmaster of %s: %s", len(orphans),
                    paths.pgdata, [p.pid for p in orphans])
        _kill_processes(orphans, deadline)
    pid = _pidfile_pid(paths)
    if pid is not None and _is_postmaster_of(pid, paths) is False:
        log.warning("removing stale %s: its postmaster %s is gone", paths.pgdata / "postmaster.pid", pid)
        (paths.pgdata / "postmaster.pid").unlink()


def cluster_processes(dbdir_path):
    """Live postgres processes of the cluster in ``P/pgdata`` (for tools that check nothing is left)."""
    return _cluster_processes(layout(dbdir_path))


def _cluster_processes(paths):
    """Live postgres processes of this ``pgdata``: they run in it (postgres chdirs to its data directory)
    or name it on their command line."""
    pgdata = os.path.realpath(paths.pgdata)
    found = []
    for proc in psutil.process_iter(["name", "cwd", "cmdline", "status"]):
        info = proc.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["name"] not in ("postgres", "postmaster"):
            continue
        cmdline = info["cmdline"] or []
        if info["cwd"] == pgdata or pgdata in cmdline or str(paths.pgdata) in cmdline:
            found.append(proc)
    return found


def _kill_processes(procs, deadline):
    """SIGKILL ``procs`` and wait until each is gone or a zombie (nobody may reap orphans in a container)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    end = time.monotonic() + max(1.0, deadline)
    alive = list(procs)
    while alive:
        alive = [proc for proc in alive if _running(proc)]
        if alive and time.monotonic() >= end:
            log.error("postgres processes %s survived SIGKILL for %s s", [p.pid for p in alive], deadline)
            return
        if alive:
            psutil.wait_procs(alive, timeout=0.05)


def _running(proc):
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- ports ----------------------------------------------------------------------------------------------
def _listen_addresses(listen):
    """``listen`` plus 127.0.0.1 unless it already covers loopback; validated (it goes through a shell)."""
    listen = (listen or CONNECT_HOST).replace(" ", "")
    if not _LISTEN_RE.match(listen):
        raise ConfigError(f"invalid listen address {listen!r}: give host names or IP addresses separated "
                          f"by commas, or * for all interfaces")
    parts = listen.split(",")
    if not {"*", "0.0.0.0", "127.0.0.1", "localhost"} & set(parts):
        parts.insert(0, CONNECT_HOST)
    return ",".join(parts)


def _bind_hosts(listen):
    return ["0.0.0.0" if host == "*" else host for host in listen.split(",")]


def _check_port_free(listen, port):
    """Raise ConfigError naming the port when one of the listen addresses cannot bind it."""
    for host in _bind_hosts(listen):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)     # as postgres does
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(f"port {port} on {host} is already in use by another program; choose "
                                      f"another port, or give none to let balsamdb take a free one") from None
                raise ConfigError(f"cannot listen on {host} port {port}: {exc.strerror}") from None


def _free_port(listen):
    host = _bind_hosts(listen)[0]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
