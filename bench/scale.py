"""`db bench --scale`: DB directories grown to 10k / 100k / 1M jobs (and records) on SQLite and
PostgreSQL, and every target of issue 22 measured at each size, in one run.

    python -m balsamdb.bench.scale --sizes 10000,100000 --records 10000 --backend both [--plot FILE]

Per backend, two DB directories with their servers running (``db dbserver``; PostgreSQL: a cluster
of each directory's own, made with initdb and stopped in a ``finally``): the grown one and a fresh
one for the rates that are stated against a fresh DB.  The grown one is filled by the fast loader
(:mod:`balsamdb.bench.scale_load`, set-up, not timed as a target) to each size in turn; then:

- the API's reads (``state_counts()``, ``filter(tags=[X], limit=20)``, an 8-character id prefix,
  a name glob, ``since=T, changed=True`` after 100 jobs changed), best of 5, ms;
- the CLI's start-up (``db ls --limit 1``, and ``db --version``), best of 5, apart;
- a full ``db ls`` as a subprocess (wall, CPU and peak RSS from wait4; the servers' RSS sampled),
  against the bare SQL of the same listing; then again while one writer makes jobs through the
  write server, whose p99 is compared with its p99 in the seconds before (same run);
- the web pages over HTTP against a real ``db serve`` started for the purpose;
- ``bulk_create`` through the server and N writer processes, grown DB against the fresh one,
  interleaved, best of two each;
- ``db copy`` (source server running, into a new SQLite DB directory, verified by the command and
  counted again here) and ``db export``, as subprocesses;
- read back: every job and record loaded or acknowledged is there once.
"""

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from balsamdb.bench import scale_procs, scale_targets, scale_writers
from balsamdb.bench.scale_load import load
from balsamdb.bench.web_client import Client, free_port, make_user, start_serve, stop_serve

BACKENDS = ("sqlite3", "postgres")
CHANGED = 100            # jobs changed before the changed-since read
HOUR = 3600.0


def best_ms(function, repeat=5):
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        times.append((time.perf_counter() - began) * 1000)
    return round(min(times), 1)


def _api_reads(db, row, size):
    row["state_counts_ms"] = best_ms(db.jobs.state_counts)
    row["counted"] = sum(r["count"] for r in db.jobs.state_counts())
    row["tag_limit20_ms"] = best_ms(lambda: db.jobs.filter(tags=["gpu"], limit=20))
    some = db.jobs.filter(name="sim-%06d" % random.Random(size).randrange(size))[0].id
    row["id_prefix_ms"] = best_ms(lambda: db.jobs.resolve_ids([some[:8]]))
    row["name_glob_ms"] = best_ms(lambda: db.jobs.filter(name_like="sim-0001*"))
    since = time.time()
    running = db.jobs.filter(state="RUNNING", limit=CHANGED)
    for job in running:
        db.jobs.update_state(job.id, "RUN_DONE")
    row["changed_since_ms"] = best_ms(lambda: db.jobs.filter(since=since, changed=True))
    seen = len(db.jobs.filter(since=since, changed=True))
    if seen != len(running):
        row["notes"].append(f"changed since: {seen} jobs read, {len(running)} changed")
        row["lost"] += abs(seen - len(running))


def _cli(dbdir, row, repeat):
    starts = [scale_procs.run_db(["ls", "--limit", "1", "--path", dbdir.path]) for _ in range(repeat)]
    row["cli_startup_s"] = round(min(s["wall_s"] for s in starts), 3)
    row["cli_startup_cpu_s"] = round(min(s["cpu_s"] for s in starts), 3)
    row["cli_version_s"] = round(min(scale_procs.run_db(["--version"])["wall_s"] for _ in range(repeat)), 3)


