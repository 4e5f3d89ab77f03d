"""Validators of operation parameters: each returns the clean value or raises
:class:`~balsamdb.exceptions.BadRequest` with a one-line message."""

import uuid

from ..exceptions import BadRequest


def check_text(value, what, required=True, max_len=None):
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise BadRequest(f"{what} must be a non-empty string")
    if max_len and len(value) > max_len:
        raise BadRequest(f"{what} is longer than {max_len} characters")
    if "\x00" in value:
        raise BadRequest(f"{what} may not contain the NUL character (PostgreSQL cannot store it)")
    return value


INT_MAX = 2 ** 31 - 1  # integer columns are 32-bit on PostgreSQL


def check_number(value, what, kind=float, minimum=0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise BadRequest(f"{what} must be a number")
    if value < minimum:
        raise BadRequest(f"{what} must be at least {minimum}")
    if kind is int and value > INT_MAX:
        raise BadRequest(f"{what} must be at most {INT_MAX}")
    if kind is float and abs(value) == float("inf"):
        raise BadRequest(f"{what} must be finite")
    return kind(value)


MAX_LIST = 50000  # items in one list parameter (ids, tags): beyond it, send several requests


def check_str_list(value, what, max_len=255):
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise BadRequest(f"{what} must be a list of non-empty strings")
    if len(value) > MAX_LIST:
        raise BadRequest(f"{what} holds {len(value)} items; at most {MAX_LIST} per request")
    if any(len(v) > max_len for v in value):
        raise BadRequest(f"each of {what} must be at most {max_len} characters")
    if any("\x00" in v for v in value):
        raise BadRequest(f"{what} may not contain the NUL character (PostgreSQL cannot store it)")
    return list(dict.fromkeys(value))


def check_object(value, what):
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be an object")
    return value


def check_uuid(value, what="job id"):
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise BadRequest(f"{what} {value!r} is not a UUID") from None



def check_project_name(name):
    return check_text(name, "project name", max_len=255)


def check_record_label(value):
    """A record label: text of 1 to 255 characters without control characters (a tab is allowed)."""
    label = check_text(value, "record label", max_len=255)
    if any(ord(c) < 32 and c != "\t" for c in label):
        raise BadRequest("a record label may not hold control characters")
    return label



def check_flag(value, what):
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value



def check_saved_by(value):
    return check_text(value, "saved_by", required=False, max_len=255) or ""



def check_user_name(name):
    name = check_text(name, "user name", max_len=150)
    if not all(c.isalnum() or c in "._-@+" for c in name):
        raise BadRequest(f"user name {name!r} may hold letters, digits and . _ - @ + only")
    return name



def chunks(values, size=500):
    """``values`` in lists of at most ``size`` (SQLite allows a limited number of parameters
    per statement)."""
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]
