"""The fields of a job, in one table: the model (:class:`balsamdb.models.Job`), the checks of
the job operations (:mod:`balsamdb.operations.jobs`) and the stored answers
(:mod:`balsamdb.answers`) all read it.

Each field is given by one of:

- ``"set"``: the caller may give it when the job is made and change it later (``job_modify``);
  its check is in ``balsamdb.operations.job_specs.JOB_FIELDS``, keyed by these names;
- ``"create"``: given when the job is made only (``id``, ``name``, ... and the state it starts in);
- ``"store"``: made by the store (the time stamps);
- ``"lease"``: the claim of a launcher (see :mod:`balsamdb.operations.leases`): a column of the
  job row, never part of a job answer.

The order is the order of a job answer's keys (its stored compact form relies on it).
"""

JOB_TABLE = (
    ("id", "create"),
    ("name", "create"),
    ("workflow", "create"),
    ("application", "set"),
    ("args", "set"),
    ("description", "set"),
    ("state", "create"),
    ("state_message", "create"),
    ("working_directory", "create"),
    ("num_nodes", "set"),
    ("ranks_per_node", "set"),
    ("threads_per_rank", "set"),
    ("wall_time_minutes", "set"),
    ("environ", "set"),
    ("parents", "set"),
    ("tags", "set"),
    ("data", "set"),
    ("created_at", "store"),
    ("updated_at", "store"),
    ("owner", "lease"),
    ("lease_expires", "lease"),
    ("renewed_at", "lease"),
)

#: The keys of a job answer, in order (every column but the claim).
JOB_KEYS = tuple(name for name, given in JOB_TABLE if given != "lease")
#: The fields a caller may change after the job is made (``job_modify``).
SETTABLE = tuple(name for name, given in JOB_TABLE if given == "set")
#: The fields a caller may give only when the job is made.
CREATE_ONLY = frozenset(name for name, given in JOB_TABLE if given == "create")
#: The columns of a job's claim: kept out of job answers (their stored compact form, see
#: :mod:`balsamdb.answers`, covers the fields a state change keeps).
LEASE_FIELDS = tuple(name for name, given in JOB_TABLE if given == "lease")


def job_working_directory(workflow, name, job_id):
    """Working directory of a job, relative to its DB directory:
    ``data/<workflow>/<name>_<first 8 characters of the id>``."""
    return f"data/{_safe_part(workflow)}/{_safe_part(name)}_{job_id[:8]}"


def _safe_part(text):
    """A file-name-safe rendering of a workflow or job name."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(text)).strip(".")
    return cleaned or "_"
