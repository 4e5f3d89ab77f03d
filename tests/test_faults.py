"""The fault suite: real servers and real job processes meet the faults of a production day.

Each case runs a fixed, bounded load of real writer processes (tests/writer.py) or real CLI
calls, injects one fault, and then checks the rows: every acknowledged or spooled write is in
the database exactly once, nothing is duplicated (no job id twice, one "CREATED" state
history row per job, nothing in ``spool/failed``), and nothing is left in ``spool/new``.
Each case prints one summary line (visible with ``pytest -s``)::

    FAULT <case> [<backend>]: acknowledged=N spooled=S lost=0 duplicated=0 recover=T s (...)

Cases (run on both backends unless the fault is about the SQLite file itself):

1. SIGKILL of the server 10 times during a 64-writer run;
2. SIGKILL of the watchdog: its server keeps serving; the next ``db dbserver`` recovers;
3. no server at all for the first half of a run (``require_server``: writes are spooled),
   started in the middle: the spool drains exactly once;
4. SIGSTOP of the server for longer than the clients' timeout and deadline, then SIGCONT;
5. a full disk (SQLite only);
6. a corrupt address file while the server runs;
7. a read-only file system under the running server (SQLite only);
8. ``db dbserver --stop`` in the middle of a run: see
   ``tests/test_server.py::test_stop_during_load_loses_no_acknowledged_write`` (not repeated here).

No test sleeps to let something happen: every wait is for an observable state, with a deadline
(``wait_for``).  Every process, server, tracer and mount a test starts is stopped (unmounted) by
a ``finally`` or a fixture finalizer, also when the test fails.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest

import balsamdb
from balsamdb.dbdir import DBDirectory
from balsamdb.spool import Spool
from balsamdb.server.supervisor.watchdog import HEALTHY_AFTER

from history import REGISTER_LABELS, check_writers
from helpers import alive as _alive
from helpers import (Writers, address, db_cli, job_ids_in_db, kill_everything, processes_for, skip_or_fail,
                     stop_processes, wait_for)

RESTART_BOUND = 3.0   # s from SIGKILL to a new server, beyond the watchdog's announced backoff ("~1 s";
#                       generous because 64 writer processes share 2 cores with the restarting server)
REWRITE_BOUND = 1.5   # s for the watchdog to rewrite a corrupt address file (it looks every 0.5 s)
DRAIN_DEADLINE = 60   # s for the spool to be applied once a server runs


# -- helpers -------------------------------------------------------------------------------------------

def _env(**extra):
    """The environment of writer processes: ours plus ``extra`` (strings)."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _signal_writers(writers, sig):
    for proc in writers.procs:
        if proc.poll() is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass


def _routes(results):
    """Sum of the writers' printed routes, e.g. Counter({"server": 3100, "spool": 100})."""
    routes = Counter()
    for _code, out, _err in results:
        for word in out.split():
            key, _, value = word.partition("=")
            if value.isdigit():
                routes[key] += int(value)
    return routes


def _check_writers_exit_0(results):
    failed = [err[-1500:] for code, _out, err in results if code != 0]
    assert not failed, f"{len(failed)} writers failed; first: {failed[0]}"


def _sql(path, query):
    """Rows of ``query``, run with SQL on the DB directory's database (not through the server)."""
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        return database.execute_sql(query).fetchall()
    finally:
        database.close()


def _spool(path):
    return Spool(Path(path) / "spool")


def _drained(path, total):
    """True once spool/new is empty and the database holds ``total`` jobs."""
    return _spool(path).count() == 0 and len(job_ids_in_db(path)) >= total


def _rows_check(path, acked):
    """What the database says about the acknowledged (or spooled) job ids ``acked``."""
    stored = job_ids_in_db(path)
    counts = Counter(stored)
    created = dict(_sql(path, "select j.id, count(*) from job_state_change c join job j on j.key = c.job_key "
                              "where to_state = 'CREATED' group by j.id"))
    return {
        "acked": len(acked),
        "acked_twice": len(acked) - len(set(acked)),
        "stored": len(stored),
        "lost": sorted(set(acked) - set(counts)),
        "duplicated": sum(c - 1 for c in counts.values() if c > 1)
                      + sum(c - 1 for c in created.values() if c > 1),
        "unacknowledged": sorted(set(counts) - set(acked)),
        "no_history": sorted(set(counts) - set(created)),
        "spool_pending": _spool(path).count(),
        "spool_failed": [p.name for p in _spool(path).failures()],
    }


