"""The operation that writes a store's items as they are (``import_items``; the items are
described in :mod:`balsamdb.operations.stores`)."""

import time

import peewee as pw

from .. import states
from ..exceptions import BadRequest
from ..models import Job, JobStateChange, JobTag, Project, ProjectPermission, Record, RecordTag, RecordVersion, User
from ..models import WorkflowPolicy
from .checks import (MAX_LIST, check_number, check_object, check_record_label, check_text, check_user_name, check_uuid,
                     chunks)
from ..job_fields import JOB_KEYS
from .job_specs import JOB_FIELDS
from . import parents as dependencies
from .record_links import relink
from .records import compress, record_columns, record_tags, record_text
from ..statements import statements
from .registry import operation
from .leases import LOST_POLICIES, save_policy
from .stores import (canonical, check_kind, item_key, job_dicts, job_items, policy_item, project_item, record_item,
                     user_item, versions_of)


def _time(value, what):
    return check_number(value, what, float, float("-inf"))


def _clean_item(item):
    """A validated copy of one item (everything a store writes is checked, even a copy)."""
    if not isinstance(item, dict):
        raise BadRequest("each item must be an object")
    kind = check_kind(item.get("kind"))
    if kind == "user":
        password_hash = check_text(item.get("password_hash"), "password_hash", max_len=512)
        if not password_hash.startswith("scrypt$"):
            raise BadRequest("a user's password_hash must come from balsamdb.passwords.hash_password")
        return {"kind": kind, "name": check_user_name(item.get("name")), "password_hash": password_hash,
                "admin": bool(item.get("admin", False)), "created_at": _time(item.get("created_at"), "created_at")}
    if kind == "project":
        created = item.get("created_at")  # None: unknown (a plain Sumatra server does not say)
        return {"kind": kind, "name": check_text(item.get("name"), "project name", max_len=255),
                "description": check_text(item.get("description"), "description", required=False) or "",
                "public": bool(item.get("public", False)),
                "created_at": None if created is None else _time(created, "created_at")}
    if kind == "permission":
        return {"kind": kind, "project": check_text(item.get("project"), "project name", max_len=255),
                "user": check_user_name(item.get("user"))}
    if kind == "policy":
        if item.get("lost_runs") not in LOST_POLICIES:
            raise BadRequest(f"a policy's lost_runs must be one of {', '.join(LOST_POLICIES)}")
        return {"kind": kind, "workflow": check_text(item.get("workflow"), "workflow", max_len=255),
                "lost_runs": item["lost_runs"], "updated_at": _time(item.get("updated_at"), "updated_at")}
    if kind == "record":
        document = check_object(item.get("document"), "document")
        label = check_record_label(item.get("label"))
        if document.get("label") != label:
            raise BadRequest(f"record {label!r}: the document's label differs")
        record_tags(document)
        clean = {"kind": kind, "project": check_text(item.get("project"), "project name", max_len=255), "label": label,
                 "document": document, "created_at": _time(item.get("created_at"), "created_at"),
                 "updated_at": _time(item.get("updated_at"), "updated_at")}
        if "versions" in item:
            clean["versions"] = _clean_versions(label, item["versions"], document)
        return clean
    job = {name: check(item[name]) for name, check in JOB_FIELDS.items() if name in item}
    job.update(kind=kind, id=check_uuid(item.get("id")), name=check_text(item.get("name"), "job name", max_len=255),
               workflow=check_text(item.get("workflow"), "workflow", max_len=255),
               state_message=check_text(item.get("state_message"), "state_message", required=False) or "",
               working_directory=check_text(item.get("working_directory"), "working_directory"),
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
        change = check_object(change, "a history entry")
        if change.get("to_state") not in states.STATES or \
                change.get("from_state") not in states.STATES + (None,):
            raise BadRequest(f"job {job['id']}: a history entry names an unknown state")
        job["history"].append({"time": _time(change.get("time"), "time"), "from_state": change.get("from_state"),
                               "to_state": change["to_state"],
                               "message": check_text(change.get("message"), "message", required=False) or ""})
    return job


def _clean_versions(label, versions, document):
    if not isinstance(versions, list) or not versions:
        raise BadRequest(f"record {label!r}: versions must be a non-empty list")
    clean, last = [], 0
    for version in versions:
        version = check_object(version, "a record version")
        number = check_number(version.get("version"), "version", int, 1)
        if number <= last:
            raise BadRequest(f"record {label!r}: version numbers must increase")
        last = number
        doc = check_object(version.get("document"), "a version's document")
        clean.append({"version": number, "saved_at": _time(version.get("saved_at"), "saved_at"),
                      "saved_by": check_text(version.get("saved_by"), "saved_by", required=False, max_len=255) or "",
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
    return _put_named(User, item, user_item, values, write)


def _put_project(item, write):
    if item["created_at"] is None:  # unknown: an existing project keeps its own time
        row = Project.get_or_none(Project.name == item["name"])
        item = dict(item, created_at=row.created_at if row is not None else time.time())
    values = {k: item[k] for k in ("description", "public", "created_at")}
    return _put_named(Project, item, project_item, values, write)


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


def _put_policy(item, write):
    row = WorkflowPolicy.get_or_none(WorkflowPolicy.workflow == item["workflow"])
    outcome = _compare(row, item, policy_item)
    if write and outcome != "unchanged":
        save_policy(item["workflow"], item["lost_runs"], item["updated_at"])
    return outcome


def _put_records(items, write):
    """Records in batches: one query finds the existing ones, one inserts the new ones."""
    existing = {}
    by_project = {}
    for item in items:
        by_project.setdefault(item["project"], []).append(item["label"])
    for project, labels in by_project.items():
        for chunk in chunks(labels):
            for row in Record.select().where((Record.project == project) & (Record.label.in_(chunk))):
                existing[(row.project_id, row.label)] = row
    with_versions = any("versions" in item for item in items)
    kept = versions_of([row.id for row in existing.values()]) if with_versions else {}
    outcomes, new_rows, new_tags, changed = [], [], [], []
    for item in items:
        row = existing.get((item["project"], item["label"]))
        if row is not None and _same(record_item(row, kept[row.id] if "versions" in item else None), item):
            outcomes.append("unchanged")
            continue
        outcomes.append("added" if row is None else "updated")
        if write:
            document = item["document"]
            values = dict(record_columns(document), project=item["project"], label=item["label"],
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
        relink(row.id, item["document"])
        new_tags.extend({"record": row.id, "tag": t} for t in tags)
        new_versions.extend(_version_rows(row.id, item, values["document"]))
    for chunk in chunks(new_rows, 200):
        Record.insert_many([values for values, _row, _tags, _item in chunk]).execute()
        keys = {(values["project"], values["label"]): (tags, item, values["document"])
                for values, _row, tags, item in chunk}
        for project in {p for p, _l in keys}:
            labels = [label for p, label in keys if p == project]
            for row in Record.select(Record.id, Record.label).where((Record.project == project) &
                                                                    (Record.label.in_(labels))):
                tags, item, text = keys[(project, row.label)]
                relink(row.id, item["document"], new=True)
                new_tags.extend({"record": row.id, "tag": t} for t in tags)
                new_versions.extend(_version_rows(row.id, item, text, new=True))
    for chunk in chunks(new_tags):
        RecordTag.insert_many(chunk).execute()
    for chunk in chunks(new_versions, 100):
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
    for chunk in chunks([item["id"] for item in items]):
        for item in job_items(job_dicts(Job.select().where(Job.id.in_(chunk)))):
            existing[item["id"]] = item
    outcomes, history, tags, new_rows = [], [], [], []
    linked = {"added": [], "updated": [], "unchanged": []}  # the jobs whose job_parent rows to write
    for item in items:
        old = existing.get(item["id"])
        outcome = "unchanged" if old is not None and _same(old, item) else "added" if old is None else "updated"
        outcomes.append(outcome)
        linked[outcome].append(item)
        if outcome == "unchanged" or not write:
            continue
        values = {key: item[key] for key in JOB_KEYS}
        if old is None:
            new_rows.append(values)
        else:
            Job.update(**values).where(Job.id == item["id"]).execute()
            key = Job.select(Job.key).where(Job.id == item["id"])
            JobStateChange.delete().where(JobStateChange.job == key).execute()
            JobTag.delete().where(JobTag.job == key).execute()
        history.extend(dict(change, job=item["id"]) for change in item["history"])
        tags.extend({"job": item["id"], "tag": t, "created_at": item["created_at"]} for t in item["tags"])
    # The prepared statements of the create path: peewee's insert_many built each row's SQL in
    # Python and cost more than the insert itself (a copy of 1M jobs: issue 22, item 7).
    fast = statements()
    if new_rows:
        fast.executemany(fast.insert_job, new_rows)
    if history:
        fast.executemany(fast.insert_history, history)
    if tags:
        fast.executemany(fast.insert_tag, tags)
    if write:  # the links the server reads to release children, as job creation makes them
        dependencies.import_links(fast, linked["added"], linked["updated"], linked["unchanged"])
    return outcomes


def _one_by_one(put):
    return lambda items, write: [put(item, write) for item in items]


_PUT = {"user": _one_by_one(_put_user), "project": _one_by_one(_put_project),
        "permission": _one_by_one(_put_permission), "record": _put_records, "job": _put_jobs,
        "policy": _one_by_one(_put_policy)}


def _jobs_replaced(params):
    """The ids of the jobs an ``import_items`` may replace (none in a dry run)."""
    items = params.get("items")
    if params.get("dry_run") is True or not isinstance(items, list):
        return None
    return [item.get("id") for item in items if isinstance(item, dict) and item.get("kind") == "job"]


@operation(write=True, changes_jobs=_jobs_replaced)
def import_items(items, dry_run=False):
    """Make the store hold ``items`` (see the module docs) exactly as given: an item
    that is absent is added, one that differs is replaced, one that is equal is left.

    All or none.  Items keep their times, ids and (for jobs) state and history,
    so a copy is equal to its source; a job's links to its parents (the rows the
    server reads to release it) are written from its ``parents``, once.  Returns ``{"added": n, "updated": n,
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
