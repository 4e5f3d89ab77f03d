"""The HTTP record store against the ZeroMQ path: N client processes saving and reading records.

    python scripts/bench_http.py [--clients 8,32,64] [--requests 100] [--threads 16] [--json results.json]

For each number N of client processes, in one run, on a fresh SQLite DB directory
with ``db dbserver`` running and ``db serve`` in front of it, N real processes
each make ``--requests`` requests, one at a time, timing each:

- ``zmq-save``: ``balsamdb.connect(P).records.save(project, doc)``: the ZeroMQ path;
- ``zmq-get``: ``balsamdb.connect(P).records.get(project, label)``;
- ``http-put``: ``PUT {base}{project}/{label}/`` with the record as JSON, as ``smt`` sends it
  (HTTP Basic, one keep-alive connection per process, ``http.client``);
- ``http-get``: ``GET {base}{project}/{label}/`` of the records ``http-put`` wrote.

The record is a Sumatra 0.8 record document of about 1 KB.  ``db serve`` runs
with each of the ``--threads`` counts (its ``--threads`` option), restarted for
every HTTP phase, so that each phase starts with an empty password cache; a
single request warms that cache before the clients start.

It prints requests/s, p50/p99/max latency, errors, lost and duplicated writes
(counted by reading the labels back with ``records.labels``), each mode's
throughput relative to the ZeroMQ path of the same kind (``zmq/x``: saves
against ``zmq-save``, reads against ``zmq-get``), the CPU each part spent per
request (``srv µs``: the write server, ``http µs``: ``db serve``, ``cli µs``: the
clients), how many requests the write server answered for each of the clients'
requests (``srv req``), the write server's mean batch (``batch``: requests applied
in one transaction) and the share of the time it spent applying batches, SQL and
commit (``apply``), and how many cores other work on the machine kept busy
meanwhile (``other``: the machine's busy time less this benchmark's, per second).
Nothing here is a test: it measures.

Every process it starts runs in a session of its own and is stopped in a
``finally``, on Ctrl-C and SIGTERM too; everything listens on 127.0.0.1 only,
on ports the servers pick (``--port 0``).

Internally, ``bench_http.py --worker MODE ...`` is one client process.
"""

import argparse
import base64
import json
import os
import re
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DB = [sys.executable, "-m", "balsamdb.cli"]  # the `db` command of this interpreter and checkout
USER = "bench"
RECORD_TYPE = "application/vnd.sumatra.record-v4+json"
MODES = ("zmq-save", "zmq-get", "http-put", "http-get")
REFERENCE = {"zmq-save": "zmq-save", "http-put": "zmq-save", "zmq-get": "zmq-get", "http-get": "zmq-get"}
READY_DEADLINE = 120.0   # s for all clients to start, import and warm up
START_DEADLINE = 60.0    # s for a server to start
STOP_DEADLINE = 20.0     # s for a server to stop gracefully before it is killed
PASSWORD_CACHE_SECONDS = 60.0  # balsamdb.server.http.PASSWORD_CACHE_SECONDS


# -- the record ---------------------------------------------------------------------------------------------

def record(client, j):
    """The record document that client ``client`` saves as its ``j``-th: Sumatra 0.8's 23 keys, ~1 KB."""
    label = f"c{client}-{j}"
    seconds = client * 1000 + j  # distinct, deterministic time stamps: the readers rebuild the same document
    stamp = time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(1714564800 + seconds))
    return {
        "label": label, "timestamp": stamp, "reason": "load test of the HTTP record store", "duration": 12.5,
        "executable": {"path": "/usr/bin/python3", "version": "3.11.7", "name": "Python", "options": ""},
        "repository": {"url": "/home/ada/sim", "type": "GitRepository", "upstream": None},
        "main_file": "main.py", "version": "f4f0cc958cc8b712ce8bd61c112cd00dc3da0c42",
        "parameters": {"content": f"n = {j}\nseed = {12345 + client}\ndt = 0.001\nsteps = 10000\n",
                       "type": "SimpleParameterSet"},
        "input_data": [], "script_arguments": f"params.txt {client} {j}",
        "launch_mode": {"type": "SerialLaunchMode", "parameters": "{'working_directory': '/home/ada/sim'}"},
        "datastore": {"type": "FileSystemDataStore", "parameters": "{'root': '/home/ada/sim/Data'}"},
        "input_datastore": {"type": "FileSystemDataStore", "parameters": "{'root': '/'}"},
        "outcome": "converged", "stdout_stderr": f"step 10000 of 10000, residual 1.2e-9 (client {client})\n",
        "output_data": [{"path": f"{label}/result.h5", "digest": "9b0c0ba1d3b2f5a1c0e4d8f7a6b5c4d3e2f1a0b9",
                         "creation": stamp, "metadata": {"size": 123456, "mimetype": "application/x-hdf"}}],
        "tags": ["bench", "_finished_"], "diff": "", "user": "Ada Lovelace <ada@example.org>",
        "dependencies": [], "platforms": [{"architecture_bits": "64bit", "machine": "x86_64",
                                           "system_name": "Linux", "processor": "x86_64"}],
        "repeats": None,
    }