def _summary(case, backend, rows, spooled, recover, details=""):
    line = (f"FAULT {case} [{backend}]: acknowledged={rows['acked']} spooled={spooled} "
            f"lost={len(rows['lost'])} duplicated={rows['duplicated']} recover={recover:.2f}s")
    print("\n" + line + (f" ({details})" if details else ""), flush=True)


def _assert_exactly_once(rows, expected=None):
    """Every acknowledged or spooled write present exactly once, nothing else, nothing waiting."""
    if expected is not None:
        assert rows["acked"] == expected, f"{rows['acked']} writes acknowledged, expected {expected}"
    assert rows["acked_twice"] == 0, "a writer acknowledged one id twice"
    assert not rows["lost"], f"{len(rows['lost'])} acknowledged writes are missing, e.g. {rows['lost'][:3]}"
    assert rows["duplicated"] == 0, f"{rows['duplicated']} writes were applied twice"
    assert not rows["unacknowledged"], \
        f"{len(rows['unacknowledged'])} jobs in the database were never acknowledged: {rows['unacknowledged'][:3]}"
    assert not rows["no_history"], f"jobs without a CREATED history row: {rows['no_history'][:3]}"
    assert rows["spool_pending"] == 0, f"{rows['spool_pending']} writes still wait in spool/new"
    assert not rows["spool_failed"], f"spooled writes were refused: {rows['spool_failed'][:3]}"


def _dbserver_processes(path):
    found = {"watchdog": [], "server": []}
    for proc in processes_for(path):
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if "balsamdb.server.supervisor.watchdog" in cmd:
            found["watchdog"].append(proc.pid)
        elif "balsamdb.server.writer.server" in cmd:
            found["server"].append(proc.pid)
    return found


def _start_server(path):
    started = db_cli("dbserver", "--path", path, check=True)
    assert "listening at" in started.stdout, started.stdout
    return address(path)


def _stop_server(path):
    db_cli("dbserver", "--stop", "--path", path)
    kill_everything(path)


# -- a small tmpfs, for the file system faults ------------------------------------------------------------

def _mount(*args):
    if any(str(arg).startswith("remount") for arg in args):
        # A remount changes only what it names: otherwise mount(8) repeats the options it reads in
        # /proc/self/mountinfo, whose uid= a user namespace cannot map (EINVAL; see test_unprivileged.sh).
        args = ("--options-source=disable", *args)
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)


def _processes_under(directory):
    """Every live balsamdb server process whose command line names a path under ``directory``."""
    prefix = str(directory) + os.sep
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any(part.startswith(prefix) for part in cmd) and any("balsamdb.server." in part for part in cmd):
            found.append(proc)
    return found


