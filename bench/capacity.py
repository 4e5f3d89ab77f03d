"""Server capacity: how many durable writes per second one write server takes, and its CPU per write.

On a cluster the job processes run on many nodes and the server alone on a login node, so what bounds a
campaign is the server.  This benchmark takes the clients out of the picture: one cheap load-generator
process keeps C pre-signed ``job_create`` requests in flight over DEALER sockets for D seconds, against

- ``sqlite``: ``db dbserver`` on a fresh SQLite DB directory (durable: synchronous=FULL),
- ``postgres``: ``db dbserver`` on a fresh PostgreSQL DB directory (needs initdb and pg_ctl),
- ``null``: the messaging ceiling (:mod:`balsamdb.bench.ceiling`), a ROUTER that checks each
  request like the write server (signature, JSON, time stamp) and answers a job-shaped result at once,
- ``sqlite-serial``, ``postgres-serial``: the same servers with the batch thread off
  (``BALSAMDB_BATCH_THREAD=0``: the loop applies and commits each batch itself),

interleaved in one run, medians of ``--repeat`` rounds.  It reports writes/s, the server's CPU per write,
the mean batch and commit time (from the server's own counters), on SQLite the WAL flusher's commits per
flush and mean flush time, the server's peak memory, the ratio to the null server, and reads the database
back: every answered create must be there once.

    db bench --capacity [--inflight 16,256,1024] [--seconds 5] [--repeat 3] [--targets sqlite,postgres,null]
                        [--prefill N]

``--prefill N``: each database first holds N jobs (workflow ``prefill``, made through the server with
``bulk_create``, not timed), to measure the capacity on a grown database.
    python -m balsamdb.bench.capacity --help
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from balsamdb.bench.writers import cpu_seconds, peak_rss_mb
from balsamdb.private_files import private_replacement

TARGETS = ("sqlite", "postgres", "null", "sqlite-serial", "postgres-serial")
#: The ``-serial`` targets: the same server with its batch thread off (``BALSAMDB_BATCH_THREAD=0``:
#: the loop applies and commits each batch itself), to compare in one run.
SERIAL = "-serial"
PRESIGN_MAX = 250_000        # requests signed before the clock starts (the rest are signed on the fly)
DRAIN_DEADLINE = 60.0        # s to wait for the answers still in flight when the window closes
START_DEADLINE = 120.0       # s for a server to answer after it starts


def _job_request(secret, i):
    from balsamdb import protocol
    from balsamdb.request import new_request_id

    job_id = str(uuid.uuid4())
    message = {"id": new_request_id(), "op": "job_create", "ts": time.time(),
               "params": {"job": {"id": job_id, "name": f"cap-{i}", "workflow": "capacity",
                                  "application": "python sim.py", "args": f"--n {i}"}}}
    return protocol.encode(secret, message)[0]


def generate(address, secret, inflight, seconds):
    """The load generator (runs in its own process): keep ``inflight`` requests outstanding for
    ``seconds``, then collect the answers still due.  Returns counts and the window's length."""
    import zmq

    from balsamdb import protocol

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 65536):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    presigned = [_job_request(secret, i) for i in range(min(PRESIGN_MAX, max(4 * inflight, int(40_000 * seconds))))]
    next_index = 0

    def next_frame():
        nonlocal next_index
        next_index += 1
        if next_index <= len(presigned):
            return presigned[next_index - 1]
        return _job_request(secret, next_index)

    ctx = zmq.Context()
    nsockets = max(1, min(inflight, 64))
    sockets = []
    poller = zmq.Poller()
    for _ in range(nsockets):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(address)
        poller.register(sock, zmq.POLLIN)
        sockets.append(sock)
    outstanding = 0
    ok = errors = 0
    start = time.monotonic()
    for i in range(inflight):
        sockets[i % nsockets].send_multipart([b"", next_frame()])
        outstanding += 1
    window_end = start + seconds
    answered_in_window = 0
    elapsed = None
    while outstanding:
        now = time.monotonic()
        if elapsed is None and now >= window_end:
            elapsed, answered_in_window = now - start, ok + errors
        if elapsed is not None and now > window_end + DRAIN_DEADLINE:
            break
        for sock, _event in poller.poll(100):
            while True:
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                outstanding -= 1
                answer = protocol.decode(secret, frames[-1:])
                if answer.get("ok"):
                    ok += 1
                else:
                    errors += 1
                if elapsed is None:
                    sock.send_multipart([b"", next_frame()])
                    outstanding += 1
    if elapsed is None:
        elapsed, answered_in_window = time.monotonic() - start, ok + errors
    for sock in sockets:
        sock.close(linger=0)
    ctx.term()
    return {"ok": ok, "errors": errors, "unanswered": outstanding, "answered_in_window": answered_in_window,
            "window_seconds": elapsed}


