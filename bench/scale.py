"""`db bench --scale`: a DB directory grown to 10k / 100k / 1M jobs (and records), and the everyday
reads and writes of issue 22 measured at each size, in one run.

    python -m balsamdb.bench.scale --sizes 10000,100000 --records 10000 [--plot FILE]

Jobs are loaded with ``jobs.bulk_create`` (chunks of 5000, the API's own) and records with
``records.save``, both in direct mode (no server: the load is the benchmark's set-up, not its
subject; the bulk rate is measured on the grown DB against a fresh one in the same run).  Each
read is the API call a user makes (``state_counts()``, ``filter(tags=[X], limit=20)``, ...), the
best of three, in milliseconds.  Sizes grow one DB directory: 100k is the 10k DB plus 90k jobs.
"""

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import balsamdb
from balsamdb.dbdir import DBDirectory

WORKFLOWS = [f"wf{i}" for i in range(10)]
TAGGED_EVERY = 50  # one job in 50 has the tag "gpu"
ROWS = [
    ("bulk_rate", "bulk_create rate on this DB / on a fresh DB (same moment)"),
    ("bulk_jobs_per_s", "bulk_create jobs/s on this DB"),
    ("state_counts", "jobs.state_counts() ms"),
    ("tag_limit20", "jobs.filter(tags=['gpu'], limit=20) ms"),
    ("id_prefix", "job by 8-character id prefix ms"),
    ("name_glob", "jobs.filter(name_like='sim-000012*') ms"),
    ("changed_since", "filter(state=PREPROCESSED, since=10m, changed=True) ms (100 changed)"),
    ("records_page1", "records page 1 (web list, 50 rows) ms"),
    ("records_page_last", "records last page ms"),
    ("records_search", "records search 'needle' ms"),
    ("db_size_mb", "database file MB"),
]


def _best(function, repeat=5):
    best = None
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        took = (time.perf_counter() - start) * 1000
        best = took if best is None else min(best, took)
    return round(best, 1)


def _job_specs(start, count):
    for i in range(start, start + count):
        yield {"name": f"sim-{i:07d}", "workflow": WORKFLOWS[i % len(WORKFLOWS)], "application": "bench",
               "args": f"--seed {i}", "tags": ["gpu"] if i % TAGGED_EVERY == 0 else ["cpu"], "state": "READY"}


def _load_jobs(db, start, count, chunk=5000):
    """Add ``count`` jobs; returns the rate of the last chunk (jobs/s)."""
    rate = 0.0
    for first in range(start, start + count, chunk):
        n = min(chunk, start + count - first)
        began = time.perf_counter()
        db.jobs.bulk_create(list(_job_specs(first, n)), make_workdir=False)
        rate = n / (time.perf_counter() - began)
    return rate


def _record(i, rng):
    words = " ".join(rng.choice(("alpha", "beta", "gamma", "delta", "kappa", "omega")) for _ in range(6))
    return {"label": f"run-{i:07d}", "timestamp": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(1.7e9 + i)),
            "reason": words + (" needle" if i % 1000 == 0 else ""), "outcome": "ok", "main_file": "main.py",
            "version": "1", "user": "bench", "tags": ["t%d" % (i % 7)], "parameters": {"content": f"x={i}"},
            "duration": 1.0}


def _load_records(db, start, count, rng):
    for i in range(start, start + count):
        db.records.save("bench", _record(i, rng))


def _reader(path):
    from balsamdb.reads import open_reader
    from balsamdb.settings import load_settings

    database = open_reader(DBDirectory(path), load_settings())
    database.connect()
    return database


def _bulk_ratio(db, fresh, first, fresh_first):
    """bulk_create's rate on ``db`` over its rate on ``fresh`` (a DB of 5k-50k jobs), each the best
    of two chunks of 5000, taken in turn so that both see the same load of the machine."""
    grown, small = [], []
    for turn in range(2):
        small.append(_load_jobs(fresh, fresh_first + 5000 * turn, 5000))
        grown.append(_load_jobs(db, first + 5000 * turn, 5000))
    return round(max(grown) / max(small), 2), max(grown), max(small)


