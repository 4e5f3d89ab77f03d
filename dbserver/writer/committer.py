"""The write server's database side: the one connection, the group commit of a batch of
requests, what a failed commit means, reconnecting, and forgetting old request ids.

Each batch of live requests is applied and committed by the batch thread
(:mod:`.batch_thread`, :meth:`Committer.commit_later`) while the loop receives, checks and
answers; the connection is not moved (the pipelined variant of issue 13 moved the COMMIT and with
it the connection, and was measured slower, see docs/benchmarks.md): one thread at a time uses it,
and every other use (:meth:`Committer.commit` of the spool drain, pruning, lost runs) first
settles the running batch.  Under the default ``sqlite_synchronous`` FULL the connection commits
with NORMAL and only the WAL's fdatasync leaves the committing thread: each COMMIT that returned is
reported to the :class:`~balsamdb.server.writer.flusher.Flusher`, whose flush its answers wait for."""

import contextlib
import logging
import os
import time

from balsamdb.applier import DATABASE_ERRORS, StorageFailure, apply, root_cause
from balsamdb.backoff import delay_after
from balsamdb.exceptions import ServerError, StorageError, TryAgain, database_busy
from balsamdb.operations.leases import find_lost_runs
from balsamdb.statements import statements

log = logging.getLogger("balsamdb.server.writer.server")

PRUNE_EVERY = 60.0         # seconds between looks for request ids old enough to forget
PRUNE_CHUNK = 5000
LOST_RUNS_EVERY = 1.0      # seconds between looks for expired leases (an index range read: cheap)
LOST_RUNS_CHUNK = 500


