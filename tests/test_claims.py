"""Claims with leases under load: real launcher processes (tests/launcher.py) race for jobs.

Every job is claimed by exactly one launcher: no job id appears in two launchers' logs, none
is missing, and the database names as each job's owner the launcher that logged it.  Across
SIGKILLs of the write server (a client retries the same request id with the restarted server,
which answers an applied claim from its record) and with two daemons on one PostgreSQL
database (``FOR UPDATE SKIP LOCKED`` and a compare-and-set update decide).
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

import balsamdb
from balsamdb.dbdir import DBDirectory

from helpers import address, db_cli, fresh_database_url, kill_everything, wait_for

LAUNCHER = Path(__file__).resolve().parent / "launcher.py"
RUN_DEADLINE = 300  # s for every launcher to finish (2 shared cores, 16 processes)


def _make_ready_jobs(path, count):
    with balsamdb.connect(path) as db:
        return db.jobs.bulk_create([{"name": f"j{i}", "workflow": "claims", "state": "READY"}
                                    for i in range(count)], make_workdir=False)


class Launchers:
    def __init__(self, paths, workdir, nprocs, per_acquire):
        self.go = Path(workdir) / "go"
        self.outs = [Path(workdir) / f"claimed-{i}.txt" for i in range(nprocs)]
        self.procs = [subprocess.Popen([sys.executable, str(LAUNCHER), str(paths[i % len(paths)]), str(out),
                                        str(self.go), str(per_acquire)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                      for i, out in enumerate(self.outs)]

    def claimed_so_far(self):
        return sum(len(out.read_text().split()) for out in self.outs if out.exists())

    def wait(self):
        end = time.monotonic() + RUN_DEADLINE
        results = []
        for proc in self.procs:
            try:
                out, err = proc.communicate(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"launcher {proc.pid} still running after {RUN_DEADLINE} s; "
                                     f"{self.claimed_so_far()} claims so far") from None
            assert proc.returncode == 0, f"launcher {proc.pid} exited {proc.returncode}: {err[-2000:]}"
            results.append(out.strip())
        return results

    def kill(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def check_claimed_once(self, path, ids):
        """Each job in exactly one launcher's log, and the database names that launcher."""
        claims = Counter()
        logged_by = {}
        for proc, out in zip(self.procs, self.outs):
            for job_id in out.read_text().split():
                claims[job_id] += 1
                logged_by[job_id] = f"launcher-{proc.pid}"
        twice = [i for i, c in claims.items() if c > 1]
        missing = set(ids) - set(claims)
        assert not twice, f"{len(twice)} jobs claimed by two launchers, e.g. {twice[:3]}"
        assert not missing, f"{len(missing)} jobs never claimed, e.g. {sorted(missing)[:3]}"
        assert set(claims) == set(ids)
        with balsamdb.connect(path) as db:
            owners = {j.id: j.owner for j in db.jobs.filter(workflow="claims")}
        wrong = [i for i in ids if owners[i] != logged_by[i]]
        assert not wrong, f"{len(wrong)} jobs held in the database by another owner than the one that logged them"


@pytest.mark.slow
def test_16_launchers_claim_every_job_exactly_once_across_server_kills(served_dbdir, tmp_path, backend):
    """16 launcher processes claim 3,000 jobs 5 at a time while the write server is SIGKILLed
    twice (at a third and two thirds of the claims): every job is claimed exactly once."""
    count = 3000
    ids = _make_ready_jobs(served_dbdir, count)
    launchers = Launchers([served_dbdir], tmp_path, 16, 5)
    try:
        launchers.go.write_text("go")
        for mark in (count // 3, 2 * count // 3):
            wait_for(lambda: launchers.claimed_so_far() >= mark, 120, f"{mark} claims")
            before = address(served_dbdir)
            os.kill(before["server"]["pid"], signal.SIGKILL)
            wait_for(lambda: address(served_dbdir).get("epoch") not in (None, before["epoch"])
                     and address(served_dbdir).get("state") == "running", 30, "the watchdog to restart the server")
        killed_at = launchers.claimed_so_far()
        results = launchers.wait()
    finally:
        launchers.kill()
    assert killed_at < count, "the launchers finished before the second kill: the load is too small"
    launchers.check_claimed_once(served_dbdir, ids)
    print(f"\nCLAIMS [{backend}] 16 launchers, {count} jobs, 2 server kills: claimed once each; "
          f"{'; '.join(results[:3])} ...")


@pytest.mark.slow
def test_two_daemons_on_one_postgres_never_hand_a_job_to_two_owners(pg_cluster, tmp_path):
    """Two DB directories on one PostgreSQL database, each with its own write server; 16
    launchers, half on each, race for 2,000 jobs: each job is claimed exactly once."""
    url = fresh_database_url(pg_cluster)
    paths = [tmp_path / "db-a", tmp_path / "db-b"]
    for path in paths:
        DBDirectory(path).init("postgres", url=url)
    try:
        for path in paths:
            started = db_cli("dbserver", "--path", path)
            assert started.returncode == 0, started.stderr
        ids = _make_ready_jobs(paths[0], 2000)
        launchers = Launchers(paths, tmp_path, 16, 5)
        try:
            launchers.go.write_text("go")
            results = launchers.wait()
        finally:
            launchers.kill()
        launchers.check_claimed_once(paths[0], ids)
        print(f"\nCLAIMS [two daemons, one postgres] 16 launchers, 2000 jobs: claimed once each; {results[:2]}")
    finally:
        for path in paths:
            db_cli("dbserver", "--stop", "--path", path)
            kill_everything(path)