# -- one client process -------------------------------------------------------------------------------------

def make_client(mode, target, project, client):
    """``(request, reconnects)`` for one client: ``request(j)`` returns a label when the request did
    what was asked, else raises; ``reconnects()`` counts the connections opened after the first."""
    if mode.startswith("zmq"):
        sys.path.insert(0, str(ROOT))
        import balsamdb
        from balsamdb.facades import SpooledWrite

        db = balsamdb.connect(target)
        db.call("ping")  # connected and warm before the start

        def zmq_save(j):
            doc = record(client, j)
            created = db.records.save(project, doc)
            if isinstance(created, SpooledWrite):
                raise RuntimeError("spooled: no server took the write")
            if created is not True:
                raise RuntimeError(f"saved, but not as a new record ({created!r})")
            return doc["label"]

        def zmq_get(j):
            doc = record(client, j)
            if db.records.get(project, doc["label"]) != doc:
                raise RuntimeError(f"record {doc['label']} read back differs")
            return doc["label"]

        return (zmq_save if mode == "zmq-save" else zmq_get), lambda: 0

    import http.client
    from urllib.parse import quote, urlsplit

    base = urlsplit(target)
    password = os.environ["BENCH_HTTP_PASSWORD"]
    auth = "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()
    state = {"conn": None, "reconnects": -1}

    def send(method, path, body=None, headers=()):
        if state["conn"] is None:
            state["conn"] = http.client.HTTPConnection(base.hostname, base.port, timeout=60)
            state["reconnects"] += 1
        try:
            state["conn"].request(method, path, body=body, headers={"Authorization": auth, **dict(headers)})
            response = state["conn"].getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            state["conn"].close()
            state["conn"] = None  # the next request opens a new connection (counted)
            raise
        if response.getheader("Connection", "").lower() == "close":
            state["conn"].close()
            state["conn"] = None
        return response.status, data

    status, _ = send("GET", base.path)  # the project list: connected, logged in, warm
    if status != 200:
        raise SystemExit(f"bench client: warm-up GET {base.path} answered {status}")

    def path_of(label):
        return f"{base.path}{quote(project)}/{quote(label)}/"

    def http_put(j):
        doc = record(client, j)
        status, data = send("PUT", path_of(doc["label"]), json.dumps(doc).encode(),
                            {"Content-Type": RECORD_TYPE, "Accept": f"{RECORD_TYPE}, application/json"})
        if status != 201:
            raise RuntimeError(f"PUT answered {status}: {data[:200]!r}")
        return doc["label"]

    def http_get(j):
        doc = record(client, j)
        status, data = send("GET", path_of(doc["label"]), headers={"Accept": f"{RECORD_TYPE}, application/json"})
        if status != 200:
            raise RuntimeError(f"GET answered {status}: {data[:200]!r}")
        if json.loads(data) != doc:
            raise RuntimeError(f"record {doc['label']} read back differs")
        return doc["label"]

    return (http_put if mode == "http-put" else http_get), lambda: state["reconnects"]


def worker(argv):
    """``--worker MODE TARGET PROJECT CLIENT COUNT OUT``: one client; 'ready' on stdout, 'go' on stdin."""
    mode, target, project, client, count, out = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5]
    try:
        request, reconnects = make_client(mode, target, project, client)
    except Exception as exc:  # e.g. the store was stopped while this client started (Ctrl-C)
        sys.exit(f"bench client {client}: cannot start: {type(exc).__name__}: {exc}")
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    readable, _, _ = select.select([sys.stdin], [], [], READY_DEADLINE + 60)
    if not readable or not sys.stdin.readline().startswith("go"):
        sys.exit("bench client: no go within the deadline")
    latencies, errors, labels = [], [], []
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.time()
    for j in range(count):
        t0 = time.perf_counter()
        try:
            labels.append(request(j))
        except Exception as exc:  # counted and reported: for a save, a lost write
            errors.append(f"{type(exc).__name__}: {exc}")
        latencies.append(time.perf_counter() - t0)
    end = time.time()
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    with open(out, "w") as f:
        json.dump({"start": start, "end": end, "latencies": latencies, "errors": errors, "labels": labels,
                   "cpu": cpu, "reconnects": reconnects()}, f)


