"""The digest of a whole store: counts and SHA-256 sums of its items' content, in any order (what
``db copy`` checks a copy with, and ``store_digest`` answers without building a store's items in
one request).  Items and their keys: :mod:`.stores`."""

import hashlib
import time

from ..exceptions import BadRequest
from .checks import MAX_LIST, check_number
from .registry import operation
from .stores import KINDS, PAGE, PLURALS, _items, _page_query, canonical, item_key


def digest_content(item):
    """What of an item its digest covers: content, not bookkeeping that a plain Sumatra
    server cannot keep (when a record was stored, and updated)."""
    if item["kind"] == "record":
        content = {"label": item["label"], "document": item["document"]}
        if "versions" in item:
            content["versions"] = item["versions"]
        return content
    if item["kind"] == "project":
        return {"name": item["name"], "description": item["description"], "public": item["public"]}
    return item


class Digester:
    """Counts and SHA-256 digests of a store, fed its items in any order.

    A group's digest is the sum, modulo 2**256, of the SHA-256 of each item's
    canonical content: it does not depend on the order in which a database
    sorts names (collations differ between SQLite and PostgreSQL).
    ``result()``: ``{"projects": {name: {"records": n, "digest": hex}}, "jobs": {...},
    "users": {...}, "permissions": {...}, "policies": {...}}``, where a project's digest covers its own
    fields and its records."""

    def __init__(self):
        self._groups = {}

    def _group(self, name):
        if name not in self._groups:
            self._groups[name] = [0, 0]
        return self._groups[name]

    def add(self, item):
        kind = item["kind"]
        if kind == "record":
            group = self._group(("project", item["project"]))
            group[0] += 1
        elif kind == "project":
            group = self._group(("project", item["name"]))
        else:
            group = self._group((kind, None))
            group[0] += 1
        self._sum(group, canonical(digest_content(item)).encode())

    def add_content(self, group, content):
        """Add a record (``group`` ``("project", name)``) or a job (``("job", None)``) whose
        digest content (:func:`digest_content`) has the canonical text ``content`` (UTF-8 bytes)."""
        group = self._group(group)
        group[0] += 1
        self._sum(group, content)

    @staticmethod
    def _sum(group, content):
        digest = hashlib.sha256(content).digest()
        group[1] = (group[1] + int.from_bytes(digest, "big")) % (1 << 256)

    def result(self):
        out = {"projects": {}, "jobs": None, "users": None, "permissions": None, "policies": None}
        for (kind, name), (count, total) in sorted(self._groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            digest = f"{total:064x}"
            if kind == "project":
                out["projects"][name] = {"records": count, "digest": digest}
            else:
                out[PLURALS[kind]] = {"count": count, "digest": digest}
        for kind in ("jobs", "users", "permissions", "policies"):
            if out[kind] is None:
                out[kind] = {"count": 0, "digest": "0" * 64}
        return out


def changed_after(item, until):
    """True when ``item`` was changed after ``until`` (records and jobs know when)."""
    return until is not None and item["kind"] in ("record", "job") and item["updated_at"] > until


def _excluded_keys(exclude):
    if exclude is None:
        return set()
    if not isinstance(exclude, list) or len(exclude) > MAX_LIST:
        raise BadRequest(f"exclude must be a list of at most {MAX_LIST} item keys")
    keys = set()
    for key in exclude:
        if not isinstance(key, list) or not all(isinstance(k, str) for k in key):
            raise BadRequest("each key in exclude must be a list of strings, as export_items gives them")
        keys.add(tuple(key))
    return keys


def digest_of(items, until=None, excluded=(), now=None, digester=None, changed=None):
    """What :func:`store_digest` answers, for ``items`` in any order: the digests of those
    not changed after ``until`` and not ``excluded`` (record and job keys as tuples),
    ``changed_after`` (the keys of those left out for ``until``) and ``now``.  ``digester`` and
    ``changed``: a :class:`Digester` and a list of keys already fed with other items of the store."""
    digester = Digester() if digester is None else digester
    changed = [] if changed is None else changed
    for item in items:
        key = item_key(item)
        if changed_after(item, until):
            changed.append(key)
        elif item["kind"] not in ("record", "job") or tuple(key) not in excluded:
            digester.add(item)
    result = digester.result()
    result.update(now=time.time() if now is None else now, changed_after=changed[:MAX_LIST],
                  too_many_changed=len(changed) > MAX_LIST)
    return result


def _every_item():
    for kind in KINDS:
        after = None
        while True:
            items = _items(kind, _page_query(kind, after, None).limit(PAGE))
            if not items:
                break
            yield from items
            after = item_key(items[-1])


@operation(write=False)
def store_digest(until=None, exclude=None):
    """Counts and content digests of the whole store (see :class:`Digester`), for
    checking a copy.

    ``until`` (UNIX seconds) leaves out records and jobs changed after it, and
    ``exclude`` (a list of record and job keys, as ``export_items`` gives them)
    leaves out those items: so a store that writers keep changing can be compared
    with a copy made up to that moment.  Returns the digests, ``"now"`` (the
    store's clock), and ``"changed_after"``: the keys of the items left out for
    ``until`` (at most 50000; ``"too_many_changed"`` is true beyond).
    """
    until = None if until is None else check_number(until, "until", float, float("-inf"))
    excluded = _excluded_keys(exclude)
    return digest_of(_every_item(), until, excluded, now=time.time())
