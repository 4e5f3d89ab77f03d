"""Schema 10 (issue 22): the jobs page filtered by workflow and state, most recently changed first,
read from an index.

The page lists ``WHERE workflow = ? AND state = ? ORDER BY updated_at DESC, id DESC LIMIT 101``.  With
the ``(workflow, state)`` index SQLite read every matching job (10,000 of a workflow's RUNNING jobs at
a million) and sorted them (``USE TEMP B-TREE FOR ORDER BY``): over the page's 10 s read limit on a
loaded machine.  ``(workflow, state, updated_at, id)`` gives the first 101 rows as an index range and
still answers what ``(workflow, state)`` answered (the counts per workflow and state on PostgreSQL,
the workflow filter), so it replaces it: the job table keeps as many indexes as before (each insert
adds a longer key, not another B-tree).

Idempotent on SQLite and PostgreSQL.
"""

COLUMNS = ("workflow", "state", "updated_at", "id")
INDEX = "job_" + "_".join(COLUMNS)
REPLACED = "job_workflow_state"


def migrate(database, progress=None):
    """Bring the job table's indexes to schema 10; ``progress(step_text)`` before each step."""
    step = progress or (lambda text: None)
    step(f"index {INDEX}")
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{INDEX}" ON "job" ({columns})')
    database.execute_sql(f'DROP INDEX IF EXISTS "{REPLACED}"')


migrate.takes_progress = True
