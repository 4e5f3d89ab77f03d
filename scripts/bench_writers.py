"""Concurrent writers, side by side: the daemon against what a user would otherwise do.

    python scripts/bench_writers.py [--writers 8,32,64] [--writes 100] [--json results.json]

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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from balsamdb.dbdir import DBDirectory  # noqa: E402

MODES = ("daemon", "sqlite-wal", "sqlite-default", "filelock", "ceiling", "daemon-pg", "postgres", "daemon-curve")
WORKER_MODE = {"daemon": "balsamdb", "ceiling": "balsamdb", "daemon-pg": "balsamdb", "daemon-curve": "balsamdb"}
SQLITE_DAEMONS = ("daemon", "daemon-curve")


def wait_for(predicate, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.01)
    raise SystemExit(f"benchmark: timed out waiting for {what}")


def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_mode(mode, nwriters, nwrites, workdir):
    path = workdir / f"{mode}-{nwriters}"
    DBDirectory(path).init("postgres" if mode in ("daemon-pg", "postgres") else "sqlite3")
    if mode.startswith("sqlite") or mode == "filelock":
        con = sqlite3.connect(str(path / "bench.sqlite3"))
        from bench_worker import TABLE

        con.execute(TABLE)
        if mode == "sqlite-wal":
            con.execute("pragma journal_mode=wal")
        con.commit()
        con.close()
    server = None
    cluster = None
    stats = {}
    if mode in ("daemon", "daemon-pg", "daemon-curve"):
        from dbserver import control

        control.start(DBDirectory(path), encrypt=mode == "daemon-curve")
    elif mode == "ceiling":
        server = subprocess.Popen([sys.executable, str(HERE / "ceiling_server.py"), str(path)],
                                  stdout=subprocess.PIPE, text=True)
        server.stdout.readline()
    elif mode == "postgres":
        import psycopg2

        from bench_worker import TABLE
        from dbserver import postgres

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
    procs = [subprocess.Popen([sys.executable, str(HERE / "bench_worker.py"), WORKER_MODE.get(mode, mode),
                               str(path), str(nwrites), str(go), str(out)]) for out in outs]
    try:
        wait_for(lambda: all(Path(str(o) + ".ready").exists() for o in outs), 300, "writers to be ready")
        go.write_text("go")
        for proc in procs:
            proc.wait(timeout=900)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if mode in ("daemon", "daemon-pg", "daemon-curve"):
            from dbserver import control

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
            from dbserver import postgres

            postgres.stop_cluster(cluster)
        elif mode == "daemon-pg":
            from dbserver import postgres

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
    }
    shutil.rmtree(path, ignore_errors=True)
    return out


def print_table(rows):
    by_n = {}
    for row in rows:
        by_n.setdefault(row["writers"], []).append(row)
    header = f"{'writers':>7} {'mode':<15} {'writes/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} " \
             f"{'errors':>6} {'lost':>5} {'dup':>4} {'daemon/x':>8}"
    print(header)
    print("-" * len(header))
    for n, group in sorted(by_n.items()):
        daemon = next((r["writes_per_s"] for r in group if r["mode"] == "daemon"), None)
        for r in group:
            ratio = f"{daemon / r['writes_per_s']:.2f}" if daemon and r["writes_per_s"] else "-"
            print(f"{n:>7} {r['mode']:<15} {r['writes_per_s']:>9.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
                  f"{r['max_ms']:>8.0f} {r['errors']:>6} {r['lost']:>5} {r['duplicated']:>4} {ratio:>8}")


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
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    left.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", default="8,32,64", help="comma-separated writer counts")
    parser.add_argument("--writes", type=int, default=100, help="writes per writer process")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; medians are shown")
    parser.add_argument("--json", dest="json_out", help="write all results to this file")
    parser.add_argument("--plot", help="draw throughput and p99 latency to this PNG (needs matplotlib)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    workdir = Path(tempfile.mkdtemp(prefix="balsamdb-bench-", dir="/tmp"))
    os.chmod(workdir, 0o711)  # a PostgreSQL cluster under root runs as another user, who must pass through
    rows = []
    try:
        for n in [int(x) for x in args.writers.split(",")]:
            runs = {}
            for rep in range(args.repeat):
                for mode in args.modes.split(","):
                    print(f"[bench] {n} writers, {mode}, repetition {rep + 1}/{args.repeat} ...",
                          file=sys.stderr, flush=True)
                    runs.setdefault(mode, []).append(run_mode(mode, n, args.writes, workdir))
            for mode, results in runs.items():
                median = sorted(results, key=lambda r: r["writes_per_s"])[len(results) // 2]
                median = dict(median, repetitions=[r["writes_per_s"] for r in results])
                rows.append(median)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(rows)
    if args.plot:
        plot(rows, args.plot)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
