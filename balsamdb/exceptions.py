"""The one family of errors that balsamdb raises.

Every error has a stable ``code``: it is what travels on the wire (see
:mod:`balsamdb.protocol`), so the server and the client name the same failure
the same way.  Backend errors (sqlite3, psycopg2, zmq) are translated into
these at the boundary where they happen.
"""


class BalsamDBError(Exception):
    """Base class of every balsamdb error."""

    code = "error"

    def __init__(self, message="", **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self):
        return {"code": self.code, "type": type(self).__name__, "message": self.message}


class ConfigError(BalsamDBError):
    """A setting, path or DB directory is not usable as given."""

    code = "config"


class NotADBDirectory(ConfigError):
    """The path exists but is not a balsamdb DB directory."""

    code = "not_a_db_directory"


class BadRequest(BalsamDBError):
    """A request is malformed: unknown operation, missing or wrong parameters."""

    code = "bad_request"


class RequestTooLarge(BadRequest):
    """A request exceeds the size limit of the server."""

    code = "too_large"


class AuthenticationError(BalsamDBError):
    """A request was not signed with the DB directory's secret."""

    code = "auth"


class NotFound(BalsamDBError):
    """The job, project or record does not exist."""

    code = "not_found"


class InvalidTransition(BalsamDBError):
    """A job state change that the state machine does not allow."""

    code = "invalid_transition"


class Conflict(BalsamDBError):
    """The write contradicts what is stored (a duplicate id, a write-once field)."""

    code = "conflict"


class DatabaseBusy(BalsamDBError):
    """The database stayed locked past the deadline; nothing was written."""

    code = "busy"


class StorageError(BalsamDBError):
    """The database refused the write (disk full, read-only, corrupt)."""

    code = "storage"


class ServerUnavailable(BalsamDBError):
    """No server answered within the client's deadline."""

    code = "unavailable"


class ServerError(BalsamDBError):
    """The server failed while executing a request (a bug: see its log)."""

    code = "internal"


class TryAgain(BalsamDBError):
    """The database was briefly out of reach (restarting, locked); nothing was
    applied and the client resends the same request by itself."""

    code = "retry"


class TransferError(BalsamDBError):
    """A copy, export or import that could not be completed or verified (the message
    says how far it got; running it again finishes it)."""

    code = "transfer"


ERRORS_BY_CODE = {
    cls.code: cls
    for cls in (
        BalsamDBError, ConfigError, NotADBDirectory, BadRequest, RequestTooLarge,
        AuthenticationError, NotFound, InvalidTransition, Conflict, DatabaseBusy,
        StorageError, ServerUnavailable, ServerError, TryAgain, TransferError,
    )
}


def error_from_dict(data):
    """Rebuild the exception that a server sent as ``{"code", "type", "message"}``."""
    cls = ERRORS_BY_CODE.get(data.get("code"), BalsamDBError)
    return cls(data.get("message", ""))
