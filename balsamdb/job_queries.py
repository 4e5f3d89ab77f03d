"""What people ask of their jobs beyond a filter: "since an hour ago", sorted by the last
change, how many are in each state, how long one spent in each state.

The CLI (``db ls``, ``db job show``) and the web pages use these same functions through
:class:`balsamdb.facades.Jobs`, so that both answer alike.
"""

import re
import time
from datetime import datetime

from . import states
from .exceptions import BadRequest

#: ``sort`` keys of :meth:`balsamdb.facades.Jobs.filter` (``-key``: newest / last first).
SORT_KEYS = ("created", "updated", "name", "workflow", "state", "id")

_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*(?:ago)?\s*$", re.IGNORECASE)
_FORMS = "a time span such as 30m, 1h, 2d or 1w (that long ago), a date such as 2024-05-01, " \
         "a date and time such as '2024-05-01 14:30', or UNIX seconds"


def parse_time(value, now=None, what="time"):
    """UNIX seconds of ``value``: a span ago (``"90s"``, ``"30m"``, ``"1h"``, ``"2d"``, ``"1w"``),
    a local ISO date or date and time (``"2024-05-01"``, ``"2024-05-01 14:30"``), UNIX seconds
    (a number), or a :class:`datetime`.  Raises :class:`BadRequest` naming the forms."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    match = _AGO.match(text)
    if match:
        now = time.time() if now is None else now
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise BadRequest(f"{what + ' ' if what else ''}{text!r} is not understood; give {_FORMS}") from None


def time_filters(since=None, until=None, changed=False, now=None):
    """The ``job_filter`` filters for jobs created (``changed``: last changed) at or after
    ``since`` and before ``until`` (each as :func:`parse_time` reads it)."""
    field = "updated" if changed else "created"
    out = {}
    if since is not None:
        out[f"{field}_after"] = parse_time(since, now, "since")
    if until is not None:
        out[f"{field}_before"] = parse_time(until, now, "until")
    if since is not None and until is not None and out[f"{field}_after"] >= out[f"{field}_before"]:
        raise BadRequest(f"since ({since}) is not before until ({until}): no job can match")
    return out


def check_sort(sort):
    """``sort`` if it is a key of :data:`SORT_KEYS`, optionally preceded by ``-``."""
    if sort is None:
        return None
    if not isinstance(sort, str) or sort.lstrip("-") not in SORT_KEYS or sort.startswith("--"):
        raise BadRequest(f"cannot sort by {sort!r}; sort by one of {', '.join(SORT_KEYS)} "
                         "(with a leading - for the reverse order, e.g. -updated: last changed first)")
    return sort


def timeline(history, now=None):
    """The state history of a job (``job_get``'s ``history``, oldest first) as the time spent
    in each state: a list of ``{state, since, until, seconds, message, current}``.

    The last entry is the state the job is in (``current``; ``until`` None): its ``seconds``
    run up to ``now``, except in a final state (JOB_FINISHED, FAILED, USER_KILLED), where
    they are None.
    """
    now = time.time() if now is None else now
    out = []
    for index, change in enumerate(history):
        following = history[index + 1] if index + 1 < len(history) else None
        until = following["time"] if following is not None else None
        state = change["to_state"]
        if until is not None:
            seconds = until - change["time"]
        elif state in states.FINAL:
            seconds = None
        else:
            seconds = now - change["time"]
        out.append({"state": state, "since": change["time"], "until": until, "seconds": seconds,
                    "message": change.get("message", ""), "current": following is None})
    return out


def progress(counts):
    """Per workflow, from :meth:`balsamdb.facades.Jobs.state_counts` rows: ``{workflow: {"total",
    "finished" (JOB_FINISHED), "ended" (any final state), "failed" (FAILED or USER_KILLED),
    "states": {state: count}}}``, workflows in name order."""
    out = {}
    for row in sorted(counts, key=lambda r: r["workflow"]):
        item = out.setdefault(row["workflow"], {"total": 0, "finished": 0, "ended": 0, "failed": 0, "states": {}})
        item["total"] += row["count"]
        item["states"][row["state"]] = row["count"]
        if row["state"] == "JOB_FINISHED":
            item["finished"] += row["count"]
        if row["state"] in states.FINAL:
            item["ended"] += row["count"]
        if row["state"] in ("FAILED", "USER_KILLED"):
            item["failed"] += row["count"]
    return out
