"""Copying stores: ``db copy`` between every pair of store kinds, in one run.

    python scripts/bench_copy.py [--records 5000] [--jobs 5000] [--repeat 3] [--json results.json]
                                 [--profile sqlite:postgres]

Store kinds:

- ``sqlite``: a SQLite DB directory (``db init P``), opened directly (no ``db dbserver`` runs for it);
- ``postgres``: a database of a PostgreSQL cluster that this script starts (one cluster, a fresh
  ``CREATE DATABASE`` per store), named by its ``postgresql://`` URL;
- ``http``: balsamdb's own HTTP store: a SQLite DB directory with ``db dbserver`` and ``db serve``
  running, named by ``http://ADMIN:PW@127.0.0.1:PORT/`` (an admin user, so everything moves).

One SQLite source is seeded once (``--records`` records in two projects, ``--jobs`` jobs, 50 of them
with a state history, two users, one permission; record times an hour and more in the past).  The
PostgreSQL and HTTP sources are copies of it, so every source holds the same items.  Then, for each of
the 9 ordered pairs of kinds, the source is copied into a fresh, empty destination with
``transfer.copy_store`` called in this process (what ``db copy SRC DST`` runs, without the CLI's
interpreter start-up).  ``--repeat`` rounds go over the 9 pairs in turn (so that a burst of other work
on the machine does not fall on one pair only); the table shows each pair's median run (by total
seconds) and the range of the whole-copy rates.  An HTTP destination cannot be empty (its admin user
must exist to log in): it holds that one user, identical to the source's, which the copy finds
"already there".

For each pair it prints the items copied, the first pass's rate, the whole copy's rate (first pass,
catch-up pass and verification: what ``db copy`` reports as ``items_per_second``), the seconds of
each phase, and whether the copy verified and the two stores' full digests (``store_digest``, taken
again afterwards, untimed) are equal.  It also gives the CPU seconds spent meanwhile by this process
(``bench``), by the servers of the stores (``db serve`` + ``db dbserver`` processes, and the PostgreSQL
cluster) and by everything else on the machine (``other``: busy CPU time less the two; other work
sharing the cores), and the load average.  Last, one ``db export`` of the SQLite source and one ``db
import`` of that file into a fresh SQLite DB directory, run as CLI processes (wall time, start-up
included; the import's own report gives its time without start-up).

``--profile SRC:DST`` runs that pair once more under cProfile (into another fresh destination) and
prints where this process spent its time: per operation (cumulative) and per module.

Every process and cluster it starts is stopped in a ``finally`` (on Ctrl-C and SIGTERM too), everything
listens on 127.0.0.1 only, and every wait has a deadline.  Nothing here is a test: it measures.
"""

import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DB = [sys.executable, "-m", "balsamdb.cli"]  # the `db` command of this interpreter and checkout
KINDS = ("sqlite", "postgres", "http")
ADMIN, ADMIN_PW = "lab", "lab-admin-pw"
UNICODE = "Ünïcødé ✓ 数据"

CLI_DEADLINE = 120.0       # s for one `db ...` process (dbserver start/stop, export, import)
SERVE_DEADLINE = 30.0      # s for `db serve` to print its URL / to stop after SIGTERM
COPY_DEADLINE = 300.0      # s for one copy; then it is stopped (transfer's `stop` event)
PG_DEADLINE = 60.0         # s to start / stop the PostgreSQL cluster


def say(text):
    print(f"[bench_copy] {text}", file=sys.stderr, flush=True)


def _safely(stop, what):
    """Run ``stop()`` at the end; a failure is reported and the other stops still run."""
    try:
        stop()
    except Exception as exc:  # noqa: BLE001  (report it; the other stops must still run)
        say(f"stopping {what} failed: {exc!r}")


# -- processes -------------------------------------------------------------------------------------------------

