"""Job dependencies, decided by the writer in the transaction of the write that causes them.

A job with parents waits in AWAITING_PARENTS.  When a parent reaches JOB_FINISHED, each of its
children whose parents have now all finished moves to READY in the same transaction, with a
history row saying why (:func:`release_children`): exactly once, since the move is made only
from AWAITING_PARENTS.  A parent that ends FAILED or USER_KILLED leaves its children waiting
(:func:`waiting_on` says for what).  The links live in the ``job_parent`` table (parent ->
child, indexed on the parent); the job's ``parents`` column says the same for readers.

Checks: a parent must exist (or be created in the same request), a job may not be its own
ancestor.  A create without parents reads nothing (the insert-only path stays as fast).
"""

from .. import states
from ..exceptions import BadRequest, NotFound
from ..models import Job, JobParent

FINISHED = "JOB_FINISHED"
WAITING = "AWAITING_PARENTS"
_CHUNK = 400  # ids per IN (...): below SQLite's limit on parameters


def _flush_pending(insert):
    """Make the rows that an optimistic pass deferred (earlier requests of the batch: a spooled
    parent before its spooled child), so that the reads below see them."""
    flush = getattr(insert, "flush", None)
    if flush is not None:
        flush()


def _states_of(ids):
    """``{id: state}`` of the jobs among ``ids`` that exist."""
    ids = list(ids)
    found = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        found.update(Job.select(Job.id, Job.state).where(Job.id.in_(chunk)).tuples())
    return found


def _check_acyclic(edges):
    """Refuse a cycle among new jobs: ``edges`` maps a job id to its parents (only those of the
    same request; the others exist already and cannot depend on a job not yet made)."""
    done, active = set(), set()
    for start in edges:
        if start in done:
            continue
        stack = [(start, iter(edges.get(start, ())))]
        active.add(start)
        while stack:
            node, parents = stack[-1]
            step = next(parents, None)
            if step is None:
                stack.pop()
                active.discard(node)
                done.add(node)
            elif step in active:
                raise BadRequest(f"job {step} would be its own ancestor (a cycle of parents); nothing was created")
            elif step not in done and step in edges:
                active.add(step)
                stack.append((step, iter(edges[step])))


def link_new_jobs(rows, when, insert):
    """Check the parents of new job ``rows`` (dicts, as :func:`~.jobs.clean_job` makes them),
    start a waiting job whose parents have all finished as READY, and return the links to insert
    (after the jobs).  Rows without parents cost nothing here."""
    with_parents = [r for r in rows if r.get("parents")]
    if not with_parents:
        return []
    _flush_pending(insert)
    new = {r["id"]: r for r in rows}
    wanted = {p for r in with_parents for p in r["parents"] if p not in new}
    existing = _states_of(wanted) if wanted else {}
    missing = sorted(wanted - existing.keys())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise NotFound(f"unknown parent job {shown}; nothing was created (create parents first, or in the same "
                       "bulk_create)")
    for row in with_parents:
        if row["id"] in row["parents"]:
            raise BadRequest(f"job {row['id']} cannot be its own parent")
    _check_acyclic({r["id"]: [p for p in r["parents"] if p in new] for r in with_parents})
    for row in with_parents:
        row["parents"] = list(dict.fromkeys(row["parents"]))
        if row["state"] == WAITING and all(existing.get(p) == FINISHED for p in row["parents"]):
            row["state"] = "READY"
            row["state_message"] = row["state_message"] or "its parents had all finished when it was created"
    return links_of(with_parents)


def links_of(rows):
    """The ``job_parent`` rows of jobs ``rows`` (dicts with ``id`` and ``parents``), one per parent."""
    return [{"child": r["id"], "parent": p} for r in rows for p in dict.fromkeys(r["parents"])]


