"""The one family of errors that balsamdb raises.

Every error has a stable ``code``: it is what travels on the wire (see
:mod:`balsamdb.protocol`), so the server and the client name the same failure
the same way.  Each class also says the HTTP status that the HTTP store answers
it with (``http_status``) and what a client should do about it (``advice``);
docs/protocol.md's table of error codes is generated from them
(``scripts/protocol_docs.py``).  Backend errors (sqlite3, psycopg2, zmq) are translated into
these at the boundary where they happen.
"""


class BalsamDBError(Exception):
    """Base class of every balsamdb error."""

    code = "error"
    http_status = 500
    advice = ""

    def __init__(self, message="", **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self):
        return {"code": self.code, "type": type(self).__name__, "message": self.message}


class ConfigError(BalsamDBError):
    """A setting, path or DB directory is not usable as given."""

    code = "config"
    http_status = 500
    advice = "fix the setting or path the message names"


class NotADBDirectory(ConfigError):
    """The path exists but is not a balsamdb DB directory."""

    code = "not_a_db_directory"
    http_status = 500
    advice = "give the path of a DB directory (db init makes one)"


class BadRequest(BalsamDBError):
    """A request is malformed: not a balsamdb message, not JSON, an unknown operation, missing or
    wrong parameters."""

    code = "bad_request"
    http_status = 400
    advice = "fix the request; retrying will not help"


class RequestTooLarge(BadRequest):
    """A request exceeds the size limit (``max_request_bytes``, 64 MiB): said by the client before
    sending, or by the server for a spooled file; over the wire ZeroMQ drops such a message with
    its connection."""

    code = "too_large"
    http_status = 413
    advice = "send less per request"


class AuthenticationError(BalsamDBError):
    """A request was not signed with the DB directory's secret (over HTTP: a wrong login, or a user
    who may not do this)."""

    code = "auth"
    http_status = 403
    advice = "use the right DB directory's secret (over HTTP: the right user and password)"


class NotFound(BalsamDBError):
    """The job, project or record does not exist."""

    code = "not_found"
    http_status = 404


class InvalidTransition(BalsamDBError):
    """A job state change that the state machine does not allow."""

    code = "invalid_transition"
    http_status = 409


class Conflict(BalsamDBError):
    """The write contradicts what is stored (a duplicate id, a write-once field)."""

    code = "conflict"
    http_status = 409


class DatabaseBusy(BalsamDBError):
    """(Direct mode) the database stayed locked past ``direct_deadline``; nothing was written."""

    code = "busy"
    http_status = 503
    advice = "retry later or start a server"


def database_busy(error):
    """Whether a database error (peewee's, sqlite3's, or one of its root causes, see
    ``balsamdb.applier.root_cause``) says another connection held a lock: SQLite's "database
    is locked", "database table is locked", SQLITE_BUSY's "database is busy".  The one place
    where balsamdb recognises a lock by its message (SQLite reports it only so)."""
    text = str(error).lower()
    return "locked" in text or "busy" in text


class StorageError(BalsamDBError):
    """The database refused the write (disk full, read-only, I/O error, corrupt); the whole batch
    was rolled back."""

    code = "storage"
    http_status = 503
    advice = "fix the disk; retry with the same id"


class ServerUnavailable(BalsamDBError):
    """(Client side) no server answered within ``client_deadline``."""

    code = "unavailable"
    http_status = 503
    advice = "start the server (db dbserver), or let the write wait in the spool"


class ServerError(BalsamDBError):
    """The server failed while executing a request: a bug; the traceback is in ``log/server.log``."""

    code = "internal"
    http_status = 500
    advice = "report it"


class TryAgain(BalsamDBError):
    """The database was briefly out of reach (PostgreSQL restarting, a lock), or the server
    stopped while the request waited for spooled writes; nothing was applied and the client
    resends the same request by itself."""

    code = "retry"
    http_status = 503
    advice = "the client resends the same request by itself"


class ReadTimeout(BalsamDBError):
    """A read ran longer than its time limit (the ``read_time_limit`` setting) and was stopped by
    the database; nothing was changed."""

    code = "read_timeout"
    http_status = 503
    advice = "narrow the read (filters, --limit) or page it (db.jobs.iter); raise read_time_limit if needed"


class TransferError(BalsamDBError):
    """A copy, export or import that could not be completed or verified (the message
    says how far it got; running it again finishes it)."""

    code = "transfer"
    http_status = 500
    advice = "run the same command again: it finishes what was left"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (
        BalsamDBError, ConfigError, NotADBDirectory, BadRequest, RequestTooLarge,
        AuthenticationError, NotFound, InvalidTransition, Conflict, DatabaseBusy,
        StorageError, ServerUnavailable, ServerError, TryAgain, ReadTimeout, TransferError,
    )
}


def error_from_dict(data):
    """Rebuild the exception that a server sent as ``{"code", "type", "message"}``."""
    cls = ERRORS_BY_CODE.get(data.get("code"), BalsamDBError)
    return cls(data.get("message", ""))
