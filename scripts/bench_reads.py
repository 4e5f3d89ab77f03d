"""A writer's latency with and without a full `db ls` running, and what the listing costs.

    python scripts/bench_reads.py --jobs 100000 [--path DIR] [--keep] [--local-reads 0|1]

Builds a SQLite DB directory of ``--jobs`` jobs (``jobs.bulk_create`` through the server), then:

1. a writer process creates jobs one by one for ``--quiet`` seconds: its p50/p99/max latency;
2. the same writer while a full ``db ls`` (stdout to /dev/null) runs: its p50/p99/max, and the
   listing's wall time and peak RSS, with the peak RSS of the write server and the read service
   (sampled every 0.1 s).

It uses only the CLI and the public API, so the same script measures an older release
(``/path/to/other/.venv/bin/python scripts/bench_reads.py``).  Prints one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

WRITER = r"""
import json, sys, time, os
import balsamdb
db = balsamdb.connect(sys.argv[1], require_server=True)
stop, until = sys.argv[2], float(sys.argv[3])
lat = []
print("ready", flush=True)
while not os.path.exists(stop) and time.time() < until:
    t = time.perf_counter()
    db.jobs.create(name="w", workflow="writer", make_workdir=False)
    lat.append(time.perf_counter() - t)
print(json.dumps(lat))
"""


def percentiles(values):
    values = sorted(values)
    if not values:
        return {"n": 0}
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"n": len(values), "p50_ms": round(pick(0.5) * 1000, 2), "p99_ms": round(pick(0.99) * 1000, 2),
            "max_ms": round(values[-1] * 1000, 1)}


def run_writer(path, seconds, stop_file, env):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(stop_file), str(time.time() + seconds)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def server_processes(path):
    info = json.loads((Path(path) / "dbwriter_address").read_text())
    out = {}
    for key in ("server", "reader"):
        if info.get(key):
            try:
                out[key] = psutil.Process(info[key]["pid"])
            except psutil.Error:
                pass
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100000)
    parser.add_argument("--path")
    parser.add_argument("--quiet", type=float, default=10.0, help="seconds of writes with no read")
    parser.add_argument("--local-reads", default="1", help="BALSAMDB_LOCAL_READS for db ls (0: the read service)")
    parser.add_argument("--keep", action="store_true", help="keep the DB directory (and its server running)")
    args = parser.parse_args()
    path = Path(args.path or tempfile.mkdtemp(prefix="bench-reads-")) / "db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAMDB_")}
    db_cmd = [sys.executable, "-m", "balsamdb.cli"]
    result = {"jobs": args.jobs, "local_reads": args.local_reads}
    if not path.exists():
        subprocess.run(db_cmd + ["init", str(path)], check=True, env=env, capture_output=True)
    subprocess.run(db_cmd + ["dbserver", "--path", str(path)], check=True, env=env, capture_output=True)
    try:
        import balsamdb

        db = balsamdb.connect(path, require_server=True)
        have = db.jobs.count(workflow="bulk")
        t = time.perf_counter()
        for start in range(have, args.jobs, 20000):
            db.jobs.bulk_create([{"name": f"bulk-{i:07d}", "workflow": "bulk"}
                                 for i in range(start, min(args.jobs, start + 20000))], make_workdir=False)
        result["build_s"] = round(time.perf_counter() - t, 1)
        stop = path.parent / "stop-writer"
        stop.unlink(missing_ok=True)
        quiet = run_writer(path, args.quiet, stop, env)
        result["writer_alone"] = percentiles(json.loads(quiet.communicate()[0]))

        writer = run_writer(path, 3600, stop, env)
        ls_env = dict(env, BALSAMDB_LOCAL_READS=args.local_reads)
        servers = server_processes(path)
        peak = {name: 0 for name in ["ls"] + list(servers)}
        t = time.perf_counter()
        with open(os.devnull, "w") as devnull:
            ls = subprocess.Popen(db_cmd + ["ls", "--path", str(path)], stdout=devnull, stderr=subprocess.PIPE,
                                  env=ls_env)
            procs = dict(servers, ls=psutil.Process(ls.pid))
            while ls.poll() is None:
                for name, proc in procs.items():
                    try:
                        peak[name] = max(peak[name], proc.memory_info().rss)
                    except psutil.Error:
                        pass
                time.sleep(0.1)  # the sampling period
        result["ls_s"] = round(time.perf_counter() - t, 2)
        result["ls_exit"] = ls.returncode
        result["ls_stderr"] = ls.stderr.read().decode()[-300:]
        stop.touch()
        result["writer_during_ls"] = percentiles(json.loads(writer.communicate()[0]))
        result["peak_rss_mb"] = {name: round(value / 2 ** 20) for name, value in peak.items()}
        try:
            status = db.server_status()
            result["write_server_reads_refused"] = status.get("reads_refused")
            result["write_server_requests"] = status.get("requests")
        except Exception as exc:  # an older release's server may still be busy with the read
            result["write_server_status"] = f"{type(exc).__name__}: {exc}"
    finally:
        if not args.keep:
            subprocess.run(db_cmd + ["dbserver", "--stop", "--path", str(path)], env=env, capture_output=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