def _server_counters(path):
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.supervisor import control

    stats = control.status(DBDirectory(path)).get("server_status", {}) or {}
    batches = stats.get("batches", 0)
    return {"batches": batches, "batched": stats.get("mean_batch", 0.0) * batches,
            "commit_s": stats.get("mean_commit_ms", 0.0) * batches / 1000,
            # The WAL flusher (SQLite under FULL): COMMITs flushed, flushes and their time.
            "flushed_commits": stats.get("flushed_commits", 0), "flushes": stats.get("flushes", 0),
            "flush_s": stats.get("flush_seconds", 0.0)}


PREFILL_CHUNK = 5000


def prefill(path, jobs):
    """Put ``jobs`` jobs into the DB directory ``path`` through its running server."""
    import balsamdb

    with balsamdb.connect(path, require_server=True) as db:
        for start in range(0, jobs, PREFILL_CHUNK):
            count = min(PREFILL_CHUNK, jobs - start)
            db.jobs.bulk_create([{"name": f"pre-{start + i}", "workflow": "prefill", "application": "python sim.py",
                                  "args": f"--n {start + i}"} for i in range(count)], make_workdir=False)


def run_one(target, inflight, seconds, workdir, prefill_jobs=0):
    """One measurement: a fresh DB directory and server for ``target`` (holding ``prefill_jobs``
    jobs first), one generator process."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.supervisor import control
    from balsamdb.server.dbinit import init_db_directory

    path = Path(workdir) / f"{target}-{inflight}-{uuid.uuid4().hex[:6]}"
    init_db_directory(path, "postgres" if target.startswith("postgres") else "sqlite3")
    dbdir = DBDirectory(path)
    ceiling = None
    try:
        if target == "null":
            ceiling = subprocess.Popen([sys.executable, "-m", "balsamdb.bench.ceiling", str(path)],
                                       stdout=subprocess.PIPE, text=True)
            if not ceiling.stdout.readline():
                raise RuntimeError("the null server did not start")
            server_pid = ceiling.pid
        else:
            serial = os.environ.get("BALSAMDB_BATCH_THREAD")
            os.environ["BALSAMDB_BATCH_THREAD"] = "0" if target.endswith(SERIAL) else (serial or "1")
            try:
                control.start(dbdir)  # the watchdog and its server take the environment
            finally:
                if serial is None:
                    del os.environ["BALSAMDB_BATCH_THREAD"]
                else:
                    os.environ["BALSAMDB_BATCH_THREAD"] = serial
            if prefill_jobs:
                started = time.monotonic()
                prefill(path, prefill_jobs)
                print(f"  {target}: {prefill_jobs:,} jobs put in first, in {time.monotonic() - started:.0f} s",
                      file=sys.stderr, flush=True)
            server_pid = (dbdir.read_address().get("server") or {}).get("pid")
        info = dbdir.read_address()
        before = None if target == "null" else _server_counters(path)
        cpu_before = cpu_seconds(server_pid)
        gen = subprocess.run([sys.executable, "-m", "balsamdb.bench.capacity", "--generate",
                              info["address"], str(path), str(inflight), str(seconds)],
                             capture_output=True, text=True, timeout=seconds + DRAIN_DEADLINE + 300)
        if gen.returncode != 0:
            raise RuntimeError(f"the load generator failed: {gen.stderr[-2000:]}")
        counts = json.loads(gen.stdout.strip().splitlines()[-1])
        cpu = cpu_seconds(server_pid) - cpu_before
        result = {"target": target, "inflight": inflight, **counts,
                  "writes_per_s": counts["answered_in_window"] / counts["window_seconds"],
                  "server_cpu_us_per_write": 1e6 * cpu / max(1, counts["ok"] + counts["errors"]),
                  "peak_rss_mb": peak_rss_mb(server_pid)}
        if before is not None:
            after = _server_counters(path)
            batches = after["batches"] - before["batches"]
            result["mean_batch"] = (after["batched"] - before["batched"]) / batches if batches else 0.0
            result["mean_commit_ms"] = 1000 * (after["commit_s"] - before["commit_s"]) / batches if batches else 0.0
            flushes = after["flushes"] - before["flushes"]
            result["commits_per_flush"] = (after["flushed_commits"] - before["flushed_commits"]) / flushes \
                if flushes else None
            result["mean_flush_ms"] = 1000 * (after["flush_s"] - before["flush_s"]) / flushes if flushes else None
            import balsamdb

            with balsamdb.connect(path) as db:
                stored = db.jobs.count(workflow="capacity")
                result["prefilled"] = db.jobs.count(workflow="prefill")
            result["stored"] = stored
            result["lost"] = max(0, counts["ok"] - stored)
            result["extra"] = max(0, stored - counts["ok"])  # unanswered at the end may still have landed
        return result
    finally:
        if ceiling is not None:
            ceiling.terminate()
            try:
                ceiling.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ceiling.kill()
        elif dbdir.read_address().get("state") != "stopped":
            control.stop(dbdir)


def _median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def run(inflights, seconds, repeat, targets, json_out=None, workdir=None, prefill_jobs=0):
    own_tmp = None
    if workdir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="balsamdb-capacity-")
        workdir = own_tmp.name
        os.chmod(workdir, 0o711)  # a PostgreSQL cluster under root runs as another user, who must pass through
    results = []
    try:
        for round_ in range(repeat):
            for inflight in inflights:
                for target in targets:  # interleaved: a drift of the machine touches every target alike
                    row = run_one(target, inflight, seconds, workdir, prefill_jobs)
                    row["round"] = round_
                    results.append(row)
                    print(f"  round {round_ + 1}/{repeat}  C={inflight:<5} {target:<8} "
                          f"{row['writes_per_s']:>9,.0f} writes/s  {row['server_cpu_us_per_write']:6.1f} us/write",
                          file=sys.stderr, flush=True)
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()
    summary = []
    for inflight in inflights:
        null_rows = [r for r in results if r["target"] == "null" and r["inflight"] == inflight]
        null_rate = _median(null_rows, "writes_per_s")
        for target in targets:
            rows = [r for r in results if r["target"] == target and r["inflight"] == inflight]
            rate = _median(rows, "writes_per_s")
            summary.append({
                "target": target, "inflight": inflight, "writes_per_s": rate,
                "server_cpu_us_per_write": _median(rows, "server_cpu_us_per_write"),
                "mean_batch": _median(rows, "mean_batch"), "mean_commit_ms": _median(rows, "mean_commit_ms"),
                "commits_per_flush": _median(rows, "commits_per_flush"),
                "mean_flush_ms": _median(rows, "mean_flush_ms"),
                "peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in rows),
                "vs_null": rate / null_rate if null_rate and rate else None,
                "lost": sum(r.get("lost", 0) for r in rows), "errors": sum(r["errors"] for r in rows),
            })
    if json_out:
        with private_replacement(json_out) as out:  # never through a file or symlink someone else made
            out.write(json.dumps({"summary": summary, "runs": results, "seconds": seconds,
                                  "repeat": repeat, "cpus": os.cpu_count(), "prefill": prefill_jobs},
                                 indent=1).encode())
    return summary


def format_table(summary):
    head = f"{'server':<15} {'C':>5} {'writes/s':>10} {'vs null':>8} {'us/write':>9} {'batch':>7} " \
           f"{'commit ms':>10} {'c/flush':>8} {'flush ms':>9} {'peak MB':>8} {'lost':>5} {'errors':>6}"
    lines = [head, "-" * len(head)]
    for r in summary:
        def num(value, fmt):
            return format(value, fmt) if value is not None else "-"
        lines.append(f"{r['target']:<15} {r['inflight']:>5} {num(r['writes_per_s'], ',.0f'):>10} "
                     f"{num(r['vs_null'], '.2f'):>8} {num(r['server_cpu_us_per_write'], '.1f'):>9} "
                     f"{num(r['mean_batch'], '.1f'):>7} {num(r['mean_commit_ms'], '.2f'):>10} "
                     f"{num(r.get('commits_per_flush'), '.2f'):>8} {num(r.get('mean_flush_ms'), '.2f'):>9} "
                     f"{num(r['peak_rss_mb'], '.0f'):>8} {r['lost']:>5} {r['errors']:>6}")
    return "\n".join(lines)


def positive_ints(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{text!r} is not a comma-separated list of whole numbers, e.g. 16,256,1024") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{text!r}: give one or more numbers of at least 1, e.g. 16,256,1024")
    return values


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--generate"]:
        address, path, inflight, seconds = argv[1], argv[2], int(argv[3]), float(argv[4])
        from balsamdb.dbdir import DBDirectory

        print(json.dumps(generate(address, DBDirectory(path).secret(), inflight, seconds)), flush=True)
        return
    parser = argparse.ArgumentParser(prog="db bench --capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inflight", default="16,256,1024")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--prefill", type=int, default=0, help="jobs each database holds before the measurement")
    args = parser.parse_args(argv)
    if args.prefill < 0:
        parser.error("--prefill takes a number of jobs, 0 or more")
    try:
        inflights = positive_ints(args.inflight)
    except ValueError as exc:
        parser.error(str(exc))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets or any(t not in TARGETS for t in targets):
        parser.error(f"--targets takes some of {','.join(TARGETS)}")
    summary = run(inflights, args.seconds, args.repeat, targets, args.json_out, prefill_jobs=args.prefill)
    print(format_table(summary))


if __name__ == "__main__":
    main()
