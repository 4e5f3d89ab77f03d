"""Bytes the record of applied requests adds per write, against the bytes of the rows written.

    python scripts/bench_applied_record.py [--jobs 1000] [--data-bytes 2048] [--whole] [--json out.json]

The workload of issue 12, item 8: ``--jobs`` jobs, each with a ``data`` field of about
``--data-bytes`` bytes (random hexadecimal text: it does not compress), created and then
moved through three states (RUNNING, RUN_DONE, JOB_FINISHED): four writes per job, through
the public API (``balsamdb.connect``) on a fresh SQLite DB directory, no server (the server
stores the same record; ``sqlite_synchronous=NORMAL`` only to make the run short).

Counted, per write (logical bytes: each text value's UTF-8 length, 8 per number):

- ``rows``: the rows each write wrote: the job row (an update rewrites it whole), its
  state-history row and tag rows;
- ``record``: what the record of applied requests holds for it: request id, time and
  stored answer, plus the job fields kept in ``job_answer_base`` (none in this workload:
  nothing modifies or deletes the jobs);
- ``whole answers``: what storing each answer whole, as before, would hold.

It also prints the tables' sizes on disk (SQLite's ``dbstat``, pages with their
indexes): the record's tables against the job tables.  ``--whole`` stores every answer
whole, as balsamdb did before compact answers, to compare the sizes on disk.  Nothing here is a test: it
measures (tests/test_applied_record.py checks the 25% target on a small run).
"""

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

STATES = ("RUNNING", "RUN_DONE", "JOB_FINISHED")


def _size(value):
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return len(value.encode())
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _row_bytes(job):
    return sum(_size(v) for v in job.values())


def _history_bytes(job_id, from_state, to_state, message):
    return 8 + len(job_id) + 8 + _size(from_state) + _size(to_state) + _size(message)


def run(path, jobs, data_bytes):
    import balsamdb

    rows = whole = writes = 0
    with balsamdb.connect(path, sqlite_synchronous="NORMAL", require_server=False) as db:
        for i in range(jobs):
            data = {"values": os.urandom(max(data_bytes // 2 - 16, 1)).hex(), "step": i}
            job = db.call("job_create", job={"name": f"bench-{i}", "data": data, "tags": ["bench"]})
            steps = [(None, job)]
            for state in STATES:
                steps.append((steps[-1][1]["state"], db.call("job_update_state", job_id=job["id"], state=state)))
            for from_state, answer in steps:
                writes += 1
                rows += _row_bytes(answer) + _history_bytes(answer["id"], from_state, answer["state"],
                                                            "created" if from_state is None else "")
                rows += sum(8 + len(answer["id"]) + _size(t) for t in answer["tags"]) if from_state is None else 0
                whole += 32 + 8 + _size(json.dumps({"ok": True, "result": answer}, separators=(",", ":"),
                                                   ensure_ascii=False))
        assert db.last_route == "direct", db.last_route
    con = sqlite3.connect(str(Path(path) / "db.sqlite3"))
    try:
        record = con.execute("SELECT COALESCE(SUM(LENGTH(CAST(request_id AS BLOB)) + 8 + "
                             "LENGTH(CAST(response AS BLOB))), 0) FROM applied_request").fetchone()[0]
        record += con.execute("SELECT COALESCE(SUM(LENGTH(digest) + 8 + LENGTH(CAST(fields AS BLOB))), 0) "
                              "FROM job_answer_base").fetchone()[0]
        pages = dict(con.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name").fetchall())
    finally:
        con.close()

    def on_disk(*tables):
        return sum(size for name, size in pages.items()
                   if any(name == t or name.startswith(f"sqlite_autoindex_{t}_") or name.startswith(f"{t}_")
                          for t in tables))

    return {
        "jobs": jobs, "data_bytes": data_bytes, "writes": writes,
        "rows_per_write": rows / writes, "record_per_write": record / writes, "whole_per_write": whole / writes,
        "record_share": record / rows, "whole_share": whole / rows,
        "disk_record_tables": on_disk("applied_request", "job_answer_base"),
        "disk_job_tables": on_disk("job", "job_state_change", "job_tag"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--data-bytes", type=int, default=2048)
    parser.add_argument("--whole", action="store_true", help="store whole answers (the earlier format)")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.whole:
        from balsamdb import answers

        answers.pack = lambda op, answer, text: text  # what the applier stored before
    if args.jobs < 1 or args.data_bytes < 0:
        parser.error("--jobs must be at least 1 and --data-bytes at least 0")
    from balsamdb.dbdir import DBDirectory

    base = Path(tempfile.mkdtemp(prefix="bench-applied-"))
    try:
        DBDirectory(base / "db").init()
        result = run(base / "db", args.jobs, args.data_bytes)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"{result['jobs']} jobs with {result['data_bytes']} bytes of data, created and moved through "
          f"{len(STATES)} states: {result['writes']} writes")
    print(f"rows written per write:            {result['rows_per_write']:8.0f} bytes")
    print(f"record per write, as stored:       {result['record_per_write']:8.0f} bytes "
          f"({100 * result['record_share']:.1f}% of the rows)")
    print(f"record per write, whole answers:   {result['whole_per_write']:8.0f} bytes "
          f"({100 * result['whole_share']:.1f}% of the rows)")
    print(f"on disk: record tables {result['disk_record_tables'] / 1e6:.2f} MB, "
          f"job tables {result['disk_job_tables'] / 1e6:.2f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
