"""The watchdog: one per DB directory, it starts the write server and keeps it alive.

It holds an exclusive lock on ``P/watchdog.lock`` for its whole life, so a
second watchdog for the same directory exits at once (exit code 3).  It
starts the write server, waits for its "listening" line, writes the address
file, and restarts the server within about a second when it dies, with a
fresh epoch, backing off when it keeps dying.  SIGTERM stops it gracefully:
the server answers what it holds, the address file says "stopped", the lock is
released.

It never gives up on its own: once a server has run, every other error (fork
refused, ``log/`` deleted, a read-only DB directory) is logged (to syslog or
stderr when ``log/`` cannot be written), ``log/`` is recreated, and the start is
tried again with the same backoff.  Only the very first start ends it when it
fails (a configuration error: ``db dbserver`` shows the log's last lines).  It
rewrites ``P/heartbeat`` every few seconds (see :mod:`.liveness`), so that a
start on another host refuses while it lives, and it yields (stops its server
and exits) when a watchdog of another host took the DB directory over with
``db dbserver --force``.  What it writes into the address file and the heartbeat, and how it
checks them, is in :mod:`.publishing`.

Run as ``python -m balsamdb.server.supervisor.watchdog --path P [--bind HOST] [--port N]``.
"""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid

from balsamdb import address_file
from balsamdb.backoff import delay_after
from balsamdb.dbdir import DBDirectory

from balsamdb.server.supervisor import liveness
from balsamdb.server.supervisor.children import ReaderChild, check_writable, read_line, sleep_unless, stop_process
from balsamdb.server.supervisor.liveness import AlreadyRunning, acquire_lock  # the watchdog's lock lives with the proofs of life
from balsamdb.server.supervisor.publishing import Publisher

log = logging.getLogger("balsamdb.server.supervisor.watchdog")

EXIT_ALREADY_RUNNING = 3
STARTUP_DEADLINE = 30.0     # seconds for a server to say it listens
STOP_DEADLINE = 30.0        # seconds for a server to finish its queue on SIGTERM
HEALTHY_AFTER = 5.0         # a server that lived this long resets the backoff
MAX_BACKOFF = 30.0


