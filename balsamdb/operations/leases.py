"""Claims with leases: launchers take jobs from the writer, which decides race-free.

``job_acquire`` takes up to n jobs that no one holds (or whose lease expired) and marks them with
the owner and a lease expiry, on the clock of the process that applies the write (the write
server's, never the client's).  On PostgreSQL the pick locks its rows with ``FOR UPDATE SKIP
LOCKED`` and the update re-checks that the job is free (compare-and-set), so two daemons on one
database never hand a job to two owners.  ``job_renew`` extends a lease, ``job_release`` ends it;
a state change by the owner renews it (``job_update_state(owner=...)``), a final state ends it.

Lost runs (:func:`find_lost_runs`, run by the write server about once a second from the index on
``lease_expires``, never a scan of RUNNING jobs): a claimed job not yet RUNNING is released
(owner cleared, state kept); a RUNNING one moves to RUN_TIMEOUT and, unless its workflow's
policy says ``stop``, on to RESTART_READY; each with a history row naming the owner and the last
renewal.
"""

import peewee as pw

from .. import states as _states
from ..exceptions import BadRequest, Conflict
from .. import jsonio
from ..job_fields import JOB_KEYS, LEASE_FIELDS
from ..models import Job, JSONText, WorkflowPolicy, now, quoter
from ..statements import statements
from .checks import check_number, check_str_list, check_text, check_uuid
from .registry import operation

DEFAULT_STATES = ("READY", "RESTART_READY")
MAX_ACQUIRE = 10000
MAX_LEASE = 7 * 86400.0
LOST_POLICIES = ("restart", "stop")
_CHUNK = 400


def _check_lease(lease):
    value = check_number(lease, "lease", float, 1)
    if value > MAX_LEASE:
        raise BadRequest(f"lease must be at most {MAX_LEASE:.0f} seconds (a week)")
    return value


def _check_owner(owner):
    return check_text(owner, "owner", max_len=255)


def _check_ids(job_ids, what="job_ids"):
    ids = [check_uuid(i) for i in check_str_list(job_ids, what)]
    if len(ids) > 5000:
        raise BadRequest(f"give at most 5000 {what} at a time")
    return ids


def _pick(condition, n):
    """Up to ``n`` rows ``(id, owner, lease_expires, renewed_at, state)`` matching ``condition``; on
    PostgreSQL locked for this transaction, skipping rows that another one holds (another daemon's
    claim in progress): two daemons never pick the same job."""
    query = (Job.select(Job.id, Job.owner, Job.lease_expires, Job.renewed_at, Job.state)
             .where(condition).limit(n))
    if _postgres(Job._meta.database):
        query = query.for_update("FOR UPDATE SKIP LOCKED")
    return list(query.tuples())


def _postgres(database):
    return isinstance(database, pw.PostgresqlDatabase)


@operation(write=True, spool=False)
def job_acquire(n, owner, lease=60.0, workflow=None, states=None, ids=None):
    """Claim up to ``n`` jobs for ``owner`` (a name such as ``launcher-3@host``) for
    ``lease`` seconds (default 60) and return them (each with its ``owner``,
    ``lease_expires``, ``renewed_at``; fewer, or none, when fewer are free).

    A job is free when no one holds it or its lease expired.  ``states`` (default
    READY and RESTART_READY), ``workflow`` and ``ids`` (these jobs only) narrow the
    choice.  Atomic: no job is handed to two owners while its lease lasts, also with
    two servers on one PostgreSQL database.  The lease expiry is on the server's
    clock.  Never spooled: with no server to answer, the call fails at once.
    """
    n = check_number(n, "n", int, 1)
    if n > MAX_ACQUIRE:
        raise BadRequest(f"n must be at most {MAX_ACQUIRE}")
    owner = _check_owner(owner)
    lease = _check_lease(lease)
    wanted = list(DEFAULT_STATES) if states is None else check_str_list(states, "states")
    bad = [s for s in wanted if s not in _states.STATES or s in _states.FINAL]
    if bad or not wanted:
        raise BadRequest(f"states must be non-final job states, not {bad or 'none'}")
    narrow = Job.state.in_(wanted)
    if workflow is not None:
        narrow &= Job.workflow == check_text(workflow, "workflow", max_len=255)
    if ids is not None:
        chosen = _check_ids(ids, "ids")
        if len(chosen) > 500:
            raise BadRequest("give at most 500 ids to acquire")
        narrow &= Job.id.in_(chosen)
    # Two indexed picks: the jobs no one holds (a partial index: claimed jobs are never read
    # again), then, if that was not enough, those whose lease expired (the index on the expiry).
    picked = _pick(narrow & Job.owner.is_null(), n)
    if len(picked) < n:
        picked += _pick(narrow & (Job.lease_expires < now()), n - len(picked))
    if not picked:
        return []
    when = now()
    taken_ids = [row[0] for row in picked]
    # Compare-and-set: each row still free (always so here; the guard states the invariant).
    updated = Job.update(owner=owner, lease_expires=when + lease, renewed_at=when) \
        .where(Job.id.in_(taken_ids) & (Job.owner.is_null() | (Job.lease_expires < when))).execute()
    if updated != len(taken_ids):
        raise Conflict("jobs changed hands while they were claimed; try again")
    takeovers = [{"job": i, "time": when, "from_state": s, "to_state": s,
                  "message": f"claimed by {owner}: the lease of {o} expired at {e:.3f} (last renewal {r:.3f})"}
                 for i, o, e, r, s in picked if o is not None]
    if takeovers:
        fast = statements()
        fast.executemany(fast.insert_history, takeovers)  # names each job by its id
    return _read_jobs(taken_ids)


