"""The jobs pages' charts: the state history's moves per minute, kept per workflow by ``db serve``
and brought up to date from the rows added since (see :class:`HistoryCache`)."""

import logging
import threading
import time

import peewee as pw

from balsamdb import job_views
from balsamdb.models import Job, JobStateChange

log = logging.getLogger(__name__)

FULL_SECONDS = 600       # the charts' history is read whole again after this (else only its new rows)


def start_history(reader):
    """The dashboard's :class:`HistoryCache`, its first reads started ahead on a thread (the moves of
    all jobs, then of each workflow), and read whole again on such a thread every :data:`FULL_SECONDS`."""
    running = threading.Lock()

    def refresh(first=False):
        if running.acquire(blocking=False):  # one whole read at a time
            threading.Thread(target=_read_ahead, args=(reader, history, running, first), name="jobs-history",
                             daemon=True).start()

    history = HistoryCache(refresh=refresh)
    refresh(first=True)
    return history


class HistoryCache:
    """The state history's moves per minute (:func:`balsamdb.job_views.history_moves`), per workflow,
    kept up to date by reading only the rows added since: the whole history of 100,000 jobs takes a
    second to group on a busy machine, the rows of the last refresh a millisecond.

    Each refresh, in the page's read transaction, reads the history's newest id and adds the moves of
    the rows after the one it has seen.  Every job has one more move into a state than out of one (its
    creation), so the kept moves count the jobs: when that count no longer matches the number of jobs
    (less the difference found when the history was read whole), a job was deleted or its history
    replaced, and the whole history is read again.  Every :data:`FULL_SECONDS` it is read whole again
    whatever happens: by ``refresh`` (a function that starts that read elsewhere; the page goes on with
    the kept moves meanwhile) when given, else by the page that finds it due.

    :meth:`read_all` reads the moves of every workflow in one pass, as ``db serve`` does ahead of the
    first page and every :data:`FULL_SECONDS` after: a page filtered by a workflow then only reads
    the rows added since (the history of one workflow of a million jobs takes seconds to group)."""

    def __init__(self, full_seconds=None, max_entries=64, refresh=None):
        self.full_seconds = FULL_SECONDS if full_seconds is None else full_seconds
        self.max_entries = max_entries
        self.refresh = refresh
        self._entries = {}  # workflow -> (newest id seen, jobs less counted jobs, read whole at, moves)
        self._covered = set()  # the workflows that read_all reads
        self._lock = threading.Lock()

    def read_all(self, db):
        """Read the moves of all jobs and of each workflow (the :data:`max_entries` largest) whole."""
        newest = (JobStateChange.select(pw.fn.MAX(JobStateChange.id)).tuples().execute(db))[0][0] or 0
        jobs = dict(Job.select(Job.workflow, pw.fn.COUNT(pw.SQL("*"))).group_by(Job.workflow).tuples().execute(db))
        per_workflow = job_views.history_moves_per_workflow(db, upto_id=newest)
        now = time.monotonic()
        every = {"entered": {}, "left": {}}
        for moves in per_workflow.values():
            every = job_views.merge_moves(every, moves)
        self._keep("", (newest, sum(jobs.values()) - _jobs_counted(every), now, every))
        largest = sorted(jobs, key=lambda w: -jobs[w])[:self.max_entries - 1]
        self._covered = {""} | set(largest)
        for workflow in largest:
            moves = per_workflow.get(workflow, {"entered": {}, "left": {}})
            self._keep(workflow, (newest, jobs[workflow] - _jobs_counted(moves), now, moves))

    def get(self, db, workflow, jobs=None):
        """The moves of ``workflow`` ("" for all) as the database ``db`` holds them now; ``jobs``: the
        number of jobs of the workflow, when the caller has counted them."""
        newest = (JobStateChange.select(pw.fn.MAX(JobStateChange.id)).tuples().execute(db))[0][0] or 0
        if jobs is None:
            query = Job.select(pw.fn.COUNT(pw.SQL("*")))
            jobs = (query.where(Job.workflow == workflow) if workflow else query).tuples().execute(db)[0][0]
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(workflow)
        due = entry is not None and now - entry[2] >= self.full_seconds
        elsewhere = due and self.refresh is not None and workflow in self._covered
        if elsewhere:
            self.refresh()  # read whole on another thread; this page goes on with the kept moves
        if entry is not None and entry[0] <= newest and (not due or elsewhere):
            seen, offset, full_at, moves = entry
            if newest > seen:
                moves = job_views.merge_moves(
                    moves, job_views.history_moves(db, workflow or None, after_id=seen, upto_id=newest))
            if jobs - _jobs_counted(moves) == offset:  # no job deleted, no history replaced
                self._keep(workflow, (newest, offset, full_at, moves))
                return moves
        moves = job_views.history_moves(db, workflow or None, upto_id=newest)
        self._keep(workflow, (newest, jobs - _jobs_counted(moves), now, moves))
        return moves

    def _keep(self, workflow, entry):
        with self._lock:
            if len(self._entries) >= self.max_entries and workflow not in self._entries:
                self._entries.clear()
            self._entries[workflow] = entry


def _jobs_counted(moves):
    """Moves into states less moves out of them: one per job whose whole history the moves hold."""
    return (sum(n for per_minute in moves["entered"].values() for n in per_minute.values())
            - sum(n for per_minute in moves["left"].values() for n in per_minute.values()))


def _read_ahead(reader, history, running, first):
    """Read the whole state history (on its own thread and connection): first the moves of all jobs
    (the dashboard without filters), then those of every workflow, so that the first page of either
    reads only what was added since (the history of 100,000 jobs takes about a second to group)."""
    try:
        if first:
            reader.query(lambda db: history.get(db, ""))
        reader.query(history.read_all)
    except Exception as exc:  # noqa: BLE001 - the pages read it themselves then
        log.info("the jobs history was not read ahead: %s", exc)
    finally:
        reader.close()
        running.release()
