"""What ``db bench --scale`` runs and watches: a DB directory with its server on SQLite or on a
PostgreSQL cluster of its own (started by the server's watchdog, stopped in a ``finally``), a
``db`` command run as a user runs it (its wall time and CPU from ``wait4``, its peak memory sampled) while the
servers' memory is sampled, and a bare connection for the SQL a listing costs without balsamdb.
"""

import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

SAMPLE_S = 0.05


@contextmanager
def served(path, db_type):
    """A new DB directory at ``path`` of ``db_type`` (sqlite3 or postgres: its own cluster, made with
    initdb; as root the cluster runs as an unprivileged account) with its server running; stopped
    (server, read service and cluster) on the way out, whatever happens."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.dbinit import init_db_directory
    from balsamdb.server.supervisor import control

    init_db_directory(path, db_type)
    dbdir = DBDirectory(path)
    try:
        control.start(dbdir, deadline=120.0)
        yield dbdir
    finally:
        try:
            control.stop(dbdir)
        finally:
            if db_type == "postgres":
                from balsamdb.server.postgres import cluster

                if cluster.cluster_pid(path) is not None:
                    cluster.stop_cluster(path)


def server_pids(dbdir):
    """{role: pid} of the write server and the read service of a running DB directory."""
    info = dbdir.read_address()
    out = {}
    for role in ("server", "reader"):
        ident = info.get(role)
        if isinstance(ident, dict) and ident.get("pid"):
            out[role] = int(ident["pid"])
    return out


class RssSampler:
    """The largest resident memory seen of each of ``pids`` ({name: pid}) while it runs (MB)."""

    def __init__(self, pids):
        import psutil

        self.procs = {}
        for name, pid in pids.items():
            try:
                self.procs[name] = psutil.Process(pid)
            except psutil.Error:
                pass
        self.peak = {name: 0.0 for name in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while True:
            for name, proc in self.procs.items():
                try:
                    self.peak[name] = max(self.peak[name], proc.memory_info().rss / 1e6)
                except psutil.Error:
                    pass
            if self._stop.wait(SAMPLE_S):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


class _HighWater:
    """The peak resident memory of process ``pid`` since its exec (``VmHWM`` of /proc/PID/status),
    read every :data:`SAMPLE_S` until :meth:`stop`.  Not wait4's ``ru_maxrss``: Linux carries into it,
    at exec, the peak of the address space the child was forked from (this benchmark's, hundreds of MB
    after a load), so a 40 MB ``db ls`` read as 150-200 MB."""

    def __init__(self, pid):
        self.mb, self._path, self._stop = 0.0, f"/proc/{pid}/status", threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            try:
                with open(self._path) as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.mb = max(self.mb, int(line.split()[1]) / 1024)
            except OSError:
                pass
            if self._stop.wait(SAMPLE_S):
                return

    def stop(self):
        self._stop.set()
        self._thread.join(10)


def run_db(args, watch=None, stdout=subprocess.DEVNULL, timeout=3600):
    """Run ``db ARGS`` (this interpreter's balsamdb) as a user would; returns
    ``{wall_s, cpu_s, rss_mb, code, servers_mb}`` (``servers_mb``: the peak memory of the processes
    ``watch`` ({name: pid}) sampled meanwhile).  Over ``timeout`` s it is killed (code None)."""
    cmd = [sys.executable, "-m", "balsamdb.cli", *map(str, args)]
    with RssSampler(watch or {}) as sampler:
        began = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        peak = _HighWater(proc.pid)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            peak.stop()
        wall = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    killed = proc.returncode == -9
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rss_mb": peak.mb,
            "code": None if killed else proc.returncode, "stderr": err[-2000:],
            "servers_mb": {name: round(mb, 1) for name, mb in sampler.peak.items()}}


def bare_connection(dbdir):
    """A DB-API connection straight to the database of ``dbdir`` (no balsamdb in between), and the
    placeholder it takes."""
    from balsamdb.dbdir import read_private

    config = dbdir.config()
    if config["db_type"] == "sqlite3":
        import sqlite3

        return sqlite3.connect(f"file:{dbdir.sqlite_file}?mode=ro", uri=True), "?"
    import psycopg2

    port = (dbdir.read_address().get("postgres") or {}).get("port")
    return psycopg2.connect(dbname="balsamdb", host="127.0.0.1", port=int(port), user="balsamdb",
                            password=read_private(dbdir.postgres_password_file)), "%s"


def bare_listing_s(dbdir):
    """Seconds to read every job row, oldest first, with bare SQL (the floor of a full ``db ls``)."""
    con, _mark = bare_connection(dbdir)
    try:
        began = time.perf_counter()
        # PostgreSQL: a server-side cursor, so that this process streams the rows as db ls does
        cur = con.cursor() if dbdir.config()["db_type"] == "sqlite3" else con.cursor(name="bare_listing")
        cur.execute("SELECT * FROM job ORDER BY created_at, id")
        rows = 0
        while True:
            chunk = cur.fetchmany(5000)
            if not chunk:
                break
            rows += len(chunk)
        return time.perf_counter() - began, rows
    finally:
        con.close()


def db_size_mb(dbdir):
    con, _mark = bare_connection(dbdir)
    try:
        if dbdir.config()["db_type"] == "sqlite3":
            return round(sum(f.stat().st_size for f in Path(dbdir.path).glob("db.sqlite3*")) / 1e6, 1)
        cur = con.cursor()
        cur.execute("SELECT pg_database_size(current_database())")
        return round(cur.fetchone()[0] / 1e6, 1)
    finally:
        con.close()
