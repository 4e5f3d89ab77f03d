"""Concurrent writers, side by side: the daemon against what a user would otherwise do.

    db bench [--writers 8,32,64,256] [--writes 100] [--json results.json] [--plot writers.png]
    python scripts/bench_writers.py ...      (the same, from a source checkout)

For each number N of writer processes, in one run and interleaved, it measures
N real processes each making ``--writes`` small writes:

- ``daemon``: balsamdb's public API with ``db dbserver`` running (SQLite, durable commits);
- ``sqlite-wal``: sqlite3 with WAL and a 60 s timeout, one commit per write;
- ``sqlite-default``: sqlite3 as Python gives it (rollback journal, 5 s timeout);
- ``filelock``: an exclusive file lock around each write;
- ``ceiling``: the same balsamdb clients against a server that answers at once;
- ``daemon-pg``: the daemon on a PostgreSQL cluster of its own;
- ``daemon-curve``: the daemon on SQLite with its traffic encrypted (ZeroMQ CURVE);
- ``postgres``: psycopg2 straight into PostgreSQL, one connection per process
  (past ``max_connections``, 100 by default, connections are refused: counted
  as errors and lost writes).

It prints writes/s, p50/p99/max latency, errors, lost and duplicated writes
(counted by reading the rows back), and each mode's throughput relative to the
daemon.  Nothing here is a test: it measures.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from balsamdb.dbdir import DBDirectory
from balsamdb.private_files import private_replacement

from balsamdb.server.dbinit import init_db_directory

MODES = ("daemon", "sqlite-wal", "sqlite-default", "filelock", "ceiling", "daemon-pg", "postgres", "daemon-curve",
         "direct", "daemon-workdir", "direct-workdir")
# direct: the public API with no server running, as a job script without a server writes (SQLite, WAL,
# BEGIN IMMEDIATE with retries); the -workdir modes also make each job's working directory, as job scripts do
WORKER_MODE = {"daemon": "balsamdb", "ceiling": "balsamdb", "daemon-pg": "balsamdb", "daemon-curve": "balsamdb",
               "direct": "balsamdb", "daemon-workdir": "balsamdb-workdir", "direct-workdir": "balsamdb-workdir"}
SQLITE_DAEMONS = ("daemon", "daemon-curve", "direct", "daemon-workdir", "direct-workdir")  # rows in db.sqlite3


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit(f"benchmark: timed out waiting for {what}")


def cpu_seconds(pid):
    """CPU time (user + system) of process ``pid`` so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def peak_rss_mb(pid):
    """The peak resident memory of process ``pid`` (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_mode(mode, nwriters, nwrites, workdir):
    path = workdir / f"{mode}-{nwriters}"
    init_db_directory(path, "postgres" if mode in ("daemon-pg", "postgres") else "sqlite3")
    if mode.startswith("sqlite") or mode == "filelock":
        con = sqlite3.connect(str(path / "bench.sqlite3"))
        from balsamdb.bench.worker import TABLE

        con.execute(TABLE)
        if mode == "sqlite-wal":
            con.execute("pragma journal_mode=wal")
        con.commit()
        con.close()
    server = None
    cluster = None
    stats = {}
    server_pid = None
    if mode in ("daemon", "daemon-pg", "daemon-curve", "daemon-workdir"):
        from balsamdb.server.supervisor import control

        control.start(DBDirectory(path), encrypt=mode == "daemon-curve")
        server_pid = (DBDirectory(path).read_address().get("server") or {}).get("pid")
    elif mode == "ceiling":
        server = subprocess.Popen([sys.executable, "-m", "balsamdb.bench.ceiling", str(path)],
                                  stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
        server_pid = server.pid
    elif mode == "postgres":
        import psycopg2

        from balsamdb.bench.worker import TABLE
        from balsamdb.server.postgres import cluster as postgres

        cluster = path
        port = postgres.start_cluster(path)
        url = f"postgresql://balsamdb:{(path / 'postgres.password').read_text().strip()}@127.0.0.1:{port}/balsamdb"
        (path / "bench_url").write_text(url)
        con = psycopg2.connect(url)
        con.cursor().execute(TABLE)
        con.commit()
        con.close()
    go = path / "go"
    outs = [path / f"out-{i}.json" for i in range(nwriters)]
    procs = [subprocess.Popen([sys.executable, "-m", "balsamdb.bench.worker", WORKER_MODE.get(mode, mode),
                               str(path), str(nwrites), str(go), str(out)]) for out in outs]
    server_cpu = peak_mb = None
    try:
        wait_for(lambda: all(Path(str(o) + ".ready").exists() for o in outs), 300, "writers to be ready")
        cpu_before = cpu_seconds(server_pid)
        go.write_text("go")
        for proc in procs:
            proc.wait(timeout=900)
        if server_pid is not None:
            server_cpu = cpu_seconds(server_pid) - cpu_before
            peak_mb = peak_rss_mb(server_pid)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if mode in ("daemon", "daemon-pg", "daemon-curve", "daemon-workdir"):
            from balsamdb.server.supervisor import control

            stats = control.status(DBDirectory(path)).get("server_status", {})
            control.stop(DBDirectory(path))
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    results = [json.loads(o.read_text()) for o in outs if o.exists()]
    latencies = [x for r in results for x in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    acked = [i for r in results for i in r["ids"]]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    if mode == "ceiling":
        stored = acked  # nothing is stored: the ceiling only answers
    else:
        from balsamdb.settings import load_settings

        if mode == "postgres":
            import psycopg2

            con = psycopg2.connect((path / "bench_url").read_text())
            cur = con.cursor()
            cur.execute("select id from bench_job")
            stored = [row[0] for row in cur.fetchall()]
            con.close()
            from balsamdb.server.postgres import cluster as postgres

            postgres.stop_cluster(cluster)
        elif mode == "daemon-pg":
            from balsamdb.server.postgres import cluster as postgres

            port = postgres.start_cluster(path)
            database = DBDirectory(path).open_database(load_settings(), postgres_port=port)
            stored = [row[0] for row in database.execute_sql("select id from job").fetchall()]
            database.close()
            postgres.stop_cluster(path)
        else:
            table = "job" if mode in SQLITE_DAEMONS else "bench_job"
            file = "db.sqlite3" if mode in SQLITE_DAEMONS else "bench.sqlite3"
            con = sqlite3.connect(str(path / file))
            stored = [row[0] for row in con.execute(f"select id from {table}")]
            con.close()
    stored_set = set(stored)
    out = {
        "mode": mode, "writers": nwriters, "writes_per_writer": nwrites,
        "acknowledged": len(acked), "errors": len(errors), "error_sample": errors[:3],
        "lost": len(set(acked) - stored_set) + len(errors),
        "duplicated": len(stored) - len(stored_set),
        "seconds": span, "writes_per_s": len(acked) / span if span > 0 else 0.0,
        "p50_ms": 1000 * percentile(latencies, 0.50), "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies) if latencies else float("nan"),
        "mean_batch": stats.get("mean_batch") if mode.startswith("daemon") else None,
        "server_cpu_s": server_cpu, "server_cpu_us_per_write": 1e6 * server_cpu / len(acked)
        if server_cpu is not None and acked else None, "server_peak_mb": peak_mb,
        "client_cpu_us_per_write": 1e6 * sum(r["cpu"]["user"] + r["cpu"]["sys"] for r in results) / len(acked)
        if acked else None,
    }
    shutil.rmtree(path, ignore_errors=True)
    return out


def run_bulk(count, workdir):
    """One client creating ``count`` jobs with ``bulk_create`` through the daemon, against one
    process inserting the same rows (jobs and their first history entries) straight into
    SQLite in batches of 1000, one commit per batch.  Returns two result rows."""
    import uuid as uuidlib

    import balsamdb
    from balsamdb.operations import JOB_KEYS, clean_job
    from balsamdb.server.supervisor import control

    specs = [{"name": f"bulk-{i}", "workflow": "bulk", "application": "python sim.py", "args": f"--n {i}",
              "data": {"i": i, "seed": 12345}, "id": str(uuidlib.uuid4())} for i in range(count)]
    rows = []
    path = workdir / "bulk-daemon"
    DBDirectory(path).init("sqlite3")
    control.start(DBDirectory(path))
    try:
        with balsamdb.connect(path) as db:
            started = time.perf_counter()
            db.jobs.bulk_create(specs, make_workdir=False)
            seconds = time.perf_counter() - started
            stored = db.jobs.count(workflow="bulk")
    finally:
        control.stop(DBDirectory(path))
    rows.append({"mode": "bulk_create (daemon)", "jobs": count, "stored": stored, "seconds": seconds,
                 "jobs_per_s": count / seconds})
    # The same rows, straight into the same schema, as a careful single writer would.
    path = workdir / "bulk-sqlite"
    DBDirectory(path).init("sqlite3")
    con = sqlite3.connect(str(path / "db.sqlite3"))
    con.execute("pragma journal_mode=wal")
    columns = ", ".join(JOB_KEYS)
    insert_job = f"insert into job ({columns}) values ({', '.join('?' for _ in JOB_KEYS)})"
    insert_history = ("insert into job_state_change (job_key, time, from_state, to_state, message) "
                      "values ((select key from job where id = ?),?,?,?,?)")
    started = time.perf_counter()
    for start in range(0, count, 1000):
        when = time.time()
        batch = [clean_job(spec, when) for spec in specs[start:start + 1000]]
        con.executemany(insert_job, [tuple(json.dumps(r[k]) if isinstance(r[k], (dict, list)) else r[k]
                                           for k in JOB_KEYS) for r in batch])
        con.executemany(insert_history, [(r["id"], when, None, r["state"], "created") for r in batch])
        con.commit()
    seconds = time.perf_counter() - started
    stored = con.execute("select count(*) from job").fetchone()[0]
    con.close()
    rows.append({"mode": "sqlite, batches of 1000", "jobs": count, "stored": stored, "seconds": seconds,
                 "jobs_per_s": count / seconds})
    for path in (workdir / "bulk-daemon", workdir / "bulk-sqlite"):
        shutil.rmtree(path, ignore_errors=True)
    return rows


def print_bulk(rows):
    print(f"\n{'bulk':<26} {'jobs':>7} {'stored':>7} {'seconds':>8} {'jobs/s':>8} {'daemon/x':>8}")
    daemon = rows[0]["jobs_per_s"]
    for r in rows:
        print(f"{r['mode']:<26} {r['jobs']:>7} {r['stored']:>7} {r['seconds']:>8.2f} {r['jobs_per_s']:>8.0f} "
              f"{daemon / r['jobs_per_s']:>8.2f}")


def print_table(rows):
    by_n = {}
    for row in rows:
        by_n.setdefault(row["writers"], []).append(row)
    header = f"{'writers':>7} {'mode':<15} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} " \
             f"{'errors':>6} {'lost':>5} {'dup':>4} {'daemon/x':>8} {'srv us/w':>8} {'cli us/w':>8} {'srv MB':>6}"
    print(header)
    print("-" * len(header))
    for n, group in sorted(by_n.items()):
        daemon = next((r["writes_per_s"] for r in group if r["mode"] == "daemon"), None)
        for r in group:
            ratio = f"{daemon / r['writes_per_s']:.2f}" if daemon and r["writes_per_s"] else "-"
            print(f"{n:>7} {r['mode']:<15} {r['writes_per_s']:>9.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['max_ms']:>8.0f} {r['errors']:>6} {r['lost']:>5} {r['duplicated']:>4} {ratio:>8} "
                  f"{_num(r.get('server_cpu_us_per_write')):>8} {_num(r.get('client_cpu_us_per_write')):>8} "
                  f"{_num(r.get('server_peak_mb')):>6}")


def _num(value):
    return "-" if value is None else f"{value:.0f}"


def plot(rows, path):
    """Writes/s and p99 latency against the number of writers, one line per mode (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode in MODES:
        points = sorted((r["writers"], r["writes_per_s"], r["p99_ms"]) for r in rows if r["mode"] == mode)
        if not points:
            continue
        xs = [p[0] for p in points]
        style = {"linewidth": 2.5} if mode == "daemon" else {"linestyle": "--" if mode == "ceiling" else "-"}
        left.plot(xs, [p[1] for p in points], marker="o", label=mode, **style)
        right.plot(xs, [p[2] for p in points], marker="o", label=mode, **style)
    left.set(xlabel="writer processes", ylabel="acknowledged writes / s", title="Throughput")
    right.set(xlabel="writer processes", ylabel="p99 latency (ms)", title="p99 latency", yscale="log")
    counts = sorted({r["writers"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts)                       # the writer counts that ran: 8, 32, 64, 256
        ax.set_xticklabels([str(c) for c in counts])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    # the legend sits below the plots, where it covers no data
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    with private_replacement(path) as out:
        fig.savefig(out, dpi=110, format=Path(path).suffix.lstrip(".") or "png")


def positive_ints(text, option):
    """``"8,32,64"`` -> ``[8, 32, 64]``; ValueError with a one-line message otherwise."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated whole numbers, e.g. 8,32,64") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} {text!r}: every number must be at least 1, e.g. 8,32,64")
    return values


def known_modes(text):
    modes = [m.strip() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise ValueError(f"--modes: unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(MODES)}")
    return modes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="8,32,64", help="comma-separated writer counts")
    parser.add_argument("--writes", type=int, default=100, help="writes per writer process")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; medians are shown")
    parser.add_argument("--json", dest="json_out", help="write all results to this file")
    parser.add_argument("--plot", help="draw throughput and p99 latency to this PNG (needs matplotlib)")
    parser.add_argument("--bulk", type=int, default=0, metavar="N",
                        help="also time one client creating N jobs with bulk_create against batched SQLite inserts")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="balsamdb-bench-", dir="/tmp"))
    os.chmod(workdir, 0o711)  # a PostgreSQL cluster under root runs as another user, who must pass through
    rows = []
    bulk = []
    try:
        counts = positive_ints(args.writers, "--writers")
        modes = known_modes(args.modes)
        if args.writes < 1 or args.repeat < 1 or args.bulk < 0:
            raise ValueError("--writes and --repeat must be at least 1, --bulk at least 0")
    except ValueError as exc:
        parser.error(str(exc))
    from tqdm import tqdm

    bar = tqdm(total=len(counts) * args.repeat * len(modes), unit=" runs", disable=not sys.stderr.isatty(),
               dynamic_ncols=True)
    try:
        for n in counts:
            runs = {}
            for rep in range(args.repeat):
                for mode in modes:
                    label = f"{n} writers, {mode}, repetition {rep + 1}/{args.repeat}"
                    if bar.disable:
                        print(f"[bench] {label} ...", file=sys.stderr, flush=True)
                    bar.set_description(label)
                    result = run_mode(mode, n, args.writes, workdir)
                    runs.setdefault(mode, []).append(result)
                    bar.set_postfix_str(f"last: {result['writes_per_s']:.0f} writes/s")
                    bar.update(1)
            for mode, results in runs.items():
                median = sorted(results, key=lambda r: r["writes_per_s"])[len(results) // 2]
                median = dict(median, repetitions=[r["writes_per_s"] for r in results])
                rows.append(median)
        bar.close()
        if args.bulk:
            print(f"[bench] bulk: {args.bulk} jobs ...", file=sys.stderr, flush=True)
            bulk = run_bulk(args.bulk, workdir)
    finally:
        bar.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    if bulk:
        print_bulk(bulk)
    if args.json_out:  # before the plot: a plot that fails never loses the run
        with private_replacement(args.json_out) as out:  # never through a file or symlink someone else made
            out.write(json.dumps({"machine": {"cpus": os.cpu_count()}, "rows": rows, "bulk": bulk}, indent=1).encode())
    if args.plot:
        try:
            plot(rows, args.plot)
        except ImportError:
            print("[bench] no plot: install balsamdb[bench] for --plot (matplotlib)", file=sys.stderr)


if __name__ == "__main__":
    main()
