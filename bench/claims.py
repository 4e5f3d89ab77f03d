"""Claims of launchers: the cost of ``job_acquire`` in a big store, the claim rate of many
launchers, and the cost of the server's look for lost runs.

    python -m balsamdb.bench.claims [--jobs 100000] [--launchers 16] [--claim-jobs 20000]
                                    [--per-acquire 10] [--url postgresql://...]

On a fresh DB directory in /tmp (SQLite, or PostgreSQL at ``--url``) with its write server:

1. ``--jobs`` READY jobs are made (bulk_create through the server);
2. one client acquires 100 jobs 50 times: p50/p90/max milliseconds per call (the round trip
   through the write server included), and the query plan of the pick (SQLite);
3. ``--launchers`` processes acquire ``--per-acquire`` jobs at a time from a workflow of
   ``--claim-jobs`` jobs until none is left: claims/s, and every job claimed exactly once
   (each launcher logs its claims; the database's owners are compared with the logs);
4. the server stopped, the look for lost runs (:func:`balsamdb.operations.leases.find_lost_runs`)
   is timed on the database directly with every claimed job RUNNING under a live lease: its
   cost does not grow with the number of RUNNING jobs (an index range read, no scan).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path


def _db_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "balsamdb.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        if check:
            raise SystemExit(f"db {' '.join(map(str, args))} failed: {proc.stderr}")
        print(f"db {' '.join(map(str, args))} failed: {proc.stderr}", file=sys.stderr)
    return proc.stdout


def launcher(path, out_file, go_file, per_acquire):
    """One launcher process: acquire until nothing is left, logging each claimed id."""
    import balsamdb

    db = balsamdb.connect(path)
    owner = f"bench-{os.getpid()}"
    while not os.path.exists(go_file):
        time.sleep(0.005)  # wait-ok: all launchers start together
    with open(out_file, "w") as out:
        while True:
            jobs = db.jobs.acquire(per_acquire, owner=owner, lease=3600, workflow="claims")
            if not jobs:
                return
            out.write("".join(f"{owner} {j.id}\n" for j in jobs))


def _fill(db, workflow, count):
    started = time.monotonic()
    for start in range(0, count, 5000):
        db.jobs.bulk_create([{"name": f"{workflow}-{i}", "workflow": workflow, "state": "READY"}
                             for i in range(start, min(count, start + 5000))], make_workdir=False)
    return time.monotonic() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="READY jobs in the store for the acquire timing")
    parser.add_argument("--launchers", type=int, default=16)
    parser.add_argument("--claim-jobs", type=int, default=20_000, help="jobs the launchers claim")
    parser.add_argument("--per-acquire", type=int, default=10)
    parser.add_argument("--url", help="an existing PostgreSQL database (empty) instead of SQLite")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--launcher", nargs=4, metavar=("PATH", "OUT", "GO", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launcher:
        path, out, go, n = args.launcher
        return launcher(path, out, go, int(n))

    import balsamdb
    from balsamdb.dbdir import DBDirectory

    result = {"jobs": args.jobs, "launchers": args.launchers, "claim_jobs": args.claim_jobs,
              "per_acquire": args.per_acquire, "backend": "postgres" if args.url else "sqlite3"}
    with tempfile.TemporaryDirectory(prefix="bench-claims-") as tmp:
        path = Path(tmp) / "db"
        DBDirectory(path).init("postgres", url=args.url) if args.url else DBDirectory(path).init()
        _db_cli("dbserver", "--path", path)
        try:
            db = balsamdb.connect(path)
            result["fill_seconds"] = round(_fill(db, "big", args.jobs), 1)
            print(f"made {args.jobs} READY jobs in {result['fill_seconds']} s", flush=True)
            times = []
            for _ in range(50):
                started = time.perf_counter()
                got = db.jobs.acquire(100, owner="bench-timing", lease=3600, workflow="big")
                times.append(1000 * (time.perf_counter() - started))
                assert len(got) == 100
            result["acquire_100_ms"] = _summary(times)
            # The floor of the same moment: the round trip of the smallest write (a renewal of one lease).
            floor = []
            for _ in range(50):
                started = time.perf_counter()
                db.jobs.renew([got[0].id], owner="bench-timing")
                floor.append(1000 * (time.perf_counter() - started))
            result["renew_1_ms"] = _summary(floor)
            print(f"acquire(100) at {args.jobs} jobs: {result['acquire_100_ms']} ms; the smallest write "
                  f"(renew 1) at the same time: {result['renew_1_ms']} ms", flush=True)

            _fill(db, "claims", args.claim_jobs)
            go = Path(tmp) / "go"
            outs = [Path(tmp) / f"claims-{i}.txt" for i in range(args.launchers)]
            procs = [subprocess.Popen([sys.executable, "-m", "balsamdb.bench.claims", "--launcher", str(path),
                                       str(out), str(go), str(args.per_acquire)]) for out in outs]
            started = time.monotonic()
            go.write_text("go")
            for proc in procs:
                proc.wait()
            seconds = time.monotonic() - started
            claims = Counter()
            owner_of = {}
            for out in outs:
                for line in out.read_text().splitlines():
                    owner, job_id = line.split()
                    claims[job_id] += 1
                    owner_of[job_id] = owner
            in_db = _owners(path)  # read directly: one answer of 20,000 jobs is not what a server is for
            result["claims_per_s"] = round(sum(claims.values()) / seconds, 1)
            result["claimed_twice"] = sum(1 for c in claims.values() if c > 1)
            result["never_claimed"] = len(set(in_db) - set(claims))
            result["owner_mismatch"] = sum(1 for i, o in owner_of.items() if in_db.get(i) != o)
            print(f"{args.launchers} launchers x {args.per_acquire} per acquire: {len(claims)} jobs in {seconds:.1f} s "
                  f"= {result['claims_per_s']} claims/s; claimed twice {result['claimed_twice']}, never "
                  f"{result['never_claimed']}, owner mismatch {result['owner_mismatch']}", flush=True)
            db.close()
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            _db_cli("dbserver", "--stop", "--path", path, check=False)
        result.update(_lost_run_look(path))
        print(f"look for lost runs with {result['running']} RUNNING jobs under a live lease: "
              f"{result['lost_run_look_ms']} ms (median of 200)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _summary(times):
    times = sorted(times)
    return {"p50": round(statistics.median(times), 2), "p90": round(times[int(0.9 * len(times))], 2),
            "max": round(times[-1], 2)}


def _owners(path):
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        return dict(database.execute_sql("SELECT id, owner FROM job WHERE workflow = 'claims'").fetchall())
    finally:
        database.close()


def _lost_run_look(path):
    from balsamdb.dbdir import DBDirectory
    from balsamdb.models import MODELS, Job
    from balsamdb.operations.leases import find_lost_runs
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    database.bind(MODELS)
    try:
        with database.atomic():
            running = Job.update(state="RUNNING").where(Job.owner.is_null(False)).execute()
        times = []
        for _ in range(200):
            with database.atomic():
                started = time.perf_counter()
                counts = find_lost_runs(database)
                times.append(1000 * (time.perf_counter() - started))
            assert not any(counts.values())
        return {"running": running, "lost_run_look_ms": round(statistics.median(times), 3)}
    finally:
        database.close()


if __name__ == "__main__":
    main()
