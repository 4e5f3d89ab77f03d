"""What a store handle offers for jobs (``db.jobs``), and the values its writes return
(:class:`Job`, :class:`SpooledWrite`); ``db.records``, ``db.projects`` and ``db.users`` are in
:mod:`balsamdb.record_facades`.

Each facade turns its methods into operations of :mod:`balsamdb.operations` through the
handle's ``call``, so the same code serves a DB directory and an HTTP store.
"""

import time
import uuid
from datetime import datetime
from pathlib import Path

from . import job_queries
from .job_fields import job_working_directory
from .exceptions import BadRequest, Conflict, NotFound, StorageError
from .identity import default_owner
from .private_files import make_private_directories


class SpooledWrite:
    """What a write returns when no server could take it: it waits in the spool
    (``path``) and the server applies it, exactly once, when it can."""

    spooled = True

    def __init__(self, request_id, path):
        self.request_id = request_id
        self.path = path

    def __repr__(self):
        return f"<SpooledWrite {self.request_id} in {self.path}>"


def result_field(result, key):
    """``result[key]``, or the :class:`SpooledWrite` itself when the write was spooled."""
    return result if isinstance(result, SpooledWrite) else result[key]


def _timestamp(value):
    if isinstance(value, datetime):
        return value.timestamp()
    return value


class Job:
    """A job as read from the store.  Attributes mirror the job fields;
    ``working_directory`` is an absolute path."""

    __slots__ = ("_data", "_root", "spool")

    def __init__(self, data, root, spool=None):
        self._data = data
        self._root = root
        self.spool = spool  # the SpooledWrite when the job waits in the spool

    @property
    def spooled(self):
        """True when this job waits in the spool for the server to store it."""
        return self.spool is not None

    def __getattr__(self, name):
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def working_directory(self):
        """Absolute path; relative to the store's DB directory for a job read over HTTP."""
        if self._root is None:
            return self._data["working_directory"]
        return str(Path(self._root) / self._data["working_directory"])

    @property
    def created(self):
        return datetime.fromtimestamp(self._data["created_at"])

    def to_dict(self):
        out = dict(self._data)
        out["working_directory"] = self.working_directory
        return out

    def __eq__(self, other):
        return isinstance(other, Job) and other._data == self._data

    def __repr__(self):
        return f"<Job {self._data['name']} {self._data['id'][:8]} {self._data['state']}>"


def _spooled_job(spec):
    """The job as the server will store it, for a create that was spooled."""
    from .operations import JOB_KEYS, clean_job

    row = clean_job(dict(spec), time.time())
    return {key: row[key] for key in JOB_KEYS}


