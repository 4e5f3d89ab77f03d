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
import base64
import html
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path


from balsamdb.dbdir import DBDirectory
from balsamdb.models import MODELS, Job, JobStateChange, JobTag, Project, Record, RecordTag
from balsamdb.passwords import hash_password
from balsamdb.settings import load_settings

USER, PASSWORD = "bench", "bench-pass"
HTML = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
WORKFLOWS = 10
CHUNK = 500


def record_row(i, start):
    doc = {
        "label": f"run-{i:05d}", "timestamp": time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(start + i * 60)),
        "reason": f"sweep point {i} of the convergence study", "duration": round(random.uniform(1, 5000), 2),
        "outcome": random.choice(["converged", "diverged", "converged after restart", ""]),
        "executable": {"path": "/usr/bin/python3", "version": "3.11.7", "name": "Python", "options": ""},
        "repository": {"url": "/home/ada/proj", "type": "GitRepository", "upstream": None},
        "main_file": random.choice(["main.py", "solver.py", "post.py"]),
        "version": uuid.uuid4().hex[:12], "diff": "",
        "parameters": {"content": "\n".join(f"p{k} = {random.random():.6f}" for k in range(20)),
                       "type": "SimpleParameterSet"},
        "input_data": [{"path": "mesh.h5", "digest": uuid.uuid4().hex, "creation": ""}],
        "script_arguments": "params.txt", "launch_mode": {"type": "SerialLaunchMode", "parameters": "{}"},
        "datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "input_datastore": {"type": "FileSystemDataStore", "parameters": "{}"},
        "stdout_stderr": "iteration ...\n" * 40,
        "output_data": [{"path": f"out-{i}.h5", "digest": uuid.uuid4().hex, "creation": ""}],
        "tags": random.sample(["mesh-a", "mesh-b", "gpu", "cpu", "paper", "bad"], 2),
        "user": random.choice(["ada", "bob", "eve"]),
        "dependencies": [{"name": "numpy", "version": "1.26.4"}, {"name": "scipy", "version": "1.12.0"}],
        "platforms": [{"system_name": "Linux", "machine": "x86_64"}], "repeats": None,
    }
    row = {"project": "P", "label": doc["label"], "timestamp": doc["timestamp"], "sort_time": start + i * 60,
           "reason": doc["reason"], "outcome": doc["outcome"], "main_file": doc["main_file"],
           "version": doc["version"], "user": doc["user"], "duration": doc["duration"],
           "document": json.dumps(doc, separators=(",", ":")), "created_at": start, "updated_at": start}
    return row, doc["tags"]


def load(path, records, jobs):
    """Fill the DB directory's database straight through peewee (the benchmark is of the reads)."""
    database = DBDirectory(path).open_database(load_settings(), busy_timeout=60)
    database.pragma("synchronous", "off")
    start = time.time() - 7 * 86400
    with database.bind_ctx(MODELS):
        Project.insert(name="P", description="10,000 runs", public=False, created_at=start).execute()
        for first in range(0, records, CHUNK):
            with database.atomic():
                rows = [record_row(i, start) for i in range(first, min(records, first + CHUNK))]
                Record.insert_many([r for r, _t in rows]).execute()
                ids = {r.label: r.id for r in Record.select(Record.id, Record.label)
                       .where(Record.label.in_([r["label"] for r, _t in rows]))}
                RecordTag.insert_many([{"record": ids[r["label"]], "tag": t} for r, tags in rows for t in tags]).execute()
        campaign = time.time() - 3 * 3600  # jobs of a campaign that started three hours ago
        for first in range(0, jobs, CHUNK):
            with database.atomic():
                job_rows, history, tags = [], [], []
                for i in range(first, min(jobs, first + CHUNK)):
                    job_id = str(uuid.uuid4())
                    created = campaign + i * (3 * 3600 / jobs)
                    fate = random.random()
                    path_ = ["CREATED", "RUNNING"] + (["RUN_DONE", "JOB_FINISHED"] if fate < 0.85 else
                                                      ["RUN_ERROR", "FAILED"] if fate < 0.9 else [])
                    t = created
                    for k, state in enumerate(path_):
                        history.append({"job": job_id, "time": t, "from_state": path_[k - 1] if k else None,
                                        "to_state": state, "message": ""})
                        t += random.uniform(1, 120)
                    job_rows.append({"id": job_id, "name": f"sim-{i:06d}", "workflow": f"wf-{i % WORKFLOWS}",
                                     "state": path_[-1], "working_directory": f"data/wf/sim-{i}",
                                     "tags": ["gpu"] if i % 3 == 0 else [], "created_at": created,
                                     "updated_at": history[-1]["time"], "environ": {}, "parents": [], "data": {}})
                    if i % 3 == 0:
                        tags.append({"job": job_id, "tag": "gpu"})
                Job.insert_many(job_rows).execute()
                JobStateChange.insert_many(history).execute()
                if tags:
                    JobTag.insert_many(tags).execute()
    database.execute_sql("ANALYZE")
    database.close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def db_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "balsamdb.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def get(self, path, accept=HTML):
        self.conn.request("GET", path, headers={"Authorization": self.auth, "Accept": accept})
        response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return body

    def time(self, path, repeat, accept=HTML):
        """(p50, p90, bytes, the first request's ms): the first also reads what the page keeps for a
        few seconds (the jobs page's charts)."""
        started = time.perf_counter()
        self.get(path, accept)
        first = (time.perf_counter() - started) * 1000
        self.get(path, accept)
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            body = self.get(path, accept)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return statistics.median(times), times[min(len(times) - 1, int(0.9 * len(times)))], len(body), first


    def follow(self, path, links):
        """The address of the page reached from ``path`` by following its ``rel="next"`` link ``links`` times."""
        for _ in range(links):
            found = re.search(rb'rel="next" href="([^"]+)"', self.get(path))
            if not found:
                raise RuntimeError(f"{path} has no next link")
            path = path.split("?")[0] + html.unescape(found.group(1).decode())
        return path


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
        import balsamdb

        with balsamdb.connect(path) as db:
            db.call("user_save", name=USER, password_hash=hash_password(PASSWORD), admin=True)
            db.call("permission_grant", project="P", user=USER)
        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "serve", "--path", str(path), "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or serve.poll() is not None:
                    sys.exit("db serve did not start")
                time.sleep(0.05)  # bench-ok: poll for the port with a deadline
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
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        db_cli("dbserver", "--stop", "--path", path)
        if args.keep or args.dbdir:
            print(f"kept {path}")
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
