"""The order of spooled and live writes in the write server: spooled writes go first.

A live request that finds files waiting in ``spool/new`` is held (see
:mod:`balsamdb.server.writer.spool_barrier`) while the spool drains one batch per turn of the
loop, so that status, ping and holding replies still go out during a long drain.  Mixed
into :class:`balsamdb.server.writer.server.WriteServer`, whose loop calls these."""

import logging
import time

from balsamdb import crash_points, protocol
from balsamdb.exceptions import BalsamDBError, StorageError, TryAgain
from balsamdb.request import Request
from balsamdb.spool import StrayEntry

log = logging.getLogger("balsamdb.server.writer.server")

MAX_BATCH = 1024
DRAIN_TURN = 0.2           # seconds a drain turn aims at, so that held clients get their holding reply in time
DRAIN_BATCH_BYTES = 64 << 20  # and at most this many bytes of them in memory at once
SPOOL_EVERY = 0.5          # seconds between looks at spool/new while idle
PAUSED_LOOK = 0.05         # seconds between turns while a test pauses the drain (balsamdb.crash_points)


class SpoolOrder:
    """Needs ``spool``, ``barrier``, ``cleaner``, ``committer``, ``stats``, ``secret``,
    ``settings``, ``stopping`` and ``send`` of the server."""

    spool_refused = None       # why the database refused the last spooled batch (disk full, ...)
    next_spool_check = 0.0
    drain_limit = 256          # spooled files per drain turn, adapted to take about DRAIN_TURN

    def admit(self, work, replies):
        """The live ``work`` that may be applied now: none if spooled files wait (it is
        held until they are applied), else the work released earlier plus ``work``.
        While the database refuses the spooled writes (a full disk), live ones are
        refused too (added to ``replies``): applying them would overtake the spool."""
        waiting = self.barrier.waiting(self.spool.names())
        if not waiting:
            return self.barrier.release(waiting) + work
        if self.spool_refused:
            replies.extend(self.refusal(work))
            return []
        self.barrier.hold(waiting, work)
        self.next_spool_check = 0.0  # drain now, not at the next idle look
        return []

    def drain_turn(self):
        """One batch of the spool; then release the held requests it was holding up."""
        if crash_points.paused(crash_points.DRAIN_PAUSED, crash_points.HELD_FROZEN):
            self.next_spool_check = time.monotonic() + PAUSED_LOOK  # a test holds the drain
            return
        started = time.monotonic()
        limit = self.drain_limit
        taken = self.drain_spool(limit=limit, once=True)
        full = taken >= limit
        took = time.monotonic() - started
        if full and took < DRAIN_TURN:
            self.drain_limit = min(2 * limit, MAX_BATCH)
        elif took > 2 * DRAIN_TURN:
            self.drain_limit = max(limit // 2, 64)
        waiting = self.barrier.waiting(self.spool.names())
        if taken:
            log.info("took %s spooled writes in %.3f s; %s wait", taken, took, len(waiting))
        if self.spool_refused and waiting:
            self.send(self.refusal(self.barrier.take_all()))
            self.next_spool_check = time.monotonic() + SPOOL_EVERY
            return
        released = self.barrier.release(waiting)
        if released:
            self.after_flush(self.committer.commit(released))
        if taken and not waiting:
            self.trim_positions()
        # More may wait (a full batch, or files that arrived meanwhile): look again at once.
        self.next_spool_check = time.monotonic() + (0.0 if full or waiting else SPOOL_EVERY)

    def answer_overdue(self):
        """Holding replies for requests held too long; their clients send them again."""
        if crash_points.paused(crash_points.HELD_FROZEN):
            return  # a test keeps the held requests held
        overdue = self.barrier.overdue()
        if overdue:
            self.stats.holding_replies += len(overdue)
            pending = len(self.barrier.waiting(self.spool.names()))
            for request in overdue:
                request.answer = protocol.holding_reply(request.id, pending)
            self.send(overdue)

    def refusal(self, work):
        error = StorageError(f"the database refused the spooled writes that go before this one "
                             f"({self.spool_refused}); nothing of this write was written").to_dict()
        self.stats.errors += len(work)
        return [request.refuse(error) for request in work]

    def drain_spool(self, limit=MAX_BATCH, once=False):
        """Apply spooled writes, oldest first, exactly once; returns how many files were taken.

        Applied files are removed after the commit is flushed (by ``self.cleaner``, in a
        thread: until then they are skipped); refused ones move to ``spool/failed/`` with the
        answer, also after the flush; on a storage problem they stay.  A file that cannot be read or moved is logged and
        left for the next turn, and holds no live request up (``barrier.stuck``)."""
        taken = 0
        while not self.stopping or once:
            started = time.monotonic()
            work = []
            size = 0
            stuck, applied = self.barrier.stuck, self.barrier.applied
            for path in self.spool.pending(limit=limit, skip=applied):
                try:
                    data = self.spool.read(path)
                    message = protocol.decode(self.secret, [data], self.settings.max_request_bytes)
                    work.append(Request.from_message(message, envelope=path))
                    size += len(data)
                except FileNotFoundError:
                    continue  # taken by another drain
                except StrayEntry as exc:
                    self._spool_stray(path, exc)
                    taken += 1
                except BalsamDBError as exc:
                    log.warning("spooled file %s refused: %s", path.name, exc.message)
                    self._spool_move(self.spool.fail, path, {"ok": False, "error": exc.to_dict()})
                    taken += 1
                except OSError as exc:
                    log.error("spooled file %s cannot be read (%s); it waits", path.name, exc)
                    stuck.add(path.name)  # it holds no live write up
                if size >= DRAIN_BATCH_BYTES:
                    break
            if not work:
                break
            effects = []  # what leaves spool/new once this batch's COMMIT is flushed
            try:
                for request in self.committer.commit(work):
                    path, answer = request.envelope, request.answer
                    code = (answer.get("error") or {}).get("code")
                    if answer.get("ok"):
                        applied.add(path.name)  # skipped until removed
                        effects.append(lambda path=path: self.cleaner.remove(path))
                        self.stats.spooled += 1
                    elif code == TryAgain.code:
                        log.warning("spooled writes wait: %s", answer["error"]["message"])
                        return taken
                    elif code == StorageError.code:
                        log.warning("spooled writes wait: %s", answer["error"]["message"])
                        self.spool_refused = answer["error"]["message"]
                        return taken
                    else:
                        applied.add(path.name)  # skipped until moved
                        effects.append(lambda path=path, answer=dict(answer, id=request.id):
                                       self._spool_fail_applied(path, answer))
                    taken += 1
            finally:
                if effects:
                    self.after_flush((), effects)
            self.spool_refused = None
            self.barrier.drained(len(work), time.monotonic() - started)
            if once:
                break
        if taken and not once:
            log.info("took %s spooled writes", taken)
        return taken

    def trim_positions(self):
        """Keep spool/seq/ small once the spool is empty (see :meth:`balsamdb.spool.Spool.trim_positions`)."""
        try:
            removed = self.spool.trim_positions()
        except OSError as exc:  # a full or read-only disk: the positions stay, which is safe
            log.error("cannot trim spool/seq (%s)", exc)
            return
        if removed:
            log.info("removed %s old positions from spool/seq", removed)

    def _spool_fail_applied(self, path, answer):
        """A refused spooled write (its COMMIT flushed) goes to spool/failed/ with its answer;
        one that cannot be moved is read again next turn (and refused again)."""
        self._spool_move(self.spool.fail, path, answer)
        self.barrier.applied.discard(path.name)

    def _spool_stray(self, path, reason):
        """A directory or unreadable file in spool/new goes to spool/failed/ with the reason, once."""
        log.warning("spool/new/%s is no spooled write (%s); moved to spool/failed/", path.name, reason)
        self._spool_move(self.spool.quarantine, path, str(reason))

    def _spool_move(self, action, path, *args):
        try:
            action(path, *args)
        except OSError as exc:  # a full or read-only disk: an applied file is answered from the record later
            log.error("cannot update the spool (%s); the file stays", exc)
            self.barrier.stuck.add(path.name)  # applied or refused: it holds no live write up