# -- the servers --------------------------------------------------------------------------------------------

def db(*args, timeout=60, stdin=None):
    """Run ``db ARGS`` to completion (with a deadline); raise with its output when it fails."""
    proc = subprocess.run([*DB, *map(str, args)], check=False, input=stdin, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"db {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def busy_seconds():
    """CPU seconds the whole machine has spent on anything but idling, over all cores."""
    import psutil

    times = psutil.cpu_times()._asdict()
    # guest time is counted in user time already; iowait is idle time
    return sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))


def cpu_seconds(pid):
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return float("nan")


class Store:
    """A `db serve` process on 127.0.0.1, on a port it picks; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, path, threads, logdir):
        self.log_path = logdir / f"serve-{threads}-{time.monotonic_ns()}.out"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([*DB, "serve", "--path", str(path), "--host", "127.0.0.1", "--port", "0",
                                      "--threads", str(threads)],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=ROOT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + START_DEADLINE
        self.url = None
        while self.url is None:
            found = re.search(r" at (http://127\.0\.0\.1:\d+/) ", self.log_path.read_text())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None:
                raise RuntimeError(f"db serve exited {self.proc.returncode}: {self.log_path.read_text()}")
            elif time.monotonic() > deadline:
                raise RuntimeError(f"db serve printed no URL within {START_DEADLINE} s: {self.log_path.read_text()}")
            else:
                time.sleep(0.02)

    def warm_up(self, password):
        """One logged-in request, so that the clients find the password check cached."""
        import http.client
        from urllib.parse import urlsplit

        url = urlsplit(self.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        try:
            token = base64.b64encode(f"{USER}:{password}".encode()).decode()
            conn.request("GET", url.path, headers={"Authorization": f"Basic {token}"})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"warm-up GET {self.url} answered {response.status}")
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # waitress finishes the requests in progress
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                print(f"[bench] db serve ignored SIGTERM for {STOP_DEADLINE} s: killed", file=sys.stderr)
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class WriteServer:
    """``db dbserver`` for a DB directory; ``stop()`` runs ``db dbserver --stop`` (and kills what is left)."""

    def __init__(self, path):
        self.path, self.pids = path, []

    def start(self):
        db("dbserver", "--path", self.path, "--timeout", START_DEADLINE, timeout=START_DEADLINE + 30)
        info = json.loads((Path(self.path) / "dbwriter_address").read_text())
        self.pids = [info[k]["pid"] for k in ("watchdog", "server") if info.get(k)]
        self.server_pid = info["server"]["pid"]

    def status(self):
        """The write server's counters (``db dbserver --status``; this question counts as a request)."""
        sys.path.insert(0, str(ROOT))
        import balsamdb

        with balsamdb.connect(self.path) as conn:
            return conn.server_status()

    def stop(self):
        try:
            db("dbserver", "--stop", "--path", self.path, "--timeout", STOP_DEADLINE, timeout=STOP_DEADLINE + 30)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"[bench] db dbserver --stop failed ({exc}); killing pids {self.pids}", file=sys.stderr)
            for pid in self.pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- one measurement ----------------------------------------------------------------------------------------

