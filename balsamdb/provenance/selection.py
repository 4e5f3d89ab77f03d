"""The records an export covers: one record, the records of one job, of one workflow's jobs,
or of one project; with the jobs they name."""

from dataclasses import dataclass, field
from datetime import datetime

from ..exceptions import BadRequest, NotFound
from ..operations.record_links import job_of

SCOPES = ("record", "job", "workflow", "project")


def record_time(text):
    """A record's timestamp as Sumatra writes it (with or without its UTC offset), or None."""
    for fmt in ("%Y-%m-%d %H:%M:%S%z", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text or "", fmt)
        except ValueError:
            continue
    return None


@dataclass
class Selection:
    """``records``: ``[(project, document)]``, oldest first; ``jobs``: ``{id: job dict}``."""

    scope: str
    name: str
    records: list = field(default_factory=list)
    jobs: dict = field(default_factory=dict)


def select(db, scope, name):
    """The :class:`Selection` of ``scope`` ("record": ``name`` is ``PROJECT/LABEL``; "job": a job
    id or prefix; "workflow"; "project").  :class:`NotFound` when it holds no record."""
    if scope not in SCOPES:
        raise BadRequest(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    out = Selection(scope, name)
    if scope == "record":
        project, sep, label = name.partition("/")
        if not sep or not project or not label:
            raise BadRequest(f"a record is named PROJECT/LABEL, not {name!r}")
        out.records.append((project, db.records.get(project, label)))
    elif scope == "project":
        out.records.extend((name, doc) for doc in reversed(db.records.list(name)))
    else:
        if scope == "job":
            job_ids = [db.jobs.resolve_ids([name])[0]]
        else:
            job_ids = [job.id for job in db.jobs.filter(workflow=name)]
        for job_id in job_ids:
            for found in db.records.of_job(job_id):
                out.records.append((found["project"], db.records.get(found["project"], found["label"])))
    if not out.records:
        raise NotFound(f"no records of {scope} {name!r} to export (records are made by db run --record and "
                       "balsamdb.capture)")
    for _project, doc in out.records:
        job = job_of(doc)
        if job and job["id"] not in out.jobs:
            try:
                out.jobs[job["id"]] = db.jobs.get(job["id"]).to_dict()
            except NotFound:  # the job was deleted: what the record says of it is what is known
                out.jobs[job["id"]] = {"id": job["id"], "name": job.get("name"), "workflow": job.get("workflow")}
    return out
