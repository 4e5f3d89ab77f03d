"""Jobs changed in a time range (``since=..., changed=True``): read from an index of the last
changes when the range holds few jobs, so that the time grows with the jobs changed, not with the
database (issue 22)."""

import peewee as pw

from ..models import Job

#: at most this many jobs in a changed-since range are read from an index of the last changes and
#: sorted (each page sorts them all); more are read walking the creation order, as without the range
CHANGED_FEW = 5000


def few_changed(filters):
    """Whether ``filters`` (checked) hold a range of last changes with at most :data:`CHANGED_FEW`
    jobs of their states, counted from the index ``job_updated_at`` (or ``job_state_updated_at``
    with states) alone, at most that many entries read."""
    if not isinstance(filters, dict) or (filters.get("updated_after") is None
                                         and filters.get("updated_before") is None):
        return False
    wanted = filters.get("state")
    conditions = [] if wanted is None else [Job.state.in_([wanted] if isinstance(wanted, str) else wanted)]
    conditions += [pw.Expression(Job.updated_at, op, filters[key])
                   for key, op in (("updated_after", ">="), ("updated_before", "<")) if filters.get(key) is not None]
    probe = Job.select(pw.SQL("1")).where(*conditions).limit(CHANGED_FEW + 1)
    return Job.select(pw.fn.COUNT(pw.SQL("*"))).from_(probe.alias("probe")).scalar() <= CHANGED_FEW
