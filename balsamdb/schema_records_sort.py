"""Schema 12 (issue 22): the records list of ``db serve`` sorted by any of its columns, read from an index.

The list reads ``WHERE project_id = ? ORDER BY column, id LIMIT 51`` (either direction; the next and
previous pages add a keyset condition on ``(column, id)``, :mod:`balsamdb.server.http.keyset`).
Label and time had indexes; the other sortable columns had none, so each page read and sorted every
record of the project: over 10 s at a million records.  One index ``(project_id, column, id)`` per
column gives each page as an index range.

The long free-text columns (reason, outcome, main file) are indexed, and sorted, by their first
:data:`PREFIX` characters (``substr(column, 1, 100)``): a PostgreSQL B-tree entry holds at most about
2.7 KB, so an index of the whole text would refuse the save of a record with a long outcome; rows
equal in those characters follow each other by id.  ``duration`` may be NULL: NULLs sort first
ascending and last descending (as SQLite's indexes hold them; PostgreSQL's index says ``NULLS FIRST``).

It drops ``record_project_id_sort_time`` (schema 8), which ``record_project_id_sort_time_id`` answers
for every read (on SQLite the two hold the same entries: every index ends with the rowid): one B-tree
fewer for each save to keep.

Idempotent on SQLite and PostgreSQL (``CREATE INDEX IF NOT EXISTS``, ``DROP INDEX IF EXISTS``).
"""

import peewee as pw

#: characters of a long text column that its index (and so its order) holds
PREFIX = 100

#: the sortable columns that get an index here -> whether it is a long text, indexed by its prefix
COLUMNS = {"reason": True, "outcome": True, "main_file": True, "duration": False, "version": False, "user": False}


#: the index this schema drops (the same as ``record_project_id_sort_time_id`` without its last column)
REPLACED = "record_project_id_sort_time"


def index_name(column):
    return f"record_project_id_{column}_id"


def sort_key(field):
    """The expression the records list sorts by for record column ``field`` (a peewee field of
    ``Record``): the one its index holds (literal numbers: SQLite matches an index's expression only
    to the same expression, not to bound parameters)."""
    if COLUMNS.get(field.name):
        return pw.fn.substr(field, pw.SQL("1"), pw.SQL(str(PREFIX)))
    return field


def _indexed(column, postgres):
    if COLUMNS[column]:
        return f'(substr("{column}", 1, {PREFIX}))'
    if column == "duration" and postgres:  # NULLs first ascending, last descending, as SQLite's index
        return f'"{column}" NULLS FIRST'
    return f'"{column}"'


def migrate(database, progress=None):
    """Make the indexes of the records list's sorts; ``progress(step_text)`` before each step."""
    step = progress or (lambda text: None)
    postgres = isinstance(database, pw.PostgresqlDatabase)
    for column in COLUMNS:
        step(f"index {index_name(column)}")
        database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{index_name(column)}" ON "record" '
                             f'("project_id", {_indexed(column, postgres)}, "id")')
    step(f"drop index {REPLACED}")
    database.execute_sql(f'DROP INDEX IF EXISTS "{REPLACED}"')


migrate.takes_progress = True
