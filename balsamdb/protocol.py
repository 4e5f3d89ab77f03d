"""The wire envelope shared by the client and the write server.

A request is three ZeroMQ frames after the routing envelope::

    MAGIC | HMAC-SHA256(secret, body) | body

and ``body`` is a JSON object ``{"id": str, "op": str, "params": {...}}``.
``id`` is made by the client (a UUID) and is the same for every retry of one
request: it is what makes a write happen exactly once.  The answer is::

    MAGIC | HMAC-SHA256(secret, body) | body

with ``body`` = ``{"id", "ok": true, "result": ...}`` or
``{"id", "ok": false, "error": {"code", "type", "message"}}``; the error
codes are the ``code`` attributes in :mod:`balsamdb.exceptions`.  Besides the
operations of :mod:`balsamdb.operations`, the server answers ``ping`` and
``status`` itself.  See docs/protocol.md.
"""

import hashlib
import hmac
import json

from .exceptions import AuthenticationError, BadRequest

MAGIC = b"BDB1"
SERVER_OPS = ("ping", "status")


def sign(secret, body):
    return hmac.new(secret, body, hashlib.sha256).digest()


def encode(secret, message):
    """Frames for ``message`` (a dict), signed with ``secret``."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return [MAGIC, sign(secret, body), body]


def decode(secret, frames, max_bytes=None):
    """Check and parse the frames of one message; returns the body as a dict.

    Raises :class:`BadRequest` (wrong shape, not JSON, too large) or
    :class:`AuthenticationError` (bad signature), never anything else.
    """
    if len(frames) != 3 or frames[0] != MAGIC:
        raise BadRequest("not a balsamdb message: expected 3 frames MAGIC|HMAC|JSON body")
    mac, body = frames[1], frames[2]
    if max_bytes is not None and len(body) > max_bytes:
        from .exceptions import RequestTooLarge

        raise RequestTooLarge(f"request of {len(body)} bytes exceeds the limit of {max_bytes} bytes")
    if not hmac.compare_digest(bytes(mac), sign(secret, bytes(body))):
        raise AuthenticationError("bad signature: the client does not hold this DB directory's secret")
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the message body is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadRequest("the message body must be a JSON object")
    return message


def check_request(message):
    """Validate the fields of a request body; returns ``(id, op, params)``."""
    request_id, op, params = message.get("id"), message.get("op"), message.get("params", {})
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        raise BadRequest("request id must be a string of 1 to 64 characters")
    if not isinstance(op, str):
        raise BadRequest("op must be a string")
    if not isinstance(params, dict):
        raise BadRequest("params must be an object")
    return request_id, op, params
