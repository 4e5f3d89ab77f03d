"""Writing into a grown DB against a fresh one, in one run, taken in turn (issue 22).

For two DB directories, GROWN (e.g. a copy of a 1M-job directory) and FRESH (made by ``db init`` when
missing), alternately, ROUNDS times:

- ``bulk_create`` of a chunk of 5,000 jobs through the API in direct mode (no server running),
- ``bulk_create`` of 5,000 through the write server,
- the capacity load generator of ``db bench --capacity`` with C ``job_create`` requests in flight
  (32 by default: 32 writers) for S seconds against the write server.

Each line gives jobs/s (wall) and CPU µs per job: the client's own CPU (direct mode: the whole
write), and the server's CPU (through the server).  The medians' ratios grown / fresh close it.

    python scripts/grown_rate.py GROWN FRESH [--rounds 3] [--inflight 32] [--seconds 6] [--chunk 5000]

The jobs are those of ``db bench --scale``'s loader (a tag each, state READY, ten workflows).
Writes into GROWN and FRESH: use copies.
"""
import argparse
import json
import signal
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

WORKFLOWS = [f"wf-{i}" for i in range(10)]


def _specs(tag, count):
    return [{"name": f"{tag}-{i:07d}", "workflow": WORKFLOWS[i % 10], "application": "bench", "args": f"--seed {i}",
             "tags": ["gpu"] if i % 3 == 0 else ["cpu"], "state": "READY"} for i in range(count)]


def _self_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bulk(db, chunk, server_pid=None):
    """One ``bulk_create`` of ``chunk`` jobs on the open ``db`` (one connection for every round, as a
    loading script keeps); returns (jobs/s, client CPU us/job, server CPU us/job)."""
    from balsamdb.bench.writers import cpu_seconds

    specs = _specs(uuid.uuid4().hex[:8], chunk)
    s0 = cpu_seconds(server_pid) if server_pid else 0.0
    c0, t0 = _self_cpu(), time.perf_counter()
    db.jobs.bulk_create(specs, make_workdir=False)
    wall, cpu = time.perf_counter() - t0, _self_cpu() - c0
    server = cpu_seconds(server_pid) - s0 if server_pid else 0.0
    return chunk / wall, 1e6 * cpu / chunk, 1e6 * server / chunk


def capacity(path, inflight, seconds, server_pid):
    """The capacity generator against the running server; returns (writes/s, server CPU us/write, errors)."""
    from balsamdb.bench.writers import cpu_seconds
    from balsamdb.dbdir import DBDirectory

    info = DBDirectory(path).read_address()
    s0 = cpu_seconds(server_pid)
    gen = subprocess.run([sys.executable, "-m", "balsamdb.bench.capacity", "--generate", info["address"], str(path),
                          str(inflight), str(seconds)], capture_output=True, text=True, timeout=seconds + 400)
    if gen.returncode != 0:
        raise RuntimeError(gen.stderr[-2000:])
    counts = json.loads(gen.stdout.strip().splitlines()[-1])
    cpu = cpu_seconds(server_pid) - s0
    return (counts["answered_in_window"] / counts["window_seconds"], 1e6 * cpu / max(1, counts["ok"] + counts["errors"]),
            counts["errors"])


def main(argv=None):
    import balsamdb
    from balsamdb.dbdir import DBDirectory
    from balsamdb.server.supervisor import control

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grown")
    parser.add_argument("fresh")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--profile", metavar="PREFIX",
                        help="py-spy the server during the first capacity run of each DB: PREFIX-grown.txt, PREFIX-fresh.txt "
                             "(collapsed stacks per thread, waiting included)")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: direct,server,capacity")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    dirs = {"grown": DBDirectory(args.grown), "fresh": DBDirectory(args.fresh)}
    if not dirs["fresh"].is_db_directory():
        dirs["fresh"].init("sqlite3")
    rows = {}

    def note(part, name, values):
        rows.setdefault((part, name), []).append(values)
        print(json.dumps({"part": part, "db": name, "values": [round(v, 1) for v in values],
                          "load": round(__import__("os").getloadavg()[0], 1)}), flush=True)

    if "direct" not in skip:
        conns = {name: balsamdb.connect(dbdir.path) for name, dbdir in dirs.items()}
        for _ in range(args.rounds):
            for name, db in conns.items():
                note("direct bulk_create", name, bulk(db, args.chunk))
        for db in conns.values():
            db.close()
    pids, conns = {}, {}
    try:
        for name, dbdir in dirs.items():
            control.start(dbdir)
            pids[name] = dbdir.read_address()["server"]["pid"]
        conns = {name: balsamdb.connect(dbdir.path, require_server=True, client_deadline=600)
                 for name, dbdir in dirs.items()}
        for _ in range(args.rounds):
            for name, dbdir in dirs.items():
                if "server" not in skip:
                    note("server bulk_create", name, bulk(conns[name], args.chunk, pids[name]))
                if "capacity" not in skip:
                    spy = None
                    if args.profile and not any(p.startswith("capacity") and n == name for p, n in rows):
                        spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
                                                str(pids[name]), "--threads", "--idle", "--rate", "200", "--format", "raw",
                                                "--output", f"{args.profile}-{name}.txt", "--nonblocking"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    note(f"capacity C={args.inflight}", name, capacity(dbdir.path, args.inflight, args.seconds, pids[name]))
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)
                        spy.wait(timeout=60)
    finally:
        for db in (conns if pids else {}).values():
            db.close()
        for name in pids:
            control.stop(dirs[name])
    print("\npart                      grown/s   fresh/s  ratio   CPU us/job grown / fresh (client; server), capacity: (server; errors)")
    for part in dict.fromkeys(p for p, _ in rows):
        med = {n: [statistics.median(col) for col in zip(*rows[(part, n)])] for n in dirs}
        ratio = med["grown"][0] / med["fresh"][0]
        print(f"{part:24s} {med['grown'][0]:9.0f} {med['fresh'][0]:9.0f}  {ratio:5.2f}   "
              + " / ".join("; ".join(f"{v:.0f}" for v in med[n][1:]) for n in dirs))


if __name__ == "__main__":
    main()