@pytest.fixture
def tmpfs(tmp_path):
    """An 8 MB tmpfs mounted at a fresh directory (needs root, as on this machine and CI).

    The finalizer stops every server process of a DB directory under it, makes it
    writable again, and unmounts it."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = _mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", mount_point)
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN; as an ordinary user run "
                     f"scripts/test_unprivileged.sh): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        stop_processes(_processes_under(mount_point))
        _mount("-o", "remount,rw", mount_point)
        try:
            wait_for(lambda: subprocess.run(["umount", str(mount_point)], capture_output=True).returncode == 0
                     or not os.path.ismount(mount_point), 10, f"umount {mount_point}", interval=0.2)
        finally:
            if os.path.ismount(mount_point):
                subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


# -- 1. SIGKILL of the server, 10 times ------------------------------------------------------------------

def _restarted(path, old_epochs):
    """The address record once it names a running server with an epoch not in ``old_epochs``."""
    info = address(path)
    return info if info.get("state") == "running" and info.get("epoch") not in old_epochs else None


def test_server_sigkill_10_times_during_64_writers(served_dbdir, tmp_path, backend):
    """64 writers x 50 jobs; the server is SIGKILLed 10 times, each time once 50 to 200 more writes
    (a random number, its seed printed) were acknowledged: at random moments of the group commit, the
    batch thread's apply and COMMIT, and the flush.  Each restart (kill to a new epoch in the address
    file) is measured.

    The watchdog backs off when a server keeps dying within HEALTHY_AFTER s (that backoff is
    tested in test_server.py): before kills 1, 5 and 9 the writers are paused (SIGSTOP, as a
    batch scheduler suspends jobs) until the server has lived that long, so that the backoff
    stays at most 0.5 s and the 10 restarts take seconds, not minutes."""
    path = served_dbdir
    writers = Writers(path, tmp_path, nprocs=64, count=50, env=_env(WRITER_REGISTERS=REGISTER_LABELS))
    restarts, epochs = [], [address(path)["epoch"]]
    seed = random.randrange(1 << 30)
    steps = random.Random(seed).choices(range(50, 201), k=10)
    print(f"\nkills after {steps} more acknowledged writes (seed {seed})", flush=True)

    def healthy():
        return time.time() - address(path)["server_started_at"] >= HEALTHY_AFTER + 0.2

    try:
        wait_for(healthy, HEALTHY_AFTER + 30, "the first server to live past HEALTHY_AFTER")
        writers.start()
        mark = 0
        for kill in range(10):
            if kill in (4, 8):
                _signal_writers(writers, signal.SIGSTOP)
                wait_for(healthy, HEALTHY_AFTER + 30, "the server to live past HEALTHY_AFTER")
                _signal_writers(writers, signal.SIGCONT)
            wait_for(lambda: writers.acked_so_far() >= mark + steps[kill], 120,
                     f"{steps[kill]} more acknowledged writes before kill {kill + 1} (seed {seed})")
            info = address(path)
            os.kill(info["server"]["pid"], signal.SIGKILL)
            killed = time.monotonic()
            new = wait_for(lambda: _restarted(path, epochs), 60,
                           f"the watchdog to restart the server after kill {kill + 1}")
            restarts.append(time.monotonic() - killed)
            assert new["server"]["pid"] != info["server"]["pid"]
            epochs.append(new["epoch"])
            mark = writers.acked_so_far()
        assert mark < 64 * 50, f"the writers finished before the 10th kill: the load is too small (seed {seed})"
        results = writers.wait(timeout=240)
    finally:
        _signal_writers(writers, signal.SIGCONT)
        writers.kill()
    _check_writers_exit_0(results)
    announced = [float(x) for x in re.findall(r"restarting in ([0-9.]+) s",
                                              (path / "log" / "watchdog.log").read_text())]
    assert len(announced) == 10, announced
    beyond = [r - b for r, b in zip(restarts, announced)]
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    _summary("server-sigkill-x10", backend, rows, routes["spool"], max(restarts),
             f"restarts s: {', '.join(f'{r:.2f}' for r in restarts)}; of which backoff announced s: "
             f"{', '.join(f'{b:g}' for b in announced)}; at most {max(beyond):.2f} s beyond it; "
             f"routes {dict(routes)}")
    _assert_exactly_once(rows, expected=64 * 50)
    check_writers(path, writers, registers=REGISTER_LABELS)
    assert len(set(epochs)) == 11, "every restart must have a new epoch"
    assert max(beyond) < RESTART_BOUND, f"restarts took {restarts} s (backoff {announced})"
    assert address(path)["restarts"] == 10


# -- 2. SIGKILL of the watchdog ----------------------------------------------------------------------------

def test_watchdog_sigkill_leaves_its_server_serving(served_dbdir, tmp_path, backend):
    """A watchdog killed with SIGKILL leaves its server running: the writers go on through it
    (route server only), nothing is lost or doubled."""
    path = served_dbdir
    info = address(path)
    writers = Writers(path, tmp_path, nprocs=16, count=60, env=_env(WRITER_REGISTERS=REGISTER_LABELS))
    try:
        writers.start()
        wait_for(lambda: writers.acked_so_far() >= 200, 120, "200 acknowledged writes")
        os.kill(info["watchdog"]["pid"], signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not _alive(info["watchdog"]), 10, "the watchdog to die")
        mark = writers.acked_so_far()
        wait_for(lambda: writers.acked_so_far() >= mark + 200, 60, "200 more writes after the watchdog died")
        served = time.monotonic() - killed
        assert _alive(info["server"]), "the server died with its watchdog"
        results = writers.wait(timeout=120)
    finally:
        writers.kill()
    _check_writers_exit_0(results)
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    _summary("watchdog-sigkill", backend, rows, routes["spool"], 0.0,
             f"no interruption: 200 writes acknowledged within {served:.2f} s after the kill; routes {dict(routes)}")
    _assert_exactly_once(rows, expected=16 * 60)
    check_writers(path, writers, registers=REGISTER_LABELS)
    assert set(routes) == {"server"}, f"every write should have gone to the orphaned server: {routes}"
    assert _alive(info["server"]) and address(path)["epoch"] == info["epoch"]


def test_dbserver_after_a_killed_watchdog_starts_a_fresh_watchdog_and_server(served_dbdir, tmp_path, backend):
    """After a watchdog was SIGKILLed, `db dbserver --path P` stops the orphaned server and starts
    a fresh watchdog and server (new epoch), while writers go on; exactly one of each afterwards."""
    path = served_dbdir
    info = address(path)
    writers = Writers(path, tmp_path, nprocs=8, count=60, env=_env(WRITER_REGISTERS=REGISTER_LABELS))
    try:
        writers.start()
        wait_for(lambda: writers.acked_so_far() >= 100, 120, "100 acknowledged writes")
        os.kill(info["watchdog"]["pid"], signal.SIGKILL)
        wait_for(lambda: not _alive(info["watchdog"]), 10, "the watchdog to die")
        started = time.monotonic()
        out = db_cli("dbserver", "--path", path, check=True).stdout
        recover = time.monotonic() - started
        procs = _dbserver_processes(path)
        new = address(path)
        print(f"\n`db dbserver` after the kill said: {out.strip()!r}; processes {procs}; "
              f"epoch {'unchanged' if new['epoch'] == info['epoch'] else 'new'}", flush=True)
        assert len(procs["watchdog"]) == 1 and len(procs["server"]) == 1, procs
        assert new["epoch"] != info["epoch"], "the orphaned server still serves: no fresh start"
        assert not _alive(info["server"]), "the orphaned server still runs"
        assert _alive(new["watchdog"]) and _alive(new["server"])
        mark = writers.acked_so_far()
        results = writers.wait(timeout=120)
    finally:
        writers.kill()
    _check_writers_exit_0(results)
    wait_for(lambda: _drained(path, 8 * 60), DRAIN_DEADLINE, "the spool to drain")
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    _summary("watchdog-sigkill-then-dbserver", backend, rows, routes["spool"], recover,
             f"`db dbserver` took {recover:.2f} s; {8 * 60 - mark} writes after it; routes {dict(routes)}")
    _assert_exactly_once(rows, expected=8 * 60)
    check_writers(path, writers, registers=REGISTER_LABELS)
    with balsamdb.connect(path) as db:
        db.jobs.create(name="after-recovery", make_workdir=False)
        assert db.last_route == "server"


# -- 3. no server for the first half of a run --------------------------------------------------------------

def test_server_started_in_the_middle_of_a_spooling_run(any_dbdir, tmp_path, backend):
    """16 writers x 100 with require_server and no server: every write is spooled (also on
    SQLite: no direct writes).  Once about half are spooled the writers are paused, the server is
    started with the CLI, and the writers resumed: the spool is applied exactly once and the rest
    goes through the server."""
    path = any_dbdir
    total = 16 * 100
    writers = Writers(path, tmp_path, nprocs=16, count=100,
                      env=_env(BALSAMDB_REQUIRE_SERVER=1, WRITER_REGISTERS=REGISTER_LABELS))
    try:
        writers.start()
        wait_for(lambda: writers.acked_so_far() >= total // 2, 120, "half of the writes to be spooled")
        _signal_writers(writers, signal.SIGSTOP)
        spooled_before = _spool(path).count()
        assert spooled_before >= total // 2 and job_ids_in_db(path) == [], \
            "with no server and require_server, nothing may be written to the database"
        started = time.monotonic()
        _start_server(path)
        server_up = time.monotonic() - started
        _signal_writers(writers, signal.SIGCONT)
        wait_for(lambda: _spool(path).count() == 0, DRAIN_DEADLINE, "the spool to drain")
        drained = time.monotonic() - started
        results = writers.wait(timeout=120)
        wait_for(lambda: _drained(path, total), DRAIN_DEADLINE, "every write to be applied")
    finally:
        _signal_writers(writers, signal.SIGCONT)
        writers.kill()
        _stop_server(path)
    _check_writers_exit_0(results)
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    _summary("no-server-first-half", backend, rows, routes["spool"], drained,
             f"{spooled_before} spooled before the start; server up {server_up:.2f} s after "
             f"`db dbserver`, spool empty {drained:.2f} s after it; routes {dict(routes)}")
    _assert_exactly_once(rows, expected=total)
    check_writers(path, writers, registers=REGISTER_LABELS)
    assert "direct" not in routes, f"require_server was set: {routes}"
    assert routes["spool"] >= total // 2 and routes["server"] > 0, routes
    assert not list((path / "spool" / "failed").iterdir())


# -- 4. SIGSTOP of the server ------------------------------------------------------------------------------

def test_server_sigstop_longer_than_the_client_timeout(served_dbdir, tmp_path, backend):
    """The server is stopped (SIGSTOP) for ~4 s while 16 writers run with client_timeout 0.5 s and
    client_deadline 2 s: they retry, then spool.  After SIGCONT the server answers what it had
    queued and applies the spool: a request both queued in the server and spooled by its client
    is applied once."""
    path = served_dbdir
    info = address(path)
    pid = info["server"]["pid"]
    total = 16 * 100
    writers = Writers(path, tmp_path, nprocs=16, count=100,
                      env=_env(BALSAMDB_CLIENT_TIMEOUT=0.5, BALSAMDB_CLIENT_DEADLINE=2, WRITER_REGISTERS=REGISTER_LABELS))
    try:
        writers.start()
        wait_for(lambda: writers.acked_so_far() >= 300, 120, "300 acknowledged writes")
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            # Each writer spools once per client_deadline: 20 files means a pause of about 2 deadlines.
            wait_for(lambda: _spool(path).count() >= 20, 60, "writers to spool while the server is stopped")
            held = time.monotonic() - stopped
            spooled_while_stopped = _spool(path).count()
        finally:
            os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(lambda: _spool(path).count() == 0, DRAIN_DEADLINE, "the spool to drain after SIGCONT")
        recover = time.monotonic() - resumed
        results = writers.wait(timeout=120)
        wait_for(lambda: _drained(path, total), DRAIN_DEADLINE, "every write to be applied")
    finally:
        if psutil.pid_exists(pid):
            os.kill(pid, signal.SIGCONT)
        writers.kill()
    _check_writers_exit_0(results)
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    _summary("server-sigstop", backend, rows, routes["spool"], recover,
             f"stopped {held:.2f} s, {spooled_while_stopped} spooled meanwhile; spool empty "
             f"{recover:.2f} s after SIGCONT; routes {dict(routes)}")
    _assert_exactly_once(rows, expected=total)
    check_writers(path, writers, registers=REGISTER_LABELS)
    assert held > 2 * 0.5, "the pause must outlast the client timeout"
    assert routes["spool"] >= 20 and routes["server"] > 0, routes
    after = address(path)
    assert after["epoch"] == info["epoch"] and _alive(info["server"]), \
        "a stopped server is not dead: the watchdog must not have replaced it"


# -- 5. a full disk -----------------------------------------------------------------------------------------

def _fill(path):
    """Write ``path`` until the file system is full; returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    size = 0
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            while True:
                try:
                    size += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != 28:  # ENOSPC
                        raise
                    break
    finally:
        os.close(fd)
    return size