def percentile(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_phase(mode, nclients, nrequests, target, project, workdir, env, timeout, cpu_pids, server):
    """Start ``nclients`` clients, wait until all are ready, let them go, collect what they measured."""
    outs = [workdir / f"{mode}-{nclients}-{i}.json" for i in range(nclients)]
    procs = []
    try:
        for i, out in enumerate(outs):
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--worker", mode, target, project, str(i),
                 str(nrequests), str(out)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                start_new_session=True))
        with selectors.DefaultSelector() as sel:
            for proc in procs:
                sel.register(proc.stdout, selectors.EVENT_READ, proc)
            waiting, deadline = len(procs), time.monotonic() + READY_DEADLINE
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"{waiting} of {nclients} {mode} clients not ready within {READY_DEADLINE} s")
                for key, _ in sel.select(left):
                    line = key.fileobj.readline()
                    if line.strip() != "ready":
                        raise RuntimeError(f"a {mode} client exited before it was ready "
                                           f"(exit {key.data.wait(10)}); see its stderr above")
                    sel.unregister(key.fileobj)
                    waiting -= 1
        status0 = server.status()
        cpu0 = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        busy0, window0 = busy_seconds(), time.monotonic()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{mode} clients still running after {timeout} s (--phase-timeout)") from None
        cpu1 = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        busy1, window = busy_seconds(), time.monotonic() - window0
        status1 = server.status()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
    failed = [p.returncode for p in procs if p.returncode != 0]
    results = [json.loads(o.read_text()) for o in outs if o.exists()]
    if failed or len(results) < nclients:
        raise RuntimeError(f"{len(failed)} {mode} clients failed (exit codes {failed[:5]})")
    latencies = [x for r in results for x in r["latencies"]]
    errors = [e for r in results for e in r["errors"]]
    done = [label for r in results for label in r["labels"]]
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = nclients * nrequests
    ours = sum(r["cpu"] for r in results) + sum(cpu1[name] - cpu0[name] for name in cpu_pids)
    served = status1["requests"] - status0["requests"] - 1  # less the question itself
    batches = status1["batches"] - status0["batches"]
    applied = status1["mean_batch"] * status1["batches"] - status0["mean_batch"] * status0["batches"]
    apply_seconds = (status1["mean_commit_ms"] * status1["batches"]
                     - status0["mean_commit_ms"] * status0["batches"]) / 1000
    return {
        "mode": mode, "clients": nclients, "requests_per_client": nrequests, "project": project,
        "done": len(done), "labels": done, "errors": len(errors), "error_sample": errors[:3],
        "seconds": span, "requests_per_s": len(done) / span if span > 0 else 0.0,
        "p50_ms": 1000 * percentile(latencies, 0.50), "p99_ms": 1000 * percentile(latencies, 0.99),
        "max_ms": 1000 * max(latencies) if latencies else float("nan"),
        "reconnects": sum(r["reconnects"] for r in results),
        "server_requests_per_request": served / total,
        "server_mean_batch": applied / batches if batches else float("nan"),
        # share of the time the write server spent applying batches (its SQL and commits, fsync included)
        "server_apply_share": apply_seconds / window,
        "write_server_cores": (cpu1["write_server"] - cpu0["write_server"]) / window,
        # cores kept busy during the phase, by the whole machine and by processes not of this benchmark
        "busy_cores": (busy1 - busy0) / window,
        "other_cores": max(0.0, busy1 - busy0 - ours) / window,
        "cpu_us_per_request": {"clients": 1e6 * sum(r["cpu"] for r in results) / total,
                               **{name: 1e6 * (cpu1[name] - cpu0[name]) / total for name in cpu_pids}},
    }


def count_back(row, path):
    """Lost and duplicated writes of a save phase, from the labels stored in its project."""
    import balsamdb

    with balsamdb.connect(path) as conn:
        stored = conn.records.labels(row["project"])
    stored_set, acked = set(stored), set(row["labels"])
    row["stored"] = len(stored)
    row["lost"] = len(acked - stored_set) + row["errors"]
    row["duplicated"] = len(stored) - len(stored_set)
    row["stored_unacknowledged"] = len(stored_set - acked)  # failed as far as the client knows, yet stored


def run_clients(nclients, args, threads_list, modes, workdir):
    """Every mode for ``nclients`` clients on one fresh DB directory; returns the rows."""
    path = workdir / f"db-{nclients}"
    db("init", path)
    password = base64.b32encode(os.urandom(10)).decode()
    env = {**os.environ, "BENCH_HTTP_PASSWORD": password, "PYTHONPATH": str(ROOT)}
    rows = []
    server = None
    try:
        server = WriteServer(path)
        server.start()  # stopped in the finally below even when the start is cut short
        db("user", "add", USER, "--path", path, "--password-stdin", stdin=password + "\n")
        for threads in threads_list:
            db("user", "grant", USER, f"http-t{threads}", "--create", "--path", path)  # made here: no creation race
        phases = [(m, None) for m in modes if m.startswith("zmq")]
        phases += [(m, t) for t in threads_list for m in modes if m.startswith("http")]
        for mode, threads in phases:
            project = "zmq" if threads is None else f"http-t{threads}"
            print(f"[bench] {nclients} clients, {mode}" + (f", db serve --threads {threads}" if threads else "")
                  + " ...", file=sys.stderr, flush=True)
            store = None
            try:
                cpu_pids = {"write_server": server.server_pid}
                target = str(path)
                if threads is not None:
                    store = Store(path, threads, workdir)
                    store.warm_up(password)
                    cpu_pids["http_store"] = store.proc.pid
                    target = store.url
                row = run_phase(mode, nclients, args.requests, target, project, workdir, env, args.phase_timeout,
                                cpu_pids, server)
            finally:
                if store is not None:
                    store.stop()
            row["threads"] = threads
            if row["seconds"] > PASSWORD_CACHE_SECONDS and threads is not None:
                print(f"[bench] note: this phase ran {row['seconds']:.0f} s, longer than the store's password "
                      f"cache ({PASSWORD_CACHE_SECONDS:.0f} s): its checks expired during it", file=sys.stderr)
            if mode in ("zmq-save", "http-put"):
                count_back(row, path)
            rows.append(row)
    finally:
        if server is not None:
            server.stop()
    shutil.rmtree(path, ignore_errors=True)
    return rows


