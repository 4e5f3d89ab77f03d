"""Writer processes of ``db bench --scale``: each makes jobs through the write server one at a time
(``jobs.create``) and times every write.  One launcher process imports balsamdb once and forks the
writers (32 fresh interpreters would cost a 2-core machine seconds of CPU before the first write).

    python -m balsamdb.bench.scale_writers PATH WORKFLOW N WRITES GO OUT
        N writers; each waits for the file GO, then makes WRITES jobs (0: until the file GO.stop
        exists) and writes OUT.<k>.json: {"ids", "names", "lat": [[t, ms], ...], "start", "end"}.
        Each writer touches OUT.<k>.ready once connected (its first write, not timed, is done).

In the benchmark process: :func:`start` launches, :func:`collect` reads the results back.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

READY_DEADLINE = 300.0
POLL = 0.002


def _writer(path, workflow, writes, go, out):
    import balsamdb

    names, ids, lat = [], [], []
    with balsamdb.connect(path) as db:
        tag = Path(out).name  # unique in the run (a pid may come again in a later launch)
        job = db.jobs.create(f"{tag}-warm", workflow=workflow, make_workdir=False)
        ids.append(job.id)
        names.append(job.name)
        Path(f"{out}.ready").touch()
        while not os.path.exists(go):
            time.sleep(POLL)  # bench-ok: wait for the start signal (the launcher's deadline bounds it)
        stop = f"{go}.stop"
        start = time.time()
        i = 0
        while (i < writes) if writes else not os.path.exists(stop):
            name = f"{tag}-{i}"
            began = time.perf_counter()
            job = db.jobs.create(name, workflow=workflow, make_workdir=False)
            lat.append((time.time(), (time.perf_counter() - began) * 1000))
            ids.append(job.id)
            names.append(name)
            i += 1
        end = time.time()
    Path(out).write_text(json.dumps({"ids": ids, "names": names, "lat": lat, "start": start, "end": end}))


def launcher(argv):
    path, workflow, n, writes, go, out = argv
    import balsamdb  # noqa: F401  (imported once, before the fork)

    children = []
    for k in range(int(n)):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _writer(path, workflow, int(writes), go, f"{out}.{k}.json")
            except BaseException as exc:  # the parent reports a missing result; say why here
                print(f"writer {k}: {exc!r}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        children.append(pid)
    failed = 0
    for pid in children:
        _pid, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    sys.exit(1 if failed else 0)


def start(path, workflow, n, writes, workdir):
    """Launch ``n`` writers; returns ``(proc, go_file, outs)`` once every writer is connected."""
    tag = f"{workflow}-{time.monotonic_ns()}"
    go = Path(workdir) / f"go-{tag}"
    out = Path(workdir) / f"out-{tag}"
    proc = subprocess.Popen([sys.executable, "-m", "balsamdb.bench.scale_writers", str(path), workflow, str(n),
                             str(writes), str(go), str(out)])
    outs = [Path(f"{out}.{k}.json") for k in range(n)]
    deadline = time.monotonic() + READY_DEADLINE
    while not all(Path(f"{o}.ready").exists() for o in outs):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{n} writers of {workflow} did not connect (exit code {proc.poll()})")
        time.sleep(0.01)  # bench-ok: poll for the writers' ready files with a deadline
    return proc, go, outs


def collect(proc, outs, deadline=1800):
    """Wait for the writers; their results (a list of dicts)."""
    try:
        proc.wait(timeout=deadline)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        raise RuntimeError(f"a writer failed (exit code {proc.returncode})")
    return [json.loads(o.read_text()) for o in outs]


def rate(path, workflow, n, writes, workdir):
    """Writes/s of ``n`` writers making ``writes`` jobs each, and their results."""
    proc, go, outs = start(path, workflow, n, writes, workdir)
    go.write_text("go")
    results = collect(proc, outs)
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    return n * writes / span, results


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


if __name__ == "__main__":
    launcher(sys.argv[1:])