def _writer_phase(path, workdir, nprocs=4, count=25):
    workdir.mkdir()
    writers = Writers(path, workdir, nprocs=nprocs, count=count)
    try:
        writers.start()
        results = writers.wait(timeout=120)
    finally:
        writers.kill()
    return writers, results


@pytest.mark.unprivileged  # root, or an ordinary user with scripts/test_unprivileged.sh
def test_full_disk_refuses_writes_cleanly_and_recovers(tmpfs, tmp_path):
    """SQLite only: the DB directory lives on an 8 MB tmpfs that a filler file makes full.
    (A PostgreSQL database is on its cluster's disk, elsewhere: filling the DB directory would not
    touch it.)  Writes through the server then raise StorageError, in the test and in real writer
    processes, and none is half-applied; once the filler is deleted, service resumes through the
    same server, refused writes can be sent again, and every job has one CREATED history row."""
    path = tmpfs / "db"
    DBDirectory(path).init()
    info = _start_server(path)
    try:
        phase_a, results_a = _writer_phase(path, tmp_path / "before")
        _check_writers_exit_0(results_a)
        filler = tmpfs / "filler"
        filled = _fill(filler)
        assert shutil.disk_usage(tmpfs).free < 64 * 1024
        # Real job processes meet the full disk: each must stop with a StorageError, nothing else.
        phase_b, results_b = _writer_phase(path, tmp_path / "full")
        for code, _out, err in results_b:
            if code != 0:
                assert "balsamdb.exceptions.StorageError" in err, err[-1500:]
        refused_procs = sum(1 for code, _o, _e in results_b if code != 0)
        # ... and a client in this process: its refused jobs are retried after the space is freed.
        refused, accepted, messages = [], [], set()
        with balsamdb.connect(path) as db:
            for i in range(40):
                spec = {"name": f"full-{i}", "id": str(uuid.uuid4()), "data": {"blob": "x" * 16000}}
                try:
                    job = db.jobs.create(**spec)
                except balsamdb.StorageError as exc:
                    refused.append(spec)
                    messages.add(str(exc))
                    if len(refused) >= 5:
                        break
                    continue
                assert not job.spooled and db.last_route == "server"
                accepted.append(spec["id"])
            assert refused, "the full file system never refused a write"
            assert db.ping()["pid"] == info["server"]["pid"], "the server must outlive a full disk"
            assert not (set(job_ids_in_db(path)) & {s["id"] for s in refused}), "a refused write was applied"
            os.unlink(filler)
            freed = time.monotonic()
            first = wait_for(lambda: _try_create(db, f"after-{uuid.uuid4().hex[:6]}"), 10,
                             "a write to succeed after the space was freed")
            recover = time.monotonic() - freed
            assert db.last_route == "server" and not first.spooled
            for spec in refused:  # refused means not applied: the same job can be sent again
                assert db.jobs.create(**spec).id == spec["id"]
            accepted += [first.id] + [s["id"] for s in refused]
        phase_c, results_c = _writer_phase(path, tmp_path / "after")
        _check_writers_exit_0(results_c)
        status = json.loads(db_cli("dbserver", "--status", "--json", "--path", path, check=True).stdout)
        assert status["server_status"]["pid"] == info["server"]["pid"]
        acked = phase_a.acked_ids() + phase_b.acked_ids() + accepted + phase_c.acked_ids()
        rows = _rows_check(path, acked)
        created = _sql(path, "select c.job_key, count(*) from job_state_change c where to_state = 'CREATED' "
                             "group by c.job_key having count(*) <> 1")
        integrity = _sql(path, "pragma integrity_check")
    finally:
        _stop_server(path)
    _summary("full-disk", "sqlite3", rows, 0, recover,
             f"filler {filled // 1024} KiB; {len(refused)} test writes and {refused_procs}/4 writer processes "
             f"refused with StorageError {sorted(messages)}; first write {recover:.3f} s after freeing")
    _assert_exactly_once(rows)
    assert created == [], f"jobs without exactly one CREATED history row: {created[:3]}"
    assert integrity == [("ok",)], integrity
    # The writer processes' creates, also those that met the full disk (an error: applied or not, never twice).
    check_writers(path, phase_a, phase_b, phase_c)
    # Whether the small writes of phase B still fit in pages SQLite had already allocated depends
    # on the run; each writer either finished or stopped with a StorageError (checked above). The
    # 16 kB writes of this process are what surely meets the full disk (asserted above).


