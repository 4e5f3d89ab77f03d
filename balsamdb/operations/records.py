"""The operations on projects and Sumatra records."""

import zlib

import peewee as pw

from .. import jsonio

from ..exceptions import BadRequest, Conflict, NotFound
from ..models import Project, Record, RecordTag, RecordVersion, now
from ..statements import statements
from .checks import (check_flag, check_number, check_project_name, check_record_label, check_saved_by, check_str_list,
                     check_text)
from .record_links import relink, unlink
from .registry import operation


# Fields of a Sumatra record that a later save of the same run may fill in or change; in a
# project with the write-once option every other field is provenance and may not change
# (see docs/http.md).  Elsewhere a save replaces the record and its earlier versions are kept.
RECORD_MUTABLE = frozenset({"duration", "output_data", "platforms", "stdout_stderr", "tags",
                            "user", "outcome", "reason", "repeats"})
TAG_MATCHES = ("all", "any")


def project_to_dict(project):
    return {"name": project.name, "description": project.description,
            "public": project.public, "created_at": project.created_at, "write_once": bool(project.write_once),
            "keep_versions": project.keep_versions}


@operation(write=True)
def project_save(name, description=None, public=None, write_once=None, keep_versions=None):
    """Create project ``name`` or update its description, public flag and
    write-once option (``write_once``: a save that changes a provenance field of
    an existing record is refused as a conflict instead of replacing it; off by
    default) and ``keep_versions`` (N: ``db prune`` removes the versions of a record beyond
    its newest N; 0: every version is kept, the default).  Returns ``{"created": bool, "project": {...}}``.  Creating a
    project that exists is not an error (two jobs may race to create it).
    """
    name = check_project_name(name)
    check_flag(public, "public")
    check_flag(write_once, "write_once")
    project, created = Project.get_or_create(name=name, defaults={"created_at": now()})
    if description is not None:
        project.description = check_text(description, "description", required=False) or ""
    if public is not None:
        project.public = public
    if write_once is not None:
        project.write_once = write_once
    if keep_versions is not None:
        project.keep_versions = check_number(keep_versions, "keep_versions", int, 0) or None
    project.save()
    return {"created": created, "project": project_to_dict(project)}


def get_project(name):
    try:
        return Project.get_by_id(check_project_name(name))
    except Project.DoesNotExist:
        raise NotFound(f"no project {name!r}") from None


@operation(write=False)
def project_get(name, count=True):
    """Return project ``name`` with its record count (``records``; left out when
    ``count`` is false: counting a large project costs more than the rest)."""
    project = get_project(name)
    out = project_to_dict(project)
    if count:
        out["records"] = Record.select().where(Record.project == project.name).count()
    return out


@operation(write=False)
def project_list(count=False):
    """All projects, by name; with ``count``, each with its number of ``records``."""
    projects = [project_to_dict(p) for p in Project.select().order_by(Project.name)]
    if count:
        counts = dict(Record.select(Record.project, pw.fn.COUNT(Record.id)).group_by(Record.project).tuples())
        for project in projects:
            project["records"] = counts.get(project["name"], 0)
    return projects


def sort_time(timestamp):
    from datetime import datetime

    for fmt in ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(timestamp, fmt).timestamp()
        except (ValueError, TypeError):
            continue
    return now()


def record_columns(doc):
    def text(key, limit=None):
        value = doc.get(key)
        value = "" if value is None else str(value)
        if limit and len(value) > limit:
            raise BadRequest(f"record field {key} is longer than {limit} characters")
        if "\x00" in value:
            raise BadRequest(f"record field {key} may not contain the NUL character")
        return value

    duration = doc.get("duration")
    return {
        "timestamp": text("timestamp", 255), "sort_time": sort_time(doc.get("timestamp")),
        "reason": text("reason"), "outcome": text("outcome"), "main_file": text("main_file"),
        "version": text("version", 255), "user": text("user", 255),
        "duration": float(duration) if isinstance(duration, (int, float)) and not isinstance(duration, bool) else None,
    }


def record_tags(document, what="record tags"):
    """The tags of a record document: a list of strings; ``""`` and null mean none (as in
    Sumatra Server's own example record)."""
    tags = document.get("tags")
    if tags is None or tags == "":
        return []
    return check_str_list(tags, what)


def record_text(document):
    """The one JSON text of a record document that the store keeps (and compares)."""
    return jsonio.dumps(document)


def compress(text):
    return zlib.compress(text.encode(), 1)  # level 1: half the CPU of 6 on program output, ~10% larger


def decompress(data):
    return zlib.decompress(bytes(data)).decode()


def _check_write_once(fast, project, label, old_text, record):
    """Refuse (Conflict) a changed provenance field when ``project`` has the write-once option."""
    row = fast.execute(fast.project_write_once, (project,)).fetchone()
    if not row or not row[0]:
        return
    old = jsonio.loads(old_text)
    changed = sorted(k for k in set(old) | set(record) if k not in RECORD_MUTABLE and old.get(k) != record.get(k))
    if changed:
        raise Conflict(
            f"record {label!r} in {project!r} exists with different {', '.join(changed)}; project {project!r} "
            "is write-once, so these provenance fields may not change (use another label)"
        )


