"""The lines of an export file for records and jobs, made straight from the cursor's rows.

``db export`` writes each item's canonical text (:func:`.stores.canonical`) and adds it to the
digests of the footer.  For a store read on this process's own connection, the records and jobs
(all but a handful of an export's lines) are not made into items first: each line is put
together from the canonical text of every column (:func:`balsamdb.jsonio.canonical_scalar`) and
of every JSON text stored in a row (:func:`balsamdb.jsonio.canonical_text`), as json would write
the item.  The text is ``canonical(item)`` of the items of :func:`.stores.export_items`, byte for
byte (``tests/test_transfer.py`` compares the two on awkward values).

Must run with the models bound and a read transaction open, as an operation does
(``SQLDatabase.read`` in :mod:`balsamdb.transfer.endpoints`): a page's rows and their history or
versions are read in one snapshot.
"""

from .. import jsonio
from ..job_fields import JOB_KEYS
from ..models import Job, JobStateChange, JSONText, RecordVersion
from .records import decompress
from .stores import _HISTORY_COLUMNS, _JOB_COLUMNS, _RECORD_COLUMNS, _VERSION_COLUMNS, _page_query, _rows
from .stores import sorts_by_code_point

#: The kinds whose pages :func:`export_lines` makes.
LINE_KINDS = ("record", "job")

_scalar = jsonio.canonical_scalar
_scalars = jsonio.canonical_scalars
_text = jsonio.canonical_text

_RECORD_LINE = jsonio.canonical_object(("kind", "project", "label", "document", "created_at", "updated_at",
                                        "versions"))
_RECORD_LINE_BARE = jsonio.canonical_object(("kind", "project", "label", "document", "created_at", "updated_at"))
_RECORD_DIGEST = jsonio.canonical_object(("label", "document", "versions"))
_RECORD_DIGEST_BARE = jsonio.canonical_object(("label", "document"))
_VERSION = jsonio.canonical_object(("version", "saved_at", "saved_by", "document"))
_JOB_LINE = jsonio.canonical_object(JOB_KEYS + ("kind", "history"))
_HISTORY = jsonio.canonical_object(("time", "from_state", "to_state", "message"))
_JSON_COLUMNS = tuple(i for i, key in enumerate(JOB_KEYS) if isinstance(getattr(Job, key), JSONText))
_UPDATED_AT = JOB_KEYS.index("updated_at")
_RECORD_KIND = _scalar("record")
_JOB_KIND = _scalar("job")


def export_lines(kind, after=None, limit=5000, versions=True):
    """One page of the records or jobs of the store, in key order from just after ``after``,
    as the lines of an export file: ``{"lines": [(line, group, content), ...], "next": key or
    None}``, where ``line`` is the item's canonical text (no newline), ``group`` its group of
    :class:`.digests.Digester` and ``content`` the canonical text of what its digest covers
    (``None``: the line itself).  ``versions``: records carry their versions (as
    ``export_items(versions=True)``).  :func:`page_rows`, then :func:`page_lines`."""
    return page_lines(page_rows(kind, after, limit, versions))


def page_rows(kind, after=None, limit=5000, versions=True):
    """The rows of one page of :func:`export_lines`, as the database gives them (the part that
    needs the models bound and a read transaction): ``{"kind", "rows", "next", "history"}``, where
    ``history`` holds the rows of the page's history (jobs) or versions (records; None without)."""
    columns = _RECORD_COLUMNS if kind == "record" else _JOB_COLUMNS
    query = _page_query(kind, after, None)
    rows = _rows(query.limit(limit + 1), columns)
    more = len(rows) > limit
    rows = rows[:limit]
    page = {"kind": kind, "rows": rows, "history": None, "next": None}
    if not rows:
        return page
    ids = query.select(query.model.id).limit(limit)  # the page's keys: its history or versions are of these
    if kind == "record":
        page["next"] = [rows[-1][1], rows[-1][2]] if more else None
        if versions:
            page["history"] = _execute(RecordVersion.select(*_VERSION_COLUMNS).where(RecordVersion.record.in_(ids))
                                       .order_by(RecordVersion.record, RecordVersion.number)).fetchall()
    else:
        page["next"] = [rows[-1][0]] if more else None
        # The history holds the job's key (schema 11): the page's jobs are found by id, their rows by key.
        page["history"] = _execute(
            JobStateChange.select(*_HISTORY_COLUMNS).join(Job, on=(JobStateChange.job == Job.key))
            .where(_page_jobs(Job.id, rows, ids))
            .order_by(JobStateChange.job, JobStateChange.id)).fetchall()  # each job's by id, as job_items
    return page


