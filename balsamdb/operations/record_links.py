"""Records linked to jobs and files: the rows that make "the records of job X", "the records
that used the file with SHA-256 X" and "the records that produced F" index lookups.

The links are derived from the record document, which stays the one truth:

* ``document["balsamdb"]["job"]`` = ``{"id", "workflow", "name", "run"}`` names the job whose
  run the record describes (written by :mod:`balsamdb.provenance`);
* ``document["input_data"]`` / ``["output_data"]`` are Sumatra's data keys; the SHA-256 and
  size of a file are in its ``metadata`` (``sha256``, ``size``), next to Sumatra's own
  ``digest`` (SHA-1).

Every save of a record replaces its link rows (:func:`relink`), in the same transaction.
"""

from peewee import JOIN

from .. import jsonio
from ..exceptions import BadRequest
from ..models import Record, RecordFile, RecordJob
from .checks import check_number, check_project_name, check_text, check_uuid
from .registry import operation

ROLES = ("input", "output")
MAX_FIND = 10000
MAX_PATH = 1024  # longer paths are not linked (a PostgreSQL index entry holds at most ~2.7 KB)


def job_of(document):
    """The ``{"id", "workflow", "name", "run"}`` a record document names, or None."""
    extra = document.get("balsamdb")
    job = extra.get("job") if isinstance(extra, dict) else None
    if not isinstance(job, dict) or not isinstance(job.get("id"), str) or not 0 < len(job["id"]) <= 36 \
            or "\x00" in job["id"]:
        return None
    return job


def _files(document):
    for role, key in (("input", "input_data"), ("output", "output_data")):
        keys = document.get(key)
        if not isinstance(keys, list):
            continue
        for data_key in keys:
            if not isinstance(data_key, dict) or not isinstance(data_key.get("path"), str) \
                    or len(data_key["path"]) > MAX_PATH or "\x00" in data_key["path"]:
                continue
            meta = data_key.get("metadata") if isinstance(data_key.get("metadata"), dict) else {}
            sha = meta.get("sha256")
            size = meta.get("size")
            yield {"role": role, "path": data_key["path"],
                   "sha256": sha.lower() if isinstance(sha, str) and len(sha) == 64 else None,
                   "size": size if isinstance(size, int) and not isinstance(size, bool) else None}


def link_rows(record_id, document):
    """The rows that link record ``record_id``: ``(job row or None, [file rows])``."""
    job = job_of(document)
    job_row = None
    if job is not None:
        run = job.get("run")
        job_row = {"record": record_id, "job_id": job["id"],
                   "run": run if isinstance(run, int) and not isinstance(run, bool) else None}
    return job_row, [dict(row, record=record_id) for row in _files(document)]


def relink(record_id, document, new=False):
    """Make the link rows of record ``record_id`` those of ``document`` (``new``: it has none yet)."""
    if not new:
        RecordJob.delete().where(RecordJob.record == record_id).execute()
        RecordFile.delete().where(RecordFile.record == record_id).execute()
    job_row, file_rows = link_rows(record_id, document)
    if job_row:
        RecordJob.insert(job_row).execute()
    for start in range(0, len(file_rows), 100):
        RecordFile.insert_many(file_rows[start:start + 100]).execute()


def unlink(ids):
    """Remove the link rows of the records ``ids`` (they are being deleted)."""
    RecordJob.delete().where(RecordJob.record.in_(ids)).execute()
    RecordFile.delete().where(RecordFile.record.in_(ids)).execute()


def _summary(row):
    doc = jsonio.loads(row["document"])
    extra = doc.get("balsamdb") if isinstance(doc.get("balsamdb"), dict) else {}
    return {"project": row["project"], "label": row["label"], "timestamp": row["timestamp"],
            "outcome": row["outcome"], "duration": row["duration"], "run": row["run"],
            "job": (job_of(doc) or {}).get("id"), "exit_status": extra.get("exit_status")}


@operation(write=False)
def record_by_job(job_id):
    """The records that describe runs of job ``job_id`` (a full job id), oldest
    first: a list of ``{"project", "label", "timestamp", "outcome", "duration",
    "run", "job", "exit_status"}`` (a restarted job has one per run)."""
    job_id = check_uuid(job_id, "job_id")
    query = (Record.select(Record.project, Record.label, Record.timestamp, Record.outcome, Record.duration,
                           Record.document, RecordJob.run.alias("run"))
             .join(RecordJob, on=(RecordJob.record == Record.id))
             .where(RecordJob.job_id == job_id).order_by(Record.sort_time, Record.id).limit(MAX_FIND))
    return [_summary(row) for row in query.dicts()]


@operation(write=False)
def record_files_find(sha256=None, path=None, role=None, project=None, limit=1000):
    """Records by their files: those whose input or output (``role`` "input" or
    "output"; both when omitted) has SHA-256 ``sha256`` (64 hex digits) and/or
    the path ``path`` (as the record gives it: relative to its working directory
    or absolute), optionally only in ``project``.  One of ``sha256`` and ``path``
    is required.  Returns at most ``limit`` (<= 10000) rows, newest first:
    ``{"project", "label", "timestamp", "role", "path", "sha256", "size", "job"}``
    where ``job`` is the id of the record's job (or null)."""
    if sha256 is None and path is None:
        raise BadRequest("give sha256 or path (or both)")
    query = (RecordFile.select(Record.project, Record.label, Record.timestamp, RecordFile.role, RecordFile.path,
                               RecordFile.sha256, RecordFile.size, RecordJob.job_id.alias("job"))
             .join(Record, on=(RecordFile.record == Record.id))
             .join(RecordJob, join_type=JOIN.LEFT_OUTER, on=(RecordJob.record == Record.id)))
    if sha256 is not None:
        sha256 = check_text(sha256, "sha256").lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise BadRequest(f"sha256 must be 64 hexadecimal digits, not {sha256!r}")
        query = query.where(RecordFile.sha256 == sha256)
    if path is not None:
        query = query.where(RecordFile.path == check_text(path, "path"))
    if role is not None:
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        query = query.where(RecordFile.role == role)
    if project is not None:
        query = query.where(Record.project == check_project_name(project))
    limit = min(check_number(limit, "limit", int, 1), MAX_FIND)
    query = query.order_by(Record.sort_time.desc(), RecordFile.id).limit(limit)
    return list(query.dicts())


def job_record_counts(job_ids):
    """``{job id: number of records}`` for the jobs ``job_ids`` that have any (for pages)."""
    import peewee as pw

    counts = {}
    ids = list(job_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        counts.update(RecordJob.select(RecordJob.job_id, pw.fn.COUNT(RecordJob.record))
                      .where(RecordJob.job_id.in_(chunk)).group_by(RecordJob.job_id).tuples())
    return counts


__all__ = ["ROLES", "job_of", "job_record_counts", "link_rows", "relink", "unlink"]