def measure(path, db, fresh, n_jobs, n_records, rng, fresh_first):
    """One row of the table for the DB directory at ``path`` holding ``n_jobs`` jobs."""
    from balsamdb.server.http.record_pages import PER_PAGE, find_records

    out = {}
    ratio, grown, small = _bulk_ratio(db, fresh, n_jobs, fresh_first)
    out["bulk_rate"], out["bulk_jobs_per_s"], out["fresh_jobs_per_s"] = ratio, round(grown), round(small)
    out["state_counts"] = _best(lambda: db.jobs.state_counts())
    out["jobs_counted"] = sum(row["count"] for row in db.jobs.state_counts())  # read back: every job made
    out["tag_limit20"] = _best(lambda: db.jobs.filter(tags=["gpu"], limit=20))
    some = db.jobs.filter(name="sim-%07d" % rng.randrange(n_jobs))[0].id
    out["id_prefix"] = _best(lambda: db.jobs.resolve_ids([some[:8]]))
    out["name_glob"] = _best(lambda: db.jobs.filter(name_like="sim-000012*"))
    for job in db.jobs.filter(limit=100, offset=rng.randrange(max(1, n_jobs - 100))):
        db.jobs.update_state(job.id, "STAGED_IN")
        db.jobs.update_state(job.id, "PREPROCESSED")
    out["changed_since"] = _best(lambda: db.jobs.filter(state="PREPROCESSED", since="10m", changed=True))
    reader = _reader(path)
    try:
        pages = max(1, -(-n_records // PER_PAGE))
        out["records_page1"] = _best(lambda: find_records(reader, "bench", page=1))
        out["records_page_last"] = _best(lambda: find_records(reader, "bench", page=pages))
        out["records_search"] = _best(lambda: find_records(reader, "bench", search="needle", page=1))
    finally:
        reader.close()
    out["db_size_mb"] = round(sum(f.stat().st_size for f in Path(path).glob("db.sqlite3*")) / 1e6, 1)
    return out


def run(sizes, records, workdir=None, keep=False):
    """``{size: row}`` for each size in ``sizes`` (ascending), growing one DB directory."""
    base = Path(tempfile.mkdtemp(prefix="bdb-scale-", dir=workdir))
    rng = random.Random(22)
    table = {}
    try:
        fresh_path = base / "fresh"
        DBDirectory(fresh_path).init()
        path = base / "db"
        DBDirectory(path).init()
        made = loaded_records = 0
        with balsamdb.connect(path) as db, balsamdb.connect(fresh_path) as fresh:
            for size in sorted(sizes):
                began = time.perf_counter()
                _load_jobs(db, made, size - made)
                want_records = min(records, size)
                _load_records(db, loaded_records, want_records - loaded_records, rng)
                made, loaded_records = size, want_records
                load_s = time.perf_counter() - began
                row = measure(path, db, fresh, made, loaded_records, rng, 10000 * len(table))
                made += 10000
                row["load_s"] = round(load_s, 1)
                row["records"] = loaded_records
                table[size] = row
                print(json.dumps({"size": size, **row}), file=sys.stderr, flush=True)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return table


def format_table(table):
    sizes = sorted(table)
    lines = ["| measured | " + " | ".join(f"{s:,} jobs" for s in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    for key, what in ROWS + [("records", "records in the DB"), ("load_s", "load time s")]:
        lines.append(f"| {what} | " + " | ".join(str(table[s].get(key)) for s in sizes) + " |")
    return "\n".join(lines)


def plot(table, filename):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(table)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, what in ROWS:
        if key in ("bulk_rate", "bulk_jobs_per_s", "db_size_mb"):
            continue
        ax.plot(sizes, [table[s][key] for s in sizes], marker="o", label=what)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jobs in the DB")
    ax.set_ylabel("ms (best of 5)")
    ax.set_title("balsamdb everyday reads as the DB grows (db bench --scale)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(filename, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--records", type=int, default=10000)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    table = run([int(s) for s in args.sizes.split(",")], args.records, args.workdir)
    print(format_table(table))
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