def page_lines(page):
    """The lines of a page of :func:`page_rows` (no database needed): ``{"lines", "next"}`` of
    :func:`export_lines`, and for each line its item's key (a tuple) and ``updated_at`` in
    ``"keys"`` and ``"updated_at"`` (what a digest up to a time leaves out)."""
    rows = page["rows"]
    if page["kind"] == "record":
        lines = _record_lines(rows, page["history"]) if rows else []
        keys, updated = [(row[1], row[2]) for row in rows], [row[5] for row in rows]
    else:
        lines = _job_lines(rows, page["history"]) if rows else []
        keys, updated = [(row[0],) for row in rows], [row[_UPDATED_AT] for row in rows]
    return {"lines": lines, "next": page["next"], "keys": keys, "updated_at": updated}


def _execute(query):
    """The cursor of ``query``: rows as the database gives them (no model conversion)."""
    return query.model._meta.database.execute(query)


def _page_jobs(column, rows, ids):
    """The condition "``column`` is the id of a job of the page" (``rows``, selected by ``ids``):
    where the default collation is the page's order, the range from its first id to its last, which
    the index of ``column`` reads as it is (rows of other jobs are not in it: the page holds every
    job of its range); else ``IN (ids)``.  On PostgreSQL at 100k jobs, ``IN (ids)`` was planned as a
    hash join over the whole history, 125 ms a page; the range 1-3 ms."""
    if sorts_by_code_point(Job._meta.database):
        return column.between(rows[0][0], rows[-1][0])
    return column.in_(ids)


def _record_lines(rows, version_rows):
    kept = None if version_rows is None else _versions(version_rows, {row[0]: row[3] for row in rows})
    lines = []
    for record_id, project, label, document, created_at, updated_at in rows:
        document, label = _text(document), _scalar(label)
        if kept is None:
            line = _RECORD_LINE_BARE(_RECORD_KIND, _scalar(project), label, document, _scalar(created_at),
                                     _scalar(updated_at))
            content = _RECORD_DIGEST_BARE(label, document)
        else:
            versions_text = jsonio.canonical_list(
                _VERSION(_scalar(number), _scalar(saved_at), _scalar(saved_by),
                         document if same else _text(text))
                for number, saved_at, saved_by, text, same in kept.get(record_id, ()))
            line = _RECORD_LINE(_RECORD_KIND, _scalar(project), label, document, _scalar(created_at),
                                _scalar(updated_at), versions_text)
            content = _RECORD_DIGEST(label, document, versions_text)
        lines.append((line, ("project", project), content))
    return lines


def _versions(version_rows, documents):
    """``{record id: [(number, saved_at, saved_by, document text, same as the record's)]}``,
    oldest first, from ``version_rows`` (in record and number order) of the records whose stored
    texts ``documents`` holds by id."""
    out = {}
    for record_id, number, saved_at, saved_by, compressed in version_rows:
        if record_id in documents:
            text = decompress(compressed)
            out.setdefault(record_id, []).append((number, saved_at, saved_by, text, text == documents[record_id]))
    return out


def _job_lines(rows, history_rows):
    history = {row[0]: [] for row in rows}
    for job_id, when, from_state, to_state, message in history_rows:
        changes = history.get(job_id)
        if changes is not None:
            changes.append(_HISTORY(*_scalars((when, from_state, to_state, message))))
    group = ("job", None)
    lines = []
    for row in rows:
        texts = _scalars(row)
        for i in _JSON_COLUMNS:
            if row[i] is not None:
                texts[i] = _text(row[i])
        lines.append((_JOB_LINE(*texts, _JOB_KIND, jsonio.canonical_list(history[row[0]])), group, None))
    return lines
