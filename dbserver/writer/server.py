"""The write server: one process, one ROUTER socket, one writer that owns the DB connection.

It answers writes, and ping, status and spool_drain; a read is refused (``reads_refused`` in
``status``): reads go to the read service beside it, or clients read SQLite themselves
(see :mod:`balsamdb.reads`), so that no read ever takes the writer's time.

Group commit: each turn of the loop takes every request already waiting (up
to ``MAX_BATCH``, and ``max_batch_bytes``), applies each in its own savepoint inside one
transaction, commits, and only then answers each.  A bad request fails alone; the rest of
its batch commits.  Spooled writes go first: a live request that arrives while files wait
in ``spool/new`` is held until they are applied (see :mod:`balsamdb.server.writer.spool_barrier`).
Malformed and unauthenticated messages are answered with an error at once and never reach
the database; a message over ``max_request_bytes`` is dropped unread by ZeroMQ, with its
connection (see :func:`balsamdb.server.writer.setup.bound_memory`).

Durable answers (SQLite, ``sqlite_synchronous`` FULL, the default): the COMMIT only writes the
WAL, and the answers of a batch, with the removal of its applied spool files and the moves of
its refused ones to ``spool/failed``, wait in :attr:`WriteServer.outbox` until the
:mod:`.flusher` thread has fdatasync'd the WAL in a flush that began after that COMMIT returned;
meanwhile the loop receives, checks and applies the next batches.  With NORMAL (the opt-out)
nothing waits.  On PostgreSQL the COMMIT's round trip is the flush.

Each message becomes one :class:`balsamdb.request.Request` here (:meth:`WriteServer.check`),
which the rest fills in and answers: :mod:`.committer` (the database: group commit, failures,
reconnecting, pruning old ids), :mod:`.spool_order` (spooled writes before live ones),
:mod:`.ops` (ping, status, spool_drain), :mod:`.stats`, :mod:`.setup`
(socket bounds, same-host socket, priority).  The loop's thread receives, checks and answers;
the batch thread (:mod:`.batch_thread`) applies and commits one batch at a time meanwhile, on the
one connection, which it hands back with the batch; the WAL's fdatasync runs in the flusher thread
(``strace -f -p PID`` sees the three).

Run by the watchdog as ``python -m balsamdb.server.writer.server --path P ...``; it
prints one JSON line ``{"port": N, "pid": N, "local_address": ..., "max_request_bytes": N}``
on stdout once it listens.
"""

import argparse
import collections
import json
import logging
import os
import signal
import sys
import time

import zmq

from balsamdb import protocol
from balsamdb.dbdir import PRIVATE_UMASK, DBDirectory
from balsamdb.exceptions import BadRequest, BalsamDBError, ServerError, TryAgain
from balsamdb.migrations import upgrade
from balsamdb.models import MODELS
from balsamdb.request import Request
from balsamdb.settings import load_settings
from balsamdb.spool import Spool

from balsamdb.server.writer.batch_thread import BatchThread
from balsamdb.server.writer.committer import Committer
from balsamdb.server.writer.flusher import Flusher
from balsamdb.server.writer.ops import ServerOperations
from balsamdb.server.writer.setup import bind_local, bound_memory, raise_open_files_limit, raise_priority, split_envelope
from balsamdb.server.writer.stats import Stats
from balsamdb.server.writer.spool_barrier import SpoolBarrier, SpoolCleaner
from balsamdb.server.writer.spool_order import MAX_BATCH, SpoolOrder
from balsamdb.server.sockets import listen_tcp

log = logging.getLogger("balsamdb.server.writer.server")

STARTUP_DB_DEADLINE = 15.0  # seconds a starting server waits for its database
POLL_MS = 200
FLUSH_FAILED_EXIT = 75      # the exit status of a server stopped by a failed flush
STOP_DRAIN = 5.0            # seconds a stopping server goes on reading requests that keep arriving
#: Apply and commit each batch in the batch thread while the loop receives, checks and answers
#: (see :mod:`.batch_thread`); ``BALSAMDB_BATCH_THREAD=0`` keeps it all in the loop (benchmarks).
BATCH_THREAD = os.environ.get("BALSAMDB_BATCH_THREAD", "1") != "0"


