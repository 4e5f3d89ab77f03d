"""The fast loader of the scale benchmarks: jobs (with their state history and tags) and Sumatra
records inserted straight through peewee, in chunks of 500 rows a transaction, on SQLite or
PostgreSQL.  The load is a benchmark's set-up, not its subject (``db bench --scale`` measures the
bulk rate through the server apart); at 1M jobs and 100k records it took 280 s on SQLite.

    from balsamdb.bench.scale_load import load
    load(path, records=10_000, jobs=100_000)                        # a fresh DB directory
    load(path, records=0, jobs=90_000, first_job=10_000, ...)       # grow it: jobs 10,000..99,999

What it makes (the data of ``scripts/bench_web.py`` and ``db bench --scale``):

- records ``run-NNNNN`` (about 2 KB each: parameters, tags, dependencies) in the project ``P``,
  one a minute from ``start``, each with its version 1 (as a save through the API keeps it);
- jobs ``sim-NNNNNN`` in 10 workflows ``wf-0`` .. ``wf-9``, created ``stride`` seconds apart from
  ``campaign``, each with its state history (85% finished, 5% failed, 10% still running: about four
  history rows a job); one job in three has the tag ``gpu``.

The database's own triggers keep what they keep (the state counts, the records' search index), so
the loaded rows are read exactly as rows written through the API are.
"""

import json
import random
import time
import uuid
import zlib

WORKFLOWS = 10
CHUNK = 500
PROJECT = "P"
TAGGED_EVERY = 3  # one job in three has the tag "gpu"


def record_row(i, start, rng=random):
    """The row of record ``i`` (saved ``start + 60 i``) and its tags."""
    doc = {
        "label": f"run-{i:05d}", "timestamp": time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(start + i * 60)),
        "reason": f"sweep point {i} of the convergence study", "duration": round(rng.uniform(1, 5000), 2),
        "outcome": rng.choice(["converged", "diverged", "converged after restart", ""]),
        "executable": {"path": "/usr/bin/python3", "version": "3.11.7", "name": "Python", "options": ""},
        "repository": {"url": "/home/ada/proj", "type": "GitRepository", "upstream": None},
        "main_file": rng.choice(["main.py", "solver.py", "post.py"]),
        "version": uuid.uuid4().hex[:12], "diff": "",
        "parameters": {"content": "\n".join(f"p{k} = {rng.random():.6f}" for k in range(20)),
                       "type": "SimpleParameterSet"},
        "input_data": [{"path": "mesh.h5", "digest": uuid.uuid4().hex, "creation": ""}],
        "script_arguments": "params.txt", "launch_mode": {"type": "SerialLaunchMode", "parameters": "{}"},
        "datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "input_datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "stdout_stderr": "iteration ...\n" * 40,
        "output_data": [{"path": f"out-{i}.h5", "digest": uuid.uuid4().hex, "creation": ""}],
        "tags": rng.sample(["mesh-a", "mesh-b", "gpu", "cpu", "paper", "bad"], 2),
        "user": rng.choice(["ada", "bob", "eve"]),
        "dependencies": [{"name": "numpy", "version": "1.26.4"}, {"name": "scipy", "version": "1.12.0"}],
        "platforms": [{"system_name": "Linux", "machine": "x86_64"}], "repeats": None,
    }
    row = {"project": PROJECT, "label": doc["label"], "timestamp": doc["timestamp"], "sort_time": start + i * 60,
           "reason": doc["reason"], "outcome": doc["outcome"], "main_file": doc["main_file"],
           "version": doc["version"], "user": doc["user"], "duration": doc["duration"],
           "document": json.dumps(doc, separators=(",", ":")), "created_at": start, "updated_at": start}
    return row, doc["tags"]


