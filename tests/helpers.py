"""Helpers for tests that run real servers and real client processes.

Every wait here has a deadline and says what it saw when it runs out.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

HERE = Path(__file__).resolve().parent
WRITER = HERE / "writer.py"


def db_cli(*args, timeout=60, env=None, check=False):
    """Run `db ARGS...` as a real process; returns the CompletedProcess.

    A `db dbserver` or `db relay` start that runs out of ``timeout`` has started detached processes
    (the watchdog and its server, the relay) that outlive it: they are stopped before the
    TimeoutExpired goes on, so that no fixture or test leaves them running, whatever happens."""
    try:
        proc = subprocess.run([sys.executable, "-m", "balsamdb.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        started = started_directory(args, env)
        if started is not None:
            kill_everything(started)
        raise
    if check and proc.returncode != 0:
        raise AssertionError(f"db {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_server(path, timeout=60):
    """Start the write server of DB directory ``path`` (its watchdog and server, as `db dbserver --path`
    does) from this process: what `db dbserver` runs, without starting a Python for the CLI (1 to
    5 s a fixture under load).  For fixtures: a test of `db dbserver` itself runs the command."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.supervisor import control

    try:
        info = control.start(DBDirectory(path), deadline=timeout).address
    except BaseException:
        kill_everything(path)  # a start that failed or ran out of time may have left its watchdog
        raise
    _reap_when_it_exits((info.get("watchdog") or {}).get("pid"))
    return info


_to_reap = set()


def _reap_when_it_exits(pid):
    """The watchdog that start_server started is a child of this process (`db dbserver` leaves it
    to init): once it exits, reap it at once, so that no test sees it as a zombie for long."""
    import threading

    if pid is None:
        return
    _to_reap.add(pid)
    if not any(t.name == "test-reaper" for t in threading.enumerate()):
        threading.Thread(target=_reaper, name="test-reaper", daemon=True).start()


def _reaper():
    while True:
        for pid in list(_to_reap):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child, or reaped already (by subprocess)
                done = pid
            if done:
                _to_reap.discard(pid)
        time.sleep(0.05)  # wait-ok: the reaper's poll interval


def stop_server(path, timeout=30):
    """Finalizer: stop the server of ``path`` as `db dbserver --stop` does, from this process; whatever
    is left of it (a stop that failed, a server of a test that broke it on purpose) is then killed."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.supervisor import control

    try:
        if Path(path).exists():
            control.stop(DBDirectory(path), deadline=timeout)
    except Exception as exc:  # noqa: BLE001  (a finalizer: what is left is killed below)
        sys.stderr.write(f"stop_server({path}): {exc}\n")
    finally:
        kill_everything(path)


def wait_for(predicate, timeout, what, interval=0.01):
    """Call ``predicate`` until it returns something true; fail after ``timeout`` s."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = predicate()
        if last:
            return last
        time.sleep(interval)  # wait-ok: the poll interval of a wait with a deadline
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")


def address(path):
    return json.loads((Path(path) / "dbwriter_address").read_text())


def alive(ident):
    """Whether the process an address record names (``{"pid", "started"}``) still runs: the same pid
    started at the same time, not a zombie."""
    try:
        proc = psutil.Process(ident["pid"])
        return abs(proc.create_time() - ident["started"]) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def server_pids(path):
    """Pids of the watchdog and server named in the address file, when alive."""
    info = address(path)
    pids = []
    for key in ("watchdog", "server"):
        ident = info.get(key)
        if ident and psutil.pid_exists(ident["pid"]):
            pids.append(ident["pid"])
    return pids


def processes_for(path):
    """Every live process whose command line names this DB directory (watchdogs, servers)."""
    paths = {str(path), str(Path(path).absolute())}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if paths & set(cmd) and any("balsamdb.server." in part for part in cmd):
            found.append(proc)
    return found


def started_directory(args, env=None):
    """The directory whose detached processes ``db ARGS`` starts (`db dbserver`, `db relay`), or None."""
    args = [str(a) for a in args]
    if not args or args[0] not in ("dbserver", "relay") or {"--stop", "--status", "-h", "--help"} & set(args):
        return None
    option = "--path" if args[0] == "dbserver" else "--dir"
    if option in args[:-1]:
        return Path(args[args.index(option) + 1]).absolute()
    named = (env if env is not None else os.environ).get("BALSAM_DB_PATH")
    return Path(named).absolute() if named and args[0] == "dbserver" else None


def kill_everything(path):
    """Finalizer: stop every server process of ``path``, gracefully then by force."""
    stop_processes(processes_for(path))


def stop_processes(procs):
    """SIGCONT + SIGTERM, 15 s to go, then SIGKILL (for finalizers)."""
    for proc in procs:
        try:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        except psutil.Error:
            pass
    _gone, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