def _full_ls(dbdir, row, workdir):
    """A full ``db ls`` alone, its bare SQL, then ``db ls`` again while a writer writes."""
    servers = scale_procs.server_pids(dbdir)
    ls = scale_procs.run_db(["ls", "--path", dbdir.path], watch=servers)
    if ls["code"] != 0:
        row["notes"].append(f"db ls exited {ls['code']}: {ls['stderr'][-300:]}")
        return
    bare_s, rows = scale_procs.bare_listing_s(dbdir)
    row["ls_s"] = f"{ls['wall_s']:.1f} ({ls['cpu_s']:.1f})"
    row["bare_sql_s"] = round(bare_s, 2)
    row["ls_ratio"] = round(ls["wall_s"] / bare_s, 1)
    row["ls_client_mb"] = round(ls["rss_mb"])
    row["ls_server_mb"] = round(max(ls["servers_mb"].values() or [0]))
    row["ls_servers_mb"] = ls["servers_mb"]
    proc, go, outs = scale_writers.start(dbdir.path, "bench-p99", 1, 0, workdir)
    go.write_text("go")
    # bench-ok: the writer's own seconds with no reads, as long as the listing (3 s at least, 30 at most)
    time.sleep(min(30.0, max(3.0, ls["wall_s"])))
    during = time.time()
    ls2 = scale_procs.run_db(["ls", "--path", dbdir.path], watch=servers)
    after = time.time()
    Path(f"{go}.stop").write_text("stop")
    (result,) = scale_writers.collect(proc, outs)
    row["acked"].extend(zip(result["ids"], result["names"]))
    quiet = [ms for t, ms in result["lat"] if t < during]
    busy = [ms for t, ms in result["lat"] if during <= t <= after]
    if ls2["code"] != 0 or not quiet or not busy:
        row["notes"].append(f"writer p99: {len(quiet)} writes before, {len(busy)} during db ls (exit {ls2['code']})")
        return
    p_quiet, p_busy = scale_writers.percentile(quiet, 0.99), scale_writers.percentile(busy, 0.99)
    row["writer_p99_ms"] = f"{p_quiet:.1f} / {p_busy:.1f} ({len(quiet)} / {len(busy)} writes)"
    row["writer_p99_ratio"] = round(p_busy / p_quiet, 2)