def _try_create(db, name):
    try:
        return db.jobs.create(name=name)
    except balsamdb.StorageError:
        return None


# -- 6. a corrupt address file ------------------------------------------------------------------------------

def _names_server(path, epoch):
    try:
        info = json.loads((path / "dbwriter_address").read_text())
    except ValueError:
        return False
    return info.get("state") == "running" and info.get("epoch") == epoch


def test_corrupt_address_file_is_rewritten_and_clients_keep_working(served_dbdir, tmp_path, backend):
    """Garbage is written into P/dbwriter_address three times while 16 writers run.  Clients keep
    working meanwhile (SQLite: direct writes; PostgreSQL: spool), the watchdog rewrites the file
    for the same server (same epoch) within ~1 s, and the writers go back to the server."""
    path = served_dbdir
    info = address(path)
    total = 16 * 100
    writers = Writers(path, tmp_path, nprocs=16, count=100, env=_env(WRITER_REGISTERS=REGISTER_LABELS))
    rewrites = []
    try:
        writers.start()
        for round_ in range(3):
            wait_for(lambda: writers.acked_so_far() >= (round_ + 1) * 300, 120,
                     f"{(round_ + 1) * 300} acknowledged writes")
            (path / "dbwriter_address").write_text("garbage {\"state\": ")
            corrupted = time.monotonic()
            wait_for(lambda: _names_server(path, info["epoch"]), 10, "the watchdog to rewrite the address file")
            rewrites.append(time.monotonic() - corrupted)
        results = writers.wait(timeout=120)
        wait_for(lambda: _drained(path, total), DRAIN_DEADLINE, "the spool to drain")
    finally:
        writers.kill()
    _check_writers_exit_0(results)
    routes = _routes(results)
    rows = _rows_check(path, writers.acked_ids())
    fallback = "direct" if backend == "sqlite3" else "spool"
    _summary("corrupt-address-file", backend, rows, routes["spool"], max(rewrites),
             f"rewritten after {', '.join(f'{r:.2f}' for r in rewrites)} s; routes {dict(routes)}")
    _assert_exactly_once(rows, expected=total)
    check_writers(path, writers, registers=REGISTER_LABELS)
    assert max(rewrites) < REWRITE_BOUND, f"the watchdog took {rewrites} s to rewrite the address file"
    assert set(routes) <= {"server", fallback}, f"unexpected routes {routes}"
    assert routes[fallback] > 0, f"no client noticed the corrupt file (expected {fallback} writes): {routes}"
    assert routes["server"] > 0
    assert _alive(info["server"]) and address(path)["server"]["pid"] == info["server"]["pid"], \
        "a corrupt address file must not restart the server"
    with balsamdb.connect(path) as db:
        db.jobs.create(name="after-corruption", make_workdir=False)
        assert db.last_route == "server"


