"""Operations that move a whole store: read it in pages, write items as they are, digest it.

``db copy``, ``db configure --store``, ``db export`` and ``db import`` are built
on these three operations, so they work the same against a DB directory (through
its server, or directly), a PostgreSQL URL and an HTTP store of balsamdb.

An *item* is one JSON object with a ``kind``; items of a store, in this order:

    user        {"kind": "user", "name", "password_hash", "admin", "created_at"}
    project     {"kind": "project", "name", "description", "public", "created_at"}
    permission  {"kind": "permission", "project", "user"}
    record      {"kind": "record", "project", "label", "document", "created_at", "updated_at"
                 [, "versions": [{"version", "saved_at", "saved_by", "document"}, ...], oldest first,
                 the last one equal to "document"; only when asked for: a plain Sumatra
                 server keeps no versions]}
    job         {"kind": "job", <every field of job_get>, "history": [{"time", "from_state",
                 "to_state", "message"}, ...]}

A record's tags are those of its document.  Within a kind, items sort by their
key (user: name; project: name; permission: project, user; record: project,
label; job: id).
"""

import hashlib
import json
import time

import peewee as pw

from . import states
from .exceptions import BadRequest
from .models import Job, JobStateChange, JobTag, Project, ProjectPermission, Record, RecordTag, RecordVersion, User
from .operations import (JOB_FIELDS, JOB_KEYS, MAX_LIST, _number, _object, _record_columns, _str_list, _text,
                         _user_name, _uuid, compress, decompress, job_to_dict, operation, record_tags, record_text)

KINDS = ("user", "project", "permission", "record", "job")
PAGE = 1000  # items per page unless the caller asks for another size
MAX_PAGE = 5000


