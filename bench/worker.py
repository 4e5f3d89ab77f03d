"""One writer process of the benchmark (started by balsamdb.bench.writers).

    python -m balsamdb.bench.worker MODE DB_PATH COUNT GO_FILE OUT_FILE

Waits for GO_FILE, performs COUNT small writes in MODE, and writes a JSON line
to OUT_FILE: start, end, per-write latencies, errors, and the ids it was told
were written.

Modes: ``balsamdb`` (the public API; through the server when one runs, which
includes the ceiling server, else directly), ``balsamdb-workdir`` (the same, also making each job's
working directory), ``sqlite-wal`` (sqlite3, WAL, 60 s timeout, one
commit per write), ``sqlite-default`` (sqlite3 as Python gives it: rollback
journal, 5 s timeout), ``filelock`` (an exclusive fcntl lock around each write
to a rollback-journal database), ``postgres`` (psycopg2, one connection per
process, one commit per write; DB_PATH/bench_url names the server).
"""

import fcntl
import json
import os
import sqlite3
import sys
import time
import uuid

TABLE = """create table if not exists bench_job (
    id text primary key, name text, workflow text, application text, args text,
    state text, data text, created_at real)"""


def row(i):
    return (str(uuid.uuid4()), f"w{os.getpid()}-{i}", "bench", "python sim.py", f"--n {i}",
            "CREATED", json.dumps({"i": i, "seed": 12345}), time.time())


def make_writer(mode, path):
    if mode in ("balsamdb", "balsamdb-workdir"):
        import balsamdb

        db = balsamdb.connect(path)
        workdir = mode == "balsamdb-workdir"

        def write(i):
            job_id = str(uuid.uuid4())
            db.jobs.create(name=f"w{os.getpid()}-{i}", workflow="bench", application="python sim.py",
                           args=f"--n {i}", data={"i": i, "seed": 12345}, id=job_id,
                           make_workdir=workdir)  # off unless asked: no alternative makes a directory
            return job_id

        return write
    if mode == "postgres":
        return postgres_writer(path)
    sqlite_file = os.path.join(path, "bench.sqlite3")
    timeout = 5.0 if mode == "sqlite-default" else 60.0
    con = sqlite3.connect(sqlite_file, timeout=timeout)
    if mode == "sqlite-wal":
        con.execute("pragma journal_mode=wal")
    lock = open(os.path.join(path, "bench.lock"), "a") if mode == "filelock" else None

    def write(i):
        values = row(i)
        if lock is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            con.execute("insert into bench_job values (?,?,?,?,?,?,?,?)", values)
            con.commit()
        finally:
            if lock is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return values[0]

    return write


def postgres_writer(path):
    import psycopg2

    url = open(os.path.join(path, "bench_url")).read().strip()
    try:
        con = psycopg2.connect(url)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1]

        def refused(i):
            raise RuntimeError(f"cannot connect: {reason}")

        return refused

    def write(i):
        values = row(i)
        with con.cursor() as cur:
            cur.execute("insert into bench_job values (%s,%s,%s,%s,%s,%s,%s,%s)", values)
        con.commit()
        return values[0]

    return write


def main():
    mode, path, count, go_file, out_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    write = make_writer(mode, path)
    open(out_file + ".ready", "w").close()
    deadline = time.monotonic() + 300
    while not os.path.exists(go_file):
        if time.monotonic() > deadline:
            sys.exit("bench worker: the go file never appeared")
        time.sleep(0.002)
    latencies, errors, ids = [], [], []
    import resource

    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    for i in range(count):
        t0 = time.perf_counter()
        try:
            ids.append(write(i))
        except Exception as exc:  # counted and reported: a lost write
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - t0)
    end = time.time()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = {"user": usage1.ru_utime - usage0.ru_utime, "sys": usage1.ru_stime - usage0.ru_stime}
    with open(out_file, "w") as out:
        json.dump({"start": start, "end": end, "latencies": latencies, "errors": errors, "ids": ids, "cpu": cpu}, out)


if __name__ == "__main__":
    main()