class Writers:
    """N writer processes (tests/writer.py) that start together."""

    def __init__(self, path, workdir, nprocs, count, env=None, workflow="load", prefix=()):
        self.path, self.workdir = Path(path), Path(workdir)
        self.workflow = workflow
        self.go = self.workdir / "go"
        self.outs = [self.workdir / f"acked-{i}.txt" for i in range(nprocs)]
        self.procs = [
            subprocess.Popen([*prefix, sys.executable, str(WRITER), str(path), str(count), str(out), str(self.go),
                              workflow],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env)
            for out in self.outs
        ]

    def start(self):
        self.go.write_text("go")

    def acked_so_far(self):
        return sum(len(out.read_text().split()) for out in self.outs if out.exists())

    def wait(self, timeout=180):
        """Wait for every writer; returns (exit codes, stdouts, stderrs)."""
        end = time.monotonic() + timeout
        results = []
        for proc in self.procs:
            try:
                out, err = proc.communicate(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"writer {proc.pid} still running after {timeout} s; "
                                     f"{self.acked_so_far()} writes acknowledged so far")
            results.append((proc.returncode, out, err))
        return results

    def acked_ids(self):
        ids = []
        for out in self.outs:
            if out.exists():
                ids.extend(out.read_text().split())
        return ids

    def history_files(self):
        """The writers' histories (see tests/history.py)."""
        return [Path(f"{out}.history") for out in self.outs]

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def fresh_database_url(pg_url):
    """The URL of a new, empty database on the PostgreSQL server of ``pg_url`` (which ends in '/')."""
    import uuid

    import psycopg2

    name = "t_" + uuid.uuid4().hex[:12]
    con = psycopg2.connect(pg_url + "postgres")
    con.autocommit = True
    try:
        con.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        con.close()
    return pg_url + name


def job_ids_in_db(path):
    """Every job id in the DB directory's database, read with SQL (not through the server)."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        return [row[0] for row in database.execute_sql("select id from job").fetchall()]
    finally:
        database.close()


def skip_or_fail(reason):
    """Skip on a developer's machine that lacks a tool; on CI (which installs them) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must be able to run this test: see .ci/run)")
    pytest.skip(reason)


def require_smt(*modules):
    """Skip (fail on CI) unless Sumatra's ``smt`` command, git and ``modules`` are here."""
    import importlib.util
    import shutil

    missing = [m for m in ("sumatra", "git", *modules) if importlib.util.find_spec(m) is None]
    missing += [] if shutil.which("git") else ["the git command"]
    missing += [] if (Path(sys.executable).parent / "smt").exists() else ["the smt command"]
    if missing:
        skip_or_fail(f"the smt client needs {', '.join(missing)}: pip install -e .[test] (and git)")


# -- shared by conftest's fixtures and the tests that make DB directories themselves ----------------

def postgres_available():
    """Whether PostgreSQL's server binaries are installed (the PostgreSQL tests need them)."""
    from balsamdb.exceptions import ConfigError
    from balsamdb.server.postgres import cluster as postgres

    try:
        postgres.find_binaries()
        return True
    except ConfigError:
        return False


def open_database(path):
    """The database of DB directory ``path``, connected (as the server opens it), for a test to write
    or plan in directly; the caller closes it."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    return database


def with_statistics(database, path, stats):
    """``database`` (SQLite, of DB directory ``path``) analysed, with the planner statistics ``stats``
    (``{(table, index): "sqlite_stat1 stat"}``, e.g. those of a DB of a million rows) in place of its
    own: closed and opened again, since SQLite reads them with the schema.  Returns the new one."""
    database.execute_sql("ANALYZE")
    for (table, index), stat in stats.items():
        database.execute_sql("DELETE FROM sqlite_stat1 WHERE tbl = ? AND idx = ?", (table, index))
        database.execute_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, index, stat))
    database.close()
    return open_database(path)


def make_db_directory(backend, path, pg_url=None):
    """A fresh DB directory at ``path`` on ``backend``; returns the path."""
    from balsamdb.dbdir import DBDirectory

    if backend == "sqlite3":
        DBDirectory(path).init()
    else:
        DBDirectory(path).init("postgres", url=fresh_database_url(pg_url))
    return path


# -- results of `db` commands (the ``run_db`` fixture's CompletedProcess) ----------------------------

def ok(result):
    """stdout of a call that must succeed."""
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def refused(result, *phrases, code=None, absent=()):
    """stderr of a call that must fail with one clean error (exit ``code`` when given) saying each of
    ``phrases`` and none of ``absent``."""
    assert result.returncode != 0, f"expected a failure, got exit 0 and:\n{result.stdout}"
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error:"), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, f"{phrase!r} not in stderr:\n{result.stderr}"
    for phrase in absent:
        assert phrase not in result.stderr, f"{phrase!r} in stderr:\n{result.stderr}"
    return result.stderr


def add_job(run_db, path, *args):
    """Create a job with the CLI (`db job add ARGS --json`); returns its dict."""
    return json.loads(ok(run_db("job", "add", *args, "--path", path, "--json")))


#: Where :func:`passable_dir` makes its directories: /tmp, or the directory scripts/mutants.py names
#: per worker (it stops every process whose command line names it after each mutant: a test killed at
#: its timeout leaves no PostgreSQL cluster or server running there).
PASSABLE_PARENT_ENV = "BALSAMDB_TEST_SHARED_TMP"


def passable_dir(prefix):
    """A new directory that another user may pass through but not list (mode 0711), as a home
    directory would be: for what a PostgreSQL cluster run by another account, or another user,
    must reach (pytest's own tmp directories are 0700 all the way up).  The caller removes it."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get(PASSABLE_PARENT_ENV, "/tmp")))
    os.chmod(base, 0o711)
    return base
