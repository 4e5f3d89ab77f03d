"""Job ids as people type them: a full id or a unique prefix (shared by the job commands)."""

import click

from balsamdb.exceptions import BadRequest, Conflict, NotFound


def resolve_job_ids(db, texts):
    """Full job ids for ``texts``: each a full id or a unique prefix of at least 4 hex characters
    (see :meth:`balsamdb.facades.Jobs.resolve_ids`); a malformed one is a usage error."""
    try:
        return db.jobs.resolve_ids(texts)
    except BadRequest as exc:
        raise click.UsageError(exc.message) from None
    except (NotFound, Conflict) as exc:
        raise click.ClickException(exc.message) from None
