"""The main job, end to end, on the default SQLite DB directory.

    python3 scripts/dev.py demo  [--writers 32] [--jobs 50] [--path DIR]

1. `db init` the DB directory (default: default_db/ of this checkout);
2. `db dbserver` starts the write server;
3. N job processes start at the same moment; each creates jobs, moves them
   through RUNNING to JOB_FINISHED, and saves a Sumatra-style provenance record;
4. every acknowledged write is looked up: present, exactly once;
5. `db dbserver --status` shows the group commits, and `db dbserver --stop` stops.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def job_process(path, workflow, count, go_file, out_file):
    """What one job process does (run in a child process)."""
    import balsamdb

    db, count = balsamdb.connect(path), int(count)
    while not os.path.exists(go_file):
        time.sleep(0.005)
    acked = []
    for i in range(count):
        job = db.jobs.create(name=f"sim-{os.getpid()}-{i}", workflow=workflow,
                             application="python sim.py", args=f"--seed {i}", tags=["demo"])
        db.jobs.update_state(job.id, "RUNNING", message="started")
        db.jobs.update_state(job.id, "RUN_DONE")
        db.jobs.update_state(job.id, "JOB_FINISHED", message="exit 0")
        acked.append(job.id)
    label = f"{workflow}-{os.getpid()}"
    db.records.save(workflow, {
        "label": label, "timestamp": time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime()),
        "reason": "demo sweep", "main_file": "sim.py", "version": "abc123", "duration": 1.5,
        "parameters": {"content": f"seeds = {count}", "type": "SimpleParameterSet"},
        "tags": ["demo"], "outcome": "ok", "user": "demo", "output_data": [], "platforms": [],
    })
    Path(out_file).write_text(json.dumps({"jobs": acked, "record": label, "route": db.last_route}))


def db(*args):
    cmd = [sys.executable, "-m", "balsamdb.cli", *map(str, args)]
    print("$ db " + " ".join(map(str, args)), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout.rstrip())
    if proc.returncode:
        print(proc.stderr.rstrip(), file=sys.stderr)
        sys.exit(f"demo: `db {' '.join(map(str, args))}` failed")
    return proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per writer process")
    parser.add_argument("--path", default=str(ROOT / "default_db"))
    args = parser.parse_args()
    workflow = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:4]}"
    db("init", args.path)
    db("dbserver", "--path", args.path)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            outs = [Path(tmp) / f"out-{i}.json" for i in range(args.writers)]
            code = "import sys; sys.path.insert(0, sys.argv[1]); from demo import job_process; job_process(*sys.argv[2:7])"
            procs = [subprocess.Popen([sys.executable, "-c", code, str(ROOT / "scripts"), args.path, workflow,
                                       str(args.jobs), str(go), str(out)]) for out in outs]
            print(f"\n{args.writers} job processes x {args.jobs} jobs (create, RUNNING, RUN_DONE, JOB_FINISHED) "
                  f"+ 1 record each, all at once ...", flush=True)
            started = time.monotonic()
            go.write_text("go")
            codes = [p.wait(timeout=1800) for p in procs]
            elapsed = time.monotonic() - started
            results = [json.loads(o.read_text()) for o in outs if o.exists()]
        writes = sum(len(r["jobs"]) * 4 + 1 for r in results)
        print(f"done in {elapsed:.1f} s: {writes} writes, {writes / elapsed:.0f} writes/s; "
              f"process exit codes: {sorted(set(codes))}\n")
        import balsamdb

        store = balsamdb.connect(args.path)
        acked = [j for r in results for j in r["jobs"]]
        stored = store.jobs.filter(workflow=workflow)
        ids = [j.id for j in stored]
        finished = store.jobs.count(workflow=workflow, state="JOB_FINISHED")
        records = store.records.labels(workflow) if workflow in [p["name"] for p in store.projects.list()] else []
        missing = set(acked) - set(ids)
        print(f"acknowledged jobs: {len(acked)}   stored: {len(ids)}   distinct: {len(set(ids))}   "
              f"missing: {len(missing)}   JOB_FINISHED: {finished}")
        print(f"records in project {workflow}: {len(records)} of {len(results)}")
        history = store.jobs.history(acked[0]) if acked else []
        print("state history of one job: " + " -> ".join(h["to_state"] for h in history))
        ok = (not any(codes) and len(acked) == args.writers * args.jobs and not missing
              and len(ids) == len(set(ids)) == len(acked) and finished == len(acked)
              and len(records) == args.writers)
        print()
        db("dbserver", "--status", "--path", args.path)
    finally:
        print()
        db("dbserver", "--stop", "--path", args.path)
    print("\nEVERY WRITE LANDED EXACTLY ONCE" if ok else "\nSOME WRITES ARE MISSING OR DUPLICATED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