def _read_jobs(ids):
    """The jobs ``ids`` as dicts (the job fields and the claim), read with one statement and
    decoded here: making a model instance per row cost more than the claim itself."""
    fields = [Job._meta.fields[name] for name in JOB_KEYS + LEASE_FIELDS]
    json_columns = [i for i, f in enumerate(fields) if isinstance(f, JSONText)]
    database = Job._meta.database
    q = quoter(database)
    sql = (f"SELECT {', '.join(q(f.column_name) for f in fields)} FROM {q(Job._meta.table_name)} "
           f"WHERE {q('id')} IN ({', '.join([database.param] * len(ids))})")
    names = [f.name for f in fields]
    out = []
    for row in database.execute_sql(sql, ids).fetchall():
        row = list(row)
        for i in json_columns:
            row[i] = None if row[i] is None else jsonio.loads(row[i])
        out.append(dict(zip(names, row)))
    return out


@operation(write=True, spool=False)
def job_renew(job_ids, owner, lease=None):
    """Extend the leases that ``owner`` holds on ``job_ids`` by ``lease`` seconds from now
    (default: the length each was taken for).  Returns ``{"renewed": n, "lost": [ids]}``:
    ``lost`` are the jobs that ``owner`` no longer holds (its lease expired and the server
    released the job, or another owner took it).  Never spooled (a late renewal means nothing).
    """
    ids = _check_ids(job_ids)
    owner = _check_owner(owner)
    when = now()
    renewed = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        held = (Job.id.in_(chunk)) & (Job.owner == owner)
        if lease is None:
            expiry = when + (Job.lease_expires - Job.renewed_at)
        else:
            expiry = when + _check_lease(lease)
        renewed += Job.update(lease_expires=expiry, renewed_at=when).where(held).execute()
    lost = []
    if renewed != len(set(ids)):
        held_now = set()
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            held_now.update(i for (i,) in Job.select(Job.id).where(Job.id.in_(chunk) & (Job.owner == owner)).tuples())
        lost = [i for i in dict.fromkeys(ids) if i not in held_now]
    return {"renewed": renewed, "lost": lost}


@operation(write=True)
def job_release(job_ids, owner):
    """End the claims of ``owner`` on ``job_ids`` (their states stay as they are; each may
    be acquired again).  Jobs that ``owner`` does not hold are left alone.  Returns
    ``{"released": n}``."""
    ids = _check_ids(job_ids)
    owner = _check_owner(owner)
    released = 0
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        released += (Job.update(owner=None, lease_expires=None, renewed_at=None)
                      .where(Job.id.in_(chunk) & (Job.owner == owner)).execute())
    return {"released": released}


def on_state_change(fast, job_id, owner, state, when):
    """In ``job_update_state``: refuse a change by an ``owner`` that does not hold the job;
    renew the lease of one that does; end the claim when the job reaches a final state."""
    row = fast.execute(fast.select_lease, (job_id,)).fetchone()
    holder, expires, renewed = row if row else (None, None, None)
    if owner is not None:
        owner = _check_owner(owner)
        if holder != owner:
            raise Conflict(f"job {job_id} is not held by {owner} (held by {holder or 'no one'}: "
                           "its lease may have expired); nothing was changed")
    if state in _states.FINAL:
        if holder is not None:
            Job.update(owner=None, lease_expires=None, renewed_at=None).where(Job.id == job_id).execute()
    elif owner is not None and expires is not None:
        length = expires - renewed if renewed is not None else 60.0
        Job.update(lease_expires=when + length, renewed_at=when).where(Job.id == job_id).execute()