class Watchdog(Publisher):
    def __init__(self, dbdir, bind_host="127.0.0.1", port=0, encrypt=False):
        self.dbdir = dbdir
        self.bind_host = bind_host
        self.port = port
        self.db_type = dbdir.db_type
        self.encrypt = encrypt
        self.curve_public = dbdir.curve_keys(create=True)[0].decode() if encrypt else None
        self.stopping = False
        self.server = None
        self.server_started = 0.0
        self.failures = 0
        self.started_at = time.time()
        self.identity = address_file.process_identity(os.getpid())
        self.orphan = None            # the server left by a killed watchdog, while it is being stopped
        self.replaced_orphan = None   # its pid, once stopped
        self.local_address = None
        self.max_request_bytes = None
        self.epoch = None
        # A postgres DB directory with its own cluster: the watchdog runs it too.
        self.managed_postgres = self.db_type == "postgres" and not dbdir.external_postgres()
        self.pg_port = None
        self.next_pg_check = 0.0
        self.next_address_check = 0.0
        self.next_heartbeat = 0.0
        self.next_log_check = 0.0
        self.restart_at = 0.0
        self.restarts = 0
        self.taken_over_by = None
        self.unwritable = {}  # what could not be written ("address", "heartbeat") -> the last error
        self.reader = ReaderChild(self)  # the read service, supervised beside the server

    # -- the server -------------------------------------------------------------
    def start_server(self, publish=True):
        """Start the write server; True once it listens.  ``publish``: name it in the address file
        now (the first start publishes once the read service listens too)."""
        epoch = uuid.uuid4().hex
        self.check_log_dir()
        check_writable(self.dbdir, self.db_type)
        try:
            err = open(self.dbdir.log_dir / "server.err", "ab")
        except OSError as exc:  # a read-only DB directory: the server's stderr goes where ours goes
            log.error("cannot open %s (%s); the server's stderr goes to the watchdog's",
                      self.dbdir.log_dir / "server.err", exc)
            err = None
        cmd = [sys.executable, "-m", "balsamdb.server.writer.server", "--path", str(self.dbdir.path),
               "--bind", self.bind_host, "--port", str(self.port), "--epoch", epoch]
        if self.managed_postgres:
            cmd += ["--pg-port", str(self.pg_port)]
        if self.encrypt:
            cmd += ["--encrypt"]
        try:
            self.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            if err is not None:
                err.close()
        self.server_started = time.time()
        try:
            line = read_line(self.server.stdout, STARTUP_DEADLINE)
        except OSError:
            stop_process(self.server, 5.0)
            raise
        try:
            ready = json.loads(line)
            self.port = int(ready["port"])
            self.local_address = ready.get("local_address")
            self.max_request_bytes = ready.get("max_request_bytes")
        except (ValueError, KeyError, TypeError):
            log.error("server pid %s did not start (said %r); see %s", self.server.pid, line,
                      self.dbdir.log_dir / "server.err")
            stop_process(self.server, 5.0)
            return False
        self.server.stdout.close()
        self.epoch = epoch
        if publish:
            self.write_address("running", epoch=epoch)
        log.info("server pid %s up on port %s, epoch %s", self.server.pid, self.port, epoch)
        return True

    def start_postgres(self):
        from balsamdb.server.postgres import cluster as postgres

        self.pg_port = postgres.start_cluster(self.dbdir.path, port=self.pg_port, listen=self.bind_host)
        log.info("postgres cluster pid %s up on port %s", postgres.cluster_pid(self.dbdir.path), self.pg_port)

    def check_postgres(self):
        """Restart the cluster when its postmaster died; the server reconnects by itself."""
        from balsamdb.server.postgres import cluster as postgres

        if postgres.cluster_pid(self.dbdir.path) is not None:
            return
        log.warning("postgres cluster died; restarting it on port %s", self.pg_port)
        try:
            self.start_postgres()
        except Exception as exc:  # logged; the next check tries again
            log.error("postgres did not restart: %s", exc)
            self.next_pg_check = time.monotonic() + 2.0
            return
        self.write_address("running", epoch=self.epoch)

    def initialize(self):
        """Start postgres (when managed) and the first server; raises when that first start
        fails, which is a configuration error for ``db dbserver`` to show."""
        self.restarts = 0
        self.stop_orphan()
        self.beat()
        if self.managed_postgres:
            self.start_postgres()
        if not self.start_server(publish=False):
            raise RuntimeError("the write server failed to start; see log/server.err and log/server.log")
        if not self.reader.start():  # names both in the address file
            raise RuntimeError("the read service failed to start; see log/reader.err and log/reader.log")

    def stop_orphan(self):
        """Stop a server left running by a watchdog that was killed (see :func:`.liveness.stop_orphan`).
        While it waits, the address file says so (state "restarting" with ``orphan``: its pid and
        until when), so that ``db dbserver`` and ``--status`` tell the user instead of timing out."""
        def announce(proc, deadline):
            self.orphan = {"pid": proc.pid, "since": time.time(), "until": time.time() + deadline + 5.0}
            self.write_address("restarting", reason=f"stopping pid {proc.pid}, a server left by a killed watchdog")

        self.replaced_orphan = liveness.stop_orphan(self.dbdir, STOP_DEADLINE, announce)
        self.orphan = None

    # -- supervision ------------------------------------------------------------
    def loop(self):
        """Supervise until SIGTERM (``db dbserver --stop``) or a takeover by another host; nothing else ends it."""
        while not self.stopping:
            try:
                self.supervise()
            except Exception:  # a bug in a check must not end supervision: log it, go on
                log.exception("watchdog error; supervision goes on")
                sleep_unless(lambda: self.stopping, 0.5)

    def supervise(self):
        """One turn: wait up to 50 ms on the server (or until its restart is due), start it when due,
        and run the periodic checks."""
        if self.server is None:
            if time.monotonic() >= self.restart_at:
                self.restart()
            else:
                sleep_unless(lambda: self.stopping, min(0.05, self.restart_at - time.monotonic()))
        else:
            try:
                code = self.server.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                if self.stopping:
                    return
                lived = time.time() - self.server_started
                self.schedule_restart(f"server pid {self.server.pid} exited with {code} after {lived:.1f} s",
                                      lived)
        if not self.stopping:
            self.reader.supervise()
        self.periodic_checks()

    def periodic_checks(self):
        now = time.monotonic()
        if now >= self.next_heartbeat:
            self.next_heartbeat = now + liveness.HEARTBEAT_EVERY
            self.beat()
        if now >= self.next_log_check:
            self.next_log_check = now + 0.5
            self.check_log_dir()
        if self.server is None or self.stopping:
            return
        if self.managed_postgres and now >= self.next_pg_check:
            self.next_pg_check = now + 0.25
            self.check_postgres()
        if now >= self.next_address_check:
            self.next_address_check = now + 0.5
            self.check_address_file()

    def schedule_restart(self, why, lived=0.0):
        """The server is gone (``why``): start another after the backoff."""
        self.failures = 0 if lived >= HEALTHY_AFTER else self.failures + 1
        delay = 0.0 if self.failures <= 1 else delay_after(self.failures - 2, 0.25, MAX_BACKOFF)
        log.warning("%s; restarting in %.2f s", why, delay)
        self.server = None
        self.restart_at = time.monotonic() + delay
        self.write_address("restarting", reason=f"{why}; restarting")

    def restart(self):
        self.restarts += 1
        try:
            if self.managed_postgres:
                self.check_postgres()  # a server cannot start without its database
            started = self.start_server()
        except Exception as exc:  # fork refused, log/ not writable, ...: never the end
            log.error("cannot start the server: %s", exc, exc_info=not isinstance(exc, OSError))
            if self.server is not None and self.server.poll() is None:
                stop_process(self.server, 5.0)
            self.schedule_restart(f"cannot start the server ({type(exc).__name__}: {exc})")
            return
        if not started:
            self.schedule_restart("the server did not start (see log/server.err)")

    def check_log_dir(self):
        """Recreate ``log/`` when it was removed (the logging handler then reopens its file)."""
        if self.dbdir.log_dir.is_dir():
            return
        try:
            os.mkdir(self.dbdir.log_dir, 0o700)
        except FileExistsError:
            return
        except OSError as exc:
            log.error("log/ was removed and cannot be recreated (%s); logging to syslog or stderr", exc)
            self.next_log_check = time.monotonic() + 5.0  # say it once every few seconds, not 2 times a second
            return
        log.warning("log/ was removed; recreated %s", self.dbdir.log_dir)

    def shutdown(self, reason="stopped by db dbserver --stop"):
        self.reader.stop()
        if self.server is not None and self.server.poll() is None:
            log.info("stopping server pid %s", self.server.pid)
            stop_process(self.server, STOP_DEADLINE)
        if self.managed_postgres:
            from balsamdb.server.postgres import cluster as postgres

            log.info("stopping the postgres cluster")
            try:
                postgres.stop_cluster(self.dbdir.path, mode="fast")
            except Exception:  # still mark the address file stopped
                log.exception("stopping postgres failed")
        if self.taken_over_by is not None:
            # The address file and the heartbeat now belong to the other host's watchdog.
            log.info("watchdog pid %s stopped: taken over by host %s", os.getpid(), self.taken_over_by.get("host"))
            return
        self.write_address("stopped", reason=reason)
        liveness.remove_heartbeat(self.dbdir, self.identity)
        log.info("watchdog pid %s stopped", os.getpid())


