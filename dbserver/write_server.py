"""The write server: one process, one ROUTER socket, one writer that owns the DB connection.

Group commit: each turn of the loop takes every request already waiting (up
to ``MAX_BATCH``, and ``max_batch_bytes``), applies each in its own savepoint inside one
transaction, commits, and only then answers each.  A bad request fails alone; the rest of
its batch commits.  Spooled writes go first: a live request that arrives while files wait
in ``spool/new`` is held until they are applied (see :mod:`balsamdb.server.spool_barrier`).
Malformed and unauthenticated messages are answered with an error at once and never reach
the database; a message over ``max_request_bytes`` is dropped unread by ZeroMQ, with its
connection (see :func:`bound_memory`).

Run by the watchdog as ``python -m balsamdb.server.write_server --path P ...``; it
prints one JSON line ``{"port": N, "pid": N, "local_address": ..., "max_request_bytes": N}``
on stdout once it listens.
"""

import argparse
import json
import logging
import os
import signal
import sys
import time

import zmq

from balsamdb import protocol
from balsamdb.applier import DATABASE_ERRORS, StorageFailure, apply_batch, root_cause
from balsamdb.dbdir import PRIVATE_UMASK, DBDirectory
from balsamdb.exceptions import BalsamDBError, ServerError, StorageError, TryAgain
from balsamdb.models import MODELS, upgrade
from balsamdb.operations import OPERATIONS
from balsamdb.settings import load_settings
from balsamdb.spool import Spool, StrayEntry
from balsamdb.statements import statements

from .spool_barrier import SpoolBarrier, SpoolCleaner

log = logging.getLogger("balsamdb.server.write_server")

MAX_BATCH = 1024
DRAIN_TURN = 0.2           # seconds a drain turn aims at, so that held clients get their holding reply in time
DRAIN_BATCH_BYTES = 64 << 20  # and at most this many bytes of them in memory at once
SPOOL_EVERY = 0.5          # seconds between looks at spool/new while idle
STARTUP_DB_DEADLINE = 15.0  # seconds a starting server waits for its database
POLL_MS = 200
PRUNE_EVERY = 60.0         # seconds between looks for request ids old enough to forget
PRUNE_CHUNK = 5000


class Stats:
    """Counters that ``status`` reports."""

    def __init__(self):
        self.started = time.time()
        self.requests = 0
        self.writes = 0
        self.errors = 0
        self.rejected = 0
        self.batches = 0
        self.spooled = 0
        self.batched_requests = 0
        self.last_batch = 0
        self.max_batch = 0
        self.commit_seconds = 0.0
        self.pruned = 0

    def to_dict(self):
        return {
            "uptime": time.time() - self.started,
            "requests": self.requests,
            "spooled_applied": self.spooled,
            "writes": self.writes,
            "errors": self.errors,
            "rejected": self.rejected,
            "batches": self.batches,
            "last_batch": self.last_batch,
            "max_batch": self.max_batch,
            "mean_batch": self.batched_requests / self.batches if self.batches else 0.0,
            "mean_commit_ms": 1000 * self.commit_seconds / self.batches if self.batches else 0.0,
            "pruned_request_ids": self.pruned,
        }


