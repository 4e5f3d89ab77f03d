"""The read service: one process beside the write server, its own ROUTER socket, read-only
connections, a few worker threads.  It answers reads (and ping/status); the write server
answers writes only.

Clients that cannot read the SQLite file themselves (another host, a network file system,
PostgreSQL; see :mod:`balsamdb.reads`) send their reads here, signed like writes (the same
secret and envelope, CURVE when the write server encrypts).  The loop thread owns the socket:
it checks each message and hands the read to a worker (a :class:`balsamdb.reads.Reader`, one
connection per thread), and sends each worker's answer back.  A read runs once:

- while a read runs, its client gets a *working* reply every :data:`HOLD_EVERY` seconds (a
  holding reply, as the write server's during a drain): it sends the same request again on the
  same socket and waits again, so it never gives up on a live service and resends on a fresh socket;
- a request whose id is already running (a resend, on any socket) joins that read instead of
  starting another; an answer that found no waiting client is kept for :data:`KEEP_ANSWERS`
  seconds for the resend;
- a read over ``read_time_limit`` is stopped by the database (:class:`~balsamdb.exceptions.ReadTimeout`).

A client that gives up cancels nothing and costs the write server nothing.  The watchdog starts
it after the write server, restarts it when it dies, and names it in the address file
(``read_address``, ``reader``).  It exits when its watchdog dies.

Run as ``python -m balsamdb.server.reader.service --path P ...``; it prints one JSON line
``{"port": N, "pid": N}`` on stdout once it listens.
"""

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time

import zmq

from balsamdb import protocol
from balsamdb.request import Request
from balsamdb.dbdir import PRIVATE_UMASK, DBDirectory
from balsamdb.exceptions import BadRequest, BalsamDBError, ServerError
from balsamdb.reads import Reader, check_read
from balsamdb.settings import load_settings
from balsamdb.server.sockets import listen_tcp

log = logging.getLogger("balsamdb.server.reader")

POLL_MS = 100
HOLD_EVERY = 0.5      # seconds between working replies to a client whose read runs
KEEP_ANSWERS = 60.0   # seconds an answer waits for the resend of a client that was between tries
WORKERS = 4
#: Test-only: seconds each read waits before it runs (to make a read slow on purpose).
TEST_DELAY_ENV = "BALSAMDB_TEST_READ_DELAY"


class _Read:
    __slots__ = ("id", "envelope", "started", "last_reply")

    def __init__(self, request_id, envelope):
        self.id = request_id
        self.envelope = envelope  # the routing frames of the client waiting now (None between tries)
        self.started = self.last_reply = time.monotonic()


