"""Read the JSON file that Sumatra's ``smt export`` writes.

What ``smt export`` (Sumatra 0.8) does, run in the project's root directory
(the one holding ``.smt/``; in a subdirectory it fails):

* ``.smt/records_export.json``: a JSON **list** with one object per record of
  the project, newest first, as ``"[" + ",\\n".join(records) + "]"`` with
  ``indent=2``; ``[]`` for a project without records.  Each object is
  ``sumatra.formatting.record2dict(record)``, exactly the dict that ``smt``
  PUTs to a Sumatra server as ``{base}{project}/{label}/`` (the HTTP store
  sends ``serialization.encode_record(record)``, the same dict on one line).
  It carries no project name.
* ``.smt/project_export.json``: a copy of ``.smt/project``, a JSON object whose
  ``"name"`` is the project name.

A Sumatra Server's GET of a record answers the same dict plus ``"project_id"``,
so a list of such answers is read here too: the ``project_id`` names the
project and is removed from the document.

:func:`read_smt_export` turns the file into ``(project, document)`` pairs whose
documents look like what ``smt run`` sends to ``db serve``;
:func:`is_smt_export` tells the file apart from balsamdb's own JSON-lines
export, whose first line is an object such as ``{"balsamdb_export": 1, ...}``.
"""

import json
from pathlib import Path

from balsamdb.exceptions import BadRequest

__all__ = ["PROJECT_FILE_NAME", "PROJECT_ID_FIELD", "is_smt_export", "read_smt_export"]

# The field a Sumatra Server adds to a record it answers; smt's PUT body has none.
PROJECT_ID_FIELD = "project_id"
# Written by `smt export` next to records_export.json; its "name" is the project.
PROJECT_FILE_NAME = "project_export.json"

_WHITESPACE = b" \t\r\n"
_BOM = b"\xef\xbb\xbf"


def is_smt_export(first_bytes: bytes) -> bool:
    """Whether a file starting with ``first_bytes`` looks like an ``smt export`` file.

    True when, after an optional UTF-8 byte-order mark and whitespace, the bytes
    open a JSON list that is empty or starts with an object (``[``, ``[]``,
    ``[{...``), or end before telling which; False for anything else, notably
    balsamdb's own export (its first line is a JSON object) and empty input.
    Only a sniff: :func:`read_smt_export` still checks the whole file.  The
    first 64 bytes are plenty.
    """
    data = bytes(first_bytes).removeprefix(_BOM).lstrip(_WHITESPACE)
    if not data.startswith(b"["):
        return False
    rest = data[1:].lstrip(_WHITESPACE)
    return rest == b"" or rest[:1] in (b"{", b"]")


def read_smt_export(path, project=None) -> list:
    """Read an ``smt export`` file; return ``[(project_name, record_document), ...]`` in file order.

    ``path`` is the ``records_export.json`` file (a ``str`` or path).  Each
    document is the record's dict as ``smt`` would PUT it over HTTP, unchanged
    but for ``project_id``, which is removed.  The project of a record is, in
    this order: its ``project_id`` field; else ``project``; else the ``"name"``
    in ``project_export.json`` next to the file (``smt export`` writes both);
    else :class:`~balsamdb.exceptions.BadRequest` asks for ``--project``.

    Raises :class:`~balsamdb.exceptions.BadRequest`, with a one-sentence reason,
    when the file cannot be read, is not UTF-8 JSON, is not a list of objects,
    or holds a record without a non-empty string ``label``, a ``project_id``
    that is not a non-empty string, or the same label twice in one project.
    Other fields are not checked here; saving the record checks them.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read the Sumatra export {str(path)!r}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadRequest(f"{str(path)!r} is not a Sumatra export: it is not UTF-8 text") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"{str(path)!r} is not a Sumatra export: {_not_json_reason(text, exc)}") from None
    if not isinstance(data, list):
        raise BadRequest(f"{str(path)!r} is not a Sumatra export: it holds a JSON {_json_type(data)}, not the list "
                         "of records that `smt export` writes to .smt/records_export.json")

    fallback = None  # the project for records without a project_id, looked up once when needed
    pairs, seen = [], set()
    for number, record in enumerate(data, start=1):
        where = f"record {number} of {len(data)} in {str(path)!r}"
        if not isinstance(record, dict):
            raise BadRequest(f"{where} is a JSON {_json_type(record)}, not an object")
        label = record.get("label")
        if not isinstance(label, str) or not label.strip():
            raise BadRequest(f"{where} has no label (a non-empty string)")
        if PROJECT_ID_FIELD in record:
            name = record.pop(PROJECT_ID_FIELD)
            if not isinstance(name, str) or not name.strip():
                raise BadRequest(f"{where} ({label!r}) has a {PROJECT_ID_FIELD} that is not a non-empty string")
        else:
            if fallback is None:
                fallback = project or _project_beside(path)
            if not fallback:
                raise BadRequest(f"{where} ({label!r}) names no project and there is no {PROJECT_FILE_NAME} beside "
                                 "the file: pass the Sumatra project name with --project")
            name = fallback
        if (name, label) in seen:
            raise BadRequest(f"{where}: the label {label!r} appears twice in project {name!r}")
        seen.add((name, label))
        pairs.append((name, record))
    return pairs


def _project_beside(path):
    """The ``"name"`` of the ``project_export.json`` next to ``path``, or None if there is none usable."""
    try:
        info = json.loads((path.parent / PROJECT_FILE_NAME).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError, RecursionError):
        return None
    name = info.get("name") if isinstance(info, dict) else None
    return name if isinstance(name, str) and name.strip() else None


def _not_json_reason(text, exc):
    """Why ``text``, which ``json.loads`` refused with ``exc``, is not an export (a clause)."""
    first_line = text.lstrip().split("\n", 1)[0]
    try:
        head = json.loads(first_line)
    except (ValueError, RecursionError):
        head = None
    if isinstance(head, dict) and "balsamdb_export" in head:
        return "it is a balsamdb export (JSON lines), not the JSON list that `smt export` writes"
    line = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
    return f"it is not valid JSON{line}"


def _json_type(value):
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"
