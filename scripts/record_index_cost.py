"""What schema 12's sort indexes cost a record save: thread CPU per ``record_save`` (new records, then each
saved again with a new outcome and duration, then again with only a new duration, as Sumatra saves a run
more than once), applied as the write server applies them (batches of ``--batch`` in one transaction), on a
copy of a DB directory, interleaved ``--rounds`` times, in three variants:

- ``schema 10, SET all``: without the sort indexes (and with the duplicate index schema 12 drops), a save
  again setting every column (record_save before schema 12: the "before");
- ``schema 12, SET all``: the indexes, every column set;
- ``schema 12, SET changed``: the indexes, a save again setting the columns that changed (the "after").

The schema of the DB directory given is not changed.

    python scripts/record_index_cost.py --dbdir D [--records 2000] [--batch 64] [--rounds 3]

SQLite only (the copy is a file copy).  Prints the median µs per save of each variant.
"""

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from balsamdb import schema_records_sort, statements
from balsamdb.applier import apply
from balsamdb.bench.scale_load import record_row
from balsamdb.dbdir import DBDirectory
from balsamdb.models import MODELS
from balsamdb.request import Request
from balsamdb.settings import load_settings


def saves(database, docs, batch):
    """Thread CPU seconds of saving ``docs`` (record_save, ``batch`` a transaction)."""
    cpu = 0.0
    with database.bind_ctx(MODELS):
        for start in range(0, len(docs), batch):
            requests = [Request(uuid.uuid4().hex, "record_save", {"project": "P", "record": doc})
                        for doc in docs[start:start + batch]]
            began = time.thread_time()
            answers = [r.answer for r in apply(database, requests, database.atomic)]
            cpu += time.thread_time() - began
            assert all(a["ok"] for a in answers), answers[:1]
    return cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dbdir", required=True)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="record-index-cost-"))
    results = {name: {"insert": [], "update": [], "duration": []}
               for name in ("schema 10, SET all", "schema 12, SET all", "schema 12, SET changed")}
    init = statements.Statements.__init__
    rng = random.Random(1)
    try:
        for round_ in range(args.rounds):
            for variant in results:
                copy = work / "db"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(args.dbdir, copy, ignore=shutil.ignore_patterns("backup-*", "log", "*.ipc"))
                database = DBDirectory(copy).open_database(load_settings(), busy_timeout=30)
                database.connect()
                database.pragma("synchronous", "normal")
                def every_column(self, database, variant=variant):  # the kept values never equal: all SET
                    init(self, database)
                    if variant.endswith("SET all"):
                        self.find_record = self.find_record.replace(
                            ", ".join(f'"{c}"' for c in self.record_kept_columns),
                            ", ".join("NULL" for c in self.record_kept_columns))
                statements.Statements.__init__ = every_column
                if variant.startswith("schema 10"):
                    for column in schema_records_sort.COLUMNS:
                        database.execute_sql(f'DROP INDEX IF EXISTS "{schema_records_sort.index_name(column)}"')
                    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{schema_records_sort.REPLACED}" '
                                         'ON "record" ("project_id", "sort_time")')
                else:
                    schema_records_sort.migrate(database)
                first = 10_000_000 + round_ * args.records
                docs = [json.loads(record_row(first + i, time.time(), rng)[0]["document"])
                        for i in range(args.records)]
                inserted = saves(database, docs, args.batch)
                for doc in docs:
                    doc.update(outcome=rng.choice(["converged", "diverged"]) + " (again)",
                               duration=round(rng.uniform(1, 5000), 2))
                updated = saves(database, docs, args.batch)
                for doc in docs:
                    doc.update(duration=round(rng.uniform(1, 5000), 2))
                durations = saves(database, docs, args.batch)
                database.close()
                for kind, cpu in (("insert", inserted), ("update", updated), ("duration", durations)):
                    results[variant][kind].append(cpu / args.records * 1e6)
                print(f"round {round_ + 1} {variant:22} new {inserted / args.records * 1e6:6.0f} µs, "
                      f"again (outcome, duration) {updated / args.records * 1e6:6.0f} µs, "
                      f"again (duration) {durations / args.records * 1e6:6.0f} µs a record (thread CPU)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for variant, kinds in results.items():
        print(f"median {variant:22} new {statistics.median(kinds['insert']):6.0f} µs, "
              f"again (outcome, duration) {statistics.median(kinds['update']):6.0f} µs, "
              f"again (duration) {statistics.median(kinds['duration']):6.0f} µs a record")


if __name__ == "__main__":
    main()