def import_links(fast, added, replaced, unchanged):
    """The links of jobs that ``import_items`` wrote as they are (dicts with ``id`` and ``parents``):
    those of ``added`` jobs are inserted, those of ``replaced`` ones made anew, and those of
    ``unchanged`` ones that are missing are inserted (a copy made before copies carried links is
    completed by running it again); no link is made twice.  Nothing is checked or released: a
    copy keeps the states as they are, and a parent may come in a later page of the copy."""
    replaced_ids = [r["id"] for r in replaced]
    for start in range(0, len(replaced_ids), _CHUNK):
        JobParent.delete().where(JobParent.child.in_(replaced_ids[start:start + _CHUNK])).execute()
    links = links_of([r for r in added + replaced if r["parents"]])
    kept = links_of([r for r in unchanged if r["parents"]])
    children = sorted({link["child"] for link in kept})
    have = set()
    for start in range(0, len(children), _CHUNK):
        have.update(JobParent.select(JobParent.child, JobParent.parent)
                    .where(JobParent.child.in_(children[start:start + _CHUNK])).tuples())
    links.extend(link for link in kept if (link["child"], link["parent"]) not in have)
    if links:
        fast.executemany(fast.insert_parent, links)


def release_children(fast, parent_id, when):
    """In the transaction where ``parent_id`` reached JOB_FINISHED: move each child that waits
    for no other parent to READY, with a history row; returns their ids."""
    if fast.postgres:
        fast.execute(fast.lock_children, (parent_id,)).fetchall()
    ready = [row[0] for row in fast.execute(fast.releasable_children, (parent_id,)).fetchall()]
    if ready:
        _move_waiting(fast, ready, when, f"released: its parents have all finished (the last: {parent_id})")
    return ready


def _move_waiting(fast, ids, when, message):
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        moved = (Job.update(state="READY", state_message=message, updated_at=when)
                 .where(Job.id.in_(chunk) & (Job.state == WAITING)).execute())
        if moved != len(chunk):  # never expected: the rows were read (and on PostgreSQL locked) just now
            raise BadRequest("a waiting child changed while its parent finished; try again")
        fast.executemany(fast.insert_history, [
            {"job": i, "time": when, "from_state": WAITING, "to_state": "READY", "message": message}
            for i in chunk])


def set_parents(job, parents, when, fast):
    """``job_modify`` of the parents of ``job`` (a model instance): checks that they exist and
    make no cycle, replaces the links, and releases a waiting job whose parents have all
    finished.  Returns the clean list."""
    parents = list(dict.fromkeys(parents))
    if job.id in parents:
        raise BadRequest(f"job {job.id} cannot be its own parent")
    found = _states_of(parents)
    missing = [p for p in parents if p not in found]
    if missing:
        raise NotFound(f"unknown parent job {', '.join(missing[:3])}; the job was not changed")
    # A cycle: the job is an ancestor of one of its new parents.
    seen, frontier = set(), list(parents)
    while frontier:
        seen.update(frontier)
        ancestors = set()
        for start in range(0, len(frontier), _CHUNK):
            chunk = frontier[start:start + _CHUNK]
            ancestors.update(p for (p,) in JobParent.select(JobParent.parent)
                             .where(JobParent.child.in_(chunk)).tuples())
        if job.id in ancestors:
            raise BadRequest(f"job {job.id} would be its own ancestor (a cycle of parents); the job was not changed")
        frontier = list(ancestors - seen)
    JobParent.delete().where(JobParent.child == job.id).execute()
    if parents:
        fast.executemany(fast.insert_parent, links_of([{"id": job.id, "parents": parents}]))
    if job.state == WAITING and parents and all(found[p] == FINISHED for p in parents):
        job.state, job.state_message = "READY", "released: its new parents have all finished"
        fast.executemany(fast.insert_history, [{"job": job.id, "time": when, "from_state": WAITING,
                                                "to_state": "READY", "message": job.state_message}])
    return parents


def waiting_on(job_id):
    """The parents of ``job_id`` that have not finished: ``[{id, name, state, blocked}]``; a
    parent that ended FAILED or USER_KILLED ``blocked`` the job (it waits until the parent is
    restarted and finishes)."""
    query = (Job.select(Job.id, Job.name, Job.state)
             .join(JobParent, on=(JobParent.parent == Job.id))
             .where((JobParent.child == job_id) & (Job.state != FINISHED)).order_by(Job.created_at))
    return [{"id": i, "name": n, "state": s, "blocked": s in states.FINAL} for i, n, s in query.tuples()]


def children_query(parent_id):
    """The ids of the children of ``parent_id`` (a subquery, for ``db ls --waiting-on``)."""
    return JobParent.select(JobParent.child).where(JobParent.parent == parent_id)


def forget(ids):
    """Delete the links of deleted jobs ``ids`` (as child and as parent)."""
    JobParent.delete().where(JobParent.child.in_(ids) | JobParent.parent.in_(ids)).execute()