class ReadService:
    def __init__(self, dbdir, bind_host="127.0.0.1", port=0, epoch="", settings=None, pg_port=None,
                 encrypt=False, workers=WORKERS):
        self.dbdir = dbdir
        self.bind_host = bind_host
        self.port = port
        self.epoch = epoch
        self.settings = settings or load_settings()
        self.secret = dbdir.secret()
        self.pg_port = pg_port
        self.encrypt = encrypt
        self.workers = workers
        self.stopping = False
        self.parent = os.getppid()
        self.context = self.socket = self.results = None
        self.reader = None
        self.queue = queue.Queue()
        self.threads = []
        self.running = {}   # id -> _Read
        self.finished = {}  # id -> (answer, monotonic time done): answers whose client was between tries
        self.started_at = time.time()
        self.counts = {"reads": 0, "reads_done": 0, "reads_joined": 0, "reads_timed_out": 0, "reads_failed": 0,
                       "working_replies": 0, "rejected": 0}
        self.max_read_ms = 0.0
        self.delay = float(os.environ.get(TEST_DELAY_ENV) or 0)

    # -- life cycle ---------------------------------------------------------
    def initialize(self):
        self.reader = Reader(self.dbdir, self.settings, bound=True, postgres_port=self.pg_port)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, self.settings.max_request_bytes + protocol.ENVELOPE_BYTES)
        self.port = listen_tcp(self.socket, self.dbdir, self.bind_host, self.port, self.encrypt)
        self.results = self.context.socket(zmq.PULL)
        self.results.bind("inproc://answers")
        for number in range(self.workers):
            thread = threading.Thread(target=self.work, name=f"reader-{number}", daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("read service pid %s listening on tcp://%s:%s (db %s, %s, %d workers, time limit %g s, %s)",
                 os.getpid(), self.bind_host, self.port, self.dbdir.path, self.dbdir.db_type, self.workers,
                 self.settings.read_time_limit, "CURVE-encrypted" if self.encrypt else "not encrypted")

    def loop(self):
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.results, zmq.POLLIN)
        while not self.stopping:
            ready = dict(poller.poll(POLL_MS))
            if self.results in ready:
                self.take_answers()
            if self.socket in ready:
                self.take_requests()
            self.hold_waiting()
            if os.getppid() != self.parent:
                log.warning("the watchdog pid %s is gone; the read service stops", self.parent)
                self.stopping = True

    def shutdown(self):
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join(timeout=2.0)
        if self.socket is not None:
            self.socket.close(linger=0)
        if self.results is not None:
            self.results.close(linger=0)
        if self.context is not None:
            self.context.term()
        log.info("read service stopped after %d reads (%d joined by a resend)", self.counts["reads"],
                 self.counts["reads_joined"])

    # -- the workers ----------------------------------------------------------
    def work(self):
        push = self.context.socket(zmq.PUSH)
        push.connect("inproc://answers")
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                request_id, op, params = item.id, item.op, item.params
                started = time.monotonic()
                if self.delay:
                    time.sleep(self.delay)  # test-only (TEST_DELAY_ENV): a slow read on purpose
                log.debug("read %s %s started", request_id, op)
                answer = self.reader.run(op, params)
                # Encoded here, in the worker, not by the loop thread: the loop only forwards bytes.
                push.send_multipart([request_id.encode(), ((answer.get("error") or {}).get("code") or "").encode(),
                                     b"%.1f" % ((time.monotonic() - started) * 1000)]
                                    + self.encoded(request_id, answer))
        finally:
            self.reader.close()
            push.close(linger=0)

    # -- the loop's work ------------------------------------------------------
    def take_requests(self):
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            envelope, payload = (frames[:2], frames[2:]) if len(frames) >= 2 and frames[1] == b"" \
                else (frames[:1], frames[1:])
            self.take(envelope, payload)

    def take(self, envelope, payload):
        message = None
        try:
            message = protocol.decode(self.secret, payload, self.settings.max_request_bytes)
            request = Request.from_message(message, now=time.time(), envelope=envelope)
        except Exception as exc:  # no input may stop the loop
            if not isinstance(exc, BalsamDBError):
                log.exception("unexpected failure while checking a message")
                exc = ServerError(f"the message could not be checked: {type(exc).__name__}")
            self.counts["rejected"] += 1
            log.warning("rejected a message: %s", exc.message)
            known = message.get("id") if isinstance(message, dict) else None
            self.send(envelope, known if isinstance(known, str) and len(known) <= 64 else None,
                      {"ok": False, "error": exc.to_dict()})
            return
        request_id, op, params = request.id, request.op, request.params
        if op == "ping":
            self.send(envelope, request_id, {"ok": True, "result": {"pong": True, "epoch": self.epoch,
                                                                   "pid": os.getpid(), "role": "reader"}})
            return
        if op == "status":
            self.send(envelope, request_id, {"ok": True, "result": self.status()})
            return
        if request_id in self.finished:  # a resend of a read done while its client was between tries
            self.socket.send_multipart(envelope + self.finished.pop(request_id)[0])
            return
        running = self.running.get(request_id)
        if running is not None:  # a resend (fresh socket or after a working reply): join the read
            if running.envelope is not None and running.envelope != envelope:
                self.counts["reads_joined"] += 1  # resent on a fresh socket: the read is not run again
            running.envelope = envelope
            running.last_reply = time.monotonic()
            return
        try:
            check_read(op, params)
        except BalsamDBError as exc:
            if isinstance(exc, BadRequest) and "not a read" in exc.message:
                exc = BadRequest(f"{op}: the read service answers reads only; writes go to the write server "
                                 "(the address file's 'address')")
            self.send(envelope, request_id, {"ok": False, "error": exc.to_dict()})
            return
        self.running[request_id] = _Read(request_id, envelope)
        self.counts["reads"] += 1
        self.queue.put(request)

    def take_answers(self):
        while True:
            try:
                request_id, code, ms, *frames = self.results.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            request_id, code = request_id.decode(), code.decode()
            self.counts["reads_done"] += 1
            self.max_read_ms = max(self.max_read_ms, float(ms))
            if code == "read_timeout":
                self.counts["reads_timed_out"] += 1
            elif code:
                self.counts["reads_failed"] += 1
            read = self.running.pop(request_id, None)
            if read is not None and read.envelope is not None:
                self.socket.send_multipart(read.envelope + frames)
            else:
                self.finished[request_id] = (frames, time.monotonic())

    def hold_waiting(self):
        """Working replies to the clients of long reads; forget answers nobody came back for."""
        now = time.monotonic()
        for read in self.running.values():
            if read.envelope is not None and now - read.last_reply >= HOLD_EVERY:
                self.send(read.envelope, read.id, protocol.working_reply(read.id, now - read.started))
                self.counts["working_replies"] += 1
                read.envelope, read.last_reply = None, now
        for request_id in [i for i, (_, done) in self.finished.items() if now - done > KEEP_ANSWERS]:
            del self.finished[request_id]

    def encoded(self, request_id, answer):
        """The signed frames of ``answer``."""
        try:
            return protocol.reply(self.secret, request_id, answer)
        except Exception as exc:  # an answer that cannot be encoded (a bug) must not stop the service
            log.exception("the answer to %s could not be encoded", request_id)
            return protocol.reply(self.secret, request_id, {"ok": False, "error": ServerError(
                f"the answer could not be encoded: {type(exc).__name__}").to_dict()})

    def send(self, envelope, request_id, answer):
        self.socket.send_multipart(envelope + self.encoded(request_id, answer))

    def status(self):
        return dict(self.counts, role="reader", pid=os.getpid(), epoch=self.epoch, port=self.port,
                    db_type=self.dbdir.db_type, workers=self.workers, reads_running=len(self.running),
                    read_time_limit=self.settings.read_time_limit, max_read_ms=round(self.max_read_ms, 1),
                    uptime=round(time.time() - self.started_at, 1), encrypted=self.encrypt)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--epoch", default="")
    parser.add_argument("--pg-port", type=int, default=None)
    parser.add_argument("--encrypt", action="store_true")
    args = parser.parse_args(argv)
    from balsamdb.server.logs import setup_logging

    os.umask(PRIVATE_UMASK)
    dbdir = DBDirectory(args.path)
    setup_logging(dbdir.log_dir / "reader.log")
    service = ReadService(dbdir, args.bind, args.port, args.epoch, pg_port=args.pg_port, encrypt=args.encrypt)

    # Signal handlers only set a flag: the loop notices within POLL_MS.
    def on_term(signum, frame):
        service.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        service.initialize()
        print(json.dumps({"port": service.port, "pid": os.getpid()}), flush=True)
        service.loop()
    except Exception:
        log.exception("read service failed")
        raise
    finally:
        service.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