# -- 7. a read-only file system ------------------------------------------------------------------------------

class _ReadOnly:
    """Make the file system of a DB directory read-only under its running server.

    ``mount -o remount,ro`` is tried first; Linux refuses it (EBUSY) while any file on the mount
    is open for writing, and a running SQLite server always holds its database that way.  What
    the server then meets when a file system turns read-only under it (ext4 ``errors=remount-ro``,
    an NFS export made read-only) is EROFS from the writes on files it holds open; that is
    injected into the server process with ``strace --inject`` (the clients are not touched), and
    detaching strace stands for ``mount -o remount,rw``.  (The injected failure gives the same
    answer as a real emergency read-only ext4 mount: checked by hand.)"""

    def __init__(self, mount_point, server_pid):
        self.mount_point = mount_point
        self.pid = server_pid
        self.tracer = None
        self.how = None
        self.remount_error = None

    def _traced(self):
        with open(f"/proc/{self.pid}/status") as status:
            return "TracerPid:\t0\n" not in status.read()

    def __enter__(self):
        remount = _mount("-o", "remount,ro", self.mount_point)
        if remount.returncode == 0:
            self.how = "mount -o remount,ro"
            return self
        self.remount_error = remount.stderr.strip().splitlines()[0] if remount.stderr.strip() else "refused"
        if shutil.which("strace") is None:
            skip_or_fail(f"mount -o remount,ro was refused ({self.remount_error}) and strace is not installed "
                        "to make the file system read-only under the server")
        # The database's writes and syncs only: SQLite writes with pwrite64; write() is left
        # alone, since the logs and ZeroMQ's internal signalling (an eventfd) use it.
        syscalls = "pwrite64,pwritev,pwritev2,fsync,fdatasync,ftruncate,fallocate"
        self.tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(self.pid), "-e", f"trace={syscalls}",
             "-e", f"inject={syscalls}:error=EROFS"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: self.tracer.poll() is not None or self._traced(), 10, "strace to attach")
        except BaseException:
            self.__exit__()
            raise
        if self.tracer.poll() is not None:
            skip_or_fail(f"strace cannot attach to the server: {self.tracer.stderr.read().strip()}")
        self.how = "EROFS injected into the server's writes (remount refused: " + self.remount_error + ")"
        return self

    def __exit__(self, *exc):
        if self.tracer is None:
            _mount("-o", "remount,rw", self.mount_point)
            return
        if self.tracer.poll() is None:
            self.tracer.send_signal(signal.SIGINT)  # strace detaches cleanly on SIGINT
            try:
                self.tracer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.tracer.kill()
                self.tracer.wait()
        if psutil.pid_exists(self.pid):
            wait_for(lambda: not psutil.pid_exists(self.pid) or not self._traced(), 10, "strace to detach")
        self.tracer = None