class WriteServer:
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
        self.local_address = None
        self.endpoints = []
        self.pg_port = pg_port
        self.encrypt = encrypt
        self.spool = Spool(dbdir.spool_dir)
        self.barrier = SpoolBarrier()  # live requests held behind spooled ones
        self.cleaner = SpoolCleaner()  # removes applied spool files
        self.spool_refused = None      # why the database refused the last spooled batch (disk full, ...)
        self.next_spool_check = 0.0
        self.drain_limit = 256         # spooled files per drain turn, adapted to take about DRAIN_TURN
        self.next_prune = 0.0

    # -- life cycle ---------------------------------------------------------
    def initialize(self):
        raise_priority()
        raise_open_files_limit()
        self.database = self.dbdir.open_database(self.settings, busy_timeout=60, postgres_port=self.pg_port)
        self.connect_database(deadline=STARTUP_DB_DEADLINE)
        self.database.bind(MODELS)
        done = upgrade(self.database)
        for line in done:
            log.info("schema: %s", line)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 2000)
        bound_memory(self.socket, self.settings.max_request_bytes)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        if self.encrypt:
            # CURVE encrypts every connection; authentication stays with the HMAC of each request.
            public, secret = self.dbdir.curve_keys()
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = public
            self.socket.curve_server = True
        host = self.bind_host
        if self.port:
            try:
                self.socket.bind(f"tcp://{host}:{self.port}")
            except zmq.ZMQError as exc:
                log.warning("port %s is taken (%s); choosing another", self.port, exc)
                self.port = self.socket.bind_to_random_port(f"tcp://{host}")
        else:
            self.port = self.socket.bind_to_random_port(f"tcp://{host}")
        self.endpoints = [self.socket.getsockopt_string(zmq.LAST_ENDPOINT)]
        self.local_address = bind_local(self.socket, self.dbdir)
        if self.local_address:
            self.endpoints.append(self.local_address)
        log.info("write server pid %s listening on tcp://%s:%s (db %s, %s, synchronous=%s, %s, epoch %s)",
                 os.getpid(), host, self.port, self.dbdir.path, self.db_type,
                 self.settings.sqlite_synchronous, "CURVE-encrypted" if self.encrypt else "not encrypted",
                 self.epoch)

    def loop(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stopping:
            # Spooled writes go before live ones: a live request that finds files waiting is
            # held (see spool_barrier) while the spool drains one batch per turn, so that
            # status, ping and holding replies still go out during a long drain.
            if poller.poll(0 if time.monotonic() >= self.next_spool_check else POLL_MS):
                self.serve_batch(self.receive_batch())
            if time.monotonic() >= self.next_prune:
                self.prune_applied()
            if time.monotonic() >= self.next_spool_check:
                self.drain_turn()
            self.answer_overdue()

    def shutdown(self):
        """Answer everything already received, then close."""
        if self.socket is None:
            return
        log.info("stopping: no new connections; answering requests already queued")
        for endpoint in self.endpoints:
            try:
                self.socket.unbind(endpoint)
            except zmq.ZMQError:
                pass
        try:
            while True:
                batch = self.receive_batch()
                if not batch:
                    break
                self.serve_batch(batch)
            # Held requests cannot be applied before the spool: their clients resend them to
            # the next server, or spool them behind the files that wait.
            error = TryAgain("the server stopped while spooled writes before this one waited; "
                             "nothing of it was applied").to_dict()
            held = self.barrier.take_all()
            for envelope, request_id, _op, _params in held:
                self.socket.send_multipart(envelope + protocol.encode(
                    self.secret, {"id": request_id, "ok": False, "error": error}))
            if held:
                log.info("%d live requests held behind the spool were not applied (their clients retry)", len(held))
        finally:
            if self.socket is not None:
                self.socket.close()
            if self.context is not None:
                self.context.term()
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

    def serve_batch(self, batch):
        replies = []   # (envelope, answer)
        work = []      # (envelope, request id, op, params)
        server_ops = []  # answered after the work is admitted, so that status counts it as held
        for frames in batch:
            envelope, payload = _split_envelope(frames)
            self.stats.requests += 1
            message = None
            try:
                message = protocol.decode(self.secret, payload, self.settings.max_request_bytes)
                request_id, op, params = protocol.check_request(message, now=time.time())
            except Exception as exc:  # no input may stop the loop
                if not isinstance(exc, BalsamDBError):
                    log.exception("unexpected failure while checking a message")
                    exc = ServerError(f"the message could not be checked: {type(exc).__name__}")
                self.stats.rejected += 1
                log.warning("rejected a message from %s: %s", envelope[0].hex() if envelope else "?", exc.message)
                # The id only of an authentic body (a replay, a bad field), so the client can match it.
                known_id = message.get("id") if isinstance(message, dict) else None
                known_id = known_id if isinstance(known_id, str) and len(known_id) <= 64 else None
                replies.append((envelope, {"id": known_id, "ok": False, "error": exc.to_dict()}))
                continue
            if op in protocol.SERVER_OPS:
                server_ops.append((envelope, request_id, op))
            else:
                work.append((envelope, request_id, op, params))
        if work:
            work = self.admit(work, replies)
        for envelope, request_id, op in server_ops:
            # Queue depth: the requests that arrived with this one and wait to be served.
            result = self.server_op(op, queue_depth=len(batch) - 1)
            replies.append((envelope, {"id": request_id, "ok": True, "result": result}))
        if work:
            replies.extend(self.apply_batch(work, encoded=True))
        self.send_replies(replies)

    def send_replies(self, replies):
        for envelope, answer in replies:
            if isinstance(answer, bytes):  # a write's answer, already encoded once when it was recorded
                self.socket.send_multipart(envelope + protocol.encode_body(self.secret, answer))
            else:
                self.socket.send_multipart(envelope + protocol.encode(self.secret, answer))

    # -- the order of spooled and live writes -------------------------------------
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
            self.send_replies(self.refusal(self.barrier.take_all()))
            self.next_spool_check = time.monotonic() + SPOOL_EVERY
            return
        released = self.barrier.release(waiting)
        if released:
            self.send_replies(self.apply_batch(released, encoded=True))
        # More may wait (a full batch, or files that arrived meanwhile): look again at once.
        self.next_spool_check = time.monotonic() + (0.0 if full or waiting else SPOOL_EVERY)

    def answer_overdue(self):
        """Holding replies for requests held too long; their clients send them again."""
        overdue = self.barrier.overdue()
        if overdue:
            pending = len(self.barrier.waiting(self.spool.names()))
            self.send_replies([(envelope, protocol.holding_reply(request_id, pending))
                               for envelope, request_id, _op, _params in overdue])

    def refusal(self, work):
        error = StorageError(f"the database refused the spooled writes that go before this one "
                             f"({self.spool_refused}); nothing of this write was written").to_dict()
        self.stats.errors += len(work)
        return [(envelope, {"id": request_id, "ok": False, "error": error})
                for envelope, request_id, _op, _params in work]

    def apply_batch(self, work, encoded=False):
        """Apply ``work`` in one transaction; returns the replies to send after commit: answer
        dicts, or with ``encoded`` the JSON text (bytes) of each write applied now."""
        started = time.monotonic()
        answers = []
        texts = []
        try:
            results = apply_batch(self.database, [(rid, op, params) for _e, rid, op, params in work],
                                  self.begin, texts)
            for (envelope, request_id, _op, _params), answer, text in zip(work, results, texts):
                text = text if encoded else None
                if text is not None and not answer.get("replayed"):
                    # The JSON text stored with the write is the reply: only the id is added in front.
                    body = b'{"id":' + json.dumps(request_id).encode() + b"," + text.encode()[1:]
                    answers.append((envelope, body))
                else:
                    answer["id"] = request_id
                    answers.append((envelope, answer))
        except (StorageFailure,) + DATABASE_ERRORS as exc:
            original = root_cause(getattr(exc, "original", exc))
            transient = self.lost_database(original)
            log.error("batch of %s requests rolled back (%s): %s", len(work),
                      "will retry" if transient else "refused", original)
            if transient:
                error = TryAgain(f"the database is out of reach for a moment: {original}").to_dict()
            else:
                error = StorageError(f"the database refused the write: {original}{self.storage_hint(original)}; "
                                     "nothing of it was written").to_dict()
                self.stats.errors += len(work)
            return [(envelope, {"id": request_id, "ok": False, "error": error})
                    for envelope, request_id, _op, _params in work]
        except Exception as exc:  # no input may stop the server: a batch that fails unexpectedly is refused
            log.exception("a batch of %d requests failed unexpectedly; each is refused", len(work))
            error = ServerError(f"the server failed on this batch: {type(exc).__name__}: {exc}").to_dict()
            self.stats.errors += len(work)
            return [(envelope, {"id": request_id, "ok": False, "error": error})
                    for envelope, request_id, _op, _params in work]
        self.stats.commit_seconds += time.monotonic() - started
        self.stats.batches += 1
        self.stats.batched_requests += len(work)
        self.stats.last_batch = len(work)
        self.stats.max_batch = max(self.stats.max_batch, len(work))
        for (_envelope, _rid, op, _params), answer in zip(work, results):
            if not answer.get("ok"):
                self.stats.errors += 1
            elif op in OPERATIONS and OPERATIONS[op].write:
                self.stats.writes += 1
        return answers

    def begin(self):
        """The transaction of one group commit."""
        if self.db_type == "sqlite3":
            return self.database.atomic(lock_type="IMMEDIATE")
        return self.database.atomic()

    def drain_spool(self, limit=MAX_BATCH, once=False):
        """Apply spooled writes, oldest first, exactly once; returns how many files were taken.

        Applied files are removed after the commit (by ``self.cleaner``, in a thread: until
        then they are skipped); refused ones move to ``spool/failed/`` with the answer; on
        a storage problem they stay.  A file that cannot be read or moved is logged and
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
                    work.append((path,) + protocol.check_request(message))
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
            for path, answer in self.apply_batch(work):
                code = (answer.get("error") or {}).get("code")
                if answer.get("ok"):
                    applied.add(path.name)
                    self.cleaner.remove(path)
                    self.stats.spooled += 1
                elif code == "retry":
                    log.warning("spooled writes wait: %s", answer["error"]["message"])
                    return taken
                elif code == "storage":
                    log.warning("spooled writes wait: %s", answer["error"]["message"])
                    self.spool_refused = answer["error"]["message"]
                    return taken
                else:
                    self._spool_move(self.spool.fail, path, answer)
                taken += 1
            self.spool_refused = None
            self.barrier.drained(len(work), time.monotonic() - started)
            if once:
                break
        if taken and not once:
            log.info("took %s spooled writes", taken)
        return taken

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
        text = str(error).lower()
        if "locked" in text or "busy" in text:
            return True
        try:
            self.database.execute_sql("SELECT 1")
            return False
        except Exception:  # any failure of the probe means the connection is gone
            pass
        self.reconnect()
        return True

    def connect_database(self, deadline):
        """Connect, retrying for ``deadline`` seconds (a database that restarts)."""
        end = time.monotonic() + deadline
        delay = 0.05
        while True:
            try:
                self.database.connect(reuse_if_open=True)
                return
            except DATABASE_ERRORS as exc:
                if time.monotonic() + delay > end:
                    raise
                log.warning("database not reachable yet (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def reconnect(self):
        """Reconnect to the database, backing off, until it answers or the server stops."""
        try:
            self.database.close()
        except Exception:  # a broken connection may fail to close; it is gone either way
            pass
        delay = 0.05
        while not self.stopping:
            try:
                self.database.connect()
                self.database.execute_sql("SELECT 1")
                log.info("reconnected to the database")
                return
            except DATABASE_ERRORS as exc:
                log.warning("database unreachable (%s); retrying in %.2f s", exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def prune_applied(self):
        """Forget the ids of writes applied more than ``applied_retention_days`` ago, a few
        thousand per turn so that live requests never wait long; looks again soon while
        there is more, else after PRUNE_EVERY (or half the retention, if shorter)."""
        keep = self.settings.applied_retention_days * 86400.0
        every = min(PRUNE_EVERY, keep / 2)
        if self.spool.count():
            # A spooled write may be one whose answer was lost: its id must be there when it comes.
            self.next_prune = time.monotonic() + every
            return
        try:
            with self.begin():
                deleted = statements(self.database).prune_applied(time.time() - keep, PRUNE_CHUNK)
        except DATABASE_ERRORS as exc:
            log.warning("could not prune old request ids: %s", root_cause(exc))
            self.next_prune = time.monotonic() + every
            return
        self.stats.pruned += deleted
        if deleted:
            log.info("forgot %d request ids applied more than %.1f days ago", deleted, keep / 86400)
        self.next_prune = time.monotonic() + (0.0 if deleted >= PRUNE_CHUNK else every)

    def server_op(self, op, queue_depth=0):
        if op == "ping":
            return {"pong": True, "epoch": self.epoch, "pid": os.getpid()}
        if op == "spool_drain":
            # One batch per request (db spool --drain); the loop drains the spool by itself.
            return {"applied": self.drain_spool(once=True),
                    "pending": len(self.barrier.waiting(self.spool.names()))}
        status = self.stats.to_dict()
        status.update(queue_depth=queue_depth, encrypted=self.encrypt,
                      pid=os.getpid(), epoch=self.epoch, port=self.port, db_type=self.db_type,
                      path=str(self.dbdir.path), synchronous=self.settings.sqlite_synchronous,
                      spool_pending=len(self.barrier.waiting(self.spool.names())),
                      spool_failed=len(self.spool.failures()),
                      spool_drain_per_s=round(self.barrier.rate(), 1),
                      spool_last_drain_per_s=round(self.barrier.last_rate(), 1), held_requests=self.barrier.held(),
                      spool_refused=self.spool_refused)
        return status


#: Messages one peer may have queued in the server beyond the one being read: a REQ client has
#: one request in flight, so a few leave room for any well-behaved client (see bound_memory).
RECEIVE_HWM = 4
#: The same-host socket, inside the DB directory (0700): only its owner may connect.
LOCAL_SOCKET = "server.ipc"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL


def bound_memory(sock, max_request_bytes):
    """Bound what peers can make the server hold, signed or not.

    A message larger than ``max_request_bytes`` plus the envelope is dropped by ZeroMQ as soon
    as its header announces the size, with its connection, before any of it is stored (clients
    learn the limit from the address file and refuse such a write before sending); at most
    :data:`RECEIVE_HWM` messages wait per peer, after which ZeroMQ stops reading that peer."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_request_bytes + protocol.ENVELOPE_BYTES)
    sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)