def _add_version(fast, record_id, text, when, saved_by, number=None):
    """Keep ``text`` as the next version of record ``record_id``; returns its number."""
    if number is None:
        number = fast.execute(fast.last_version, (record_id,)).fetchone()[0] + 1
    fast.execute(fast.insert_version, (record_id, number, when, saved_by, compress(text)))
    return number


def _last_saved_at(record_id):
    """The time of the newest version of record ``record_id`` (0 when it has none)."""
    return (RecordVersion.select(pw.fn.MAX(RecordVersion.saved_at)).where(RecordVersion.record == record_id)
            .scalar() or 0)


def check_record_save(project, record):
    """What :func:`record_save` checks before it reads the database (raises
    :class:`~balsamdb.exceptions.BadRequest` saying why): ``(project, label, tags, columns)``.
    ``db relay`` checks each save with it before it answers, so that it never says 201 to a
    save the store will refuse."""
    project = check_project_name(project)
    if not isinstance(record, dict):
        raise BadRequest("a record must be a JSON object")
    label = check_record_label(record.get("label"))
    return project, label, record_tags(record), record_columns(record)


@operation(write=True)
def record_save(project, record, saved_by=None, saved_at=None):
    """Save a Sumatra record document in ``project`` (created if needed).

    ``record`` is the JSON object Sumatra sends, stored unchanged; its
    ``label`` names it.  Saving a label again replaces the record, as in
    Sumatra's own stores, and keeps every earlier version: each save that
    changes the document adds a version (numbered from 1, with the time and
    ``saved_by``, who saved it); a save identical to the current version adds
    none.  In a project with the write-once option, a save that changes a
    field other than the run results (duration, output_data, platforms,
    stdout_stderr, tags, user, outcome, reason, repeats) is a conflict.
    ``tags`` "" or null mean no tags.  ``saved_at`` (UNIX seconds): when the
    save was made, if earlier than now (``db relay`` forwards a save it answered
    before); the new version's time, never later than now and never earlier than
    the record's version before it (versions stay in time order).  Returns
    ``{"created": bool, "version": n}``.
    """
    project, label, tags, columns = check_record_save(project, record)
    saved_by = check_saved_by(saved_by)
    fast = statements()
    when = now()
    saved = when if saved_at is None else min(check_number(saved_at, "saved_at", float, 0), when)
    fast.execute(fast.ensure_project, (project, False, when, False))
    document = record_text(record)
    existing = fast.execute(fast.find_record, (project, label)).fetchone()
    if existing is None:
        record_id = fast.insert_record_row(dict(columns, project_id=project, label=label, document=document,
                                                created_at=when, updated_at=when))
        version = _add_version(fast, record_id, document, saved, saved_by, number=1)
        relink(record_id, record, new=True)
        created = True
    else:
        record_id, old_document, *kept = existing
        if old_document == document:  # nothing changed: no new version
            return {"created": False, "version": fast.execute(fast.last_version, (record_id,)).fetchone()[0]}
        _check_write_once(fast, project, label, old_document, record)
        values = dict(columns, document=document, updated_at=when)
        changed = tuple(c for c, old in zip(fast.record_kept_columns, kept) if values[c] != old) + (
            "document", "updated_at")
        fast.execute(fast.update_record(changed), [values[c] for c in changed] + [record_id])
        fast.execute(fast.delete_record_tags, (record_id,))
        if saved_at is not None:  # dated by the writer: never before the version it follows
            saved = max(saved, _last_saved_at(record_id))
        version = _add_version(fast, record_id, document, saved, saved_by)
        relink(record_id, record)
        created = False
    for tag in tags:
        fast.execute(fast.insert_record_tag, (record_id, tag))
    return {"created": created, "version": version}


def _get_record(project, label):
    row = Record.get_or_none((Record.project == check_project_name(project)) & (Record.label == label))
    if row is None:
        raise NotFound(f"no record {label!r} in project {project!r}")
    return row


@operation(write=False)
def record_get(project, label, version=None):
    """The record document labelled ``label`` in ``project``, as it was saved;
    with ``version`` (a number from ``record_versions``), that version of it."""
    row = _get_record(project, label)
    if version is None:
        return jsonio.loads(row.document)
    number = check_number(version, "version", int, 1)
    found = RecordVersion.get_or_none((RecordVersion.record == row.id) & (RecordVersion.number == number))
    if found is None:
        raise NotFound(f"record {label!r} in project {project!r} has no version {number}")
    return jsonio.loads(decompress(found.document))


