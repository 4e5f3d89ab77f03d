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