@pytest.mark.unprivileged  # root, or an ordinary user with scripts/test_unprivileged.sh
def test_read_only_file_system_under_the_running_server(tmpfs):
    """SQLite only: the file system that turns read-only is the one holding the database file.
    (A PostgreSQL database lives on its cluster's disk; that cluster's own failure is not this case.)
    Writes fail with StorageError and nothing is half-applied, the server keeps running (ping and
    status answer), and once the file system is writable again writes resume through it."""
    path = tmpfs / "db"
    DBDirectory(path).init()
    info = _start_server(path)
    pid = info["server"]["pid"]
    try:
        with balsamdb.connect(path) as db:
            before = [db.jobs.create(name=f"before-{i}", make_workdir=False).id for i in range(20)]
            refused, messages = [], set()
            with _ReadOnly(tmpfs, pid) as read_only:
                for i in range(5):
                    job_id = str(uuid.uuid4())
                    with pytest.raises(balsamdb.StorageError) as caught:
                        db.jobs.create(name=f"ro-{i}", id=job_id, make_workdir=False)
                    refused.append(job_id)
                    messages.add(str(caught.value))
                assert db.ping()["pid"] == pid
                assert db.server_status()["pid"] == pid
                assert _alive(info["server"]) and _alive(info["watchdog"])
                how = read_only.how
            writable = time.monotonic()
            first = wait_for(lambda: _try_create_no_workdir(db, "after-0"), 10,
                             "a write to succeed once the file system is writable again")
            recover = time.monotonic() - writable
            assert db.last_route == "server" and db.ping()["pid"] == pid
            after = [first.id] + [db.jobs.create(name=f"after-{i}", id=refused[i - 1], make_workdir=False).id
                                  for i in range(1, 6)]
        assert address(path)["epoch"] == info["epoch"], "the server must not have been restarted"
        rows = _rows_check(path, before + after)
        integrity = _sql(path, "pragma integrity_check")
    finally:
        _stop_server(path)
    _summary("read-only-fs", "sqlite3", rows, 0, recover,
             f"{how}; {len(refused)} writes refused with StorageError {sorted(messages)}")
    _assert_exactly_once(rows, expected=26)
    assert integrity == [("ok",)], integrity