def job_rows(first, last, campaign, stride, rng=random):
    """The rows of jobs ``first`` .. ``last - 1``: (jobs, their state history, their tags)."""
    jobs, history, tags = [], [], []
    for i in range(first, last):
        job_id = str(uuid.uuid4())
        created = campaign + i * stride
        fate = rng.random()
        path = ["CREATED", "RUNNING"] + (["RUN_DONE", "JOB_FINISHED"] if fate < 0.85 else
                                         ["RUN_ERROR", "FAILED"] if fate < 0.9 else [])
        t = created
        for k, state in enumerate(path):
            history.append({"job": job_id, "time": t, "from_state": path[k - 1] if k else None,
                            "to_state": state, "message": ""})
            t += rng.uniform(1, 120)
        gpu = i % TAGGED_EVERY == 0
        jobs.append({"id": job_id, "name": f"sim-{i:06d}", "workflow": f"wf-{i % WORKFLOWS}",
                     "state": path[-1], "working_directory": f"data/wf/sim-{i}",
                     "tags": ["gpu"] if gpu else [], "created_at": created,
                     "updated_at": history[-1]["time"], "environ": {}, "parents": [], "data": {}})
        if gpu:
            tags.append({"job": job_id, "tag": "gpu", "created_at": created})
    return jobs, history, tags


def load(path, records, jobs, first_record=0, first_job=0, rng=None, campaign=None, stride=None,
         record_start=None, postgres_port=None, progress=None):
    """Add records ``first_record`` .. ``first_record + records - 1`` and jobs ``first_job`` ..
    ``first_job + jobs - 1`` to the DB directory at ``path`` (SQLite, or PostgreSQL with its cluster
    running on ``postgres_port``; a server may run meanwhile).  ``campaign``/``stride``: the first
    job's creation time and the seconds between two jobs (default: the jobs spread over the last
    three hours); ``record_start``: the first record's time (default a week ago).  ``progress(n)``
    is called after each chunk with the rows added in it.  Ends with ANALYZE."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.models import MODELS, Job, JobStateChange, JobTag, Project, Record, RecordTag, RecordVersion
    from balsamdb.schema_scale import is_postgres
    from balsamdb.settings import load_settings

    rng = rng or random.Random()
    now = time.time()
    record_start = now - 7 * 86400 if record_start is None else record_start
    campaign = now - 3 * 3600 if campaign is None else campaign
    stride = (3 * 3600 / max(1, first_job + jobs)) if stride is None else stride
    progress = progress or (lambda n: None)
    database = DBDirectory(path).open_database(load_settings(), busy_timeout=60, postgres_port=postgres_port)
    database.connect()
    if is_postgres(database):
        database.execute_sql("SET synchronous_commit TO off")
    else:
        database.pragma("synchronous", "off")
    try:
        with database.bind_ctx(MODELS):
            if records and not Project.select().where(Project.name == PROJECT).exists():
                Project.insert(name=PROJECT, description="the scale benchmark's runs", public=False,
                               created_at=record_start).execute()
            for first in range(first_record, first_record + records, CHUNK):
                with database.atomic():
                    rows = [record_row(i, record_start, rng) for i in range(first, min(first_record + records,
                                                                                     first + CHUNK))]
                    Record.insert_many([r for r, _t in rows]).execute()
                    ids = {r.label: r.id for r in Record.select(Record.id, Record.label)
                           .where((Record.project == PROJECT) & Record.label.in_([r["label"] for r, _t in rows]))}
                    RecordTag.insert_many([{"record": ids[r["label"]], "tag": t}
                                           for r, tags in rows for t in tags]).execute()
                    # version 1 of each, as a save through the API keeps it (zlib level 1, as records.compress)
                    RecordVersion.insert_many([{"record": ids[r["label"]], "number": 1, "saved_at": record_start,
                                                "saved_by": "", "document": zlib.compress(r["document"].encode(), 1)}
                                               for r, _t in rows]).execute()
                progress(len(rows))
            for first in range(first_job, first_job + jobs, CHUNK):
                last = min(first_job + jobs, first + CHUNK)
                made, history, tags = job_rows(first, last, campaign, stride, rng)
                with database.atomic():
                    Job.insert_many(made).execute()
                    # history and tags hold the job's internal key (schema 11), given by the insert
                    keys = dict(Job.select(Job.id, Job.key).where(Job.id.in_([j["id"] for j in made])).tuples())
                    JobStateChange.insert_many([dict(h, job=keys[h["job"]]) for h in history]).execute()
                    if tags:
                        JobTag.insert_many([dict(t, job=keys[t["job"]]) for t in tags]).execute()
                progress(len(made))
        database.execute_sql("ANALYZE")
    finally:
        database.close()
