"""A history checker for the fault and load tests (issue 25): Jepsen/Elle-style, simplified for
last-writer-wins registers and for creates.

Each writer process logs, per call, an *invocation* and a *completion* (one JSON object a line):

    {"e": "invoke", "client": C, "seq": N, "key": K, "kind": "create"|"write", "value": V, "t": T}
    {"e": "ok"|"spooled"|"error"|"refused", "client": C, "seq": N, "t": T}

``ok``: the server (or SQLite directly) answered; ``spooled``: the call returned with the write in
the spool; ``refused``: a definite refusal (nothing written); ``error``: anything else (the write may
or may not have happened: a timeout).  A call with no completion (its process was killed) is
indeterminate too.  ``t`` is ``time.time()`` on the writer's host (tests run on one host).

What the database holds is given per key as the sequence of values *applied*, in the order they were
applied (a record's versions, oldest first; one entry per job row for a create), and the key's final
value.  :func:`check` proves, per key:

- every acknowledged (ok) or spooled write was applied, and no write was applied twice;
- nothing was applied that was never invoked, or that was refused;
- the order of application is consistent with real time and with each client's own order: when a
  write returned (ok or spooled) before another was invoked, the first is applied before the second
  (a client's calls are sequential, so its own order is included);
- the final value is the last applied write.

Use it as ``verdict = check(load(files), applied, final)``; ``verdict.ok``, ``str(verdict)``.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

DONE = ("ok", "spooled")  # the call returned with the write applied or durably waiting
OUTCOMES = ("ok", "spooled", "error", "refused")


@dataclass
class Op:
    client: str
    seq: int
    key: str
    kind: str
    value: str
    invoked: float
    completed: float = None
    outcome: str = None  # None: no completion logged (the writer was killed mid-call)


@dataclass
class Verdict:
    ops: int = 0
    outcomes: dict = field(default_factory=dict)
    keys: int = 0
    problems: list = field(default_factory=list)

    @property
    def ok(self):
        return not self.problems

    def __str__(self):
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items()))
        head = f"history of {self.ops} writes on {self.keys} keys ({counts}): "
        if self.ok:
            return head + "every acknowledged or spooled write applied exactly once, in an order consistent " \
                          "with real time and each client's order; final values are the last writes"
        shown = "\n  ".join(self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        return head + f"{len(self.problems)} problems:\n  {shown}{more}"


class HistoryLog:
    """The writer's side: ``log = HistoryLog(path, client)``; ``n = log.invoke(key, kind, value)``
    before the call; ``log.complete(n, outcome)`` after it.  Each line is flushed at once, so that
    a killed writer leaves every event it logged."""

    def __init__(self, path, client):
        self.handle = open(path, "a", buffering=1)
        self.client = client
        self.seq = 0

    def invoke(self, key, kind, value, now):
        self.seq += 1
        self._write({"e": "invoke", "client": self.client, "seq": self.seq, "key": key, "kind": kind,
                     "value": value, "t": now})
        return self.seq

    def complete(self, seq, outcome, now):
        assert outcome in OUTCOMES, outcome
        self._write({"e": outcome, "client": self.client, "seq": seq, "t": now})

    def _write(self, event):
        self.handle.write(json.dumps(event, separators=(",", ":")) + "\n")

    def close(self):
        self.handle.close()


def load(paths):
    """The operations of the history files ``paths`` (a torn last line, from a killed writer, is
    ignored: its event did not happen as far as the checker knows)."""
    ops = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            ident = (event["client"], event["seq"])
            if event["e"] == "invoke":
                ops[ident] = Op(event["client"], event["seq"], event["key"], event["kind"], event["value"],
                                event["t"])
            elif ident in ops:
                ops[ident].completed, ops[ident].outcome = event["t"], event["e"]
    return list(ops.values())


def check(ops, applied, final=None):
    """The :class:`Verdict` of history ``ops`` against ``applied`` ({key: [value, ...] in the order
    applied}) and ``final`` ({key: final value}; keys missing there are not checked for it)."""
    final = final or {}
    verdict = Verdict(ops=len(ops), keys=len({op.key for op in ops} | set(applied)))
    for op in ops:
        verdict.outcomes[op.outcome or "no completion"] = verdict.outcomes.get(op.outcome or "no completion", 0) + 1
    by_value = {}
    for op in ops:
        if (op.key, op.value) in by_value:
            verdict.problems.append(f"{op.key}: value {op.value!r} written twice (the writers must make values "
                                    "unique)")
        by_value[(op.key, op.value)] = op
    invoked_keys = {op.key for op in ops}
    for key in sorted(invoked_keys | set(applied)):
        sequence = list(applied.get(key, []))
        positions = {}
        for index, value in enumerate(sequence):
            op = by_value.get((key, value))
            if op is None:
                verdict.problems.append(f"{key}: {value!r} applied but never written (invented or foreign)")
                continue
            if value in positions:
                verdict.problems.append(f"{key}: {value!r} applied twice (client {op.client} call {op.seq}, "
                                        f"{op.outcome or 'no completion'})")
                continue
            if op.outcome == "refused":
                verdict.problems.append(f"{key}: {value!r} applied although it was refused (client {op.client} "
                                        f"call {op.seq})")
            positions[value] = index
        key_ops = [op for op in ops if op.key == key]
        for op in key_ops:
            if op.outcome in DONE and op.value not in positions:
                verdict.problems.append(f"{key}: {op.value!r} lost: {op.outcome} by client {op.client} "
                                        f"(call {op.seq}) but never applied")
        # Real-time order (which includes each client's order): a write that returned before
        # another was invoked goes first.  Sorted by completion, each applied write must come
        # before every applied write invoked after it completed.
        done = sorted((op for op in key_ops if op.outcome in DONE and op.value in positions),
                      key=lambda op: op.completed)
        applied_ops = sorted((op for op in key_ops if op.value in positions), key=lambda op: op.invoked)
        for first in done:
            for later in applied_ops:
                if later.invoked > first.completed and positions[later.value] < positions[first.value]:
                    verdict.problems.append(
                        f"{key}: {later.value!r} (client {later.client} call {later.seq}, invoked "
                        f"{later.invoked - first.completed:.3f} s after {first.value!r} returned) was applied "
                        f"before it")
        if key in final:
            last = sequence[-1] if sequence else None
            if final[key] != last:
                verdict.problems.append(f"{key}: final value {final[key]!r} is not the last applied write {last!r}"
                                        " (stale or lost final value)")
    return verdict


# -- what the database holds -------------------------------------------------------------------------------

def _read(path, function):
    """``function(database)`` on the DB directory's database, with SQL (never through a server:
    the checker reads what is stored, also after the server was stopped)."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.models import MODELS
    from balsamdb.settings import load_settings

    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        with database.bind_ctx(MODELS):
            return function(database)
    finally:
        database.close()