def _try_create_no_workdir(db, name):
    try:
        return db.jobs.create(name=name, make_workdir=False)
    except balsamdb.StorageError:
        return None


@pytest.mark.unprivileged  # root, or an ordinary user with scripts/test_unprivileged.sh
@pytest.mark.parametrize("fault", ["disk-full", "read-only"])
def test_storage_error_names_the_cause(tmpfs, fault):
    """SQLite only (see the two tests above): the StorageError of a refused write says why."""
    path = tmpfs / "db"
    DBDirectory(path).init()
    info = _start_server(path)
    try:
        with balsamdb.connect(path) as db:
            db.jobs.create(name="before", make_workdir=False)
            if fault == "disk-full":
                filler = tmpfs / "filler"
                _fill(filler)
                error = None
                for i in range(40):
                    try:
                        db.jobs.create(name=f"full-{i}", data={"blob": "x" * 16000}, make_workdir=False)
                    except balsamdb.StorageError as exc:
                        error = exc
                        break
                os.unlink(filler)
                assert error is not None, "the full file system never refused a write"
                expected = r"(?i)full|no space"
            else:
                with _ReadOnly(tmpfs, info["server"]["pid"]):
                    with pytest.raises(balsamdb.StorageError) as caught:
                        db.jobs.create(name="refused", make_workdir=False)
                error = caught.value
                expected = r"(?i)read-?only"
        print(f"\n{fault}: {type(error).__name__}: {error}", flush=True)
        assert re.search(expected, str(error)), str(error)
    finally:
        _stop_server(path)


@pytest.mark.unprivileged  # root, or an ordinary user with scripts/test_unprivileged.sh
def test_read_only_db_directory_create_raises_storage_error(tmpfs):
    """SQLite only (direct mode needs the file).  With no server holding files open, Linux allows a
    real read-only remount: a create then fails with a StorageError naming read-only, nothing is
    written, and after remount rw it succeeds."""
    path = tmpfs / "db"
    DBDirectory(path).init()
    problems = []
    with balsamdb.connect(path) as db:
        db.jobs.create(name="before")
        db.close()  # no file of the mount open for writing: the remount is allowed
        remounted = _mount("-o", "remount,ro", tmpfs)
        assert remounted.returncode == 0, remounted.stderr
        try:
            for make_workdir in (False, True):
                case = f"make_workdir={make_workdir}"
                try:
                    db.jobs.create(name="refused", make_workdir=make_workdir)
                    problems.append(f"{case}: the write succeeded on a read-only file system")
                except balsamdb.StorageError as exc:
                    if not re.search(r"(?i)read-?only", str(exc)):
                        problems.append(f"{case}: StorageError({str(exc)!r}) does not say read-only")
                except Exception as exc:  # noqa: BLE001 - what escapes is the finding
                    problems.append(f"{case}: {type(exc).__name__}({exc}) is not a StorageError")
                db.close()
        finally:
            db.close()
            _mount("-o", "remount,rw", tmpfs)
        db.jobs.create(name="after")
        assert sorted(j.name for j in db.jobs.filter()) == ["after", "before"]
    print("\nread-only DB directory, no server: " + "; ".join(problems or ["StorageError naming read-only"]),
          flush=True)
    assert not problems, problems
