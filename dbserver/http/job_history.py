"""The jobs pages' charts: the state history's moves per minute, kept per workflow by ``db serve``
and brought up to date from the rows added since (see :class:`HistoryCache`)."""

import logging
import threading
import time

import peewee as pw

from balsamdb import job_views
from balsamdb.models import Job, JobStateChange
from balsamdb.reads import Reader

log = logging.getLogger(__name__)

FULL_SECONDS = 600       # the charts' history is read whole again after this (else only its new rows)
WAIT_SECONDS = 0.15      # how long a page waits for a whole read it started before it answers without charts


def start_history(reader):
    """The dashboard's :class:`HistoryCache`, reading whole histories on threads of their own (the
    history of all jobs started at once), on connections with the ``read_time_limit`` of the
    settings (a whole read is not a page: the history of a million jobs takes seconds)."""
    whole = Reader(reader.dbdir, reader.settings, lazy=True)
    history = HistoryCache(read_whole=WholeReads(whole).start)
    history.read_whole("")
    return history


class WholeReads:
    """Whole reads of the history, each on a thread of its own, one at a time per workflow."""

    def __init__(self, reader):
        self.reader = reader
        self._reading = {}  # workflow -> threading.Event set when its read ended
        self._lock = threading.Lock()

    def start(self, history, workflow):
        """Start reading the moves of ``workflow`` whole into ``history`` (unless that read runs);
        returns the event set when it ends."""
        with self._lock:
            done = self._reading.get(workflow)
            if done is not None:
                return done
            done = self._reading[workflow] = threading.Event()
        threading.Thread(target=self._read, args=(history, workflow, done), name="jobs-history",
                         daemon=True).start()
        return done

    def _read(self, history, workflow, done):
        try:
            self.reader.query(lambda db: history.read(db, workflow), "the state history")
        except Exception as exc:  # noqa: BLE001 - the page says its charts are not there, and asks again
            log.warning("the state history of %s was not read: %s", workflow or "all jobs", exc)
        finally:
            self.reader.close()
            with self._lock:
                del self._reading[workflow]
            done.set()


class HistoryCache:
    """The state history's moves per minute (:func:`balsamdb.job_views.history_moves`), per workflow,
    kept up to date by reading only the rows added since: the whole history of 100,000 jobs takes a
    second to group on a busy machine, the rows of the last refresh a millisecond.

    Each refresh, in the page's read transaction, reads the history's newest id and adds the moves of
    the rows after the one it has seen.  Every job has one more move into a state than out of one (its
    creation), so the kept moves count the jobs: when that count no longer matches the number of jobs
    (less the difference found when the history was read whole), a job was deleted or its history
    replaced, and the whole history is read again; also every :data:`FULL_SECONDS` whatever happens.
    SQLite gives the largest id again once its row is deleted: the newest row seen is kept too (its job,
    time and state), and when the row of that id is not the same any more, the whole history is read
    again (a deleted job's moves taken over by another job's with the same counts).

    ``read_whole(cache, workflow)``, when given, starts such a whole read elsewhere (a thread of
    ``db serve``) and returns an event set when it ends: :meth:`get` waits for it at most
    :data:`WAIT_SECONDS` and otherwise answers None (the page shows its charts at a later refresh),
    and while a due whole read runs it goes on with the moves it keeps.  Without it, :meth:`get`
    reads whole itself."""

    def __init__(self, full_seconds=None, max_entries=64, read_whole=None):
        self.full_seconds = FULL_SECONDS if full_seconds is None else full_seconds
        self.max_entries = max_entries
        self._read_whole = read_whole
        # workflow -> (newest id seen, jobs less counted jobs, read whole at, moves, that row's _mark)
        self._entries = {}
        self._lock = threading.Lock()

    def read_whole(self, workflow):
        """Start the whole read of ``workflow`` elsewhere (see the class docs)."""
        return self._read_whole(self, workflow)

    def read(self, db, workflow):
        """Read the moves of ``workflow`` ("" for all) whole, and keep them."""
        newest = (JobStateChange.select(pw.fn.MAX(JobStateChange.id)).tuples().execute(db))[0][0] or 0
        query = Job.select(pw.fn.COUNT(pw.SQL("*")))
        jobs = (query.where(Job.workflow == workflow) if workflow else query).tuples().execute(db)[0][0]
        moves = job_views.history_moves(db, workflow or None, upto_id=newest)
        self._keep(workflow, (newest, jobs - _jobs_counted(moves), time.monotonic(), moves, _mark(db, newest)))
        return moves

    def get(self, db, workflow, jobs=None):
        """The moves of ``workflow`` ("" for all) as the database ``db`` holds them now (None: being
        read elsewhere, see the class docs); ``jobs``: the number of jobs of the workflow, when the
        caller has counted them."""
        newest = (JobStateChange.select(pw.fn.MAX(JobStateChange.id)).tuples().execute(db))[0][0] or 0
        if jobs is None:
            query = Job.select(pw.fn.COUNT(pw.SQL("*")))
            jobs = (query.where(Job.workflow == workflow) if workflow else query).tuples().execute(db)[0][0]
        with self._lock:
            entry = self._entries.get(workflow)
        due = entry is not None and time.monotonic() - entry[2] >= self.full_seconds
        if due and self._read_whole is not None:
            self.read_whole(workflow)  # read whole elsewhere; this page goes on with the kept moves
        seen_mark = _mark(db, entry[0]) if entry is not None else None
        if (entry is not None and entry[0] <= newest and (not due or self._read_whole is not None)
                and seen_mark == entry[4]):
            seen, offset, full_at, moves, _kept_mark = entry
            if newest > seen:
                moves = job_views.merge_moves(
                    moves, job_views.history_moves(db, workflow or None, after_id=seen, upto_id=newest))
            if jobs - _jobs_counted(moves) == offset:  # no job deleted, no history replaced
                newest_mark = seen_mark if newest == seen else _mark(db, newest)
                self._keep(workflow, (newest, offset, full_at, moves, newest_mark))
                return moves
        if self._read_whole is None:
            return self.read(db, workflow)
        if not self.read_whole(workflow).wait(WAIT_SECONDS):
            return None
        with self._lock:
            entry = self._entries.get(workflow)
        # read on another connection, perhaps a moment before or after this page's read: good enough
        # for a chart (the next refresh brings it up to date)
        return entry[3] if entry is not None else None

    def _keep(self, workflow, entry):
        with self._lock:
            if len(self._entries) >= self.max_entries and workflow not in self._entries:
                self._entries.clear()
            self._entries[workflow] = entry


def _mark(db, row_id):
    """What the history's row ``row_id`` holds (its job's key, time and states), or None: one lookup
    by the primary key."""
    rows = list(JobStateChange.select(JobStateChange.job, JobStateChange.time, JobStateChange.from_state,
                                      JobStateChange.to_state).where(JobStateChange.id == row_id).tuples().execute(db))
    return rows[0] if rows else None


def _jobs_counted(moves):
    """Moves into states less moves out of them: one per job whose whole history the moves hold."""
    return (sum(n for per_minute in moves["entered"].values() for n in per_minute.values())
            - sum(n for per_minute in moves["left"].values() for n in per_minute.values()))
