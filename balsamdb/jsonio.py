"""The one JSON module: every encoder and decoder that balsamdb uses, made once.

Which function for which text:

- :func:`dumps`: compact text (``json.dumps(value, separators=(",", ":"), ensure_ascii=False)``):
  requests' stored fields, JSON columns, records' documents.  Exactly the standard library's text.
- :func:`dumps_fast`: the same value as :func:`dumps`, four times faster with orjson, for values
  that came from a checked request (no NaN or infinity); falls back to :func:`dumps` where orjson
  refuses (an integer beyond 64 bits, a lone surrogate).  Answers of applied writes.
- :func:`dumps_finite`: like :func:`dumps`, but NaN and infinities raise ``ValueError`` (what a
  client sends must be valid JSON).
- :func:`dumps_canonical`: sorted keys, for digests that must not change between releases.
- :func:`loads_strict`: what the servers accept (no NaN, Infinity or overflowing number; the caller
  says what it reads, for the error); :func:`loads`: ``json.loads`` semantics, faster with orjson
  where it gives the same value.

orjson is a dependency (setup.cfg ``install_requires``), chosen where measured faster; the standard
library stays the reference for the exact text, so nothing stored changes with the speed-up.
"""

import json
import math
import re

import orjson

# Made once: json.dumps/loads with keyword arguments build a new encoder/decoder on every call.
dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
dumps_finite = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
dumps_canonical = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


def dumps_fast(value):
    """:func:`dumps`'s text of ``value``, a value without NaN or infinities (orjson would write null
    where json writes NaN), with orjson where it can."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, a lone surrogate
        return dumps(value)


class JSONError(ValueError):
    """Text that :func:`loads_strict` refuses; the message says why."""

    def __init__(self, message, non_finite=False):
        super().__init__(message)
        self.non_finite = non_finite


def _refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON that Python reads as an infinity
        raise ValueError(f"{text} is too large for a number")
    return value


_STRICT = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_PLAIN = json.JSONDecoder()
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def loads_strict(data, what="the text"):
    """Parse JSON text (str or bytes) as the servers accept it: no NaN, Infinity or overflowing
    number, no nesting too deep to parse.  Raises :class:`JSONError` saying why, never anything else."""
    try:
        return _STRICT.decode(data.decode() if isinstance(data, (bytes, bytearray)) else data)
    except RecursionError:
        raise JSONError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError included
        if "JSON number" in str(exc) or "too large" in str(exc):
            raise JSONError(f"{what} holds NaN or an infinity ({exc})", non_finite=True) from None
        raise JSONError(f"{what} is not valid JSON: {exc}") from None


def loads(data):
    """``json.loads(data)`` for str or bytes, with orjson where it gives the same value: orjson refuses
    what json reads leniently (NaN, a lone surrogate: json reads them then) and reads an integer of
    19 digits or more as a float (a run of 19 digits anywhere sends the text to json)."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _PLAIN.decode(raw.decode("utf-8", "surrogatepass"))