def main(argv=None):
    parser = argparse.ArgumentParser(description="balsamdb watchdog")
    parser.add_argument("--path", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--encrypt", action="store_true")
    args = parser.parse_args(argv)
    from balsamdb.server.logs import setup_logging

    dbdir = DBDirectory(args.path)
    setup_logging(dbdir.log_dir / "watchdog.log")
    try:
        lock = acquire_lock(dbdir)
    except AlreadyRunning as exc:
        log.info("not starting: %s", exc)
        return EXIT_ALREADY_RUNNING
    watchdog = Watchdog(dbdir, args.bind, args.port, encrypt=args.encrypt)

    stopped_by = []

    # Handlers only set a flag; the loop notices within 50 ms.
    def on_term(signum, frame):
        stopped_by.append(signum)
        watchdog.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("watchdog pid %s for %s (%s), bind %s, %s", os.getpid(), dbdir.path, watchdog.db_type, args.bind,
             "CURVE-encrypted" if args.encrypt else "not encrypted")
    failed = None
    try:
        watchdog.initialize()
        watchdog.loop()
    except Exception as exc:  # only the first start can end up here: the loop never gives up
        log.exception("watchdog failed")
        failed = exc
        return 1
    finally:
        # The address file says why it stopped, and never claims a stop that nobody asked for.
        if failed is not None:
            reason = f"the first start failed: {failed}"
        elif stopped_by and stopped_by[0] != signal.SIGTERM:
            reason = f"stopped by {signal.Signals(stopped_by[0]).name}"
        else:
            reason = "stopped by db dbserver --stop"
        watchdog.shutdown(reason)
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
