"""What a store handle offers for provenance (``db.records``, ``db.projects``) and for the users
of an HTTP store (``db.users``); see :mod:`balsamdb.facades` for ``db.jobs``."""

from .exceptions import NotFound
from .facades import result_field
from .identity import who


class Records:
    """``db.records``: Sumatra-style provenance records, grouped by project.

    A save replaces the record and keeps every earlier version (:meth:`versions`)."""

    def __init__(self, db):
        self._db = db

    def save(self, project, record):
        """Save a record document (a dict with at least ``label``); returns True when new.

        Saving a label again replaces the record and keeps the earlier document as a
        version (unless the project is write-once: then a changed provenance field
        raises :class:`Conflict`)."""
        return result_field(self._db.call("record_save", project=project, record=record, saved_by=who()), "created")

    def get(self, project, label, version=None):
        """The record document as it was saved; ``version=N``: its version N."""
        if version is None:
            return self._db.call("record_get", project=project, label=label)
        return self._db.call("record_get", project=project, label=label, version=version)

    def versions(self, project, label):
        """The versions of a record, oldest first: dicts of ``version`` (from 1),
        ``saved_at`` (UNIX seconds), ``saved_by``, ``bytes`` and ``changed`` (the
        fields that differ from the version before)."""
        return self._db.call("record_versions", project=project, label=label)

    def list(self, project, tags=None, limit=None, match="all"):
        """Record documents of ``project``, newest first, having all ``tags``
        (``match="any"``: any of them); read page by page (see :meth:`iter`)."""
        return list(self.iter(project, tags=tags, limit=limit, match=match))

    def iter(self, project, tags=None, limit=None, match="all", page_size=500):
        """The documents of :meth:`list` as an iterator that reads them ``page_size`` at a time (a
        keyset cursor), so that no process holds the whole listing."""
        left = limit
        after = None
        while left is None or left > 0:
            size = page_size if left is None else min(page_size, left)
            page = self._db.call("record_page", project=project, tags=list(tags or []), match=match,
                                 after=after, limit=size)
            yield from page["records"]
            if left is not None:
                left -= len(page["records"])
            after = page["next"]
            if after is None:
                return

    def labels(self, project, tags=None, match="all"):
        return self._db.call("record_labels", project=project, tags=list(tags or []), match=match)

    def delete(self, project, label):
        """Delete one record and its versions; raises :class:`NotFound` when it does not exist."""
        return result_field(self._db.call("record_delete", project=project, label=label), "deleted")

    def delete_labels(self, project, labels):
        """Delete the records ``labels`` of ``project`` with their versions; returns how many.
        Every label is checked first, so that a typo removes nothing (:class:`NotFound`
        naming the missing ones)."""
        labels = list(dict.fromkeys(labels))
        existing = set(self.labels(project))
        missing = [label for label in labels if label not in existing]
        if missing:
            raise NotFound(f"no record {', '.join(map(repr, missing))} in project {project!r}; nothing was removed "
                           f"(`db record ls {project}` lists its records)")
        return sum(self.delete(project, label) for label in labels)

    def delete_by_tag(self, project, tag):
        """Delete every record of ``project`` tagged ``tag``; returns how many."""
        return result_field(self._db.call("record_delete_by_tag", project=project, tag=tag), "deleted")

    def tag(self, project, label, add=(), remove=()):
        """Add and remove tags of a record; returns its new tags."""
        return result_field(self._db.call("record_tag", project=project, label=label, add=list(add),
                                    remove=list(remove), saved_by=who()), "tags")

    def of_job(self, job_id):
        """The records of the runs of job ``job_id`` (a full id or a unique prefix), oldest
        first: dicts of ``project``, ``label``, ``timestamp``, ``outcome``, ``duration``,
        ``run``, ``job`` and ``exit_status``."""
        return self._db.call("record_by_job", job_id=self._db.jobs._full_id(job_id))

    def find_files(self, sha256=None, path=None, role=None, project=None, limit=1000):
        """Records by their files: whose input or output (``role`` "input"/"output", both when
        None) has SHA-256 ``sha256`` and/or the path ``path``; newest first, dicts of
        ``project``, ``label``, ``timestamp``, ``role``, ``path``, ``sha256``, ``size``, ``job``."""
        return self._db.call("record_files_find", sha256=sha256, path=path, role=role, project=project,
                             limit=limit)


class Projects:
    """``db.projects``: the projects that group records."""

    def __init__(self, db):
        self._db = db

    def save(self, name, description=None, public=None, write_once=None, keep_versions=None):
        """Create a project or change its description, public flag, write-once option or
        ``keep_versions`` (``db prune`` keeps the newest N versions of each record; 0: all)
        (None leaves a setting as it is)."""
        extra = {} if keep_versions is None else {"keep_versions": keep_versions}  # older servers know none
        return self._db.call("project_save", name=name, description=description, public=public,
                             write_once=write_once, **extra)

    def get(self, name):
        """The project with its settings and number of ``records``; :class:`NotFound` when absent."""
        return self._db.call("project_get", name=name)

    def list(self, count=False):
        """Every project by name (``count=True``: each with its number of ``records``)."""
        if count:
            return self._db.call("project_list", count=True)
        return self._db.call("project_list")


class Users:
    """``db.users``: the users of the HTTP record store and the projects each may use."""

    def __init__(self, db):
        self._db = db

    def save(self, name, password_hash=None, admin=None):
        """Create user ``name`` or change their password hash (made by
        :func:`balsamdb.passwords.hash_password`) or admin flag; True when created."""
        return result_field(self._db.call("user_save", name=name, password_hash=password_hash, admin=admin), "created")

    def get(self, name):
        """User ``name`` with their password hash and projects; :class:`NotFound` when absent."""
        return self._db.call("user_get", name=name)

    def list(self):
        """Every user by name, with the projects each may use (no password hashes)."""
        return self._db.call("user_list")

    def delete(self, name):
        """Delete user ``name`` and their permissions; :class:`NotFound` when absent."""
        return result_field(self._db.call("user_delete", name=name), "deleted")

    def grant(self, name, project):
        """Let user ``name`` read and write ``project`` (made if needed); True when newly granted."""
        return result_field(self._db.call("permission_grant", project=project, user=name), "granted")

    def permissions(self, project):
        """The names of the users who may use ``project``."""
        return self._db.call("permission_list", project=project)