def db_cli(*args, timeout=CLI_DEADLINE):
    """Run `db ARGS...` in a session of its own (Ctrl-C does not reach it; we stop what it starts)."""
    proc = subprocess.run([*DB, *map(str, args)], check=False, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True)
    if proc.returncode != 0:
        raise RuntimeError(f"db {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _alive(pid, marker):
    """The psutil.Process ``pid`` if it still runs with ``marker`` in its command line (no pid reuse)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return proc if any(marker in part for part in proc.cmdline()) else None
    except psutil.Error:
        return None


def _cpu(procs):
    """User + system CPU seconds of the live processes ``procs`` (psutil.Process)."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


class WriteServer:
    """``db dbserver`` of a DB directory; ``stop()`` runs ``db dbserver --stop`` and kills what is left."""

    def __init__(self, path):
        self.path, self.pids, self.stopped = Path(path), [], False

    def start(self):
        try:
            db_cli("dbserver", "--path", self.path, "--bind", "127.0.0.1", "--timeout", SERVE_DEADLINE,
                   timeout=SERVE_DEADLINE + 30)
        finally:  # whatever it started, even when the start failed or was cut short
            try:
                info = json.loads((self.path / "dbwriter_address").read_text())
                self.pids = [info[k]["pid"] for k in ("watchdog", "server") if info.get(k)]
            except (OSError, ValueError, KeyError, TypeError):
                pass

    def processes(self):
        return [p for p in (_alive(pid, str(self.path)) for pid in self.pids) if p is not None]

    def stop(self):
        import psutil

        if self.stopped:
            return
        self.stopped = True
        try:
            db_cli("dbserver", "--stop", "--path", self.path, "--timeout", SERVE_DEADLINE, timeout=SERVE_DEADLINE + 30)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            say(f"db dbserver --stop {self.path} failed: {exc}")
        left = self.processes()
        for proc in left:
            say(f"killing leftover dbserver process {proc.pid} of {self.path}")
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=10)


