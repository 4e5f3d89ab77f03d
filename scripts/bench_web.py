"""How fast the web pages of ``db serve`` answer on a big store, and what an open jobs page costs the writers.

    python scripts/bench_web.py [--records 10000] [--jobs 100000] [--repeat 20] [--writers 8 --writes 200]
    python scripts/bench_web.py --dbdir /tmp/me/db1m [--repeat 5] [--writers 0]   # a DB directory loaded before

On a fresh SQLite DB directory (in /tmp) it loads ``--records`` Sumatra records (about 2 KB each,
tags, parameters) into one project and ``--jobs`` jobs in 10 workflows with their state history
(most finished, some running, some failed; about four history rows a job), straight into the
database, then starts ``db dbserver`` and ``db serve`` and times each page over HTTP (keep-alive,
HTTP Basic, the browser's ``Accept``): the first request (``first``: the first of a page also compiles
its template; the jobs page's charts come from the state history's moves that ``db serve`` reads
whole when it starts and then brings up to date from the rows added since), and the median and the 90th percentile of
``--repeat`` requests after two to warm up.  Targets (issue 17): the first page of the record list, a search and a
compare under 200 ms; the jobs page of 100,000 jobs under 300 ms.

Then the write capacity with and without a jobs page open: ``--writers`` processes each create
``--writes`` jobs through the write server as fast as they can, once with no page open and once
with a client asking for the jobs page every 2 s (a tab left open) and every 0.25 s (eight tabs),
interleaved ``--write-rounds`` times in a rotating order; it prints writes/s of each and the medians.

With ``--dbdir`` it loads nothing: it times the pages of a DB directory that this loader filled before
(``--records``/``--jobs`` then only name the sizes; write into a copy: the user ``bench`` is added to it, and
the write rounds add jobs).

Every process it starts runs in a session of its own and is stopped in a ``finally``; everything
listens on 127.0.0.1.  Nothing here is a test: it measures.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from balsamdb.bench.scale_load import load  # noqa: F401  (also scripts/web_screenshots.py's loader)
from balsamdb.bench.web_client import Client, free_port, make_user, start_serve, stop_serve
from balsamdb.dbdir import DBDirectory


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "balsamdb.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


WRITER = """
import sys, time, balsamdb
path, n, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
import os
while not os.path.exists(go):
    time.sleep(0.005)  # wait for the start signal
with balsamdb.connect(path) as db:
    for i in range(n):
        db.jobs.create(f"w-{os.getpid()}-{i}", workflow="writers", make_workdir=False)
