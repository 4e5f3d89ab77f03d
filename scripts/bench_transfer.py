"""`db copy` and `db export` of a DB directory, with the CPU they cost (issue 22, item 7).

    python scripts/bench_transfer.py SOURCE_DB_DIR [--workdir DIR] [--what copy,export]

The source's server is started (it keeps running during both, as a campaign's would).  `db copy`
goes into a new DB directory (its server started by the copy, as a user's would be); `db export`
into a file.  The copy takes the fast path (rows copied in SQL by the destination's server,
``"path": "sqlite-bulk"``) where it applies, as here: a DB directory into a new one.  Prints one JSON object: wall seconds, items (or lines) per wall second, and CPU
seconds (user + system) of the CLI process, of the destination's write server and of the
source's processes, so that a loaded machine's waiting can be told from the work.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

DB = [sys.executable, "-m", "balsamdb.cli"]


def _cpu(pids):
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _server_pids(path):
    path = str(Path(path).resolve())
    return [p.pid for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] and path in p.info["cmdline"]
            and "balsamdb.server" in " ".join(p.info["cmdline"])]


def _run(argv, cwd):
    began = time.perf_counter()
    child = psutil.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cpu = 0.0
    while child.poll() is None:
        try:
            times = child.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    out, err = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({child.returncode}): {err.strip()[-500:]}")
    # the last reading before it exited (wait4's rusage is not exposed by Popen)
    return time.perf_counter() - began, cpu, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--what", default="export,copy")
    args = parser.parse_args(argv)
    source = str(Path(args.source).resolve())
    work = Path(tempfile.mkdtemp(prefix="bdb-transfer-", dir=args.workdir))
    out = {"load_before": os.getloadavg()}
    subprocess.run(DB + ["dbserver", "--path", source], check=True, capture_output=True)
    started = [source]
    source_pids = _server_pids(source)
    try:
        if "export" in args.what:
            source_cpu = _cpu(source_pids)
            wall, cpu, _ = _run(DB + ["export", str(work / "export.jsonl"), "--path", source], work)
            lines = sum(1 for _ in open(work / "export.jsonl", "rb"))
            out["export"] = {"lines": lines, "wall_s": round(wall, 2), "lines_per_s": round(lines / wall),
                             "cli_cpu_s": round(cpu, 2), "lines_per_cli_cpu_s": round(lines / max(cpu, 1e-9)),
                             "source_server_cpu_s": round(_cpu(source_pids) - source_cpu, 2)}
            (work / "export.jsonl").unlink()
        if "copy" in args.what:
            destination = work / "copy"
            subprocess.run(DB + ["init", str(destination)], check=True, capture_output=True)
            subprocess.run(DB + ["dbserver", "--path", str(destination)], check=True, capture_output=True)
            started.append(destination)
            dest_pids = _server_pids(destination)
            source_cpu, dest_cpu = _cpu(source_pids), _cpu(dest_pids)
            wall, cpu, text = _run(DB + ["copy", source, str(destination), "--json"], work)
            report = json.loads(text)
            items = sum(v["added"] + v["updated"] + v["unchanged"] for v in report["first_pass"].values())
            out["copy"] = {"path": report.get("path", "items"), "items": items, "wall_s": round(wall, 2),
                           "first_pass_s": report.get("first_pass_seconds"), "passes": report["passes"],
                           "longest_chunk_s": report.get("bulk_longest_chunk_seconds"),
                           "items_per_s": round(items / wall),
                           "reported_items_per_s": report["items_per_second"],
                           "verified": report["verification"]["verified"], "cli_cpu_s": round(cpu, 2),
                           "destination_server_cpu_s": round(_cpu(dest_pids) - dest_cpu, 2),
                           "source_server_cpu_s": round(_cpu(source_pids) - source_cpu, 2)}
            out["copy"]["items_per_cpu_s"] = round(items / (out["copy"]["cli_cpu_s"]
                                                            + out["copy"]["destination_server_cpu_s"]))
    finally:
        # every server it started is stopped, also after a failed copy (before its directory goes)
        for path in started:
            subprocess.run(DB + ["dbserver", "--stop", "--path", str(path)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