def canonical(value):
    """The one JSON text of ``value`` that digests and export files use."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# -- items from rows ----------------------------------------------------------------------------

def _user_item(user):
    return {"kind": "user", "name": user.name, "password_hash": user.password_hash, "admin": bool(user.admin),
            "created_at": user.created_at}


def _project_item(project):
    return {"kind": "project", "name": project.name, "description": project.description,
            "public": bool(project.public), "created_at": project.created_at}


def _permission_item(permission):
    return {"kind": "permission", "project": permission.project_id, "user": permission.user_id}


def _record_item(record, versions=None):
    item = {"kind": "record", "project": record.project_id, "label": record.label,
            "document": json.loads(record.document), "created_at": record.created_at,
            "updated_at": record.updated_at}
    if versions is not None:
        item["versions"] = versions
    return item


def _versions_of(record_ids):
    """``{record id: [version items, oldest first]}`` for ``record_ids``."""
    out = {record_id: [] for record_id in record_ids}
    for chunk in _chunks(record_ids):
        query = (RecordVersion.select().where(RecordVersion.record.in_(chunk))
                 .order_by(RecordVersion.record, RecordVersion.number))
        for row in query:
            out[row.record_id].append({"version": row.number, "saved_at": row.saved_at, "saved_by": row.saved_by,
                                       "document": json.loads(decompress(row.document))})
    return out


def _record_items(rows, versions):
    if not versions:
        return [_record_item(row) for row in rows]
    kept = _versions_of([row.id for row in rows])
    return [_record_item(row, kept[row.id]) for row in rows]


def _job_items(jobs):
    ids = [job.id for job in jobs]
    history = {job_id: [] for job_id in ids}
    for start in range(0, len(ids), 500):
        query = (JobStateChange.select().where(JobStateChange.job.in_(ids[start:start + 500]))
                 .order_by(JobStateChange.id))
        for change in query:
            history[change.job_id].append({"time": change.time, "from_state": change.from_state,
                                           "to_state": change.to_state, "message": change.message})
    items = []
    for job in jobs:
        item = {"kind": "job", **job_to_dict(job), "history": history[job.id]}
        items.append(item)
    return items


def _c(field):
    """``field`` compared and sorted by code point on every database (PostgreSQL's default
    collation follows the locale), so that pages, keys and export files agree everywhere."""
    if isinstance(field.model._meta.database, pw.PostgresqlDatabase):
        return field.collate('"C"')
    return field


def _after(fields, key):
    """The condition "(fields) > key", in key order."""
    first, rest = _c(fields[0]), fields[1:]
    if not rest:
        return first > key[0]
    return (first > key[0]) | ((first == key[0]) & _after(rest, key[1:]))


def _page_query(kind, after, since):
    """The query for one kind, ordered by key, from just after key ``after``."""
    model, fields = {
        "user": (User, [User.name]),
        "project": (Project, [Project.name]),
        "permission": (ProjectPermission, [ProjectPermission.project, ProjectPermission.user]),
        "record": (Record, [Record.project, Record.label]),
        "job": (Job, [Job.id]),
    }[kind]
    query = model.select().order_by(*[_c(f) for f in fields])
    if after is not None:
        if len(after) != len(fields):
            raise BadRequest(f"after must be a {kind} key of {len(fields)} strings")
        query = query.where(_after(fields, after))
    if since is not None and kind in ("record", "job"):
        query = query.where(model.updated_at >= since)
    return query


def item_key(item):
    """The sort key of an item, as a list (what ``export_items`` takes as ``after``)."""
    kind = item["kind"]
    if kind in ("user", "project"):
        return [item["name"]]
    if kind == "permission":
        return [item["project"], item["user"]]
    if kind == "record":
        return [item["project"], item["label"]]
    return [item["id"]]


def _items(kind, rows, versions=False):
    if kind == "job":
        return _job_items(rows)
    if kind == "record":
        return _record_items(rows, versions)
    return [{"user": _user_item, "project": _project_item, "permission": _permission_item,
             "record": _record_item}[kind](row) for row in rows]


def _check_kind(kind):
    if kind not in KINDS:
        raise BadRequest(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    return kind


def _check_after(after):
    if after is None:
        return None
    if not isinstance(after, list) or not after or not all(isinstance(k, str) for k in after):
        raise BadRequest("after must be the key of the last item read: a list of strings")
    return after


@operation(write=False)
def export_items(kind, after=None, limit=PAGE, since=None, versions=False):
    """One page of the store's items of ``kind`` (user, project, permission, record, job),
    in key order, starting just after the key ``after`` (the ``next`` of the previous page).

    ``since`` (UNIX seconds; records and jobs only) keeps only items changed at or
    after that time: a catch-up pass of a copy.  ``versions``: each record carries
    its versions.  Returns ``{"items": [...], "next": key or null when this was the
    last page, "now": the store's clock}``.
    """
    _check_kind(kind)
    after = _check_after(after)
    limit = _number(limit, "limit", int, 1)
    if limit > MAX_PAGE:
        raise BadRequest(f"limit is at most {MAX_PAGE}")
    since = None if since is None else _number(since, "since", float, float("-inf"))
    now = time.time()
    if not isinstance(versions, bool):
        raise BadRequest("versions must be true or false")
    rows = list(_page_query(kind, after, since).limit(limit + 1))
    more = len(rows) > limit
    items = _items(kind, rows[:limit], versions)
    return {"items": items, "next": item_key(items[-1]) if more else None, "now": now}


@operation(write=False)
def store_counts():
    """How many items of each kind the store holds: ``{"user": n, "project": n, ...}``."""
    return {"user": User.select().count(), "project": Project.select().count(),
            "permission": ProjectPermission.select().count(), "record": Record.select().count(),
            "job": Job.select().count()}


# -- digests ------------------------------------------------------------------------------------------

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
    "users": {...}, "permissions": {...}}``, where a project's digest covers its own
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
        digest = hashlib.sha256(canonical(digest_content(item)).encode()).digest()
        group[1] = (group[1] + int.from_bytes(digest, "big")) % (1 << 256)

    def result(self):
        out = {"projects": {}, "jobs": None, "users": None, "permissions": None}
        for (kind, name), (count, total) in sorted(self._groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            digest = f"{total:064x}"
            if kind == "project":
                out["projects"][name] = {"records": count, "digest": digest}
            else:
                out[kind + "s"] = {"count": count, "digest": digest}
        for kind in ("jobs", "users", "permissions"):
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


def digest_of(items, until=None, excluded=(), now=None):
    """What :func:`store_digest` answers, for ``items`` in any order: the digests of those
    not changed after ``until`` and not ``excluded`` (record and job keys as tuples),
    ``changed_after`` (the keys of those left out for ``until``) and ``now``."""
    digester = Digester()
    changed = []
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
            rows = list(_page_query(kind, after, None).limit(PAGE))
            if not rows:
                break
            items = _items(kind, rows)
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
    until = None if until is None else _number(until, "until", float, float("-inf"))
    excluded = _excluded_keys(exclude)
    return digest_of(_every_item(), until, excluded, now=time.time())


# -- writing items as they are -------------------------------------------------------------------------

def _time(value, what):
    return _number(value, what, float, float("-inf"))


def _clean_item(item):
    """A validated copy of one item (everything a store writes is checked, even a copy)."""
    if not isinstance(item, dict):
        raise BadRequest("each item must be an object")
    kind = _check_kind(item.get("kind"))
    if kind == "user":
        password_hash = _text(item.get("password_hash"), "password_hash", max_len=512)
        if not password_hash.startswith("scrypt$"):
            raise BadRequest("a user's password_hash must come from balsamdb.passwords.hash_password")
        return {"kind": kind, "name": _user_name(item.get("name")), "password_hash": password_hash,
                "admin": bool(item.get("admin", False)), "created_at": _time(item.get("created_at"), "created_at")}
    if kind == "project":
        created = item.get("created_at")  # None: unknown (a plain Sumatra server does not say)
        return {"kind": kind, "name": _text(item.get("name"), "project name", max_len=255),
                "description": _text(item.get("description"), "description", required=False) or "",
                "public": bool(item.get("public", False)),
                "created_at": None if created is None else _time(created, "created_at")}
    if kind == "permission":
        return {"kind": kind, "project": _text(item.get("project"), "project name", max_len=255),
                "user": _user_name(item.get("user"))}
    if kind == "record":
        document = _object(item.get("document"), "document")
        label = _text(item.get("label"), "record label", max_len=255)
        if document.get("label") != label:
            raise BadRequest(f"record {label!r}: the document's label differs")
        record_tags(document)
        clean = {"kind": kind, "project": _text(item.get("project"), "project name", max_len=255), "label": label,
                 "document": document, "created_at": _time(item.get("created_at"), "created_at"),
                 "updated_at": _time(item.get("updated_at"), "updated_at")}
        if "versions" in item:
            clean["versions"] = _clean_versions(label, item["versions"], document)
        return clean
    job = {name: check(item[name]) for name, check in JOB_FIELDS.items() if name in item}
    job.update(kind=kind, id=_uuid(item.get("id")), name=_text(item.get("name"), "job name", max_len=255),
               workflow=_text(item.get("workflow"), "workflow", max_len=255),
               state_message=_text(item.get("state_message"), "state_message", required=False) or "",
               working_directory=_text(item.get("working_directory"), "working_directory"),
               created_at=_time(item.get("created_at"), "created_at"),
               updated_at=_time(item.get("updated_at"), "updated_at"))
    if item.get("state") not in states.STATES:
        raise BadRequest(f"job {job['id']}: unknown state {item.get('state')!r}")
    job["state"] = item["state"]
    missing = [k for k in JOB_KEYS if k not in job]
    if missing:
        raise BadRequest(f"job {job['id']} lacks {', '.join(missing)}")
    history = item.get("history")
    if not isinstance(history, list):
        raise BadRequest(f"job {job['id']}: history must be a list")
    job["history"] = []
    for change in history:
        change = _object(change, "a history entry")
        if change.get("to_state") not in states.STATES or \
                change.get("from_state") not in states.STATES + (None,):
            raise BadRequest(f"job {job['id']}: a history entry names an unknown state")
        job["history"].append({"time": _time(change.get("time"), "time"), "from_state": change.get("from_state"),
                               "to_state": change["to_state"],
                               "message": _text(change.get("message"), "message", required=False) or ""})
    return job


def _clean_versions(label, versions, document):
    if not isinstance(versions, list) or not versions:
        raise BadRequest(f"record {label!r}: versions must be a non-empty list")
    clean, last = [], 0
    for version in versions:
        version = _object(version, "a record version")
        number = _number(version.get("version"), "version", int, 1)
        if number <= last:
            raise BadRequest(f"record {label!r}: version numbers must increase")
        last = number
        doc = _object(version.get("document"), "a version's document")
        clean.append({"version": number, "saved_at": _time(version.get("saved_at"), "saved_at"),
                      "saved_by": _text(version.get("saved_by"), "saved_by", required=False, max_len=255) or "",
                      "document": doc})
    if canonical(clean[-1]["document"]) != canonical(document):
        raise BadRequest(f"record {label!r}: its last version is not its document")
    return clean


def _same(existing, item):
    return canonical(existing) == canonical(item)


def _compare(row, item, to_item):
    if row is None:
        return "added"
    return "unchanged" if _same(to_item(row), item) else "updated"


def _put_named(model, item, to_item, values, write):
    """Add, replace or leave the row of ``model`` named ``item["name"]``; returns the outcome."""
    row = model.get_or_none(model.name == item["name"])
    if not write:
        return _compare(row, item, to_item)
    if row is None:
        model.create(name=item["name"], **values)
        return "added"
    if _same(to_item(row), item):
        return "unchanged"
    model.update(**values).where(model.name == item["name"]).execute()
    return "updated"


def _put_user(item, write):
    values = {k: item[k] for k in ("password_hash", "admin", "created_at")}
    return _put_named(User, item, _user_item, values, write)


def _put_project(item, write):
    if item["created_at"] is None:  # unknown: an existing project keeps its own time
        row = Project.get_or_none(Project.name == item["name"])
        item = dict(item, created_at=row.created_at if row is not None else time.time())
    values = {k: item[k] for k in ("description", "public", "created_at")}
    return _put_named(Project, item, _project_item, values, write)


def _put_permission(item, write):
    if not write:
        found = ProjectPermission.get_or_none((ProjectPermission.project == item["project"]) &
                                              (ProjectPermission.user == item["user"]))
        return "unchanged" if found else "added"
    if User.get_or_none(User.name == item["user"]) is None:
        raise BadRequest(f"permission of {item['user']!r} on {item['project']!r}: no such user (copy users first)")
    Project.get_or_create(name=item["project"], defaults={"created_at": time.time()})
    _, created = ProjectPermission.get_or_create(project=item["project"], user=item["user"])
    return "added" if created else "unchanged"


def _chunks(values, size=500):
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _put_records(items, write):
    """Records in batches: one query finds the existing ones, one inserts the new ones."""
    existing = {}
    by_project = {}
    for item in items:
        by_project.setdefault(item["project"], []).append(item["label"])
    for project, labels in by_project.items():
        for chunk in _chunks(labels):
            for row in Record.select().where((Record.project == project) & (Record.label.in_(chunk))):
                existing[(row.project_id, row.label)] = row
    with_versions = any("versions" in item for item in items)
    kept = _versions_of([row.id for row in existing.values()]) if with_versions else {}
    outcomes, new_rows, new_tags, changed = [], [], [], []
    for item in items:
        row = existing.get((item["project"], item["label"]))
        if row is not None and _same(_record_item(row, kept[row.id] if "versions" in item else None), item):
            outcomes.append("unchanged")
            continue
        outcomes.append("added" if row is None else "updated")
        if write:
            document = item["document"]
            values = dict(_record_columns(document), project=item["project"], label=item["label"],
                          document=record_text(document),
                          created_at=item["created_at"], updated_at=item["updated_at"])
            (new_rows if row is None else changed).append((values, row, record_tags(document), item))
    if not write:
        return outcomes
    for project in {values["project"] for values, _row, _tags, _item in new_rows + changed}:
        first = min(values["created_at"] for values, _row, _tags, _item in new_rows + changed
                    if values["project"] == project)
        Project.get_or_create(name=project, defaults={"created_at": first})
    new_versions = []
    for values, row, tags, item in changed:
        Record.update(**values).where(Record.id == row.id).execute()
        RecordTag.delete().where(RecordTag.record == row.id).execute()
        new_tags.extend({"record": row.id, "tag": t} for t in tags)
        new_versions.extend(_version_rows(row.id, item, values["document"]))
    for chunk in _chunks(new_rows, 200):
        Record.insert_many([values for values, _row, _tags, _item in chunk]).execute()
        keys = {(values["project"], values["label"]): (tags, item, values["document"])
                for values, _row, tags, item in chunk}
        for project in {p for p, _l in keys}:
            labels = [label for p, label in keys if p == project]
            for row in Record.select(Record.id, Record.label).where((Record.project == project) &
                                                                    (Record.label.in_(labels))):
                tags, item, text = keys[(project, row.label)]
                new_tags.extend({"record": row.id, "tag": t} for t in tags)
                new_versions.extend(_version_rows(row.id, item, text, new=True))
    for chunk in _chunks(new_tags):
        RecordTag.insert_many(chunk).execute()
    for chunk in _chunks(new_versions, 100):
        RecordVersion.insert_many(chunk).execute()
    return outcomes


def _version_rows(record_id, item, text, new=False):
    """The version rows to insert for an imported record: its own versions when the item
    carries them (replacing the record's), else its document as the next version (nothing
    is lost when an import replaces a record)."""
    if "versions" in item:
        if not new:
            RecordVersion.delete().where(RecordVersion.record == record_id).execute()
        return [{"record": record_id, "number": v["version"], "saved_at": v["saved_at"], "saved_by": v["saved_by"],
                 "document": compress(record_text(v["document"]))} for v in item["versions"]]
    last = 0 if new else (RecordVersion.select(pw.fn.MAX(RecordVersion.number))
                          .where(RecordVersion.record == record_id).scalar() or 0)
    return [{"record": record_id, "number": last + 1, "saved_at": item["updated_at"], "saved_by": "",
             "document": compress(text)}]


def _put_jobs(items, write):
    """Jobs in batches: one query finds the existing ones, a few insert the new ones."""
    existing = {}
    for chunk in _chunks([item["id"] for item in items]):
        rows = list(Job.select().where(Job.id.in_(chunk)))
        for item in _job_items(rows):
            existing[item["id"]] = item
    outcomes, history, tags, new_rows = [], [], [], []
    for item in items:
        old = existing.get(item["id"])
        if old is not None and _same(old, item):
            outcomes.append("unchanged")
            continue
        outcomes.append("added" if old is None else "updated")
        if not write:
            continue
        values = {key: item[key] for key in JOB_KEYS}
        if old is None:
            new_rows.append(values)
        else:
            Job.update(**values).where(Job.id == item["id"]).execute()
            JobStateChange.delete().where(JobStateChange.job == item["id"]).execute()
            JobTag.delete().where(JobTag.job == item["id"]).execute()
        history.extend(dict(change, job=item["id"]) for change in item["history"])
        tags.extend({"job": item["id"], "tag": t} for t in item["tags"])
    for chunk in _chunks(new_rows, 200):
        Job.insert_many(chunk).execute()
    for chunk in _chunks(history):
        JobStateChange.insert_many(chunk).execute()
    for chunk in _chunks(tags):
        JobTag.insert_many(chunk).execute()
    return outcomes


def _one_by_one(put):
    return lambda items, write: [put(item, write) for item in items]


_PUT = {"user": _one_by_one(_put_user), "project": _one_by_one(_put_project),
        "permission": _one_by_one(_put_permission), "record": _put_records, "job": _put_jobs}


@operation(write=True)
def import_items(items, dry_run=False):
    """Make the store hold ``items`` (see the module docs) exactly as given: an item
    that is absent is added, one that differs is replaced, one that is equal is left.

    All or none.  Items keep their times, ids and (for jobs) state and history,
    so a copy is equal to its source.  Returns ``{"added": n, "updated": n,
    "unchanged": n}``.  Nothing is ever deleted.  With ``dry_run`` nothing is
    written: the counts say what would happen.
    """
    if not isinstance(dry_run, bool):
        raise BadRequest("dry_run must be true or false")
    if not isinstance(items, list):
        raise BadRequest("items must be a list")
    if len(items) > MAX_LIST:
        raise BadRequest(f"items holds {len(items)} items; at most {MAX_LIST} per request")
    counts = {"added": 0, "updated": 0, "unchanged": 0}
    clean = [_clean_item(item) for item in items]
    keys = [(item["kind"], tuple(item_key(item))) for item in clean]
    if len(set(keys)) != len(keys):
        raise BadRequest("the same item appears twice in one import_items")
    start = 0
    while start < len(clean):  # runs of one kind, in the order given
        end = start
        while end < len(clean) and clean[end]["kind"] == clean[start]["kind"]:
            end += 1
        try:
            for outcome in _PUT[clean[start]["kind"]](clean[start:end], not dry_run):
                counts[outcome] += 1
        except pw.IntegrityError as exc:
            raise BadRequest(f"{clean[start]['kind']}s clash with the store's data: {exc}") from None
        start = end
    return counts
