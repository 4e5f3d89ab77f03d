"""The wire envelope shared by the client and the write server.

A request is one ZeroMQ frame after the routing envelope::

    MAGIC (4 bytes) + HMAC-SHA256(secret, body) (32 bytes) + body

and ``body`` is a JSON object ``{"id": str, "op": str, "params": {...}, "ts": float}`` (see
:class:`balsamdb.request.Request`, which makes it).
``id`` is made by the client (32 hexadecimal characters: 16 random bytes; any string of 1 to 64
characters is accepted) and is the same for every retry of one
request: it is what makes a write happen exactly once.  The answer has the
same form::

    MAGIC + HMAC-SHA256(secret, body) + body

with ``body`` = ``{"id", "ok": true, "result": ...}`` or
``{"id", "ok": false, "error": {"code", "type", "message"}}``; the error
codes are the ``code`` attributes in :mod:`balsamdb.exceptions`.  The operations
are those of :mod:`balsamdb.operations`; the server answers ``ping``, ``status`` and
``spool_drain`` itself (registered with ``server=True``).  While the server applies spooled writes that arrived before a
request, it may answer with a *holding reply* (:func:`holding_reply`): the request
was not applied; the client sends it again on the same socket.  The read service sends the same
kind of reply (:func:`working_reply`) while it works on a long read.  See docs/protocol.md.
"""

import hmac
import math

from . import jsonio
from .exceptions import AuthenticationError, BadRequest

MAGIC = b"BDB1"
_MAC_END = len(MAGIC) + 32
#: Bytes of a frame around its body: the largest frame a server reads is ``max_request_bytes`` + this.
ENVELOPE_BYTES = _MAC_END


def holding_reply(request_id, pending):
    """The answer to a request that waits for ``pending`` spooled writes to be applied first:
    nothing of it was applied yet, and its client sends it again (same id, same socket).
    ``ok`` is false so that a client that does not know holding replies raises, never
    takes it for a result."""
    return {"id": request_id, "ok": False, "holding": True, "pending": pending,
            "error": {"code": "draining", "type": "Draining",
                      "message": f"draining the spool, {pending} left: this write goes after them"}}


def working_reply(request_id, seconds):
    """The read service's answer to a read it has worked on for ``seconds`` and goes on with: a
    holding reply (the client sends the same request again, same id, same socket, and waits a
    whole ``client_timeout`` again), so that a long read is never sent again on a fresh socket
    and run twice while the service is alive and working on it."""
    return {"id": request_id, "ok": False, "holding": True, "working": round(seconds, 1),
            "error": {"code": "working", "type": "Working",
                      "message": f"the read service has worked on this read for {seconds:.1f} s; wait"}}


def is_holding(answer):
    return answer.get("holding") is True and answer.get("ok") is False


def sign(secret, body):
    return hmac.digest(secret, body, "sha256")  # the one-shot C path: ~10x cheaper than hmac.new


def encode(secret, message):
    """The frames of ``message`` (a dict), signed with ``secret``: one frame.

    One frame, not three: every frame costs a separate send inside ZeroMQ,
    which measurably slows the round trip."""
    body = jsonio.dumps(message).encode()
    return [MAGIC + sign(secret, body) + body]


#: What to tell a caller whose data holds NaN or an infinity (JSON has no such values).
NON_FINITE_ADVICE = ("JSON has no NaN or Infinity: store a missing value as None (null), or the value as a string "
                     "such as \"NaN\" or \"inf\" (see docs/concepts.md, \"Numbers JSON cannot hold\")")


def dumps_request(message):
    """The JSON text (bytes) of a request made by a client: refused with :class:`BadRequest`,
    before anything is sent or spooled, when it holds NaN or an infinity, which would be
    stored as invalid JSON (a float that cannot be a JSON number)."""
    try:
        return jsonio.dumps_finite(message).encode()
    except ValueError as exc:
        if "JSON compliant" not in str(exc):
            raise
        raise BadRequest(f"the {message.get('op', 'request')} request holds NaN or an infinity; "
                         f"{NON_FINITE_ADVICE}") from None


def encode_request(secret, message):
    """:func:`encode` for a client's request: NaN and infinities are refused (see :func:`dumps_request`)."""
    return encode_body(secret, dumps_request(message))