# -- the report ---------------------------------------------------------------------------------------------

def add_ratios(rows):
    for row in rows:
        ref = next((r for r in rows if r["clients"] == row["clients"] and r["mode"] == REFERENCE[row["mode"]]),
                   None)
        row["zmq_over_this"] = (ref["requests_per_s"] / row["requests_per_s"]
                                if ref and row["requests_per_s"] else None)


def print_table(rows, markdown=False):
    cols = [("clients", ">7"), ("mode", "<8"), ("threads", ">7"), ("req/s", ">6"), ("p50 ms", ">7"),
            ("p99 ms", ">7"), ("max ms", ">7"), ("errors", ">6"), ("lost", ">4"), ("dup", ">3"), ("zmq/x", ">5"),
            ("srv µs", ">6"), ("http µs", ">7"), ("cli µs", ">6"), ("srv req", ">7"),
            ("batch", ">5"), ("apply", ">5"), ("other", ">5")]

    def cells(r):
        cpu = r["cpu_us_per_request"]
        return [r["clients"], r["mode"], r["threads"] or "-", f"{r['requests_per_s']:.0f}", f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}", f"{r['max_ms']:.0f}", r["errors"], r.get("lost", "-"), r.get("duplicated", "-"),
                f"{r['zmq_over_this']:.2f}" if r["zmq_over_this"] else "-", f"{cpu['write_server']:.0f}",
                f"{cpu['http_store']:.0f}" if "http_store" in cpu else "-", f"{cpu['clients']:.0f}",
                f"{r['server_requests_per_request']:.2f}", f"{r['server_mean_batch']:.1f}",
                f"{r['server_apply_share']:.2f}", f"{r['other_cores']:.2f}"]

    if markdown:
        print("| " + " | ".join(name for name, _ in cols) + " |")
        print("|" + "|".join("---" if align.startswith("<") else "---:" for _, align in cols) + "|")
        for r in rows:
            print("| " + " | ".join(str(c) for c in cells(r)) + " |")
        return
    header = " ".join(f"{name:{align}}" for name, align in cols)
    print(header)
    print("-" * len(header))
    for r in rows:
        print(" ".join(f"{c!s:{align}}" for c, (_, align) in zip(cells(r), cols)))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="8,32,64", help="comma-separated numbers of client processes")
    parser.add_argument("--requests", type=int, default=100, help="requests per client process and mode")
    parser.add_argument("--threads", default="16", help="comma-separated `db serve --threads` values to measure")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)} "
                                                                 "(http-get reads what http-put wrote)")
    parser.add_argument("--phase-timeout", type=float, default=300.0, help="seconds one phase may take")
    parser.add_argument("--json", dest="json_out", help="write all results to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes {', '.join(sorted(unknown))}")
    if "http-get" in modes and "http-put" not in modes:
        parser.error("http-get reads the records that http-put writes: measure both")
    if "zmq-get" in modes and "zmq-save" not in modes:
        parser.error("zmq-get reads the records that zmq-save writes: measure both")
    threads_list = [int(t) for t in args.threads.split(",") if t]
    sys.path.insert(0, str(ROOT))

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt  # the same clean-up as Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="balsamdb-bench-http-", dir="/tmp"))
    rows = []
    started, load_before = time.monotonic(), os.getloadavg()
    try:
        for n in [int(x) for x in args.clients.split(",") if x]:
            rows.extend(run_clients(n, args, threads_list, modes, workdir))
    except KeyboardInterrupt:
        print("[bench] interrupted: servers and clients stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(rows)
    print(f"record: {len(json.dumps(record(0, 0)))} bytes of JSON; {os.cpu_count()} CPUs; "
          f"{time.monotonic() - started:.0f} s in all; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after")
    print_table(rows, markdown=args.markdown)
    if args.json_out:
        out = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
        Path(args.json_out).write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "command": sys.argv, "record_bytes": len(json.dumps(record(0, 0))), "rows": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
