"""What a job given by a caller must be: the check of each field it may set (keyed by the table of
job fields, :mod:`balsamdb.job_fields`), and the row a new job becomes (:func:`clean_job`)."""

import uuid

from .. import states
from ..exceptions import BadRequest
from ..job_fields import CREATE_ONLY, JOB_KEYS, SETTABLE, job_working_directory
from ..models import Job
from .checks import check_number, check_object, check_str_list, check_text, check_uuid


_CHECKS = {
    # name: validator(value) -> clean value, for each field a caller may set (job_fields.SETTABLE)
    "application": lambda v: check_text(v, "application", required=False) or "",
    "args": lambda v: check_text(v, "args", required=False) or "",
    "description": lambda v: check_text(v, "description", required=False) or "",
    "num_nodes": lambda v: check_number(v, "num_nodes", int, 1),
    "ranks_per_node": lambda v: check_number(v, "ranks_per_node", int, 1),
    "threads_per_rank": lambda v: check_number(v, "threads_per_rank", int, 1),
    "wall_time_minutes": lambda v: check_number(v, "wall_time_minutes", float, 0),
    "environ": lambda v: {str(k): str(x) for k, x in check_object(v, "environ").items()},
    "parents": lambda v: [check_uuid(p, "parent id") for p in check_str_list(v, "parents")],
    "tags": lambda v: check_str_list(v, "tags"),
    "data": lambda v: check_object(v, "data"),
}
#: The check of each field a caller may set, in the order of the table of job fields.
JOB_FIELDS = {name: _CHECKS[name] for name in SETTABLE}
if set(_CHECKS) != set(SETTABLE):
    raise ImportError("a settable job field (balsamdb.job_fields) without its check, or a check of no such field")


def job_to_dict(job):
    return {key: getattr(job, key) for key in JOB_KEYS}


def clean_job(spec, when):
    """Validate a job specification; returns the row to insert."""
    if not isinstance(spec, dict):
        raise BadRequest("a job must be an object")
    unknown = set(spec) - set(JOB_FIELDS) - CREATE_ONLY
    if unknown:
        raise BadRequest(f"unknown job fields: {', '.join(sorted(unknown))}")
    row = {name: check(spec[name]) for name, check in JOB_FIELDS.items() if name in spec}
    row["id"] = check_uuid(spec["id"]) if spec.get("id") else str(uuid.uuid4())
    row["name"] = check_text(spec.get("name"), "job name", max_len=255)
    row["workflow"] = check_text(spec.get("workflow") or "default", "workflow", max_len=255)
    state = spec.get("state") or ("AWAITING_PARENTS" if row.get("parents") else "CREATED")
    if state not in states.INITIAL:
        raise BadRequest(f"a new job starts in one of {sorted(states.INITIAL)}, not {state!r}")
    row["state"] = state
    row["state_message"] = check_text(spec.get("state_message"), "state_message", required=False) or ""
    row["working_directory"] = spec.get("working_directory") or job_working_directory(
        row["workflow"], row["name"], row["id"]
    )
    check_text(row["working_directory"], "working_directory")
    row["created_at"] = row["updated_at"] = when
    for name, default in _JOB_DEFAULTS:
        if name not in row:
            row[name] = default() if callable(default) else default
    return row


# The model's defaults, looked up once rather than for every job.
_JOB_DEFAULTS = [(name, field.default) for name, field in Job._meta.fields.items() if field.default is not None]


def check_jobs(jobs, when):
    if not isinstance(jobs, list) or not jobs:
        raise BadRequest("jobs must be a non-empty list")
    return [clean_job(spec, when) for spec in jobs]
