"""One request, from the client that makes it to the reply.

A client makes one :class:`Request` per call (:meth:`Request.make`: a fresh id and time
stamp; the operation looked up once in the registry), whatever its route: the write server,
SQLite written directly, or an HTTP store.  Its wire form (:meth:`Request.message`) is what
is signed and sent, or stored in a spool file.  The server side makes the same type from a
message it reads or a spooled file it takes (:meth:`Request.from_message`), once: its routing
envelope, id, operation and parameters.  The applier (:mod:`balsamdb.applier`) fills in its
``answer`` and, for a write applied now, ``text``: the JSON text of the answer as it was
stored with the write, which the server sends as the reply instead of encoding the answer a
second time (:func:`balsamdb.protocol.reply`).

Whether it is a write, answered by the write server itself, or may wait in a spool is the
registered operation's (:class:`balsamdb.operations.Operation`): asked here, nowhere else.
"""

import os
import time

from . import protocol
from .operations import OPERATIONS


def new_request_id():
    """A fresh request id: 12 hex digits of the time in milliseconds, then 20 random ones (32
    characters, 80 random bits within a millisecond: as unique as a uuid4's 122).  In time order,
    so that the record of applied ids (keyed by the id) grows at the end of its B-tree: random ids
    put each write's row on a random leaf of an index of up to a week's writes (issue 22)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


class Request:
    __slots__ = ("envelope", "id", "op", "params", "ts", "operation", "answer", "text")

    def __init__(self, request_id, op, params, envelope=None, answer=None, ts=None):
        self.envelope = envelope  # the routing frames of a live request; the file of a spooled one
        self.id = request_id
        self.op = op
        self.params = params
        #: When it was signed (seconds since the epoch): the write server refuses a request stamped
        #: more than protocol.MAX_AGE away as a replay; an HTTP store one older than its record of
        #: applied ids.  On the wire ``ts`` (ZeroMQ, spool files), ``sent`` for an HTTP store.
        self.ts = ts
        #: The registered operation (None for an unknown one: the applier answers it).
        self.operation = OPERATIONS.get(op) if isinstance(op, str) else None
        self.answer = answer  # {"ok": ...} without the id; set on sight for a refused message
        self.text = None      # the stored JSON text of ``answer``, for a write applied now

    @classmethod
    def make(cls, op, params, request_id=None):
        """A client's new request: a fresh id (unless ``request_id``: a retry of an id that was
        applied gets the first answer, and changes nothing), stamped now."""
        return cls(request_id or new_request_id(), op, params, ts=time.time())

    @classmethod
    def from_message(cls, message, now=None, envelope=None):
        """The request of a message body (a dict) read by a server, checked
        (:func:`balsamdb.protocol.check_request`: with ``now``, its time stamp too)."""
        protocol.check_request(message, now)
        return cls(message["id"], message["op"], message.get("params", {}), envelope=envelope, ts=message.get("ts"))

    def message(self, stamp="ts"):
        """The wire form: ``{"id", "op", "params", "ts"}`` (``stamp``: the time stamp's key)."""
        return {"id": self.id, "op": self.op, "params": self.params, stamp: self.ts}

    def stamp(self):
        """Sign afresh (every try at the write server: a retry is never refused as a replay)."""
        self.ts = time.time()
        return self

    @property
    def write(self):
        """A registered write (an unknown operation is not one)."""
        return self.operation is not None and self.operation.write

    @property
    def server(self):
        """Answered by the write server itself (ping, status, spool_drain)."""
        return self.operation is not None and self.operation.server

    @property
    def spooled(self):
        """May wait in a spool: a write not marked never-spooled (a claim is not)."""
        return self.operation is not None and self.operation.spooled

    @property
    def for_writer(self):
        """Goes to the write server (or its stand-ins: SQLite directly, the spool), not to a reader:
        a write, an operation the write server answers, or an unknown one (the server says so)."""
        return self.operation is None or self.operation.write or self.operation.server

    def refuse(self, error):
        """Answer with ``error`` (a :class:`~balsamdb.exceptions.BalsamDBError`'s ``to_dict()``)."""
        self.answer, self.text = {"ok": False, "error": error}, None
        return self

    def reply(self, secret):
        """The frames to send back: the envelope and the signed answer carrying the id."""
        return self.envelope + protocol.reply(secret, self.id, self.answer, self.text)

    def __repr__(self):
        return f"Request({self.id!r}, {self.op!r})"
