"""The base of every store handle, and how an answer becomes a result or an error."""

from .exceptions import error_from_dict
from .facades import Jobs, SpooledWrite
from .record_facades import Projects, Records, Users

#: seconds during which writes to a store that did not answer a whole deadline go straight to its spool
UNREACHABLE_FOR = 30.0


class StoreHandle:
    """The base of every store handle a caller holds (:class:`Database`, and
    :class:`balsamdb.remote.RemoteDatabase`): the facades ``jobs``, ``records``,
    ``projects`` and ``users``, :meth:`call`, and use as a context manager.  A subclass
    defines ``request(op, params, request_id=None)`` and ``close()``."""

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


def answer_result(request_id, answer):
    """The result of a request from its answer (see :mod:`balsamdb.protocol`): a
    :class:`SpooledWrite` when it waits in a spool, else the result, else the error raised."""
    if answer.get("spooled"):
        return SpooledWrite(request_id, answer.get("spool_file") or "the store's spool")
    if answer.get("ok"):
        return answer.get("result")
    raise error_from_dict(answer.get("error") or {})
