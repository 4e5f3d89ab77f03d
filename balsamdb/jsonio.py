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
- :func:`dumps_indented`: ``json.dumps(value, indent=2, ensure_ascii=False)``, what ``--json`` prints.
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
_dumps_canonical_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode


#: where orjson's text of a float differs from json's: ``1e-7``/``1e-07``, ``0.00001``/``1e-05``
#: (strings may hold such text too: the text is then made by json, the same)
_FLOAT_SPELLING = re.compile(r"e-[0-9](?:[,\]}]|$)|0\.0000")
_SORTED = orjson.OPT_SORT_KEYS


def dumps_canonical(value):
    """The canonical text of ``value`` (sorted keys, json's spelling): exactly
    ``json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)``, three
    to five times faster with orjson where orjson's text is provably the same.  orjson writes
    small floats another way (``1e-7``: the text is then made by json), NaN and infinities as
    null, and refuses integers beyond 64 bits and lone surrogates; reading its text back and
    comparing with ``value`` catches those (NaN is unequal to anything), and json writes them."""
    return _orjson_where_same(value, _SORTED, _FLOAT_SPELLING, _dumps_canonical_json)


def _orjson_where_same(value, option, float_spelling, json_encode):
    """orjson's text of ``value`` with ``option`` when it is provably ``json_encode``'s (no float
    spelled another way: ``float_spelling`` finds none; reading it back gives ``value``), else
    ``json_encode(value)``."""
    try:
        text = orjson.dumps(value, option=option)
    except TypeError:
        return json_encode(value)
    out = text.decode()
    if (("e-" in out or "0.0000" in out) and float_spelling.search(out) is not None) \
            or orjson.loads(text) != value:
        return json_encode(value)
    return out


#: as :data:`_FLOAT_SPELLING`, in indented text (a line may end after the float)
_FLOAT_SPELLING_INDENTED = re.compile(r"e-[0-9](?:[,\]}\n]|$)|0\.0000")
_dumps_indented_json = json.JSONEncoder(indent=2, ensure_ascii=False).encode


def dumps_indented(value):
    """Exactly ``json.dumps(value, indent=2, ensure_ascii=False)`` (what ``--json`` prints), made by
    orjson where its text is provably the same, as for :func:`dumps_canonical` (json's indented
    encoder is its pure-Python one: ten times slower)."""
    return _orjson_where_same(value, orjson.OPT_INDENT_2, _FLOAT_SPELLING_INDENTED, _dumps_indented_json)


# -- canonical text made piece by piece (export files, issue 22) ------------------------------------------
#
# An export line is the canonical text of an item made of a row's columns and JSON texts stored in
# it.  Rather than build the item and encode it, the line is made from the canonical text of each
# piece, with json's own writers for strings and numbers: json's sort_keys text of an object is
# "{" + ",".join(key + ":" + value text, keys sorted) + "}", and of a list "[" + ",".join(...) + "]".

_encode_string = json.encoder.encode_basestring  # what JSONEncoder(ensure_ascii=False) writes a str with
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}  # float.__repr__ -> json's text


def _float_text(value):
    """json's text of a float (allow_nan=True): float.__repr__, which ends in a digit when the
    float is finite, or NaN, Infinity, -Infinity."""
    text = float.__repr__(value)
    return text if text[-1] <= "9" else _NON_FINITE[text]


_SCALAR_TEXT = {str: _encode_string, float: _float_text, int: int.__repr__, type(None): lambda _value: "null",
                bool: lambda value: "true" if value else "false"}


def canonical_scalar(value):
    """:func:`dumps_canonical` of ``value``, written by json's own writers when it is a str, float,
    int, bool or None (what a database column gives), else by json itself."""
    return _SCALAR_TEXT.get(type(value), _dumps_canonical_json)(value)


def canonical_scalars(values):
    """:func:`canonical_scalar` of each of ``values`` (a row), as a list."""
    get = _SCALAR_TEXT.get
    return [get(type(value), _dumps_canonical_json)(value) for value in values]