@operation(write=True)
def workflow_policy_set(workflow, lost_runs):
    """Set what a lost run of ``workflow`` becomes: ``restart`` (the default: RUN_TIMEOUT,
    then RESTART_READY, to be acquired again) or ``stop`` (it stays RUN_TIMEOUT).
    Returns the policy ``{workflow, lost_runs, updated_at}``."""
    workflow = check_text(workflow, "workflow", max_len=255)
    if lost_runs not in LOST_POLICIES:
        raise BadRequest(f"lost_runs must be one of {', '.join(LOST_POLICIES)}, not {lost_runs!r}")
    when = now()
    save_policy(workflow, lost_runs, when)
    return {"workflow": workflow, "lost_runs": lost_runs, "updated_at": when}


def save_policy(workflow, lost_runs, when):
    """Insert or replace the policy of ``workflow`` (checked values): ``workflow_policy_set`` and
    ``import_items``."""
    WorkflowPolicy.insert(workflow=workflow, lost_runs=lost_runs, updated_at=when).on_conflict(
        conflict_target=[WorkflowPolicy.workflow],
        update={WorkflowPolicy.lost_runs: lost_runs, WorkflowPolicy.updated_at: when}).execute()


@operation(write=False)
def workflow_policy_list():
    """The workflows that have a policy: ``[{workflow, lost_runs, updated_at}]`` (the others
    restart their lost runs)."""
    return [{"workflow": w, "lost_runs": p, "updated_at": t} for w, p, t in
            WorkflowPolicy.select(WorkflowPolicy.workflow, WorkflowPolicy.lost_runs, WorkflowPolicy.updated_at)
            .order_by(WorkflowPolicy.workflow).tuples()]


def expired_leases(when, limit):
    """The query of the jobs whose lease expired before ``when`` (the oldest ``limit``): answered
    from the index on ``lease_expires`` (test_scale_schema.py plans it)."""
    return (Job.select(Job.id, Job.state, Job.owner, Job.renewed_at, Job.lease_expires, Job.workflow)
            .where(Job.lease_expires < when).order_by(Job.lease_expires).limit(limit))


def find_lost_runs(database, limit=500):
    """Handle up to ``limit`` expired leases (inside the caller's write transaction, on this
    process's clock); returns ``{"released": n, "timed_out": n, "restarted": n}``.  Reads the
    index on ``lease_expires`` only: the cost does not grow with the number of RUNNING jobs."""
    when = now()
    counts = {"released": 0, "timed_out": 0, "restarted": 0}
    query = expired_leases(when, limit)
    if _postgres(database):
        query = query.for_update("FOR UPDATE SKIP LOCKED")  # another daemon handles the ones it holds
    expired = list(query.tuples())
    if not expired:
        return counts
    workflows = {row[5] for row in expired}
    stopping = {w for (w,) in WorkflowPolicy.select(WorkflowPolicy.workflow)
                .where(WorkflowPolicy.workflow.in_(workflows) & (WorkflowPolicy.lost_runs == "stop")).tuples()}
    history = []
    for job_id, state, owner, renewed, expires, workflow in expired:
        why = (f"the lease of {owner} expired at {expires:.3f} (last renewal "
               f"{'never' if renewed is None else f'{renewed:.3f}'})")
        changes = {Job.owner: None, Job.lease_expires: None, Job.renewed_at: None}
        if state == "RUNNING":
            message = f"lost run: {why}"
            rows = [{"job": job_id, "time": when, "from_state": state, "to_state": "RUN_TIMEOUT", "message": message}]
            final, outcome = "RUN_TIMEOUT", ("timed_out",)
            if workflow not in stopping:
                rows.append({"job": job_id, "time": when, "from_state": "RUN_TIMEOUT", "to_state": "RESTART_READY",
                             "message": f"restarted: the lost-run policy of workflow {workflow} is restart"})
                final, message, outcome = "RESTART_READY", f"{message}; restarted", ("timed_out", "restarted")
            changes.update({Job.state: final, Job.state_message: message, Job.updated_at: when})
        else:
            rows = [{"job": job_id, "time": when, "from_state": state, "to_state": state,
                     "message": f"claim released: {why}"}]
            outcome = ("released",)
        # Guarded: a renewal that committed meanwhile (another daemon) keeps the job.
        if Job.update(changes).where((Job.id == job_id) & (Job.lease_expires < when)).execute():
            history.extend(rows)
            for key in outcome:
                counts[key] += 1
    if history:
        fast = statements()
        fast.executemany(fast.insert_history, history)  # names each job by its id
    return counts


__all__ = ["DEFAULT_STATES", "LEASE_FIELDS", "find_lost_runs", "job_acquire", "job_release", "job_renew",
           "on_state_change"]