class Committer:
    """Applies batches of :class:`~balsamdb.request.Request` in one transaction each."""

    def __init__(self, database, db_type, dbdir, settings, stats, stopping):
        self.database = database
        self.db_type = db_type
        self.dbdir = dbdir
        self.settings = settings
        self.stats = stats
        self.stopping = stopping  # a callable: True once the server stops (ends reconnecting)
        self.flusher = None       # the WAL flusher, told of each COMMIT (SQLite under FULL)
        self.tick = None          # called now and then during a batch: answers what was flushed meanwhile
        self.batches = None       # the BatchThread that applies and commits beside the loop (commit_later)
        self.on_done = None       # called in the loop with each batch the batch thread finished, in order

    def begin(self):
        """The transaction of one group commit."""
        if self.db_type == "sqlite3":
            return self.database.atomic(lock_type="IMMEDIATE")
        return self.database.atomic()

    def commit(self, requests):
        """Apply ``requests`` in one transaction, in the caller's thread, after the batch the batch
        thread may run (settled first); each has its answer when this returns (after the commit),
        or an error answer when the batch was rolled back."""
        self.settle()
        return self._account(self._apply(requests))

    def commit_later(self, requests):
        """Hand ``requests`` to the batch thread (:mod:`.batch_thread`); they come back answered,
        in order, through ``on_done`` (see :meth:`take` and :meth:`settle`)."""
        self.batches.submit(requests)

    def take(self):
        """The loop's side, when the batch thread woke it: hand a finished batch to ``on_done``."""
        done = self.batches.take()
        if done is not None:
            self.on_done(self._account(done))

    def settle(self):
        """Wait for the batch the batch thread runs, and hand it to ``on_done``: before any other
        use of the connection, which one thread uses at a time."""
        if self.batches is not None:
            done = self.batches.settle()
            if done is not None:
                self.on_done(self._account(done))

    def _account(self, done):
        requests, seconds, refused = done
        if seconds is None:
            self.stats.errors += refused
        else:
            self.stats.committed(requests, seconds)
        return requests

    def _apply(self, requests):
        """The database's part of :meth:`commit` (run by the batch thread too): ``(requests,
        seconds, refused)``, ``seconds`` None when the batch was rolled back."""
        started = time.monotonic()
        try:
            apply(self.database, requests, self._begin_then_tick if self.tick else self.begin, self.tick)
        except (StorageFailure,) + DATABASE_ERRORS as exc:
            original = root_cause(getattr(exc, "original", exc))
            transient = self.lost_database(original)
            log.error("batch of %s requests rolled back (%s): %s", len(requests),
                      "will retry" if transient else "refused", original)
            if transient:
                error = TryAgain(f"the database is out of reach for a moment: {original}").to_dict()
            else:
                error = StorageError(f"the database refused the write: {original}{self.storage_hint(original)}; "
                                     "nothing of it was written").to_dict()
            return [r.refuse(error) for r in requests], None, 0 if transient else len(requests)
        except Exception as exc:  # no input may stop the server: a batch that fails unexpectedly is refused
            log.exception("a batch of %d requests failed unexpectedly; each is refused", len(requests))
            error = ServerError(f"the server failed on this batch: {type(exc).__name__}: {exc}").to_dict()
            return [r.refuse(error) for r in requests], None, len(requests)
        if self.flusher is not None:
            self.flusher.committed()
        return requests, time.monotonic() - started, 0

    @contextlib.contextmanager
    def _begin_then_tick(self):
        """:meth:`begin`, with a ``tick`` just before the COMMIT (which writes the WAL)."""
        with self.begin():
            yield
            self.tick()

    def storage_hint(self, error):
        """What a refused commit most likely means, for the people who read the error."""
        text = str(error).lower()
        if self.db_type == "sqlite3" and not os.access(self.dbdir.path, os.W_OK):
            return " (the DB directory is read-only)"
        if "full" in text or "no space" in text:
            return " (the disk is full: free some space and the same writes will succeed)"
        if "i/o error" in text:
            return " (the disk is failing, full or read-only)"
        if "readonly" in text or "read-only" in text:
            return " (the database is read-only)"
        return ""

    def lost_database(self, error):
        """After a failed batch: True (and reconnected) when the failure was the
        connection or a lock, not the data: the clients will resend as is."""
        if database_busy(error):
            return True
        try:
            self.database.execute_sql("SELECT 1")
            return False
        except Exception:  # any failure of the probe means the connection is gone
            pass
        self.reconnect()
        return True

    def connect(self, deadline):
        """Connect, retrying for ``deadline`` seconds (a database that restarts)."""
        end = time.monotonic() + deadline
        failures = 0
        while True:
            try:
                self.database.connect(reuse_if_open=True)
                return
            except DATABASE_ERRORS as exc:
                delay = delay_after(failures, 0.05, 1.0)
                if time.monotonic() + delay > end:
                    raise
                log.warning("database not reachable yet (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)  # wait-ok: the retry interval of a connect with a deadline
                failures += 1

    def reconnect(self):
        """Reconnect to the database, backing off, until it answers or the server stops."""
        try:
            self.database.close()
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass
        failures = 0
        while not self.stopping():
            try:
                self.database.connect()
                self.database.execute_sql("SELECT 1")
                log.info("reconnected to the database")
                return
            except DATABASE_ERRORS as exc:
                delay = delay_after(failures, 0.05, 1.0)
                log.warning("database unreachable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)  # wait-ok: the retry interval while the database is down
                failures += 1

    def prune_applied(self, spool_waits):
        """Forget the ids of writes applied more than ``applied_retention_days`` ago, a few
        thousand per turn so that live requests never wait long; returns the seconds until
        the next look: at once while there is more, else PRUNE_EVERY (or half the retention,
        if shorter).  Nothing is forgotten while ``spool_waits``: a spooled write may be one
        whose answer was lost, and its id must be there when it comes."""
        self.settle()
        keep = self.settings.applied_retention_days * 86400.0
        every = min(PRUNE_EVERY, keep / 2)
        if spool_waits:
            return every
        try:
            with self.begin():
                deleted = statements(self.database).prune_applied(time.time() - keep, PRUNE_CHUNK)
        except DATABASE_ERRORS as exc:
            log.warning("could not prune old request ids: %s", root_cause(exc))
            return every
        self.stats.pruned += deleted
        if deleted:
            log.info("forgot %d request ids applied more than %.1f days ago", deleted, keep / 86400)
        return 0.0 if deleted >= PRUNE_CHUNK else every

    def find_lost_runs(self):
        """Release the claims and time out the runs whose lease expired on this server's clock
        (see :func:`balsamdb.operations.leases.find_lost_runs`), in a write transaction of their
        own; returns the seconds until the next look: at once while there is more."""
        self.settle()
        try:
            with self.begin():
                counts = find_lost_runs(self.database, LOST_RUNS_CHUNK)
        except DATABASE_ERRORS as exc:
            log.warning("could not look for lost runs: %s", root_cause(exc))
            return LOST_RUNS_EVERY
        found = sum(counts[k] for k in ("released", "timed_out"))
        if found:
            self.stats.lost_runs += counts["timed_out"]
            self.stats.lost_runs_restarted += counts["restarted"]
            self.stats.claims_expired += counts["released"]
            log.info("expired leases: %d runs lost (%d restarted), %d claims released",
                     counts["timed_out"], counts["restarted"], counts["released"])
        return 0.0 if found >= LOST_RUNS_CHUNK else LOST_RUNS_EVERY