def version_list(record_id, database=None):
    """The versions of record ``record_id``, oldest first: ``{"version", "saved_at", "saved_by",
    "bytes", "changed"}`` where ``changed`` names the top-level fields that differ from the
    version before (all of them for version 1).  ``database``: read there, models unbound."""
    out, previous = [], None
    query = RecordVersion.select().where(RecordVersion.record == record_id).order_by(RecordVersion.number)
    for row in (query if database is None else query.execute(database)):
        text = decompress(row.document)
        doc = jsonio.loads(text)
        changed = sorted(k for k in set(doc) | set(previous or {})
                         if previous is None or doc.get(k) != previous.get(k))
        out.append({"version": row.number, "saved_at": row.saved_at, "saved_by": row.saved_by,
                    "bytes": len(text.encode()), "changed": changed})
        previous = doc
    return out


@operation(write=False)
def record_versions(project, label):
    """The versions of record ``label`` of ``project``, oldest first: a list of
    ``{"version": n, "saved_at": UNIX seconds, "saved_by": who, "bytes": size of the
    document, "changed": [top-level fields that differ from the version before]}``.
    The last one is the current record."""
    return version_list(_get_record(project, label).id)


def _tag_match(match):
    if match not in TAG_MATCHES:
        raise BadRequest(f"match must be one of {', '.join(TAG_MATCHES)}, not {match!r}")
    return match


def record_query(project, tags, match="all"):
    """The query of the records of ``project`` having ``tags`` (``match`` as for ``record_list``),
    bound to no order: for the paged listing."""
    return _record_query(project, tags, match)


def _record_query(project, tags, match="all"):
    query = Record.select().where(Record.project == check_project_name(project))
    tags = check_str_list(tags, "tags")
    if _tag_match(match) == "any" and tags:
        return query.where(Record.id.in_(RecordTag.select(RecordTag.record).where(RecordTag.tag.in_(tags))))
    for tag in tags:
        query = query.where(Record.id.in_(RecordTag.select(RecordTag.record).where(RecordTag.tag == tag)))
    return query


@operation(write=False)
def record_list(project, tags=None, limit=None, match="all"):
    """Record documents of ``project`` having ``tags``, newest first: all of them
    (``match`` "all", the default) or any of them (``match`` "any").  A project that
    does not exist is :class:`NotFound` (as ``db record ls`` says), never an empty list."""
    get_project(project)
    query = _record_query(project, tags, match).order_by(Record.sort_time.desc(), Record.id.desc())
    if limit is not None:
        query = query.limit(check_number(limit, "limit", int, 0))
    return [jsonio.loads(r.document) for r in query]


@operation(write=False)
def record_labels(project, tags=None, match="all"):
    """Labels of the records of ``project`` having ``tags`` (``match`` as for
    ``record_list``), newest first; :class:`NotFound` for a project that does not exist."""
    get_project(project)
    query = (_record_query(project, tags, match).select(Record.label)
             .order_by(Record.sort_time.desc(), Record.id.desc()))
    return [r.label for r in query]


def _delete_records(ids):
    deleted = 0
    for start in range(0, len(ids), 500):  # stay below SQLite's limit on parameters
        chunk = ids[start:start + 500]
        RecordTag.delete().where(RecordTag.record.in_(chunk)).execute()
        RecordVersion.delete().where(RecordVersion.record.in_(chunk)).execute()
        unlink(chunk)
        deleted += Record.delete().where(Record.id.in_(chunk)).execute()
    return deleted


@operation(write=True)
def record_delete(project, label):
    """Delete record ``label`` of ``project`` with its versions; not found is an
    error.  Returns ``{"deleted": 1}``."""
    _delete_records([_get_record(project, label).id])
    return {"deleted": 1}


@operation(write=True)
def record_delete_by_tag(project, tag):
    """Delete every record of ``project`` tagged ``tag``, with their versions;
    returns ``{"deleted": n}``."""
    ids = [r.id for r in _record_query(project, [check_text(tag, "tag")]).select(Record.id)]
    return {"deleted": _delete_records(ids)}


@operation(write=True)
def record_tag(project, label, add=None, remove=None, saved_by=None):
    """Add and remove tags of record ``label`` (a new version of it when its tags
    change; ``saved_by`` as for ``record_save``); returns ``{"tags": [...]}``, its new tags."""
    row = _get_record(project, label)
    doc = jsonio.loads(row.document)
    add, remove = check_str_list(add, "add"), set(check_str_list(remove, "remove"))
    tags = [t for t in list(dict.fromkeys(record_tags(doc) + add)) if t not in remove]
    doc["tags"] = tags
    text = record_text(doc)
    if text == row.document:
        return {"tags": tags}
    when = now()
    Record.update(document=text, updated_at=when).where(Record.id == row.id).execute()
    RecordTag.delete().where(RecordTag.record == row.id).execute()
    if tags:
        RecordTag.insert_many([{"record": row.id, "tag": t} for t in tags]).execute()
    _add_version(statements(), row.id, text, when, check_saved_by(saved_by))
    return {"tags": tags}
