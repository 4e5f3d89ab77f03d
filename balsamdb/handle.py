"""The base of every store handle, and how an answer becomes a result or an error."""

from .exceptions import error_from_dict
from .facades import Jobs, SpooledWrite
from .record_facades import Projects, Records, Users
from .request import Request

#: seconds during which writes to a store that did not answer a whole deadline go straight to its spool
UNREACHABLE_FOR = 30.0


class StoreHandle:
    """The base of every store handle a caller holds (:class:`Database`, and
    :class:`balsamdb.remote.RemoteDatabase`): the facades ``jobs``, ``records``,
    ``projects`` and ``users``, :meth:`call`, :meth:`request` (the route every call takes), and
    use as a context manager.  A subclass is a transport: it defines ``_route(request)`` (a write,
    or what the write server answers: its answer, or the answer of :meth:`_spool`), ``_read(request)``
    and ``close()``, and holds ``_spool_writer`` and ``settings``."""

    def attach_facades(self):
        self.jobs = Jobs(self)
        self.records = Records(self)
        self.projects = Projects(self)
        self.users = Users(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def call(self, op, **params):
        """Run operation ``op`` (see ``balsamdb.operations``) and return its result.

        Goes to the server while one runs; to SQLite directly when none runs
        (and ``require_server`` is off); raises :class:`ServerUnavailable` when
        no server answers within ``client_deadline`` seconds.
        """
        return self.request(op, params)

    def request(self, op, params, request_id=None):
        """:meth:`call` with the parameters as a dict, and optionally the request id (a retry
        of an id that was applied gets the first answer, and changes nothing).

        The one route skeleton of every handle: the :class:`~balsamdb.request.Request` is made
        once, here; the registry says whether it goes the write way (a write, an operation of
        the write server, or an unknown one that the server names) or the read way; the
        transport answers; the answer becomes the result, a :class:`SpooledWrite`, or the error
        raised."""
        request = Request.make(op, params, request_id)
        answer = self._route(request) if request.for_writer else self._read(request)
        return answer_result(request.id, answer)

    def _spool(self, request, body):
        """Keep ``request`` (its signed or JSON ``body``) in the local spool, after the checks that
        need no database: nothing the store would refuse on sight waits there."""
        request.operation.check_offline(request.params)
        spooled = self._spool_writer.put(body)
        self.last_route = "spool"
        return {"ok": True, "spooled": True, "spool_file": spooled}


def answer_result(request_id, answer):
    """The result of a request from its answer (see :mod:`balsamdb.protocol`): a
    :class:`SpooledWrite` when it waits in a spool, else the result, else the error raised."""
    if answer.get("spooled"):
        return SpooledWrite(request_id, answer.get("spool_file") or "the store's spool")
    if answer.get("ok"):
        return answer.get("result")
    raise error_from_dict(answer.get("error") or {})