class Jobs:
    """``db.jobs``: create, change, find and delete jobs."""

    BULK_CHUNK = 5000
    LISTING_PAGE = 5000  # rows per read of iter_rows (job_page's most): 200 reads for a million jobs

    def __init__(self, db):
        self._db = db

    def _job(self, data, spooled=None):
        if isinstance(data, SpooledWrite):
            return data
        return Job(data, self._db.root, spooled)

    def _spec(self, name, workflow, fields, make_workdir):
        spec = dict(fields, name=name, workflow=workflow)
        spec["id"] = str(spec.get("id") or uuid.uuid4())
        if make_workdir and self._db.root is not None:  # a remote store's directories are not here
            relative = job_working_directory(workflow, name, spec["id"])
            workdir = self._db.root / relative
            try:
                # Private unless the job_dir_mode setting says otherwise: job outputs are the owner's.
                make_private_directories(self._db.root, relative, int(self._db.settings.job_dir_mode, 8))
            except OSError as exc:
                raise StorageError(f"cannot make the working directory {workdir}: {exc.strerror or exc}; "
                                   "the job was not created") from None
        return spec

    MIN_PREFIX = 4  # hex characters of a job id prefix

    def resolve_ids(self, texts):
        """Full job ids for ``texts``: each a full id or a unique prefix of at least
        ``MIN_PREFIX`` hex characters (as ``db ls`` shows them).  :class:`BadRequest` for a
        text that is neither, :class:`NotFound` when no job id starts with it,
        :class:`Conflict` when several do."""
        out = []
        for text in texts:
            text = str(text).strip().lower()
            try:
                out.append(str(uuid.UUID(text)))
                continue
            except ValueError:
                pass
            if len(text.replace("-", "")) < self.MIN_PREFIX or not set(text) <= set("0123456789abcdef-"):
                raise BadRequest(f"{text!r} is not a job id; give a full id or its first {self.MIN_PREFIX}+ "
                                 "hex characters (see db ls)")
            matches = [j.id for j in self.filter(id_prefix=text, limit=6)]
            if not matches:
                raise NotFound(f"no job id starts with {text!r}; `db ls` lists the jobs")
            if len(matches) > 1:
                shown = ", ".join(m[:13] for m in matches[:5]) + (", ..." if len(matches) > 5 else "")
                count = f"{len(matches)}" if len(matches) <= 5 else "more than 5"
                raise Conflict(f"job id prefix {text!r} is ambiguous: it matches {count} jobs ({shown}); "
                               "give more characters")
            out.append(matches[0])
        return out

    def _full_id(self, job_id):
        """``job_id`` as given when it is a full id; a prefix resolved (see :meth:`resolve_ids`)."""
        try:
            uuid.UUID(str(job_id))
        except ValueError:
            return self.resolve_ids([job_id])[0]
        return str(job_id)

    def create(self, name, workflow="default", make_workdir=True, **fields):
        """Create a job; returns it.  Its working directory exists on return
        (unless ``make_workdir=False``: then whoever runs the job makes it).

        Fields: application, args, description, num_nodes, ranks_per_node,
        threads_per_rank, wall_time_minutes, environ, parents, tags, data,
        state (CREATED, AWAITING_PARENTS or READY).
        """
        spec = self._spec(name, workflow, fields, make_workdir)
        result = self._db.call("job_create", job=spec)
        if isinstance(result, SpooledWrite):
            return self._job(_spooled_job(spec), spooled=result)
        return self._job(result)

    def bulk_create(self, jobs, make_workdir=True):
        """Create many jobs (a list of dicts of ``create``'s arguments); returns their ids.

        Sent in chunks of 5000, each applied all or none.
        """
        specs = []
        for item in jobs:
            item = dict(item)
            specs.append(self._spec(item.pop("name", None), item.pop("workflow", "default"), item, make_workdir))
        for start in range(0, len(specs), self.BULK_CHUNK):
            self._db.call("job_bulk_create", jobs=specs[start:start + self.BULK_CHUNK])
        return [s["id"] for s in specs]

    def get(self, job_id):
        """The job with id ``job_id``: a full id, or a unique prefix of at least ``MIN_PREFIX`` hex
        characters (resolved first, see :meth:`resolve_ids`)."""
        return self._job(self._db.call("job_get", job_id=self._full_id(job_id)))

    def history(self, job_id):
        """The state history of a job: a list of dicts, oldest first."""
        return self._db.call("job_get", job_id=self._full_id(job_id))["history"]

    def update_state(self, job_id, state, message="", owner=None):
        """Move a job to ``state``; illegal transitions raise :class:`InvalidTransition`.
        ``owner``: the launcher that holds the job (refused with :class:`Conflict` when it
        does not; renews its lease)."""
        params = {"job_id": self._full_id(job_id), "state": state, "message": message}
        if owner is not None:  # only when given: a server of an older release knows no owner
            params["owner"] = owner
        return self._job(self._db.call("job_update_state", **params))

    # -- claims of launchers (see balsamdb.operations.leases and docs/launchers.md) ----------

    def acquire(self, n, owner=None, lease=60.0, workflow=None, states=("READY", "RESTART_READY"), ids=None):
        """Claim up to ``n`` free jobs for ``owner`` (default ``user@host:pid``) for ``lease``
        seconds, on the server's clock; returns them (a list of :class:`Job`, each with
        ``owner`` and ``lease_expires``).  Never spooled: raises :class:`ServerUnavailable`
        when no server can answer.  ``n`` of 0 (every slot busy) asks nothing and returns ``[]``."""
        if n <= 0:
            return []
        params = {"n": n, "owner": owner or default_owner(), "lease": lease, "states": list(states)}
        if workflow is not None:
            params["workflow"] = workflow
        if ids is not None:
            params["ids"] = [self._full_id(i) for i in ids]
        return [self._job(row) for row in self._db.call("job_acquire", **params)]

    def renew(self, job_ids, owner=None, lease=None):
        """Extend the leases ``owner`` holds on ``job_ids``; returns ``{"renewed": n, "lost": [ids]}``."""
        params = {"job_ids": [self._full_id(i) for i in job_ids], "owner": owner or default_owner()}
        if lease is not None:
            params["lease"] = lease
        return self._db.call("job_renew", **params)

    def release(self, job_ids, owner=None):
        """End the claims ``owner`` holds on ``job_ids`` (states unchanged); returns how many."""
        return result_field(self._db.call("job_release", job_ids=[self._full_id(i) for i in job_ids],
                                    owner=owner or default_owner()), "released")

    def running(self, job_id=None, owner=None, lease=60.0, **create):
        """``with db.jobs.running(job_id) as run:``: claim the job, mark it RUNNING, renew
        its lease while the block runs, and end it RUN_DONE (or RUN_ERROR when the block
        raises); see :class:`balsamdb.job_run.Running`.  Without ``job_id`` a job is
        created from ``create`` (``name=`` and the fields of :meth:`create`)."""
        from .job_run import Running

        return Running(self._db, job_id, owner=owner, lease=lease, create=create)

    def set_lost_run_policy(self, workflow, lost_runs):
        """What a lost run of ``workflow`` becomes: ``"restart"`` (default) or ``"stop"``."""
        return self._db.call("workflow_policy_set", workflow=workflow, lost_runs=lost_runs)

    def modify(self, job_id, **changes):
        """Change fields of a job (not its state: use ``update_state``)."""
        return self._job(self._db.call("job_modify", job_id=self._full_id(job_id), changes=changes))

    DELETE_CHUNK = 500  # ids per delete request, well under SQLite's limit on bound variables

    def delete(self, *job_ids):
        """Delete jobs by id (or prefix, see :meth:`resolve_ids`); returns how many were deleted.
        Many ids go in requests of :attr:`DELETE_CHUNK` ids; a :class:`SpooledWrite` (of the last
        request) when they wait in the spool."""
        ids = [self._full_id(i) for i in job_ids]
        results = [result_field(self._db.call("job_delete", job_ids=ids[start:start + self.DELETE_CHUNK]), "deleted")
                   for start in range(0, max(len(ids), 1), self.DELETE_CHUNK)]
        spooled = [result for result in results if isinstance(result, SpooledWrite)]
        return spooled[-1] if spooled else sum(results)

    @staticmethod
    def _filters(filters):
        return {k: _timestamp(v) for k, v in filters.items() if v is not None}

    @staticmethod
    def _query(filters, since=None, until=None, changed=False, also=("since", "until", "changed")):
        """``filters`` with ``since``/``until`` made into created_/updated_after/before.  An unknown
        filter is refused here, naming every keyword the calling method takes (``also``)."""
        from .operations.jobs import FILTER_KEYS

        unknown = sorted(set(filters) - set(FILTER_KEYS))
        if unknown:
            known = ", ".join(FILTER_KEYS + tuple(also))
            raise BadRequest(f"unknown job filter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"known: {known}")
        out = Jobs._filters(filters)
        out.update(job_queries.time_filters(since, until, changed))
        return out

    def filter(self, limit=None, offset=0, sort=None, since=None, until=None, changed=False, **filters):
        """Jobs matching all filters, oldest first (or as ``sort`` says).

        Filters: workflow, name, name_like (glob), state (one or a list), tags
        (all of them), ids, created_after, created_before, updated_after,
        updated_before (datetime or UNIX seconds).  ``since`` and ``until``:
        created at or after / before, each a span ago ("1h", "2d"), a date
        ("2024-05-01"), a date and time, UNIX seconds or a datetime; with
        ``changed=True`` they compare the time of the last change instead.
        ``sort``: created (default), updated, name, workflow, state (pipeline
        order) or id; "-updated" is the last changed first.
        """
        self._query(filters, since, until, changed, ("since", "until", "changed", "sort", "limit", "offset"))
        if not offset:
            # Read page by page (no answer holds a whole listing); the list is the caller's.
            return list(self.iter(limit=limit, sort=sort, since=since, until=until, changed=changed, **filters))
        params = {"filters": self._query(filters, since, until, changed,
                                         ("since", "until", "changed", "sort", "limit", "offset")),
                  "limit": limit, "offset": offset}
        if sort is not None:  # only when asked: a server of an older release knows no sort
            params["sort"] = job_queries.check_sort(sort)
        rows = self._db.call("job_filter", **params)
        return [self._job(r) for r in rows]

    def iter(self, limit=None, sort=None, since=None, until=None, changed=False, page_size=1000, **filters):
        """The jobs of :meth:`filter` (same filters and ``sort``), as an iterator that reads them a
        page at a time (``page_size`` jobs, a keyset cursor: no OFFSET), so that neither this process
        nor the server ever holds the whole listing: ``for job in db.jobs.iter(state="READY"): ...``.

        Each page is one read, consistent in itself; jobs written between pages are seen when they
        sort after the last page read (see ``balsamdb.operations.pages``).  ``limit``: at most this many."""
        params = {"filters": self._query(filters, since, until, changed,
                                         ("since", "until", "changed", "sort", "limit", "page_size"))}
        if sort is not None:
            params["sort"] = job_queries.check_sort(sort)
        for row in self._paged("job_page", "jobs", params, limit, page_size):
            yield self._job(row)

    def _paged(self, op, field, params, limit, page_size):
        """The items (``page[field]``) of the pages of the read ``op``, each read just after the
        previous one's ``next`` cursor, until the last page or ``limit`` items."""
        left, after = limit, None
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            if size <= 0:
                return
            page = self._db.call(op, after=after, limit=size, **params)
            yield from page[field]
            if left is not None:
                left -= len(page[field])
            after = page["next"]
            if after is None:
                return

    def iter_rows(self, columns, limit=None, sort=None, since=None, until=None, changed=False,
                  page_size=LISTING_PAGE, **filters):
        """The jobs of :meth:`iter` (same filters, ``sort``, pages and consistency), each as a tuple
        (a list when read through the read service) of the values of ``columns`` (job fields that are
        not JSON: ``("id", "name", "state")``), for a listing that prints a few fields of many jobs
        (``db ls``): no :class:`Job` objects, no dicts."""
        params = {"filters": self._query(filters, since, until, changed,
                                         ("since", "until", "changed", "sort", "limit", "page_size")),
                  "columns": list(columns)}
        if sort is not None:
            params["sort"] = job_queries.check_sort(sort)
        width, listed = len(params["columns"]), False
        try:
            for row in self._paged("job_rows", "rows", params, limit, page_size):
                listed = True
                yield row if len(row) == width else row[:width]  # less the sort key's values it added
        except BadRequest as exc:
            if listed or not str(exc).startswith("unknown operation 'job_rows'"):
                raise
            # A store of an older release: its job pages, whole.
            jobs = self.iter(limit=limit, sort=sort, page_size=page_size, **params["filters"])
            yield from (tuple(job._data.get(c) for c in params["columns"]) for job in jobs)

    def all(self):
        return self.filter()

    def count(self, since=None, until=None, changed=False, **filters):
        """Number of jobs matching the filters of :meth:`filter`."""
        return self._db.call("job_count", filters=self._query(filters, since, until, changed))

    def state_counts(self, since=None, until=None, changed=False, **filters):
        """How many jobs matching the filters of :meth:`filter` are in each state, per workflow:
        ``[{"workflow", "state", "count"}, ...]`` (see :func:`balsamdb.job_queries.progress`)."""
        return self._db.call("job_state_counts", filters=self._query(filters, since, until, changed))

    def timeline(self, job_id, now=None):
        """The time job ``job_id`` spent in each state (see :func:`balsamdb.job_queries.timeline`)."""
        return job_queries.timeline(self.history(job_id), now)