def bind_local(sock, dbdir):
    """Bind the same-host socket ``ipc://P/server.ipc`` (mode 0600 in the 0700 DB directory: other
    users cannot connect, unlike an abstract socket); None (TCP only) when the path is too long."""
    path = dbdir.path / LOCAL_SOCKET
    if not sys.platform.startswith("linux") or len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        log.info("no same-host socket: %s is longer than a Unix socket path may be; clients use TCP", path)
        return None
    address = f"ipc://{path}"
    old_umask = os.umask(0o177)  # made 0600 from the start, not chmodded after a window
    try:
        sock.bind(address)  # ZeroMQ removes a socket file left by a server that died
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return address


def raise_open_files_limit():
    """Every job process keeps a connection open: allow as many as the hard limit permits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    log.info("open files limit %s (about as many job processes can stay connected)", soft)


def raise_priority():
    """Run ahead of the job processes on a shared host: every one of them waits
    on this process, so starving it slows them all.  Needs privileges (root or
    CAP_SYS_NICE); without them the priority stays as it was."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        log.info("running at nice -10, ahead of job processes on this host")
    except OSError:
        log.info("running at normal priority (no privilege to raise it)")


def _split_envelope(frames):
    """Routing frames (identity and, from REQ, the empty delimiter) and the payload."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]


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
    from balsamdb.server import liveness

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
