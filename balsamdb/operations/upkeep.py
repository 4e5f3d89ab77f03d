"""Keeping a store small (issue 22, item 6): ``store_prune`` and ``store_vacuum``.

Both are operations like any write: through the write server while one runs (never raw SQL on
the wire), directly on SQLite otherwise.  Each takes ``dry_run``: the same counting, nothing
changed, so a dry run says exactly what the real run removes.
"""

import time

import peewee as pw

from ..exceptions import Conflict
from ..models import AppliedRequest, Job, JobStateChange, Project, RecordVersion
from .checks import check_flag, check_number
from .registry import operation

#: each DELETE takes at most this many rows (SQLite's limit on bound variables; short statements)
CHUNK = 500


def _old_history(before, limit):
    """Ids of up to ``limit`` state changes older than ``before`` that are not the last change of
    their job (the last one says since when the job is in its state: it is always kept)."""
    database = JobStateChange._meta.database
    p = database.param
    sql = ('SELECT c.id FROM job_state_change c WHERE c.time < ' + p + ' AND c.id <> '
           '(SELECT MAX(d.id) FROM job_state_change d WHERE d.job_key = c.job_key) ORDER BY c.id')
    params = [before]
    if limit is not None:
        sql, params = sql + ' LIMIT ' + p, params + [limit]
    return [row[0] for row in database.execute_sql(sql, params)]


def _extra_versions(limit):
    """Ids of up to ``limit`` record versions beyond the newest ``keep_versions`` of their record,
    in the projects that opted in (``db project set P --keep-versions N``); the current version
    is always kept."""
    database = RecordVersion._meta.database
    ids = []
    for project in Project.select().where(Project.keep_versions.is_null(False) & (Project.keep_versions > 0)):
        rows = database.execute_sql(
            'SELECT v.id, v.record_id FROM record_version v JOIN record r ON r.id = v.record_id '
            f'WHERE r.project_id = {database.param} ORDER BY v.record_id, v.number DESC', [project.name])
        seen = {}
        for version_id, record_id in rows:
            seen[record_id] = seen.get(record_id, 0) + 1
            if seen[record_id] > project.keep_versions:
                ids.append(version_id)
                if limit is not None and len(ids) >= limit:
                    return ids
    return ids


def _delete(model, ids):
    for start in range(0, len(ids), CHUNK):
        model.delete().where(model.id.in_(ids[start:start + CHUNK])).execute()


@operation(write=True)
def store_prune(before=None, dry_run=False, applied_retention_days=7.0, limit=None):
    """Remove what a store no longer needs: the state history of jobs older than ``before``
    (UNIX seconds; each job keeps its last change, whatever its age), and the record versions
    beyond the newest N of each record in the projects that opted in with a ``keep_versions``
    of N (every version is kept by default).  Applied request ids are pruned by the server as
    always (``applied_retention_days``); the answer says how many are older than that.
    ``dry_run``: count only.  ``limit``: remove at most that many rows of each kind (a large
    prune in several short transactions: the server keeps answering writes in between; call
    again while ``more``).  Returns ``{"state_changes", "record_versions",
    "applied_requests_older", "more", "dry_run"}``."""
    check_flag(dry_run, "dry_run")
    limit = None if limit is None else check_number(limit, "limit", int, 1)
    history = [] if before is None else _old_history(check_number(before, "before", float), limit)
    versions = _extra_versions(limit)
    cutoff = time.time() - check_number(applied_retention_days, "applied_retention_days", float, 0) * 86400
    applied = AppliedRequest.select().where(AppliedRequest.applied_at < cutoff).count()
    if not dry_run:
        _delete(JobStateChange, history)
        _delete(RecordVersion, versions)
    more = limit is not None and (len(history) >= limit or len(versions) >= limit)
    return {"state_changes": len(history), "record_versions": len(versions), "applied_requests_older": applied,
            "more": more, "dry_run": bool(dry_run)}


def sqlite_space(database):
    """``{page_size, pages, free_pages, auto_vacuum}`` of a SQLite database."""
    value = lambda pragma: database.execute_sql(f"PRAGMA {pragma}").fetchone()[0]  # noqa: E731
    return {"page_size": value("page_size"), "pages": value("page_count"), "free_pages": value("freelist_count"),
            "auto_vacuum": value("auto_vacuum")}


@operation(write=True)
def store_vacuum(dry_run=False):
    """Give the free pages of a SQLite database back to the file system while its server runs:
    an incremental vacuum, possible when the database was made (or last vacuumed offline) with
    ``auto_vacuum = INCREMENTAL``.  Otherwise a conflict that says so and how much free disk an
    offline ``VACUUM`` needs (``db vacuum`` with the server stopped does it).  PostgreSQL: its
    autovacuum reclaims space; this answers the size only.  Returns ``{"backend", "bytes",
    "free_bytes", "freed_bytes", "dry_run"}``."""
    check_flag(dry_run, "dry_run")
    database = Job._meta.database
    if isinstance(database, pw.PostgresqlDatabase):
        size = database.execute_sql("SELECT pg_database_size(current_database())").fetchone()[0]
        return {"backend": "postgres", "bytes": size, "free_bytes": None, "freed_bytes": 0, "dry_run": bool(dry_run),
                "note": "PostgreSQL's autovacuum reclaims dead rows; nothing to do"}
    space = sqlite_space(database)
    size, free = space["pages"] * space["page_size"], space["free_pages"] * space["page_size"]
    if space["auto_vacuum"] != 2:
        raise Conflict(f"this database ({size / 1e6:.1f} MB, {free / 1e6:.1f} MB of it free pages) cannot be "
                       "compacted while its server runs (auto_vacuum is not INCREMENTAL): stop the server "
                       f"(db dbserver --stop) and run db vacuum, which needs about {size / 1e6:.0f} MB of free disk "
                       "for the copy SQLite makes, and makes later vacuums possible with the server running")
    if not dry_run and space["free_pages"]:
        database.execute_sql("PRAGMA incremental_vacuum")
    return {"backend": "sqlite3", "bytes": size, "free_bytes": free, "freed_bytes": 0 if dry_run else free,
            "dry_run": bool(dry_run)}
