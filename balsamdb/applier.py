"""Apply requests exactly once, in a transaction: :func:`apply`, the one entry point.

Both the write server (a whole batch per transaction: group commit), a process writing
SQLite directly and a copy into a store (one request per transaction) call :func:`apply`
with :class:`~balsamdb.request.Request` objects and the way to open a transaction.  The
request id and the answer of every write are stored in the same transaction as the write,
so a retry of an applied request gets the stored answer and changes nothing.
"""

import logging

import peewee as pw

from . import answers as stored_answers
from . import crash_points
from . import jsonio
from . import operations
from .exceptions import BadRequest, BalsamDBError, Conflict, ServerError
from .models import now
from .statements import statements

log = logging.getLogger(__name__)

# What the database itself raises (InterfaceError, for a lost connection, is not a DatabaseError).
DATABASE_ERRORS = (pw.DatabaseError, pw.InterfaceError)


def root_cause(exc):
    """The database error that started it all.

    When COMMIT fails (disk full, I/O error), SQLite rolls back by itself and
    the ROLLBACK that peewee sends next fails with "no transaction is active",
    hiding the real cause in ``__context__``."""
    seen = exc
    while seen is not None and ("no transaction is active" in str(seen) or "cannot rollback" in str(seen)):
        seen = seen.__context__
    return seen if seen is not None else exc


class NeedsIsolation(Exception):
    """Raised in an optimistic pass (no savepoints) when a request failed: the
    caller rolls the transaction back and applies the batch again with a
    savepoint around each request."""


class StorageFailure(Exception):
    """The database itself failed (disk full, I/O error, read-only): the whole
    transaction is lost and every request in it must be answered with an error."""

    def __init__(self, original):
        super().__init__(str(original))
        self.original = original


#: Requests applied between two calls of ``tick`` (see :func:`apply`).
TICK_EVERY = 32


def _pass(database, requests, savepoints=True, tick=None):
    """One pass of :func:`apply`, in the transaction it opened: apply ``requests``
    (:class:`~balsamdb.request.Request`), in order, filling in the
    ``answer`` of each and, for a write applied now, its ``text``.

    Each runs in its own savepoint, so a refused request changes nothing and
    the others go on.  An answer is ``{"ok": True, "result": ...}`` or ``{"ok": False,
    "error": {code, type, message}}``.  A write's answer, success or refusal, is stored
    under its request id, and a request whose id was already applied (earlier, or earlier
    in this list) gets the stored answer with ``"replayed": True``.  Raises
    :class:`StorageFailure` when the database fails as a whole: the caller must roll back.

    With ``savepoints=False`` (the fast pass: a savepoint costs two statements,
    each a round trip to PostgreSQL) any failing request raises
    :class:`NeedsIsolation` instead, and the caller must roll back and call again
    with savepoints.  Requests refused before they touch the database (unknown
    operation, bad parameters, replays) are answered in either pass.  In the fast pass
    the inserts of insert-only operations (``deferrable``) are made together (one
    :class:`~balsamdb.statements.DeferredInserts` for the pass); anything else first makes
    what waits, so that it sees every earlier request's rows.

    ``text`` is the JSON text of the answer of a write applied now (the server sends it as
    the reply); what is stored is that text, or for a job answer a compact form of it (see
    :mod:`balsamdb.answers`).

    ``tick``: see :func:`apply`.
    """
    fast = statements(database)
    for request in requests:
        request.answer = request.text = None  # a pass rolled back before answers nothing
    write_ids = [r.id for r in requests if r.write and r.id]
    try:
        applied = fast.applied(write_ids) if write_ids else {}
    except DATABASE_ERRORS as exc:
        raise StorageFailure(exc) from exc
    new_rows = []
    deferred = None if savepoints else fast.deferred()
    for index, request in enumerate(requests):
        if tick is not None and not index % TICK_EVERY:
            tick()
        op = request.operation
        try:
            if op is None:
                operations.lookup(request.op)  # raises BadRequest, naming the known ones
            if op.server:
                raise BadRequest(f"{op.name} is answered by the write server only")
            operations.bind_params(op, request.params)
        except BalsamDBError as exc:
            request.answer = {"ok": False, "error": exc.to_dict()}
            continue
        record = request.write and request.id
        if record and request.id in applied:
            answer = stored_answers.unpack(fast, applied[request.id])
            answer["replayed"] = True
            request.answer = answer
            continue
        insert = fast.executemany
        if deferred is not None:
            if op.deferrable:
                insert = deferred
            else:
                _flush(deferred)
        if op.changes_jobs is not None:
            _preserve(fast, op, request.params)
        answer = _run(database, op, request.params, insert) if savepoints else _run_bare(op, request.params, insert)
        if record:
            text = request.text = jsonio.dumps_fast(answer) if op.deferrable else jsonio.dumps(answer)
            # A retry later in this batch gets the whole text: a compact one may refer to a
            # job row whose insert is still deferred.
            applied[request.id] = text
            new_rows.append({"request_id": request.id, "applied_at": now(),
                             "response": stored_answers.pack(op, answer, text)})
        request.answer = answer
    if tick is not None:
        tick()
    if deferred is not None:
        _flush(deferred)
    crash_points.reach(crash_points.AFTER_WRITES)
    if new_rows:
        if tick is not None:
            tick()
        try:
            fast.executemany(fast.insert_applied, new_rows)
        except pw.IntegrityError as exc:
            # Only the request ids are unique here: another daemon on the same PostgreSQL database
            # applied one of these ids at the same time (its insert held ours until it committed).
            raise AppliedElsewhere(exc) from exc
        except DATABASE_ERRORS as exc:
            raise StorageFailure(exc) from exc
        crash_points.reach(crash_points.AFTER_APPLIED_INSERT)
    return requests


