"""What a full `db ls` costs against its bare SQL, on an existing SQLite DB directory.

    python scripts/bench_ls.py DIR [--db /other/.venv/bin/db] [-- db ls options]

1. the bare SQL of the listing: ``SELECT * FROM job ORDER BY created_at, id`` read to the end with
   the ``sqlite3`` module (CPU seconds of this process);
2. ``db ls --path DIR`` (stdout to /dev/null): its CPU seconds (``wait4``), wall time and peak RSS,
   and the ratio of its CPU to the bare SQL's;
3. when a server runs for DIR: the CPU seconds and peak RSS (every 0.05 s) of the write server and
   of the read service meanwhile, and how many reads the read service ran (set
   ``BALSAMDB_LOCAL_READS=0`` to list through it).

``--db`` runs another release's CLI (its ``db`` script) on the same directory.  The DB directory is
only read (copy a shared one first).  Prints one line per step.
"""

import argparse
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def bare_sql(path):
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    connection = sqlite3.connect(f"file:{Path(path) / 'db.sqlite3'}?mode=ro", uri=True)
    rows = sum(1 for _ in connection.execute("SELECT * FROM job ORDER BY created_at, id"))
    connection.close()
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return rows, cpu, time.monotonic() - started


def server_pids(db, path):
    """``({"server": pid, "reader": pid}, reads run by the read service)``, empty when none runs."""
    proc = subprocess.run([db, "dbserver", "--status", "--json", "--path", path], capture_output=True, text=True)
    try:
        status = json.loads(proc.stdout)
    except ValueError:
        return {}, 0
    if status.get("state") != "running":
        return {}, 0
    pids = {role: status[role]["pid"] for role in ("server", "reader") if isinstance(status.get(role), dict)}
    return pids, (status.get("reader_status") or {}).get("reads") or 0


def cpu_of(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_of(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path")
    parser.add_argument("--db", default=shutil.which("db", path=str(Path(sys.executable).parent)) or "db",
                        help="the db script to run (default: this interpreter's)")
    parser.add_argument("ls_args", nargs="*", help="more db ls options, after --")
    args = parser.parse_args()
    rows, bare_cpu, bare_wall = bare_sql(args.path)
    print(f"bare SQL: {rows} rows, CPU {bare_cpu:.2f} s, wall {bare_wall:.2f} s")
    pids, reads_before = server_pids(args.db, args.path)
    cpu_before = {role: cpu_of(pid) for role, pid in pids.items()}
    peak = {role: rss_of(pid) for role, pid in pids.items()}
    done = threading.Event()

    def sample():
        while not done.is_set():
            for role, pid in pids.items():
                peak[role] = max(peak[role], rss_of(pid))
            done.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    with open(os.devnull, "w") as null:
        proc = subprocess.Popen([args.db, "ls", "--path", args.path] + args.ls_args, stdout=null,
                                stderr=subprocess.PIPE, text=True)
        err = proc.stderr.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    done.set()
    sampler.join()
    cpu = usage.ru_utime + usage.ru_stime
    print(f"db ls {' '.join(args.ls_args)}: exit {os.waitstatus_to_exitcode(status)}, CPU {cpu:.2f} s "
          f"({cpu / bare_cpu:.1f}x the bare SQL), wall {wall:.2f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB"
          + (f"; {err.strip()[-300:]}" if err.strip() else ""))
    for role, pid in pids.items():
        print(f"{role} (pid {pid}) meanwhile: CPU {cpu_of(pid) - cpu_before[role]:.2f} s, peak RSS {peak[role]:.0f} MB")
    if pids:
        print(f"reads run by the read service: {server_pids(args.db, args.path)[1] - reads_before}")


if __name__ == "__main__":
    main()