"""


def write_capacity(path, writers, writes, poll, port, workdir):
    """writes/s of ``writers`` processes while a client asks for the jobs page every ``poll`` s (None: never)."""
    go = Path(workdir) / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(writes), str(go)])
             for _ in range(writers)]
    stop = threading.Event()
    pages = []

    def poller():
        client = Client(port)
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/_balsamdb/jobs/")
            pages.append((time.perf_counter() - started) * 1000)
            stop.wait(poll)

    thread = threading.Thread(target=poller, daemon=True) if poll else None
    try:
        time.sleep(1.0)  # bench-ok: let the writer processes import and wait for the signal
        if thread:
            thread.start()
        started = time.perf_counter()
        go.write_text("go")
        for proc in procs:
            proc.wait(timeout=600)
        took = time.perf_counter() - started
    finally:
        stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    if thread:
        thread.join(timeout=30)
    return writers * writes / took, pages


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--write-rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the DB directory (its path is printed)")
    parser.add_argument("--dbdir", help="time the pages of this DB directory, filled by this loader before "
                                        "(nothing is loaded; use a copy: a user and the write rounds' jobs are added)")
    parser.add_argument("--skip", help="leave out the pages whose name matches this regular expression")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-web-"))
    path = Path(args.dbdir) if args.dbdir else workdir / "db"
    serve = None
    try:
        if not args.dbdir:
            DBDirectory(path).init()
            started = time.monotonic()
            load(path, args.records, args.jobs)
            print(f"loaded {args.records} records and {args.jobs} jobs in {time.monotonic() - started:.0f} s",
                  flush=True)
        result = db_cli("dbserver", "--path", path)
        if result.returncode:
            sys.exit(f"db dbserver failed: {result.stderr}")
        make_user(path)
        port = free_port()
        serve = start_serve(path, port)
        client = Client(port)
        job_id, deadline = None, time.monotonic() + 60
        while job_id is None and time.monotonic() < deadline:
            try:  # main at 1M jobs, load 27: the first jobs pages read the whole history, over their 10 s
                job_id = json.loads(client.get("/_balsamdb/jobs/?format=json", "application/json"))["jobs"][0]["id"]
            except RuntimeError as exc:
                print(f"the first jobs page failed: {str(exc)[:160]}", flush=True)
                client = Client(port)
        pages = [
            ("records: first page (HTML)", "/P/", 200),
            ("records: search 'point 12' (HTML)", "/P/?search=point%2012", 200),
            ("records: tag filter, sorted -duration, page 40", "/P/?tags=gpu&sort=-duration&page=40", 200),
            ("records: tag+sort, 4th page by next links", lambda: client.follow("/P/?tags=gpu&sort=-duration", 3),
             200),
            ("records: 40th page by next links", lambda: client.follow("/P/", 39), 200),
            # every sortable column has its index (schema 12): any order, any page, as its first
            ("records: sorted by user (HTML)", "/P/?sort=user", 200),
            ("records: sorted -reason, 4th page by next links", lambda: client.follow("/P/?sort=-reason", 3), 200),
            ("records: tag filter, sorted duration, last page (?last=1)", "/P/?tags=gpu&sort=duration&last=1", 200),
            ("records: page 2000 (an old ?page= link)", "/P/?page=2000", None),
            ("records: compare two (HTML)", "/P/?compare=run-00001,run-05000", 200),
            ("records: compare two (JSON)", "/P/?compare=run-00001,run-05000&format=json", 200),
            ("records: smt's JSON listing (all labels)", "/P/?format=json", None),
            (f"jobs page, {args.jobs} jobs (HTML)", "/_balsamdb/jobs/", 300),
            ("jobs page, filtered workflow+state (HTML)", "/_balsamdb/jobs/?workflow=wf-3&state=RUNNING", 300),
            ("jobs page, name glob + since (HTML)", "/_balsamdb/jobs/?name=sim-0001*&since=1h", 300),
            ("jobs page (JSON)", "/_balsamdb/jobs/?format=json", 300),
            ("jobs page, 40th page by next links", lambda: client.follow("/_balsamdb/jobs/", 39), 300),
            ("jobs page, page 2000 (an old ?page= link)", "/_balsamdb/jobs/?page=2000", None),
            ("one job page (HTML)", f"/_balsamdb/jobs/{job_id or 'none'}/", 300),
        ]
        print(f"\nload average {os.getloadavg()[0]:.1f}")
        print(f"{'page':48} {'first':>7} {'p50 ms':>8} {'p90 ms':>8} {'KB':>7} {'CPU ms':>7}  target")
        for name, url, target in pages:
            if args.skip and re.search(args.skip, name):
                continue
            try:
                url = url() if callable(url) else url
                cpu = cpu_seconds(serve.pid)
                p50, p90, size, first = client.time(url, args.repeat)
            except (RuntimeError, OSError) as exc:  # a page that fails (a read over its time limit): say so
                print(f"{name:48} FAILED: {str(exc)[:150]}", flush=True)
                client = Client(port)
                continue
            cpu = (cpu_seconds(serve.pid) - cpu) * 1000 / (args.repeat + 2)  # db serve's, per request
            verdict = "" if target is None else (f"< {target} ms  {'ok' if p50 < target else 'MISSED'}")
            print(f"{name:48} {first:7.1f} {p50:8.1f} {p90:8.1f} {size / 1024:7.1f} {cpu:7.0f}  {verdict}",
                  flush=True)

        if args.writers and args.writes:
            print(f"\nwrite capacity: {args.writers} processes x {args.writes} job creations through the write server")
            rates = {None: [], 2.0: [], 0.25: []}
            order = list(rates)
            for round_ in range(args.write_rounds):
                # A different order each round: the table grows, so the later phases of a round write
                # into a bigger one; rotating spreads that over every mode.
                for poll in order[round_ % 3:] + order[:round_ % 3]:
                    rate, polled = write_capacity(path, args.writers, args.writes, poll, port, workdir)
                    rates[poll].append(rate)
                    extra = f", {len(polled)} page loads, median {statistics.median(polled):.0f} ms" if polled else ""
                    print(f"  {'no page open' if poll is None else f'jobs page every {poll:g} s':26} "
                          f"{rate:8.0f} writes/s{extra}", flush=True)
            print(f"  load average {os.getloadavg()[0]:.1f}")
            base = statistics.median(rates[None])
            for poll, values in rates.items():
                label = "no page open" if poll is None else f"jobs page every {poll:g} s"
                print(f"  median {label:26} {statistics.median(values):8.0f} writes/s "
                      f"({statistics.median(values) / base:.2f} of no page)")
    finally:
        stop_serve(serve)
        db_cli("dbserver", "--stop", "--path", path)
        if args.keep or args.dbdir:
            print(f"kept {path}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