class Serve:
    """``db serve`` on 127.0.0.1 on a free port (``--port 0``); ``stop()``: SIGTERM, then SIGKILL."""

    def __init__(self, path, logdir):
        self.log_path = Path(logdir) / f"serve-{Path(path).name}.out"
        self.log = open(self.log_path, "w")  # noqa: SIM115  (closed by stop())
        self.proc = subprocess.Popen([*DB, "serve", "--path", str(path), "--host", "127.0.0.1", "--port", "0"],
                                     stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_url(self):
        deadline = time.monotonic() + SERVE_DEADLINE
        while True:
            found = re.search(r" at (http://127\.0\.0\.1:\d+/)", self.log_path.read_text())
            if found:
                return found.group(1)
            if self.proc.poll() is not None:
                raise RuntimeError(f"db serve exited {self.proc.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"db serve printed no URL within {SERVE_DEADLINE} s: {self.log_path.read_text()}")
            time.sleep(0.02)  # poll interval; the deadline is checked above

    def processes(self):
        import psutil

        try:
            return [psutil.Process(self.proc.pid)] if self.proc.poll() is None else []
        except psutil.Error:
            return []

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(SERVE_DEADLINE)
            except subprocess.TimeoutExpired:
                say(f"db serve {self.proc.pid} ignored SIGTERM for {SERVE_DEADLINE} s: killed")
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Cluster:
    """One PostgreSQL cluster (dbserver/postgres/cluster.py), on 127.0.0.1; a fresh database per store."""

    def __init__(self, path):
        self.path, self.url = Path(path), None

    def start(self):
        from balsamdb.server.postgres import cluster as postgres
        from balsamdb.server.dbinit import init_db_directory

        init_db_directory(self.path, "postgres")
        port = postgres.start_cluster(self.path, listen="127.0.0.1", deadline=PG_DEADLINE)
        password = (self.path / "postgres.password").read_text().strip()
        self.url = f"postgresql://balsamdb:{password}@127.0.0.1:{port}/"

    def database(self, name):
        import psycopg2

        con = psycopg2.connect(self.url + "postgres", connect_timeout=10)
        con.autocommit = True
        try:
            con.cursor().execute(f"CREATE DATABASE {name}")
        finally:
            con.close()
        return self.url + name

    def processes(self):
        from balsamdb.server.postgres import cluster as postgres

        try:
            return postgres.cluster_processes(self.path)
        except Exception:  # noqa: BLE001  (only for the CPU figures: none rather than a failed run)
            return []

    def version(self):
        import psycopg2

        con = psycopg2.connect(self.url + "postgres", connect_timeout=10)
        try:
            cur = con.cursor()
            cur.execute("show server_version")
            return cur.fetchone()[0]
        finally:
            con.close()

    def stop(self):
        from balsamdb.server.postgres import cluster as postgres

        if (self.path / "balsamdb.json").exists():  # nothing to stop before `init` made the directory
            postgres.stop_cluster(self.path, mode="immediate", deadline=20)


# -- stores ------------------------------------------------------------------------------------------------------

class Stores:
    """Makes stores of each kind under ``base``; everything it starts is stopped by ``stack``."""

    def __init__(self, base, stack, admin_item):
        self.base, self.stack, self.admin_item = Path(base), stack, admin_item
        self.cluster = None
        self.servers = {}  # spec -> [Serve, WriteServer]
        self.made = 0

    def start_cluster(self):
        self.cluster = Cluster(self.base / "pgcluster")
        # Registered before the start: stops even a half-started cluster.
        self.stack.callback(_safely, self.cluster.stop, "the PostgreSQL cluster")
        self.cluster.start()

    def make(self, kind, name):
        """A fresh store of ``kind``; returns its spec (path or URL)."""
        from balsamdb.dbdir import DBDirectory

        self.made += 1
        name = f"{name}_{self.made}"
        if kind == "postgres":
            return self.cluster.database(name.replace("-", "_"))
        path = self.base / name
        DBDirectory(path).init()
        if kind == "sqlite":
            return str(path)
        import balsamdb

        with balsamdb.connect(path, spool=False) as db:  # the login, identical to the source's user
            db.call("import_items", items=[self.admin_item])
        writer = WriteServer(path)
        self.stack.callback(_safely, writer.stop, f"db dbserver of {path}")
        writer.start()
        serve = Serve(path, self.base)
        self.stack.callback(_safely, serve.stop, f"db serve of {path}")
        url = serve.wait_url().replace("http://", f"http://{ADMIN}:{ADMIN_PW}@", 1)
        self.servers[url] = [serve, writer]
        return url

    def release(self, spec):
        """Stop the servers of an HTTP store now (the stack would stop them at the end anyway)."""
        for server in self.servers.pop(spec, []):
            server.stop()

    def server_processes(self, *specs):
        procs = []
        for spec in specs:
            for server in self.servers.get(spec, []):
                procs.extend(server.processes())
            if spec.startswith("postgres"):
                procs.extend(self.cluster.processes())
        return {p.pid: p for p in procs}.values()


def _record(i, project):
    return {"label": f"run-{i:05d}", "timestamp": f"2025-01-{1 + i % 28:02d} 12:{i % 60:02d}:00+0000",
            "reason": f"sweep {i} {UNICODE if i % 7 == 0 else ''}", "duration": i / 10, "outcome": None,
            "parameters": {"content": f"n = {i}", "type": "SimpleParameterSet"}, "main_file": "main.py",
            "tags": sorted({f"t{i % 5}", "paper"} if i % 3 == 0 else {f"t{i % 5}"}), "project": project,
            "output_data": [{"path": f"out-{i}.txt", "digest": f"{i:040x}"}]}


def seed(path, records, jobs, password_hash):
    """As tests/test_transfer.py seeds a store, but with record times in the past (a store in use):
    times in the future would put every record in each catch-up pass and leave them out of the check."""
    import balsamdb

    with balsamdb.connect(path, spool=False) as db:
        db.call("user_save", name=ADMIN, password_hash=password_hash, admin=True)
        db.call("user_save", name="ada", password_hash=password_hash)
        db.call("permission_grant", project="Sweep", user="ada")
        db.projects.save("Open", description="for everyone", public=True)
        start = time.time() - 3600 - records
        items = []
        for i in range(records):
            project = "Sweep" if i % 4 else "Open"
            items.append({"kind": "record", "project": project, "label": f"run-{i:05d}",
                          "document": dict(_record(i, project), label=f"run-{i:05d}"), "created_at": start + i,
                          "updated_at": start + i})
        for first in range(0, len(items), 2000):
            db.call("import_items", items=items[first:first + 2000])
        ids = db.jobs.bulk_create([{"name": f"job-{i}", "workflow": f"wf{i % 3}", "tags": [f"g{i % 4}"],
                                    "data": {"i": i, "text": UNICODE}, "num_nodes": 1 + i % 8}
                                   for i in range(jobs)], make_workdir=False)
        for job_id in ids[:50]:
            db.jobs.update_state(job_id, "RUNNING", "started")
            db.jobs.update_state(job_id, "RUN_DONE", "exit 0")


def digests(store):
    found = store.digest()
    return {k: found[k] for k in ("projects", "jobs", "users", "permissions")}


# -- one copy ----------------------------------------------------------------------------------------------------

def busy_cpu():
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def measure_copy(src_spec, dst_spec, stores, profile=None):
    """Copy ``src_spec`` into ``dst_spec`` with transfer.copy_store; returns the measurements."""
    from balsamdb import transfer

    src = transfer.open_store(src_spec)
    try:
        dst = transfer.open_store(dst_spec, create=True)
        try:
            marks = []
            stop = threading.Event()
            timer = threading.Timer(COPY_DEADLINE, stop.set)
            timer.daemon = True
            servers = list(stores.server_processes(src_spec, dst_spec))
            load_before = os.getloadavg()[0]
            cpu0, srv0, busy0, t0 = time.process_time(), _cpu(servers), busy_cpu(), time.monotonic()
            timer.start()
            try:
                if profile is not None:
                    profile.enable()
                report = transfer.copy_store(src, dst, log=lambda s: marks.append((time.monotonic(), s)), stop=stop)
            finally:
                if profile is not None:
                    profile.disable()
                timer.cancel()
            wall = time.monotonic() - t0
            cpu, srv, busy = time.process_time() - cpu0, _cpu(servers) - srv0, busy_cpu() - busy0
            load_after = os.getloadavg()[0]
            if stop.is_set():
                raise RuntimeError(f"the copy {src.name} -> {dst.name} ran past {COPY_DEADLINE} s")
            digests_equal = digests(src) == digests(dst)  # untimed, independent of the copy's own check
        finally:
            dst.close()
    finally:
        src.close()
    # `pass N` sentences come after each pass; verification follows the last one.
    pass_marks = [t for t, s in marks if s.startswith("pass ")]
    first_end = t0 + report["first_pass_seconds"]
    verify_start = pass_marks[-1] if pass_marks else first_end
    items = sum(sum(v.values()) for v in report["first_pass"].values())
    return {
        "items": items,
        "first_pass": report["first_pass"],
        "first_pass_seconds": report["first_pass_seconds"],
        "first_pass_items_per_second": report["first_pass_items_per_second"],
        "catch_up_seconds": round(verify_start - first_end, 3),
        "verify_seconds": round(t0 + report["seconds"] - verify_start, 3),
        "seconds": report["seconds"],
        "items_per_second": report["items_per_second"],
        "passes": report["passes"],
        "during_copy": report["during_copy"],
        "left_out_changing": report["verification"]["left_out_changing"],
        "verified": bool(report["verification"]["verified"]),
        "digests_equal": digests_equal,
        "cpu_seconds": {"bench": round(cpu, 2), "servers": round(srv, 2),
                        "other": round(max(0.0, busy - cpu - srv), 2)},
        "wall_seconds": round(wall, 3),
        "load_average": [load_before, load_after],
    }


def profile_summary(profile, top=14):
    """This process's time by function (tottime), and by where the code lives."""
    stats = pstats.Stats(profile)
    total = sum(v[2] for v in stats.stats.values())
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    functions = [{"function": f"{Path(f).name}:{line}({name})" if f != "~" else name,
                  "tottime": round(v[2], 3), "share": round(v[2] / total, 3) if total else None}
                 for (f, line, name), v in rows]
    groups = {}
    for (f, _line, name), v in stats.stats.items():
        if f == "~":  # a built-in: name it by what it is (sqlite3 execute, json, hashlib, socket...)
            match = re.search(r"of '([\w.]+)'|built-in method ([\w.]+)", name)
            where = (match.group(1) or match.group(2)) if match else name
        else:
            parts = Path(f).parts
            where = next((f"{p}/{Path(f).name}" if p in ("balsamdb", "dbserver") else p
                          for p in reversed(parts[:-1]) if p in ("balsamdb", "dbserver", "peewee", "psycopg2",
                                                                 "urllib3", "http", "json", "email")),
                         Path(f).name)
        groups[where] = groups.get(where, 0.0) + v[2]
    by_place = [{"where": k, "tottime": round(v, 3), "share": round(v / total, 3) if total else None}
                for k, v in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)[:top]]
    operations = {}
    for (f, _line, name), v in stats.stats.items():
        if (f.endswith(("stores.py", "digests.py", "store_import.py")) and name in ("export_items", "import_items",
                                                                            "store_digest", "store_counts")) \
                or (f.endswith("copying.py") and name in ("verify", "one_pass")):
            operations[f"{Path(f).stem}.{name}"] = round(v[3], 3)  # cumulative
    order = ("stores.store_counts", "copying.one_pass", "stores.export_items",
             "store_import.import_items", "copying.verify", "digests.store_digest")
    operations = {k: operations[k] for k in order if k in operations}
    return {"total_tottime": round(total, 3), "operations": operations, "functions": functions,
            "by_place": by_place}


# -- export and import -------------------------------------------------------------------------------------------

def export_import(src_path, stores, workdir):
    dump = Path(workdir) / "source.jsonl"
    started = time.monotonic()
    out = db_cli("export", dump, "--path", src_path, "--json")
    export_wall = time.monotonic() - started
    items = sum(json.loads(out.stdout)["counts"].values())
    dst = stores.make("sqlite", "import-dst")
    started = time.monotonic()
    out = db_cli("import", dump, "--path", dst, "--json")
    import_wall = time.monotonic() - started
    report = json.loads(out.stdout)
    started = time.monotonic()
    db_cli("--help")
    startup = time.monotonic() - started
    return {"items": items, "file_bytes": dump.stat().st_size,
            "export_wall_seconds": round(export_wall, 3), "export_items_per_second": round(items / export_wall, 1),
            "import_wall_seconds": round(import_wall, 3), "import_items_per_second": round(items / import_wall, 1),
            "import_seconds_in_process": report["seconds"], "import_verified": report.get("verified"),
            "import_in_process_items_per_second": round(items / report["seconds"], 1),
            "cli_startup_seconds": round(startup, 3)}


# -- the run ---------------------------------------------------------------------------------------------------

def table(rows):
    lines = [("| pair | items | first pass items/s | whole copy items/s | (min–max of runs) | first pass s | "
              "catch-up s | verify s | total s | verified, digests equal | CPU s bench / servers / other | load |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|"]
    for row in rows:
        cpu = row["cpu_seconds"]
        ok = "yes" if row["all_verified"] else \
            "NO: " + ", ".join(f"round {r['round']}: verified {r['verified']}, digests equal {r['digests_equal']}"
                               for r in row["runs"] if not (r["verified"] and r["digests_equal"]))
        low, high = row["whole_items_per_second_range"]
        lines.append(f"| {row['pair']} | {row['items']} | {row['first_pass_items_per_second']:.0f} | "
                     f"{row['items_per_second']:.0f} | {low:.0f}–{high:.0f} | {row['first_pass_seconds']:.2f} | "
                     f"{row['catch_up_seconds']:.2f} | "
                     f"{row['verify_seconds']:.2f} | {row['seconds']:.2f} | {ok} | "
                     f"{cpu['bench']:.1f} / {cpu['servers']:.1f} / {cpu['other']:.1f} | "
                     f"{row['load_average'][0]:.1f} |")
    return "\n".join(lines)


def run(args, base, stack):
    from balsamdb import transfer
    from balsamdb.passwords import hash_password

    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "records": args.records,
               "repeat": args.repeat,
               "jobs": args.jobs, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count(),
               "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
               "load_average_start": os.getloadavg(), "copy": "transfer.copy_store in-process", "pairs": []}
    password_hash = hash_password(ADMIN_PW)
    started = time.monotonic()
    from balsamdb.dbdir import DBDirectory

    source = {"sqlite": str(base / "src-sqlite")}
    DBDirectory(source["sqlite"]).init()
    seed(source["sqlite"], args.records, args.jobs, password_hash)
    results["seed_seconds"] = round(time.monotonic() - started, 2)
    say(f"seeded {source['sqlite']} in {results['seed_seconds']} s")
    with contextlib.closing(transfer.open_store(source["sqlite"])) as store:
        admin_item = next(i for i in store.export("user")["items"] if i["name"] == ADMIN)
    stores = Stores(base, stack, admin_item)
    started = time.monotonic()
    stores.start_cluster()
    results["postgres"] = stores.cluster.version()
    results["cluster_start_seconds"] = round(time.monotonic() - started, 2)
    setup = {}
    for kind in ("postgres", "http"):
        source[kind] = stores.make(kind, f"src-{kind}")
        setup[kind] = measure_copy(source["sqlite"], source[kind], stores)
        if not (setup[kind]["verified"] and setup[kind]["digests_equal"]):
            raise RuntimeError(f"the {kind} source is not an equal copy of the SQLite source: {setup[kind]}")
        say(f"made the {kind} source: {setup[kind]['items_per_second']} items/s")
    results["source_setup"] = setup
    runs = {}
    for number in range(1, args.repeat + 1):  # rounds interleave the pairs: a burst of load hits all alike
        for src_kind in KINDS:
            for dst_kind in KINDS:
                dst = stores.make(dst_kind, f"dst-{src_kind}-{dst_kind}")
                row = measure_copy(source[src_kind], dst, stores)
                stores.release(dst)
                row["pair"], row["round"] = f"{src_kind} → {dst_kind}", number
                runs.setdefault(row["pair"], []).append(row)
                say(f"round {number}, {row['pair']}: {row['items']} items, first pass "
                    f"{row['first_pass_items_per_second']} items/s, whole {row['items_per_second']} items/s, "
                    f"{row['seconds']} s, verified {row['verified']}, digests equal {row['digests_equal']}, "
                    f"cpu {row['cpu_seconds']}, load {row['load_average'][0]:.1f}")
    for rows in runs.values():
        median = sorted(rows, key=lambda r: r["seconds"])[(len(rows) - 1) // 2]
        results["pairs"].append(dict(median, runs=rows, all_verified=all(r["verified"] and r["digests_equal"]
                                                                          for r in rows),
                                     whole_items_per_second_range=[min(r["items_per_second"] for r in rows),
                                                                   max(r["items_per_second"] for r in rows)]))
    results["export_import"] = export_import(source["sqlite"], stores, base)
    say(f"export/import: {results['export_import']}")
    if args.profile:
        src_kind, dst_kind = args.profile.split(":")
        profile = cProfile.Profile()  # wall clock (a CPU-time timer costs a system call per event: 10x slower)
        dst = stores.make(dst_kind, f"profile-{src_kind}-{dst_kind}")
        row = measure_copy(source[src_kind], dst, stores, profile=profile)
        stores.release(dst)
        results["profile"] = {"pair": f"{src_kind} → {dst_kind}", "seconds": row["seconds"],
                              "cpu_seconds": row["cpu_seconds"], **profile_summary(profile)}
    results["load_average_end"] = os.getloadavg()
    return results


def print_report(results):
    print(f"\n{results['records']} records + {results['jobs']} jobs (+ 2 users, 2 projects, 1 permission); "
          f"{results['cores']} cores; Python {results['python']}, SQLite {results['sqlite']}, "
          f"PostgreSQL {results['postgres']}; copies by {results['copy']}")
    print(f"load average at start {results['load_average_start'][0]:.1f}, at end "
          f"{results['load_average_end'][0]:.1f}; seeding {results['seed_seconds']} s\n")
    print(f"each pair: the median (by total seconds) of {results['repeat']} runs into fresh destinations, "
          f"rounds interleaved\n")
    print(table(results["pairs"]))
    ei = results["export_import"]
    print(f"\ndb export of the SQLite source ({ei['items']} items, {ei['file_bytes'] / 1e6:.1f} MB): "
          f"{ei['export_wall_seconds']:.2f} s, {ei['export_items_per_second']:.0f} items/s; "
          f"db import into a fresh SQLite DB directory: {ei['import_wall_seconds']:.2f} s, "
          f"{ei['import_items_per_second']:.0f} items/s ({ei['import_seconds_in_process']:.2f} s in-process incl. "
          f"its check, {ei['import_in_process_items_per_second']:.0f} items/s; verified {ei['import_verified']}); "
          f"wall times include the CLI's start-up ({ei['cli_startup_seconds']:.2f} s for `db --help`)")
    if "profile" in results:
        prof = results["profile"]
        print(f"\ncProfile of {prof['pair']} ({prof['seconds']} s under the profiler; CPU s: this process "
              f"{prof['cpu_seconds']['bench']}, servers {prof['cpu_seconds']['servers']}, other work "
              f"{prof['cpu_seconds']['other']}):")
        print("  cumulative, per operation: " + ", ".join(f"{k} {v:.2f} s" for k, v in prof["operations"].items()))
        for entry in prof["by_place"][:10]:
            print(f"  {entry['share'] * 100:5.1f}%  {entry['tottime']:7.3f} s  {entry['where']}")
        print("  top functions:")
        for entry in prof["functions"][:10]:
            print(f"  {entry['share'] * 100:5.1f}%  {entry['tottime']:7.3f} s  {entry['function']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds over the 9 pairs (interleaved); the table shows each pair's median run")
    parser.add_argument("--json", metavar="FILE", help="write every measurement here")
    parser.add_argument("--profile", metavar="SRC:DST", help="run this pair once more under cProfile")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (servers are stopped)")
    args = parser.parse_args()
    if args.profile and not re.fullmatch(rf"({'|'.join(KINDS)}):({'|'.join(KINDS)})", args.profile):
        parser.error(f"--profile takes SRC:DST with each one of {', '.join(KINDS)}")

    def on_sigterm(_signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    # Under root the cluster runs as another user, who must be able to pass through the path: 0711, in /tmp.
    base = Path(tempfile.mkdtemp(prefix="bench-copy-", dir="/tmp"))
    os.chmod(base, 0o711)
    t0 = time.monotonic()
    stack = contextlib.ExitStack()  # stops every server and the cluster, in reverse order
    try:
        results = run(args, base, stack)
    except KeyboardInterrupt:
        say("interrupted: stopping everything it started")
        return 130
    finally:
        # No second Ctrl-C in the middle of stopping (each stop has its own deadline).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    results["seconds"] = round(time.monotonic() - t0, 1)
    print_report(results)
    print(f"\nwhole run: {results['seconds']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    return 0 if all(r["all_verified"] for r in results["pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
