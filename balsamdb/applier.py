"""Apply one request exactly once, inside a transaction that the caller holds.

Both the write server (many requests per transaction: group commit) and a
process writing SQLite directly (one request per transaction) call
:func:`apply_request`.  The request id and the answer are stored in the same
transaction as the write, so a retry of an applied request gets the stored
answer and changes nothing.
"""

import json
import logging

import peewee as pw

from . import operations
from .exceptions import BalsamDBError, Conflict, ServerError
from .models import AppliedRequest, now

log = logging.getLogger(__name__)


class StorageFailure(Exception):
    """The database itself failed (disk full, I/O error, read-only): the whole
    transaction is lost and every request in it must be answered with an error."""

    def __init__(self, original):
        super().__init__(str(original))
        self.original = original


def apply_request(database, request_id, name, params):
    """Run operation ``name`` in its own savepoint and return the answer.

    The answer is ``{"ok": True, "result": ...}`` or ``{"ok": False, "error":
    {code, type, message}}``; a write's answer, success or refusal, is stored
    under ``request_id`` and returned again for a retry (with ``"replayed":
    True``).  Raises :class:`StorageFailure` when the database fails as a whole.
    """
    try:
        op = operations.lookup(name)
        operations.bind_params(op, params)
    except BalsamDBError as exc:
        return {"ok": False, "error": exc.to_dict()}
    record = op.write and request_id
    if record:
        prior = AppliedRequest.get_or_none(AppliedRequest.request_id == request_id)
        if prior is not None:
            answer = json.loads(prior.response)
            answer["replayed"] = True
            return answer
    try:
        with database.atomic():
            result = op.function(**params)
        answer = {"ok": True, "result": result}
    except BalsamDBError as exc:
        answer = {"ok": False, "error": exc.to_dict()}
    except pw.IntegrityError as exc:
        answer = {"ok": False, "error": Conflict(f"{name}: {exc}").to_dict()}
    except pw.DatabaseError as exc:
        raise StorageFailure(exc) from exc
    except Exception as exc:  # a bug in an operation must not take the others down
        log.exception("operation %s failed", name)
        answer = {"ok": False, "error": ServerError(f"{name} failed: {type(exc).__name__}: {exc}").to_dict()}
    if record:
        try:
            AppliedRequest.create(request_id=request_id, applied_at=now(),
                                  response=json.dumps(answer, separators=(",", ":")))
        except pw.DatabaseError as exc:
            raise StorageFailure(exc) from exc
    return answer
