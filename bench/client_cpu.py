"""Client CPU per call: one process against a running server (issue 13, item 5).

    python -m balsamdb.bench.client_cpu --path P [--calls 3000] [--profile out.prof]

Creates ``--calls`` jobs (no working directory) and ``--calls`` pings with the public API and prints
the CPU time (user + system, ``resource.getrusage``) of this process per call, in µs.
"""

import argparse
import resource
import sys
import time


def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(path, calls, profile=None):
    import balsamdb

    db = balsamdb.connect(path, require_server=True)
    for i in range(50):  # warm up: imports, sockets, the address file
        db.jobs.create(name=f"warm-{i}", workflow="client-cpu", make_workdir=False)
        db.ping()
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU, not the wait for the server
        profiler.enable()
    start = cpu()
    for i in range(calls):
        db.jobs.create(name=f"cpu-{i}", workflow="client-cpu", make_workdir=False)
    creates = cpu() - start
    start = cpu()
    for _ in range(calls):
        db.ping()
    pings = cpu() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"job_create_us": 1e6 * creates / calls, "ping_us": 1e6 * pings / calls, "route": db.last_route}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", default=None)
    args = parser.parse_args(argv)
    result = measure(args.path, args.calls, args.profile)
    print(f"client CPU per job_create (no working directory): {result['job_create_us']:.0f} µs; "
          f"per ping: {result['ping_us']:.0f} µs (route {result['route']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