def canonical_object(keys):
    """A function of the canonical texts of the values of ``keys`` (in that order) that makes the
    canonical text of the object: ``canonical_object(("b", "a"))("1", "[]")`` is ``'{"a":[],"b":1}'``."""
    def member(i):  # the key's text, braces doubled for str.format, then the i-th value's place
        return _encode_string(keys[i]).replace("{", "{{").replace("}", "}}") + ":{" + str(i) + "}"

    return ("{{" + ",".join(member(i) for i in sorted(range(len(keys)), key=keys.__getitem__)) + "}}").format


def canonical_list(texts):
    """The canonical text of a list, from the canonical texts of its elements."""
    return "[" + ",".join(texts) + "]"


def canonical_text(text):
    """The canonical text of the JSON ``text`` (a str): ``dumps_canonical(loads(text))``, made by
    orjson where its text is provably json's.  A value orjson read holds only str keys, valid
    strings, 64-bit integers and finite floats (it refuses NaN, Infinity, 1e999 and lone
    surrogates; a run of 19 digits goes to json, as in :func:`loads`), so orjson writes it as json
    does but for the spelling of small floats (``1e-7``), which sends the text to json."""
    if text == "{}" or text == "[]":
        return text
    raw = text.encode("utf-8", "surrogatepass")
    value = _orjson_value(raw)
    if value is not _UNREAD:
        out = orjson.dumps(value, option=_SORTED).decode()
        if not (("e-" in out or "0.0000" in out) and _FLOAT_SPELLING.search(out) is not None):
            return out
    return _dumps_canonical_json(_PLAIN.decode(text))


def dumps_finite_bytes(value):
    """:func:`dumps_finite`'s value as UTF-8 bytes (NaN and infinities raise ``ValueError``), made by
    orjson where it can: the text may spell a small float otherwise (``1e-7``), never another
    value.  orjson writes NaN and infinities as null: reading its text back and comparing catches
    them (NaN equals nothing), and json then raises as before."""
    try:
        text = orjson.dumps(value)
    except TypeError:  # an integer beyond 64 bits, a lone surrogate, a key that is not a string
        return dumps_finite(value).encode()
    if _long_digits(text) or orjson.loads(text) != value:
        return dumps_finite(value).encode()
    return text


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
#: every digit to "0", every other byte to "x": a run of 19 digits is then a plain substring, found
#: several times faster than by the regular expression (a copy's import requests are 8 MB each)
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x78 for b in range(256))
_NINETEEN = b"0" * 19


_SHALLOW = 800  # levels of nesting that json reads whatever the caller's stack


def _depth_at_most(value, limit):
    """True when ``value`` nests lists and objects at most ``limit`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def _long_digits(raw):
    """True when ``raw`` (bytes) holds a run of 19 digits (orjson may read it as a float)."""
    return len(raw) >= 19 and _NINETEEN in raw.translate(_DIGITS_ONLY)


_UNREAD = object()


def _orjson_value(raw):
    """orjson's value of the JSON bytes ``raw``, or ``_UNREAD`` when orjson refuses them or they hold a
    run of 19 digits (orjson may read it as a float): json decides those."""
    if _long_digits(raw):
        return _UNREAD
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _UNREAD


def loads_strict(data, what="the text"):
    """Parse JSON text (str or bytes) as the servers accept it: no NaN, Infinity or overflowing
    number, no nesting too deep to parse.  Raises :class:`JSONError` saying why, never anything else."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    # orjson refuses NaN, Infinity and numbers that overflow a float, as the strict decoder does (and
    # it is four times faster on a large import): whatever it refuses goes to json, which says why.
    value = _orjson_value(raw)
    # orjson reads 1,024 levels; json stops near 1,000 (a RecursionError, "nested too deeply"),
    # and what is that deep fails later: a deep text goes to json, which decides as before.
    if value is not _UNREAD and (raw.count(b"[") + raw.count(b"{") < _SHALLOW or _depth_at_most(value, _SHALLOW)):
        return value
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
    if data == "{}" or data == "[]":  # most JSON columns of a job (environ, parents, data)
        return {} if data == "{}" else []
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if not _long_digits(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return _PLAIN.decode(raw.decode("utf-8", "surrogatepass"))
