"""The watchdog's child processes: check that a server can start, read a child's first line with a
deadline, wait unless a stop was asked for, stop a child (SIGTERM, then SIGKILL after a deadline)."""

import errno
import logging
import os
import select
import subprocess
import time

log = logging.getLogger("balsamdb.server.supervisor.watchdog")


def read_line(stream, deadline):
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


def sleep_unless(flag, seconds):
    """Wait ``seconds`` unless ``flag()`` becomes true; returns the flag."""
    end = time.monotonic() + seconds
    while not flag() and time.monotonic() < end:
        time.sleep(min(0.05, end - time.monotonic()))
    return flag()


def stop_process(proc, deadline):
    proc.terminate()
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        log.error("pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, deadline)
        proc.kill()
        proc.wait()


def check_writable(dbdir, db_type):
    """Raise OSError unless the DB directory (and a SQLite database) can be written: a server
    started on a read-only database would refuse every write until restarted, and one
    started without a writable spool/ could not take the writes that wait there."""
    targets = [dbdir.path, dbdir.spool_dir]
    if db_type == "sqlite3":
        targets.append(dbdir.sqlite_file)
    for target in targets:
        if not os.access(target, os.W_OK):
            try:
                read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
            except OSError:
                read_only = False
            code = errno.EROFS if read_only else errno.EACCES
            raise OSError(code, f"{os.strerror(code)}: {target} cannot be written")


class ReaderChild:
    """The read service (:mod:`balsamdb.server.reader.service`) as a child of the watchdog: started
    after the write server, restarted within about a second when it dies (backing off when it keeps
    dying), named in the address file (``read_address``, ``reader``, ``reader_state``)."""

    def __init__(self, watchdog):
        self.watchdog = watchdog
        self.process = None
        self.port = 0
        self.started = 0.0
        self.failures = 0
        self.restart_at = 0.0
        self.restarts = 0

    def address_fields(self):
        if self.process is None:
            return {"reader_state": "restarting"}
        from balsamdb import address_file

        return {"read_address": f"tcp://{self.watchdog.public_host()}:{self.port}", "reader_state": "running",
                "reader": address_file.process_identity(self.process.pid), "reader_restarts": self.restarts}

    def start(self):
        """Start the read service; True once it listens (the address file then names it)."""
        import json
        import sys

        watchdog = self.watchdog
        dbdir = watchdog.dbdir
        cmd = [sys.executable, "-m", "balsamdb.server.reader.service", "--path", str(dbdir.path),
               "--bind", watchdog.bind_host, "--port", str(self.port), "--epoch", watchdog.epoch or ""]
        if watchdog.managed_postgres:
            cmd += ["--pg-port", str(watchdog.pg_port)]
        if watchdog.encrypt:
            cmd += ["--encrypt"]
        try:
            err = open(dbdir.log_dir / "reader.err", "ab")
        except OSError:
            err = None
        try:
            self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        finally:
            if err is not None:
                err.close()
        self.started = time.time()
        line = read_line(self.process.stdout, 30.0)
        try:
            self.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            log.error("read service pid %s did not start (said %r); see %s", self.process.pid, line,
                      dbdir.log_dir / "reader.err")
            stop_process(self.process, 5.0)
            self.process = None
            return False
        self.process.stdout.close()
        log.info("read service pid %s up on port %s", self.process.pid, self.port)
        watchdog.write_address("running", epoch=watchdog.epoch)
        return True

    def supervise(self):
        """One look: restart the read service when it died and its restart is due."""
        if self.process is not None:
            code = self.process.poll()
            if code is None:
                return
            lived = time.time() - self.started
            self.failures = 0 if lived >= 5.0 else self.failures + 1
            delay = 0.0 if self.failures <= 1 else min(30.0, 0.25 * 2 ** (self.failures - 2))
            log.warning("read service pid %s exited with %s after %.1f s; restarting in %.2f s",
                        self.process.pid, code, lived, delay)
            self.process = None
            self.restart_at = time.monotonic() + delay
            if self.watchdog.server is not None:
                self.watchdog.write_address("running", epoch=self.watchdog.epoch)  # reader_state: restarting
            return
        if time.monotonic() < self.restart_at or self.watchdog.server is None:
            return
        self.restarts += 1
        try:
            started = self.start()
        except Exception as exc:  # fork refused, log/ not writable, ...: tried again later
            log.error("cannot start the read service: %s", exc)
            if self.process is not None and self.process.poll() is None:
                stop_process(self.process, 5.0)
            started, self.process = False, None
        if not started:
            self.failures += 1
            self.restart_at = time.monotonic() + min(30.0, 0.25 * 2 ** self.failures)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            log.info("stopping read service pid %s", self.process.pid)
            stop_process(self.process, 10.0)
        self.process = None