class WriteServer(SpoolOrder):
    def __init__(self, dbdir, bind_host="127.0.0.1", port=0, epoch="", settings=None, pg_port=None,
                 encrypt=False):
        self.dbdir = dbdir
        self.bind_host = bind_host
        self.port = port
        self.epoch = epoch
        self.settings = settings or load_settings()
        self.secret = dbdir.secret()
        self.db_type = dbdir.db_type  # read once: the configuration does not change under a running server
        self.stats = Stats()
        self.stopping = False
        self.context = None
        self.socket = None
        self.database = None
        self.committer = None
        self.flusher = None        # SQLite under FULL/EXTRA: the WAL flush off the loop
        self.outbox = collections.deque()  # (COMMIT number, answers, effects) waiting for their flush
        self.gathered = []         # checked work waiting for the running flush to end (see serve_batch)
        self.local_address = None
        self.endpoints = []
        self.pg_port = pg_port
        self.encrypt = encrypt
        self.spool = Spool(dbdir.spool_dir)
        self.barrier = SpoolBarrier()  # live requests held behind spooled ones
        self.cleaner = SpoolCleaner()  # removes applied spool files
        self.server_ops = ServerOperations(self)
        self.next_prune = 0.0
        self.next_lost_runs = 0.0

    # -- life cycle ---------------------------------------------------------
    def initialize(self):
        raise_priority()
        raise_open_files_limit()
        flush = self.db_type == "sqlite3" and self.settings.sqlite_synchronous != "NORMAL"
        self.database = self.dbdir.open_database(self.settings, busy_timeout=60, postgres_port=self.pg_port,
                                                 synchronous="NORMAL" if flush else None, shared=BATCH_THREAD)
        self.committer = Committer(self.database, self.db_type, self.dbdir, self.settings, self.stats,
                                   stopping=lambda: self.stopping)
        self.committer.connect(deadline=STARTUP_DB_DEADLINE)
        self.database.bind(MODELS)
        done = upgrade(self.database)
        for line in done:
            log.info("schema: %s", line)
        if flush:
            self.flusher = Flusher(f"{self.dbdir.sqlite_file}-wal")
            self.flusher.start()  # flushes the upgrade's commits first
            self.committer.flusher = self.flusher
            if not BATCH_THREAD:  # the batch thread must not send: the loop answers meanwhile
                self.committer.tick = self.release_if_flushed
        if BATCH_THREAD:
            self.committer.batches = BatchThread(self.committer._apply)
            self.committer.on_done = self.after_flush
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 2000)
        bound_memory(self.socket, self.settings.max_request_bytes)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self.port = listen_tcp(self.socket, self.dbdir, self.bind_host, self.port, self.encrypt)
        self.endpoints = [self.socket.getsockopt_string(zmq.LAST_ENDPOINT)]
        self.local_address = bind_local(self.socket, self.dbdir)
        if self.local_address:
            self.endpoints.append(self.local_address)
        log.info("write server pid %s listening on tcp://%s:%s (db %s, %s, synchronous=%s, %s, epoch %s)",
                 os.getpid(), self.bind_host, self.port, self.dbdir.path, self.db_type,
                 self.settings.sqlite_synchronous, "CURVE-encrypted" if self.encrypt else "not encrypted",
                 self.epoch)

    def loop(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        woken = zmq.Poller()  # the wake pipes alone: while MAX_BATCH requests are gathered
        batches = self.committer.batches
        for wake in (self.flusher, batches):
            if wake is not None:
                poller.register(wake.wake_fd, zmq.POLLIN)
                woken.register(wake.wake_fd, zmq.POLLIN)
        while not self.stopping:
            # Spooled writes go before live ones (see spool_order): status, ping and holding
            # replies still go out during a long drain.
            timeout = 0 if time.monotonic() >= self.next_spool_check else POLL_MS
            full = len(self.gathered) >= MAX_BATCH
            events = dict((woken if full else poller).poll(timeout))
            if self.flusher is not None and self.flusher.wake_fd in events:
                self.flusher.woken()
                self.release_flushed()
            if batches is not None and batches.wake_fd in events:
                self.committer.take()
            if self.socket in events:
                self.serve_batch(self.receive_batch())
            elif self.gathered and self.ready_to_commit():
                self.serve_batch([])
            if time.monotonic() >= self.next_prune:
                self.next_prune = time.monotonic() + self.committer.prune_applied(spool_waits=self.spool.count())
            if time.monotonic() >= self.next_lost_runs and not self.spool.count():
                # After the spool: a spooled renewal or state change by the owner goes first.
                self.next_lost_runs = time.monotonic() + self.committer.find_lost_runs()
            if time.monotonic() >= self.next_spool_check:
                self.drain_turn()
            self.answer_overdue()

    def shutdown(self):
        """Answer everything already received, then close."""
        if self.socket is None:
            return
        log.info("stopping: answering requests already queued")
        # Never unbind first: ZeroMQ closes the connections accepted through an endpoint with it, and
        # the answers to the requests still queued (and to the batches committed but not yet
        # flushed) would be dropped: their clients would only time out.  Requests that keep
        # arriving are read for at most STOP_DRAIN seconds; later ones are resent by their clients.
        drain_until = time.monotonic() + STOP_DRAIN
        try:
            self.committer.settle()
            while True:
                batch = self.receive_batch() if time.monotonic() < drain_until else []
                if not batch and not self.gathered:
                    break
                self.serve_batch(batch, gather=False)
            if self.flusher is not None:
                self.flusher.wait_flushed(self.flusher.commits, deadline=60.0)
                self.release_flushed()
            # Held requests cannot be applied before the spool: their clients resend them to
            # the next server, or spool them behind the files that wait.
            error = TryAgain("the server stopped while spooled writes before this one waited; "
                             "nothing of it was applied").to_dict()
            held = self.barrier.take_all()
            self.send([request.refuse(error) for request in held])
            if held:
                log.info("%d live requests held behind the spool were not applied (their clients retry)", len(held))
        finally:
            if self.socket is not None:
                self.socket.close()
            if self.context is not None:
                self.context.term()
            if self.committer is not None and self.committer.batches is not None:
                self.committer.batches.close()
            if self.flusher is not None:
                self.flusher.close()
            if self.database is not None:
                self.database.close()
            self.cleaner.close()
        log.info("stopped after %s requests (%s writes) in %s batches",
                 self.stats.requests, self.stats.writes, self.stats.batches)

    # -- one turn -------------------------------------------------------------
    def receive_batch(self):
        batch = []
        size = 0  # bounded in bytes too (max_batch_bytes): memory stays bounded whatever arrives
        while len(batch) < MAX_BATCH and size < self.settings.max_batch_bytes:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            batch.append(frames)
            size += sum(len(frame) for frame in frames)
        return batch

    def serve_batch(self, batch, gather=True):
        replies = []     # answered on sight: refused messages
        work = []        # for the database
        server_ops = []  # answered after the work is admitted, so that status counts it as held
        for frames in batch:
            request = self.check(*split_envelope(frames))
            if request.answer is not None:
                replies.append(request)
            elif request.server:
                server_ops.append(request)
            elif request.operation is not None and not request.write:
                self.stats.reads_refused += 1  # reads never take the writer's time
                replies.append(request.refuse(BadRequest(
                    f"{request.op} is a read: the write server answers writes only; reads go to the read "
                    "service ('read_address' in the address file), as a client of this release does").to_dict()))
            else:
                work.append(request)
        if work:
            work = self.admit(work, replies)
        # Queue depth: the requests that arrived with this one and wait to be served.
        replies.extend(self.server_ops.answer(server_ops, queue_depth=len(batch) - 1))
        self.send(replies)
        # While a COMMIT waits for the running flush (the flusher's next), or the batch thread
        # applies the previous batch, checked work is gathered, not committed: it goes in one
        # batch once that flush begins (one COMMIT per flush, large batches).
        work = self.gathered + work
        self.gathered = []
        if gather and work and not self.ready_to_commit():
            self.gathered = work
        elif work and gather and self.committer.batches is not None:
            self.committer.commit_later(work)  # answered through after_flush, in the loop
        elif work:
            self.after_flush(self.committer.commit(work))

    def ready_to_commit(self):
        """False while the batch thread has a batch, or a COMMIT waits for a flush to begin."""
        if self.committer.batches is not None and self.committer.batches.busy():
            return False
        return self.flusher is None or not self.flusher.waiting()

    # -- answers after the flush --------------------------------------------
    def after_flush(self, requests=(), effects=()):
        """Send the answers of ``requests`` and run ``effects`` (callables: spool files removed or
        moved) once every COMMIT made so far is flushed: now, without a flusher or when it is."""
        flusher = self.flusher
        if flusher is None or (not self.outbox and flusher.flushed >= flusher.commits):
            self.send(requests)
            for effect in effects:
                effect()
            return
        self.outbox.append((flusher.commits, requests, effects))

    def release_if_flushed(self):
        """During a batch's apply: answer the earlier batches whose flush ended meanwhile."""
        flusher = self.flusher
        if flusher.failed is not None or (self.outbox and self.outbox[0][0] <= flusher.flushed):
            self.release_flushed()

    def release_flushed(self):
        """Answer (and clean up after) the batches whose COMMIT is flushed; fail-stop after a
        failed flush: nothing more is answered, and the process ends at once."""
        flusher = self.flusher
        if flusher.failed is not None:
            log.critical("stopping after a failed flush of the WAL (%s): %d batches committed since the last "
                         "flush are not answered; their clients send them again to the next server",
                         flusher.failed, len(self.outbox))
            logging.shutdown()
            os._exit(FLUSH_FAILED_EXIT)
        flushed = flusher.flushed
        while self.outbox and self.outbox[0][0] <= flushed:
            _number, requests, effects = self.outbox.popleft()
            self.send(requests)
            for effect in effects:
                effect()

    def check(self, envelope, payload):
        """The :class:`Request` of one message: checked (signature, JSON, time stamp, fields),
        or already answered with the reason it was refused."""
        self.stats.requests += 1
        message = None
        try:
            message = protocol.decode(self.secret, payload, self.settings.max_request_bytes)
            return Request.from_message(message, now=time.time(), envelope=envelope)
        except Exception as exc:  # no input may stop the loop
            if not isinstance(exc, BalsamDBError):
                log.exception("unexpected failure while checking a message")
                exc = ServerError(f"the message could not be checked: {type(exc).__name__}")
            self.stats.rejected += 1
            log.warning("rejected a message from %s: %s", envelope[0].hex() if envelope else "?", exc.message)
            # The id only of an authentic body (a replay, a bad field), so the client can match it.
            known_id = message.get("id") if isinstance(message, dict) else None
            known_id = known_id if isinstance(known_id, str) and len(known_id) <= 64 else None
            return Request(known_id, None, None, envelope=envelope).refuse(exc.to_dict())

    def send(self, requests):
        """Send the answers of ``requests`` to their clients."""
        for request in requests:
            try:
                frames = request.reply(self.secret)
            except Exception as exc:  # an answer that cannot be encoded (a bug) must not stop the loop
                log.exception("the answer to %s could not be encoded", request)
                frames = request.refuse(ServerError(f"the answer could not be encoded: {type(exc).__name__}")
                                        .to_dict()).reply(self.secret)
            self.socket.send_multipart(frames)


def _handle_term(server):
    # Signal handlers only set a flag: the loop notices within POLL_MS and
    # finishes the batch it holds, so no request is cut in half.
    def handler(signum, frame):
        server.stopping = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--epoch", default="")
    parser.add_argument("--pg-port", type=int, default=None, help="port of the DB directory's own postgres cluster")
    parser.add_argument("--encrypt", action="store_true", help="encrypt traffic with ZeroMQ CURVE")
    args = parser.parse_args(argv)
    from balsamdb.server.logs import setup_logging

    os.umask(PRIVATE_UMASK)  # logs, spool answers, the socket: private to the DB directory's owner
    dbdir = DBDirectory(args.path)
    setup_logging(dbdir.log_dir / "server.log")
    from balsamdb.server.supervisor import liveness

    try:
        liveness_lock = liveness.hold_server_lock(dbdir)  # held until this process ends: one server per DB
    except liveness.LockHeld as exc:
        log.error("not starting: %s", exc)
        return 3
    server = WriteServer(dbdir, args.bind, args.port, args.epoch, pg_port=args.pg_port, encrypt=args.encrypt)
    _handle_term(server)
    try:
        server.initialize()
        print(json.dumps({"port": server.port, "pid": os.getpid(), "local_address": server.local_address,
                          "max_request_bytes": server.settings.max_request_bytes}), flush=True)
        server.loop()
    except Exception:
        log.exception("write server failed")
        raise
    finally:
        server.shutdown()
        liveness_lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
