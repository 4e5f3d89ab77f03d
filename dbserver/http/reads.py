"""Read-only connections for the web pages of ``db serve``.

The pages read the database directly, never through the write server: a page that
a lab keeps open and refreshes every few seconds must not take the single writer's
time from the jobs that write.  They read through :class:`balsamdb.reads.Reader`, the read
layer that the client and the read service use too: SQLite opened read-only (``mode=ro``, a WAL
reader: it never blocks the writer, and the writer never blocks it), PostgreSQL with
``default_transaction_read_only`` on the cluster the address file names, every read in one
transaction with a time limit.

Queries are built from the models without binding them (``query.execute(database)``),
so that reading threads never touch the process-wide model binding of direct mode.
"""

from balsamdb.dbdir import DBDirectory
from balsamdb.reads import Reader

#: labels read at once by the Sumatra API's streamed listing (one short read each)
LABEL_PAGE = 5000

#: seconds a page's read may run (a page, not a report: shorter than ``read_time_limit``)
PAGE_TIME_LIMIT = 10.0


def page_reader(path):
    """The HTTP store's :class:`~balsamdb.reads.Reader` of DB directory ``path`` (the one read
    layer: the reader of clients and of the read service): read-only connections, one per waitress
    thread, opened at the first read; its :meth:`~balsamdb.reads.Reader.query` runs a page's
    queries in one read transaction with a time limit."""
    from balsamdb.settings import load_settings

    settings = load_settings()
    return Reader(DBDirectory(path), settings, time_limit=min(PAGE_TIME_LIMIT, settings.read_time_limit), lazy=True)


# -- who may read what: the log-in and permission checks of every request ---------------------------------
# Read here, on the read-only connection, like the pages: a request's log-in and permission checks
# never wait on the write server, and a grant, a removal or a new password made through it is seen
# by the next request (nothing is cached; a user is two lookups by primary key).

def read_user(database, name):
    """User ``name`` with ``password_hash``, ``admin`` and the sorted names of their ``projects``, or
    None (also for a name no user can have).  What the operation ``user_get`` answers."""
    from balsamdb.exceptions import BadRequest
    from balsamdb.models import ProjectPermission, User
    from balsamdb.operations.checks import check_user_name

    try:
        name = check_user_name(name)
    except BadRequest:
        return None
    rows = list(User.select(User.name, User.password_hash, User.admin).where(User.name == name)
                .tuples().execute(database))
    if not rows:
        return None
    projects = ProjectPermission.select(ProjectPermission.project).where(ProjectPermission.user == name)
    return {"name": rows[0][0], "password_hash": rows[0][1], "admin": bool(rows[0][2]),
            "projects": sorted(p for (p,) in projects.tuples().execute(database))}


def read_projects(database, name=None):
    """Every project by name (or only project ``name``), as the operations ``project_list`` and
    ``project_get`` (without the count) answer them."""
    from balsamdb.models import Project

    query = Project.select(Project.name, Project.description, Project.public, Project.created_at,
                           Project.write_once).order_by(Project.name)
    if name is not None:
        query = query.where(Project.name == name)
    return [{"name": p["name"], "description": p["description"], "public": bool(p["public"]),
             "created_at": p["created_at"], "write_once": bool(p["write_once"])}
            for p in query.dicts().execute(database)]


def read_record_counts(database):
    """``{project: number of records}`` (one count per project from the (project, label) index)."""
    import peewee as pw

    from balsamdb.models import Record

    query = Record.select(Record.project, pw.fn.COUNT(Record.id)).group_by(Record.project)
    return dict(query.tuples().execute(database))


def read_versions(database, project, label):
    """The versions of record ``label`` in ``project``, as the operation ``record_versions`` answers
    them (for the versions page); :class:`~balsamdb.exceptions.NotFound` when there is no such record."""
    from balsamdb.exceptions import NotFound
    from balsamdb.models import Record
    from balsamdb.operations.records import version_list

    rows = list(Record.select(Record.id).where((Record.project == project) & (Record.label == label))
                .tuples().execute(database))
    if not rows:
        raise NotFound(f"no record {label!r} in project {project!r}")
    return version_list(rows[0][0], database)


def read_record(database, project, label, version=None):
    """The document of record ``label`` in ``project`` (or its version ``version``), as the operation
    ``record_get`` answers it: for the record page and ``smt``'s reads of one record.
    :class:`~balsamdb.exceptions.NotFound` when there is no such record or version."""
    import json

    from balsamdb.exceptions import NotFound
    from balsamdb.models import Record, RecordVersion
    from balsamdb.operations.records import decompress

    rows = list(Record.select(Record.id, Record.document).where((Record.project == project) & (Record.label == label))
                .tuples().execute(database))
    if not rows:
        raise NotFound(f"no record {label!r} in project {project!r}")
    if version is None:
        return json.loads(rows[0][1])
    found = list(RecordVersion.select(RecordVersion.document)
                 .where((RecordVersion.record == rows[0][0]) & (RecordVersion.number == version))
                 .tuples().execute(database))
    if not found:
        raise NotFound(f"record {label!r} in project {project!r} has no version {version}")
    return json.loads(decompress(found[0][0]))


def read_listing(database, project, tags=None, limit=None, documents=False):
    """The records of ``project`` having any of ``tags`` (all records without), newest first: their
    labels, or with ``documents`` their documents (at most ``limit``), as the operations
    ``record_labels`` and ``record_list`` answer them with ``match="any"`` (the Sumatra API's listings)."""
    import json

    from balsamdb.models import Record
    from balsamdb.operations.records import _record_query

    column = Record.document if documents else Record.label
    query = _record_query(project, tags, "any").select(column).order_by(Record.sort_time.desc(), Record.id.desc())
    if limit is not None:
        query = query.limit(limit)
    values = [value for (value,) in query.tuples().execute(database)]
    return [json.loads(v) for v in values] if documents else values


def read_label_page(database, project, tags=None, after=None, limit=LABEL_PAGE):
    """One page of the listing of :func:`read_listing` (labels, newest first): ``[(sort_time, id,
    label)]`` of at most ``limit`` records just after ``after`` (the ``(sort_time, id)`` of the
    previous page's last row; None for the first page), read through the index on (project,
    sort_time, id) from where the previous page ended: every page costs the same."""
    from balsamdb.models import Record
    from balsamdb.operations.records import record_query

    query = (record_query(project, tags, "any").select(Record.sort_time, Record.id, Record.label)
             .order_by(Record.sort_time.desc(), Record.id.desc()).limit(limit))
    if after is not None:
        sort_time, last = after
        query = query.where((Record.sort_time <= sort_time)
                            & ((Record.sort_time < sort_time) | (Record.id < last)))
    return list(query.tuples().execute(database))


def read_permissions(database, project):
    """The users who may use ``project`` (an existing one), by name: the operation ``permission_list``."""
    from balsamdb.models import ProjectPermission

    query = ProjectPermission.select(ProjectPermission.user).where(ProjectPermission.project == project)
    return sorted(user for (user,) in query.tuples().execute(database))
