"""The wire envelope shared by the client and the write server.

A request is one ZeroMQ frame after the routing envelope::

    MAGIC (4 bytes) + HMAC-SHA256(secret, body) (32 bytes) + body

and ``body`` is a JSON object ``{"id": str, "op": str, "params": {...}}``.
``id`` is made by the client (a UUID) and is the same for every retry of one
request: it is what makes a write happen exactly once.  The answer has the
same form::

    MAGIC + HMAC-SHA256(secret, body) + body

with ``body`` = ``{"id", "ok": true, "result": ...}`` or
``{"id", "ok": false, "error": {"code", "type", "message"}}``; the error
codes are the ``code`` attributes in :mod:`balsamdb.exceptions`.  Besides the
operations of :mod:`balsamdb.operations`, the server answers ``ping`` and
``status`` itself.  While the server applies spooled writes that arrived before a
request, it may answer with a *holding reply* (:func:`holding_reply`): the request
was not applied; the client sends it again on the same socket.  See docs/protocol.md.
"""

import hmac
import json

from .exceptions import AuthenticationError, BadRequest

MAGIC = b"BDB1"
_MAC_END = len(MAGIC) + 32
SERVER_OPS = ("ping", "status", "spool_drain")


def holding_reply(request_id, pending):
    """The answer to a request that waits for ``pending`` spooled writes to be applied first:
    nothing of it was applied yet, and its client sends it again (same id, same socket).
    ``ok`` is false so that a client that does not know holding replies raises, never
    takes it for a result."""
    return {"id": request_id, "ok": False, "holding": True, "pending": pending,
            "error": {"code": "draining", "type": "Draining",
                      "message": f"draining the spool, {pending} left: this write goes after them"}}


def is_holding(answer):
    return answer.get("holding") is True and answer.get("ok") is False


def sign(secret, body):
    return hmac.digest(secret, body, "sha256")  # the one-shot C path: ~10x cheaper than hmac.new


def encode(secret, message):
    """The frames of ``message`` (a dict), signed with ``secret``: one frame.

    One frame, not three: every frame costs a separate send inside ZeroMQ,
    which measurably slows the round trip."""
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return [MAGIC + sign(secret, body) + body]


def encode_body(secret, body):
    """The frames of a body that is already JSON text (bytes)."""
    return [MAGIC + sign(secret, body) + body]


def decode(secret, frames, max_bytes=None):
    """Check and parse the frames of one message; returns the body as a dict.

    Raises :class:`BadRequest` (wrong shape, not JSON, too large) or
    :class:`AuthenticationError` (bad signature), never anything else.
    """
    if len(frames) != 1 or len(frames[0]) < _MAC_END or not frames[0].startswith(MAGIC):
        raise BadRequest("not a balsamdb message: expected one frame MAGIC + HMAC + JSON body")
    frame = frames[0]
    if max_bytes is not None and len(frame) - _MAC_END > max_bytes:
        from .exceptions import RequestTooLarge

        raise RequestTooLarge(f"request of {len(frame) - _MAC_END} bytes exceeds the limit of {max_bytes} bytes")
    mac, body = frame[len(MAGIC):_MAC_END], frame[_MAC_END:]
    if not hmac.compare_digest(mac, sign(secret, body)):
        raise AuthenticationError("bad signature: the client does not hold this DB directory's secret")
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        raise BadRequest("the message body is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadRequest("the message body must be a JSON object")
    return message


#: A request signed longer ago than this (or this far in the future) is refused as a
#: replay; a client's own retries reuse the message within its deadline, well inside.
MAX_AGE = 300.0


def check_request(message, now=None):
    """Validate the fields of a request body; returns ``(id, op, params)``.

    With ``now`` (the server's clock), a request whose ``ts`` is more than
    :data:`MAX_AGE` seconds away is refused: a captured message cannot be
    replayed later.  Spooled requests are checked without ``now``.
    """
    request_id, op, params = message.get("id"), message.get("op"), message.get("params", {})
    if now is not None:
        sent = message.get("ts")
        if isinstance(sent, bool) or not isinstance(sent, (int, float)):
            raise AuthenticationError("the request carries no time stamp (ts)")
        if abs(now - sent) > MAX_AGE:
            raise AuthenticationError(
                f"the request was signed {now - sent:.0f} s ago: refused as a replay "
                f"(or the clocks of client and server differ by more than {MAX_AGE:.0f} s)")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        raise BadRequest("request id must be a string of 1 to 64 characters")
    if not isinstance(op, str):
        raise BadRequest("op must be a string")
    if not isinstance(params, dict):
        raise BadRequest("params must be an object")
    return request_id, op, params
