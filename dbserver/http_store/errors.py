"""Errors of the HTTP store: :class:`HTTPError` and the HTTP status of each library error."""

from balsamdb.exceptions import (AuthenticationError, BadRequest, BalsamDBError, Conflict, DatabaseBusy,
                                 InvalidTransition, NotFound, RequestTooLarge, ServerUnavailable, StorageError,
                                 TryAgain)

REALM = "balsamdb"
CODE_OF_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 405: "bad_request",
                  406: "bad_request", 409: "conflict", 413: "too_large", 429: "auth", 500: "internal",
                  503: "unavailable"}

STATUS_OF_ERROR = [  # library error -> HTTP status; the first match wins
    (RequestTooLarge, 413),
    (AuthenticationError, 403),
    (BadRequest, 400),
    (NotFound, 404),
    (Conflict, 409),
    (InvalidTransition, 409),
    ((ServerUnavailable, TryAgain, DatabaseBusy, StorageError), 503),  # try again later
    (BalsamDBError, 500),  # a bug of the write server, a broken configuration: its log says why
]


class HTTPError(Exception):
    """An answer other than success, raised anywhere in a view."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def challenge(message="log in to see this"):
    return HTTPError(401, message, {"WWW-Authenticate": f'Basic realm="{REALM}"'})
