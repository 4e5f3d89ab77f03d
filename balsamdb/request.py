"""One request through the write path.

The write server makes one :class:`Request` per message it reads (or spooled file it
takes), once: its routing envelope, id, operation and parameters, and whether it is a
write.  The applier (:mod:`balsamdb.applier`) fills in its ``answer`` and, for a write
applied now, ``text``: the JSON text of the answer as it was stored with the write, which
the server sends as the reply instead of encoding the answer a second time
(:func:`balsamdb.protocol.reply`)."""

from . import protocol
from .operations import OPERATIONS


class Request:
    __slots__ = ("envelope", "id", "op", "params", "operation", "write", "answer", "text")

    def __init__(self, request_id, op, params, envelope=None, answer=None):
        self.envelope = envelope  # the routing frames of a live request; the file of a spooled one
        self.id = request_id
        self.op = op
        self.params = params
        #: The registered operation (None for an unknown one: the applier answers it).
        self.operation = OPERATIONS.get(op) if isinstance(op, str) else None
        self.write = self.operation is not None and self.operation.write
        self.answer = answer  # {"ok": ...} without the id; set on sight for a refused message
        self.text = None      # the stored JSON text of ``answer``, for a write applied now

    @property
    def server(self):
        """Answered by the write server itself (ping, status, spool_drain)."""
        return self.operation is not None and self.operation.server

    def refuse(self, error):
        """Answer with ``error`` (a :class:`~balsamdb.exceptions.BalsamDBError`'s ``to_dict()``)."""
        self.answer, self.text = {"ok": False, "error": error}, None
        return self

    def reply(self, secret):
        """The frames to send back: the envelope and the signed answer carrying the id."""
        return self.envelope + protocol.reply(secret, self.id, self.answer, self.text)

    def __repr__(self):
        return f"Request({self.id!r}, {self.op!r})"