def loads_strict(data, what="the message body"):
    """Parse JSON text as the servers accept it: no NaN, Infinity or overflowing number (which
    Python's json reads but cannot write back as JSON), and no nesting too deep to parse.
    Raises :class:`BadRequest` saying why, never anything else."""
    try:
        return jsonio.loads_strict(data, what)
    except jsonio.JSONError as exc:
        if exc.non_finite:
            raise BadRequest(f"{exc}; {NON_FINITE_ADVICE}") from None
        raise BadRequest(str(exc)) from None


def loads_answer(body):
    """Parse the JSON text (bytes) of an answer as ``json.loads`` does, faster: with orjson (about
    four times faster on a job answer) where it gives the same value, else with json.  orjson
    refuses what json reads leniently (NaN, a lone surrogate: json reads them then) and reads an
    integer of 19 digits or more as a float (a run of 19 digits anywhere sends the text to json)."""
    return jsonio.loads(body)


def encode_body(secret, body):
    """The frames of a body that is already JSON text (bytes)."""
    return [MAGIC + sign(secret, body) + body]


def reply(secret, request_id, answer, text=None):
    """The frames of the answer to request ``request_id`` (None when the message was not
    authentic): ``answer`` (a dict ``{"ok": ...}``), or, when given, ``text``: the JSON text
    of that answer as it was stored with the write, sent as it is with only the id put in
    front (no second encoding)."""
    if text is not None:
        return encode_body(secret, b'{"id":' + jsonio.dumps(request_id).encode() + b"," + text.encode()[1:])
    return encode(secret, {"id": request_id, **answer})


def decode(secret, frames, max_bytes=None, strict=True):
    """Check and parse the frames of one message; returns the body as a dict.

    ``strict`` (requests): NaN, infinities and too large numbers are refused (see
    :func:`loads_strict`); a client reads answers with ``strict=False``, so that rows stored
    with NaN before it was refused can still be read.

    Raises :class:`BadRequest` (wrong shape, not JSON, too large) or
    :class:`AuthenticationError` (bad signature), never anything else.
    """
    if len(frames) != 1 or len(frames[0]) < _MAC_END or not frames[0].startswith(MAGIC):
        raise BadRequest("not a balsamdb message: expected one frame MAGIC + HMAC + JSON body")
    frame = frames[0]
    if max_bytes is not None and len(frame) - _MAC_END > max_bytes:
        from .exceptions import RequestTooLarge

        raise RequestTooLarge(f"request of {len(frame) - _MAC_END} bytes exceeds the limit of {max_bytes} bytes")
    # A view, not a copy: a large unsigned frame costs no second copy of itself.
    view = memoryview(frame)
    mac, body = view[len(MAGIC):_MAC_END], view[_MAC_END:]
    if not hmac.compare_digest(mac, sign(secret, body)):
        raise AuthenticationError("bad signature: the client does not hold this DB directory's secret")
    if strict:
        message = loads_strict(bytes(body))
    else:
        try:
            message = loads_answer(bytes(body))
        except (ValueError, RecursionError):
            raise BadRequest("the message body is not valid JSON") from None
    if not isinstance(message, dict):
        raise BadRequest("the message body must be a JSON object")
    return message


#: A request signed longer ago than this (or this far in the future) is refused as a
#: replay; a client's own retries reuse the message within its deadline, well inside.
MAX_AGE = 300.0


def check_request(message, now=None):
    """Validate the fields of a request body (see :meth:`balsamdb.request.Request.from_message`,
    which makes the request of it); raises :class:`BadRequest` or :class:`AuthenticationError`.

    With ``now`` (the server's clock), a request whose ``ts`` is more than
    :data:`MAX_AGE` seconds away is refused: a captured message cannot be
    replayed later.  Spooled requests are checked without ``now``.
    """
    request_id, op, params = message.get("id"), message.get("op"), message.get("params", {})
    if now is not None:
        ts = message.get("ts")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
            # NaN would pass the age test below (every comparison with NaN is false): never expire.
            raise AuthenticationError("the request carries no finite time stamp (ts)")
        if abs(now - ts) > MAX_AGE:
            raise AuthenticationError(
                f"the request was signed {now - ts:.0f} s ago: refused as a replay "
                f"(or the clocks of client and server differ by more than {MAX_AGE:.0f} s)")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 64:
        raise BadRequest("request id must be a string of 1 to 64 characters")
    if not isinstance(op, str):
        raise BadRequest("op must be a string")
    if not isinstance(params, dict):
        raise BadRequest("params must be an object")
