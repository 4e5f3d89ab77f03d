"""Errors of the HTTP store: :class:`HTTPError`, raised in views.  A library error is answered
with the HTTP status its class carries (``http_status``, see :mod:`balsamdb.exceptions`)."""

REALM = "balsamdb"
# The error code of an HTTPError, as the operation endpoint answers it (as the write server does).
CODE_OF_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 405: "bad_request",
                  406: "bad_request", 409: "conflict", 413: "too_large", 429: "auth", 500: "internal",
                  503: "unavailable"}


class HTTPError(Exception):
    """An answer other than success, raised anywhere in a view."""

    def __init__(self, status, message, headers=None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def challenge(message="log in to see this"):
    return HTTPError(401, message, {"WWW-Authenticate": f'Basic realm="{REALM}"'})