def _pages(dbdir, row, n_records, repeat):
    from balsamdb.server.http.record_pages import PER_PAGE

    port = free_port()
    serve = start_serve(dbdir.path, port)
    try:
        client = Client(port)
        _p50, _p90, _size, row["dash_first_ms"] = client.time("/_balsamdb/jobs/", repeat)
        row["dash_filtered_ms"] = client.time("/_balsamdb/jobs/?workflow=wf-3&state=RUNNING", repeat)[0]
        row["dash_glob_ms"] = client.time("/_balsamdb/jobs/?name=sim-0001*&since=6h", repeat)[0]
        row["records_list_ms"] = client.time("/P/", repeat)[0]
        row["records_search_ms"] = client.time("/P/?search=point%2012", repeat)[0]
        last = max(1, -(-n_records // PER_PAGE))
        row["records_page_ms"] = client.time(f"/P/?page={last}", repeat)[0]
    finally:
        stop_serve(serve)
    for key in ("dash_first_ms", "dash_filtered_ms", "dash_glob_ms", "records_list_ms", "records_search_ms",
                "records_page_ms"):
        row[key] = round(row[key], 1)


def _rates(db, fresh, row, args, workdir, first):
    """bulk_create and N writers, grown DB against the fresh one, interleaved, best of two each."""
    bulk = {"grown": [], "fresh": []}
    for turn in range(2):
        for name, target in (("fresh", fresh), ("grown", db)):
            specs = [{"name": f"bulk-{first + turn}-{i}", "workflow": "bench-bulk"} for i in range(args.bulk)]
            began = time.perf_counter()
            ids = target.jobs.bulk_create(specs, make_workdir=False)
            bulk[name].append(args.bulk / (time.perf_counter() - began))
            if name == "grown":
                row["acked"].extend(zip(ids, (s["name"] for s in specs)))
    row["bulk_jobs_per_s"] = f"{max(bulk['grown']):,.0f} / {max(bulk['fresh']):,.0f}"
    row["bulk_ratio"] = round(max(bulk["grown"]) / max(bulk["fresh"]), 2)
    writers = {"grown": [], "fresh": []}
    for _turn in range(2):
        for name, target in (("fresh", fresh), ("grown", db)):
            rate, results = scale_writers.rate(target.path, "bench-writers", args.writers, args.writes, workdir)
            writers[name].append(rate)
            if name == "grown":
                row["acked"].extend(pair for r in results for pair in zip(r["ids"], r["names"]))
    row["writers_per_s"] = f"{max(writers['grown']):,.0f} / {max(writers['fresh']):,.0f} ({args.writers} writers)"
    row["writers_ratio"] = round(max(writers["grown"]) / max(writers["fresh"]), 2)


def _count(dbdir, sql):
    con, _mark = scale_procs.bare_connection(dbdir)
    try:
        cur = con.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        con.close()


def _copy_export(dbdir, row, workdir, timeout):
    from balsamdb.dbdir import DBDirectory

    src_jobs = _count(dbdir, "SELECT count(*) FROM job")[0][0]
    dst = Path(workdir) / "copy"
    shutil.rmtree(dst, ignore_errors=True)
    DBDirectory(dst).init()
    copied = scale_procs.run_db(["copy", dbdir.path, dst, "--json"], watch=scale_procs.server_pids(dbdir),
                                stdout=open(Path(workdir) / "copy.json", "w"), timeout=timeout)
    if copied["code"] == 0:
        dst_jobs = _count(DBDirectory(dst), "SELECT count(*) FROM job")[0][0]
        dst_records = _count(DBDirectory(dst), "SELECT count(*) FROM record")[0][0]
        items = dst_jobs + dst_records
        row["copy_s"] = f"{copied['wall_s']:.1f} ({copied['cpu_s']:.1f}), {items:,}"
        row["copy_items_per_s"] = round(items / copied["wall_s"])
        if dst_jobs != src_jobs or dst_records != row["records"]:
            row["notes"].append(f"db copy: {dst_jobs} of {src_jobs} jobs, {dst_records} of {row['records']} records")
            row["lost"] += abs(src_jobs - dst_jobs) + abs(row["records"] - dst_records)
    elif copied["code"] is None:
        row["notes"].append(f"db copy killed (at --cli-timeout, or by hand) after {copied['wall_s']:.0f} s: under "
                            f"{(src_jobs + row['records']) / copied['wall_s']:,.0f} items/s")
    else:
        row["notes"].append(f"db copy exited {copied['code']} after {copied['wall_s']:.0f} s: {copied['stderr'][-300:]}")
    shutil.rmtree(dst, ignore_errors=True)
    out = Path(workdir) / "export.jsonl"
    exported = scale_procs.run_db(["export", out, "--path", dbdir.path], timeout=timeout)
    if exported["code"] == 0:
        with open(out, "rb") as lines:
            count = sum(1 for _line in lines)
        row["export_s"] = f"{exported['wall_s']:.1f} ({exported['cpu_s']:.1f}), {count:,}"
        row["export_lines_per_s"] = round(count / exported["wall_s"])
    elif exported["code"] is None:
        row["notes"].append(f"db export killed (at --cli-timeout, or by hand) after {exported['wall_s']:.0f} s")
    else:
        row["notes"].append(f"db export exited {exported['code']}: {exported['stderr'][-300:]}")
    out.unlink(missing_ok=True)


def _read_back(dbdir, row, loaded_jobs, acked):
    """Every loaded job and every acknowledged write there once; the records all there."""
    total, distinct = _count(dbdir, "SELECT count(*), count(DISTINCT id) FROM job")[0]
    stored = _count(dbdir, "SELECT id, name FROM job WHERE workflow LIKE 'bench-%'")
    ids = {job_id for job_id, _name in stored}
    names = [name for _id, name in stored]
    lost = len({job_id for job_id, _name in acked} - ids)
    duplicated = (len(names) - len(set(names))) + (total - distinct) + max(0, len(stored) - len(acked))
    missing = (loaded_jobs + len(stored)) - total
    records = _count(dbdir, "SELECT count(*) FROM record")[0][0]
    row["jobs"], row["records_counted"] = total, records
    row["lost_or_duplicated"] = lost + duplicated + abs(missing) + abs(records - row["records"]) + row.pop("lost")
    if row["lost_or_duplicated"]:
        row["notes"].append(f"read back: {lost} acknowledged jobs lost, {duplicated} duplicated, {missing} loaded "
                            f"jobs missing, {records} of {row['records']} records")


def measure(db, fresh, grown, fresh_dir, args, size, n_records, workdir, acked):
    row = {"records": n_records, "notes": [], "lost": 0, "acked": []}
    steps = [("api reads", lambda: _api_reads(db, row, size)),
             ("cli start-up", lambda: _cli(grown, row, max(2, min(5, args.repeat)))),
             ("db ls", lambda: _full_ls(grown, row, workdir)),
             ("web pages", lambda: _pages(grown, row, n_records, args.repeat)),
             ("rates", lambda: _rates(db, fresh, row, args, workdir, size)),
             ("copy and export", lambda: _copy_export(grown, row, workdir, args.cli_timeout))]
    for name, step in steps:
        began = time.perf_counter()
        try:
            step()
        except Exception as exc:  # a failed step leaves its rows unmeasured and says why; the rest still run
            row["notes"].append(f"{name} failed: {exc!r}"[:400])
        _say(f"  {name}: {time.perf_counter() - began:.1f} s")
    acked.extend(row.pop("acked"))
    _read_back(grown, row, size, acked)
    row["db_size_mb"] = scale_procs.db_size_mb(grown)
    return row


def _say(text):
    print(text, file=sys.stderr, flush=True)


def run_backend(backend, sizes, records, args, base):
    """``{size: row}`` for one backend: one DB directory grown through ``sizes``."""
    import balsamdb

    table = {}
    work = base / backend
    work.mkdir()
    os.chmod(work, 0o711)  # a PostgreSQL cluster under root runs as another user, who must pass through
    rng = random.Random(22)
    now = time.time()
    # jobs created from 5 h to 1 h ago: their last change (a few minutes later) is before the run's
    campaign, stride = now - 5 * HOUR, 4 * HOUR / max(sizes)
    with scale_procs.served(work / "db", backend) as grown, scale_procs.served(work / "fresh", backend) as fresh_dir:
        port = (grown.read_address().get("postgres") or {}).get("port")
        made = made_records = 0
        acked = []
        with balsamdb.connect(grown.path) as db, balsamdb.connect(fresh_dir.path) as fresh:
            for size, n_records in zip(sizes, records):
                began = time.perf_counter()
                load(grown.path, n_records - made_records, size - made, first_record=made_records, first_job=made,
                     rng=rng, campaign=campaign, stride=stride, postgres_port=port)
                if not made:
                    make_user(grown.path)
                made, made_records = size, n_records
                load_s = time.perf_counter() - began
                _say(f"{backend} {size:,} jobs, {n_records:,} records: loaded in {load_s:.0f} s")
                began = time.perf_counter()
                row = measure(db, fresh, grown, fresh_dir, args, size, n_records, work, acked)
                row["load_s"] = round(load_s, 1)
                row["measure_s"] = round(time.perf_counter() - began, 1)
                table[str(size)] = row
                _say(json.dumps({"backend": backend, "size": size, **row}))
    return table


def run(sizes, records, args, workdir=None):
    """``{backend: {size: row}}``; every DB directory is made under a new directory of ``workdir``
    (default /tmp) and removed at the end unless ``args.keep``."""
    base = Path(tempfile.mkdtemp(prefix="bdb-scale-", dir=workdir))
    os.chmod(base, 0o711)
    table = {}
    try:
        for backend in backends(args.backend):
            table[backend] = run_backend(backend, sizes, records, args, base)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            _say(f"kept {base}")
    return table


def backends(choice):
    return list(BACKENDS) if choice == "both" else [choice]


def records_per_size(sizes, records):
    """Records at each size: one number N means min(N, size); a list gives each size its own."""
    if len(records) == 1:
        return [min(records[0], size) for size in sizes]
    if len(records) != len(sizes) or records != sorted(records):
        raise ValueError("--records: one number, or one (ascending) per size")
    return records


def parser():
    parse = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parse.add_argument("--sizes", default="10000,100000,1000000", help="jobs, comma-separated, ascending")
    parse.add_argument("--records", default="10000,100000,1000000",
                       help="records: one number (at most one a job) or one per size")
    parse.add_argument("--backend", choices=("sqlite3", "postgres", "both"), default="both")
    parse.add_argument("--writers", type=int, default=32, help="writer processes of the write-rate comparison")
    parse.add_argument("--writes", type=int, default=50, help="jobs each writer makes")
    parse.add_argument("--bulk", type=int, default=5000, help="jobs of each bulk_create of the bulk-rate comparison")
    parse.add_argument("--repeat", type=int, default=5, help="requests of each web page after its first two; runs of the CLI start-up (2 to 5)")
    parse.add_argument("--cli-timeout", type=float, default=3600, help="s before db copy/export are stopped")
    parse.add_argument("--workdir", default=None, help="where the DB directories are made (default: $TMPDIR or /tmp)")
    parse.add_argument("--keep", action="store_true", help="keep the DB directories")
    parse.add_argument("--json", dest="json_out", help="write the table's values to this file")
    parse.add_argument("--plot", help="draw the plot to this PNG (needs matplotlib: pip install .[bench])")
    parse.add_argument("--from", dest="from_files", nargs="+", metavar="FILE",
                       help="measure nothing: the table (and --plot) of earlier runs' --json files or stderr logs")
    return parse


def main(argv=None):
    parse = parser()
    args = parse.parse_args(argv)
    if args.from_files:
        table = scale_targets.read_results(args.from_files)
        print(scale_targets.format_table(table))
        if args.plot:
            scale_targets.plot(table, args.plot)
        return
    try:
        sizes = sorted(int(s) for s in str(args.sizes).split(","))
        records = records_per_size(sizes, [int(r) for r in str(args.records).split(",")])
    except ValueError as exc:
        parse.error(str(exc))
    # SIGTERM (a kill, or a background job's only way to be stopped) unwinds like Ctrl-C, so that the
    # ``finally`` blocks stop every server and PostgreSQL cluster the run started
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    began = time.perf_counter()
    table = run(sizes, records, args, args.workdir)
    print(scale_targets.format_table(table))
    print(f"\n{time.perf_counter() - began:.0f} s; load average {os.getloadavg()[0]:.1f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(table, indent=2))
    if args.plot:
        scale_targets.plot(table, args.plot)


if __name__ == "__main__":
    main()
