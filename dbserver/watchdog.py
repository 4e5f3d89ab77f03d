"""The watchdog: one per DB directory, it starts the write server and keeps it alive.

It holds an exclusive lock on ``P/watchdog.lock`` for its whole life, so a
second watchdog for the same directory exits at once (exit code 3).  It
starts the write server, waits for its "listening" line, writes the address
file, and restarts the server within about a second when it dies, with a
fresh epoch, backing off when it keeps dying.  SIGTERM stops it gracefully:
the server answers what it holds, the address file says "stopped", the lock is
released.

Run as ``python -m balsamdb.server.watchdog --path P [--bind HOST] [--port N]``.
"""

import argparse
import fcntl
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import uuid

import psutil

from balsamdb import address_file
from balsamdb.dbdir import DBDirectory

log = logging.getLogger("balsamdb.server.watchdog")

EXIT_ALREADY_RUNNING = 3
STARTUP_DEADLINE = 30.0     # seconds for a server to say it listens
STOP_DEADLINE = 30.0        # seconds for a server to finish its queue on SIGTERM
HEALTHY_AFTER = 5.0         # a server that lived this long resets the backoff
MAX_BACKOFF = 30.0


class AlreadyRunning(Exception):
    pass


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


class Watchdog:
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
        self.local_address = None
        self.max_request_bytes = None
        self.epoch = None
        # A postgres DB directory with its own cluster: the watchdog runs it too.
        self.managed_postgres = self.db_type == "postgres" and not dbdir.external_postgres()
        self.pg_port = None
        self.next_pg_check = 0.0
        self.next_address_check = 0.0

    # -- address file ---------------------------------------------------------
    def _public_host(self):
        if self.bind_host in ("0.0.0.0", "*", "::"):
            return socket.getfqdn()
        return self.bind_host

    def write_address(self, state, epoch=None, reason=None):
        record = {
            "state": state, "db_type": self.db_type, "protocol": address_file.PROTOCOL_VERSION,
            "host": socket.gethostname(), "watchdog": self.identity, "started_at": self.started_at,
            "bind": self.bind_host,
        }
        if state == "running":
            record.update(address=f"tcp://{self._public_host()}:{self.port}", epoch=epoch,
                          server=address_file.process_identity(self.server.pid),
                          server_started_at=self.server_started, restarts=self.restarts)
            if self.max_request_bytes:  # a larger message is dropped unread: clients refuse it before sending
                record["max_request_bytes"] = self.max_request_bytes
            if self.local_address:
                record["local_address"] = self.local_address
                record["netns"] = address_file.network_namespace()
            if self.curve_public:
                record["curve_public"] = self.curve_public
        if self.managed_postgres and self.pg_port and state != "stopped":
            from balsamdb.server import postgres

            record["postgres"] = {"managed": True, "port": self.pg_port, "listen": self.bind_host,
                                  "pid": postgres.cluster_pid(self.dbdir.path)}
        if reason:
            record["reason"] = reason
        try:
            address_file.write_atomic(self.dbdir.address_file, record)
        except OSError as exc:  # a full or read-only disk: keep supervising; the next check retries
            log.error("cannot write the address file (%s); clients may see it as stale", exc)

    # -- the server -------------------------------------------------------------
    def start_server(self):
        epoch = uuid.uuid4().hex
        err = open(self.dbdir.log_dir / "server.err", "ab")
        cmd = [sys.executable, "-m", "balsamdb.server.write_server", "--path", str(self.dbdir.path),
               "--bind", self.bind_host, "--port", str(self.port), "--epoch", epoch]
        if self.managed_postgres:
            cmd += ["--pg-port", str(self.pg_port)]
        if self.encrypt:
            cmd += ["--encrypt"]
        self.server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        err.close()
        self.server_started = time.time()
        line = _read_line(self.server.stdout, STARTUP_DEADLINE)
        try:
            ready = json.loads(line)
            self.port = int(ready["port"])
            self.local_address = ready.get("local_address")
            self.max_request_bytes = ready.get("max_request_bytes")
        except (ValueError, KeyError, TypeError):
            log.error("server pid %s did not start (said %r); see %s", self.server.pid, line,
                      self.dbdir.log_dir / "server.err")
            _stop_process(self.server, 5.0)
            return False
        self.server.stdout.close()
        self.epoch = epoch
        self.write_address("running", epoch=epoch)
        log.info("server pid %s up on port %s, epoch %s", self.server.pid, self.port, epoch)
        return True

    def start_postgres(self):
        from balsamdb.server import postgres

        self.pg_port = postgres.start_cluster(self.dbdir.path, port=self.pg_port, listen=self.bind_host)
        log.info("postgres cluster pid %s up on port %s", postgres.cluster_pid(self.dbdir.path), self.pg_port)

    def check_address_file(self):
        """Rewrite the address file when it no longer names this server (deleted,
        corrupted, overwritten): clients find the server again within a second."""
        info = address_file.read(self.dbdir.address_file)
        if info.get("epoch") == self.epoch and info.get("state") == "running":
            return
        log.warning("the address file no longer names this server (%s); rewriting it",
                    info.get("reason") or f"state {info.get('state')}, epoch {info.get('epoch')}")
        self.write_address("running", epoch=self.epoch)

    def check_postgres(self):
        """Restart the cluster when its postmaster died; the server reconnects by itself."""
        from balsamdb.server import postgres

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
        self.restarts = 0
        self.stop_orphan()
        if self.managed_postgres:
            self.start_postgres()
        if not self.start_server():
            raise RuntimeError("the write server failed to start; see log/server.err and log/server.log")

    def stop_orphan(self):
        """Stop a server left running by a watchdog that was killed, so that one
        server at a time owns the database."""
        info = address_file.read(self.dbdir.address_file)
        if not address_file.server_alive(info) or info.get("host") != socket.gethostname():
            return
        pid = int(info["server"]["pid"])
        log.warning("a server left by a dead watchdog runs as pid %s; stopping it first", pid)
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            proc.wait(timeout=STOP_DEADLINE)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass

    def loop(self):
        while not self.stopping:
            try:
                code = self.server.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                if self.managed_postgres and time.monotonic() >= self.next_pg_check:
                    self.next_pg_check = time.monotonic() + 0.25
                    self.check_postgres()
                if time.monotonic() >= self.next_address_check:
                    self.next_address_check = time.monotonic() + 0.5
                    self.check_address_file()
                continue
            if self.stopping:
                break
            lived = time.time() - self.server_started
            self.failures = 0 if lived >= HEALTHY_AFTER else self.failures + 1
            delay = 0.0 if self.failures <= 1 else min(0.25 * 2 ** (self.failures - 2), MAX_BACKOFF)
            log.warning("server pid %s exited with %s after %.1f s; restarting in %.2f s",
                        self.server.pid, code, lived, delay)
            self.write_address("restarting", reason=f"server exited with {code}; restarting")
            if delay and _sleep_unless(lambda: self.stopping, delay):
                break
            self.restarts += 1
            if self.managed_postgres:
                self.check_postgres()  # a server cannot start without its database
            self.start_server()  # a failed start counts once, when its exit is seen above

    def shutdown(self):
        if self.server is not None and self.server.poll() is None:
            log.info("stopping server pid %s", self.server.pid)
            _stop_process(self.server, STOP_DEADLINE)
        if self.managed_postgres:
            from balsamdb.server import postgres

            log.info("stopping the postgres cluster")
            try:
                postgres.stop_cluster(self.dbdir.path, mode="fast")
            except Exception:  # still mark the address file stopped
                log.exception("stopping postgres failed")
        self.write_address("stopped", reason="stopped by db dbserver --stop")
        log.info("watchdog pid %s stopped", os.getpid())


def _read_line(stream, deadline):
    """One line from ``stream`` within ``deadline`` seconds, or '' on timeout/EOF."""
    end = time.monotonic() + deadline
    chunks = b""
    fd = stream.fileno()
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        chunks += data
        if b"\n" in chunks:
            break
    return chunks.split(b"\n", 1)[0].decode(errors="replace")


def _sleep_unless(flag, seconds):
    """Wait ``seconds`` unless ``flag()`` becomes true; returns the flag."""
    end = time.monotonic() + seconds
    while not flag() and time.monotonic() < end:
        time.sleep(min(0.05, end - time.monotonic()))
    return flag()


def _stop_process(proc, deadline):
    proc.terminate()
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        log.error("pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, deadline)
        proc.kill()
        proc.wait()


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

    # Handlers only set a flag; the loop notices within 50 ms.
    def on_term(signum, frame):
        watchdog.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log.info("watchdog pid %s for %s (%s), bind %s, %s", os.getpid(), dbdir.path, watchdog.db_type, args.bind,
             "CURVE-encrypted" if args.encrypt else "not encrypted")
    try:
        watchdog.initialize()
        watchdog.loop()
    except Exception:
        log.exception("watchdog failed")
        return 1
    finally:
        watchdog.shutdown()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