def applied_jobs(path, workflow=None):
    """{job id: [job id] * rows} for the jobs (of ``workflow``) of DB directory ``path``: a create
    applied once appears once (a CREATED history row counts too: a create applied twice under one
    id leaves two)."""
    from balsamdb.models import Job, JobStateChange

    def read(database):
        jobs = Job.select(Job.id)
        if workflow:
            jobs = jobs.where(Job.workflow == workflow)
        ids = [row.id for row in jobs]
        created = (JobStateChange.select(Job.id).join(Job, on=(JobStateChange.job == Job.key))
                   .where(JobStateChange.to_state == "CREATED", Job.id.in_(jobs)))
        return ids, [job_id for (job_id,) in created.tuples()]

    ids, created = _read(path, read)
    counts = Counter(created)
    return {job_id: [job_id] * max(1, counts[job_id]) for job_id in ids}


def applied_registers(path, project, labels):
    """({label: [value of each version, oldest first]}, {label: current value}) of the records
    ``labels`` of ``project`` in DB directory ``path``; a register's value is its ``reason``."""
    from balsamdb.models import Project, Record, RecordVersion
    from balsamdb.operations.records import decompress

    def read(database):
        applied, final = {}, {}
        rows = (Record.select(Record.id, Record.label, Record.document).join(Project)
                .where(Project.name == project, Record.label.in_(list(labels))))
        for record in rows:
            final[record.label] = json.loads(record.document)["reason"]
            versions = RecordVersion.select().where(RecordVersion.record == record.id).order_by(RecordVersion.number)
            applied[record.label] = [json.loads(decompress(v.document))["reason"] for v in versions]
        return applied, final

    return _read(path, read)


REGISTER_LABELS = 4  # the writers' WRITER_REGISTERS in the fault tests


def check_writers(path, *writer_groups, registers=0):
    """Check the histories of ``writer_groups`` (helpers.Writers) against DB directory ``path``:
    their creates (jobs of their workflow) and, with ``registers``, the records ``reg-0`` ...
    of project ``history``.  Prints the verdict (pytest -s shows it) and fails with it."""
    ops = [op for group in writer_groups for op in load(group.history_files())]
    applied = {}
    for workflow in {group.workflow for group in writer_groups}:
        applied.update(applied_jobs(path, workflow))
    final = {}
    if registers:
        values, final = applied_registers(path, "history", [f"reg-{n}" for n in range(registers)])
        applied.update(values)
    verdict = check(ops, applied, final)
    print(f"[history] {path.name if hasattr(path, 'name') else path}: {verdict}")
    assert verdict.ok, str(verdict)
    return verdict