def _preserve(fast, op, params):
    try:
        stored_answers.preserve(fast, op, params)
    except DATABASE_ERRORS as exc:
        raise StorageFailure(exc) from exc


def _flush(deferred):
    """The deferred inserts; one that a request's data breaks (a duplicate id) sends the
    batch to the pass with a savepoint per request, which finds the culprit."""
    try:
        deferred.flush()
    except REQUEST_ERRORS as exc:
        raise NeedsIsolation("deferred inserts") from exc
    except DATABASE_ERRORS as exc:
        raise StorageFailure(exc) from exc
    except Exception as exc:  # a value the driver cannot send (a NUL in a string): find it request by request
        raise NeedsIsolation("deferred inserts") from exc


# Errors of the database that one request's data causes (a value out of range, a constraint):
# that request alone is refused.  The others (OperationalError: locked, disk full, connection
# lost) concern the whole transaction.
REQUEST_ERRORS = (pw.IntegrityError, pw.DataError, pw.ProgrammingError, pw.NotSupportedError)


def _call(op, params, insert):
    if op.deferrable:
        return op.function(**params, insert=insert)
    return op.function(**params)


def _run_bare(op, params, insert):
    try:
        return {"ok": True, "result": _call(op, params, insert)}
    except BalsamDBError as exc:
        if not op.write:  # a refused read changed nothing: no need to redo the batch
            return {"ok": False, "error": exc.to_dict()}
        raise NeedsIsolation(op.name) from exc
    except REQUEST_ERRORS as exc:
        raise NeedsIsolation(op.name) from exc
    except DATABASE_ERRORS as exc:
        raise StorageFailure(exc) from exc
    except Exception as exc:  # a bug: redo this batch request by request
        raise NeedsIsolation(op.name) from exc


class AppliedElsewhere(Exception):
    """A request id of the batch was recorded by another daemon on the same database while this
    batch ran: the batch is rolled back and run again, and that request is then answered from the
    record (its writer's answer), never applied twice nor refused with a duplicate key."""

    def __init__(self, original):
        super().__init__(str(original))
        self.original = original


#: times a batch is run again because another daemon applied one of its ids meanwhile
APPLIED_ELSEWHERE_RETRIES = 5


def apply(database, requests, begin, tick=None, optimistic=True):
    """Apply ``requests`` (:class:`~balsamdb.request.Request`), in order, in one transaction
    opened by ``begin()`` (a context manager); each is filled in (its ``answer``, and for a write
    applied now its ``text``: see :func:`_pass`) when this returns, after the commit.

    ``optimistic`` (the write server's batches): first without savepoints and, if any request
    fails, again with one savepoint per request; else (one request written directly) with its
    savepoint at once.  A batch of which another daemon on the same PostgreSQL database applied
    an id meanwhile is run again (:class:`AppliedElsewhere`).  Raises :class:`StorageFailure`
    when the database fails as a whole: nothing of the transaction was kept.

    ``tick`` (the write server's): called every :data:`TICK_EVERY` requests and before the
    batch's big statements, so that the server answers earlier batches whose flush ended
    meanwhile instead of after this whole batch; it must not touch the database.
    """
    for attempt in range(APPLIED_ELSEWHERE_RETRIES + 1):
        try:
            try:
                with begin():
                    _pass(database, requests, savepoints=not optimistic, tick=tick)
            except NeedsIsolation:
                with begin():
                    _pass(database, requests, savepoints=True, tick=tick)
            return requests
        except AppliedElsewhere as exc:
            if attempt == APPLIED_ELSEWHERE_RETRIES:
                raise StorageFailure(exc.original) from exc
            log.info("another daemon applied a request of this batch meanwhile; running it again (%s)", exc)
    return requests


def _run(database, op, params, insert):
    try:
        with database.atomic():
            return {"ok": True, "result": _call(op, params, insert)}
    except BalsamDBError as exc:
        return {"ok": False, "error": exc.to_dict()}
    except pw.IntegrityError as exc:
        return {"ok": False, "error": Conflict(f"{op.name}: {exc}").to_dict()}
    except REQUEST_ERRORS as exc:
        message = " ".join(str(exc).split())
        return {"ok": False, "error": BadRequest(f"{op.name}: the database refused a value: {message}").to_dict()}
    except DATABASE_ERRORS as exc:
        raise StorageFailure(exc) from exc
    except Exception as exc:  # a bug in one operation must not take the others down
        log.exception("operation %s failed", op.name)
        return {"ok": False, "error": ServerError(f"{op.name} failed: {type(exc).__name__}: {exc}").to_dict()}
