"""Schema 8 (issue 22): a schema that ages well at a million jobs.

- **No duplicate indexes.** Each dropped index is a prefix of another index (or of a primary key)
  of the same table, so it made every insert dearer and no read cheaper: ``job_workflow``
  (prefix of ``job_workflow_state``), ``job_state`` (of ``job_state_updated_at``),
  ``job_tag_job_id`` and ``record_tag_record_id`` (of their primary keys), ``record_project_id``
  (of ``record_project_id_label``), ``record_version_record_id`` (of ``record_version_record_id_number``),
  ``project_permission_project_id`` (of its primary key), ``job_tag_tag`` and ``record_tag_tag``
  (replaced by the covering ``(tag, job_id)`` / ``(tag, record_id)``).
- **Composite indexes for the everyday reads**: records of a project by time
  (``record_project_id_sort_time``), tags joined from the tag side, ``(state, updated_at)`` for
  ``--state X --since T --changed``, ``lower(name)`` for a name glob (case-insensitive, as documented).
- **State counts kept** (SQLite): ``job_state_count(workflow, state, n)``, kept by triggers on the
  job table in the writer's own transaction, so every path that inserts, deletes, imports or copies
  jobs keeps it right.  PostgreSQL counts from the ``(workflow, state)`` index instead (an
  index-only scan; no hot counter rows for two daemons on one cluster).
- **Full-text search of records** (SQLite FTS5, trigram tokenizer: any substring of 3+
  characters, any case) as an external-content table kept by triggers; PostgreSQL a pg_trgm
  GIN index on the searched text (when the extension can be made).

Idempotent: every step checks or uses IF [NOT] EXISTS; the counts and the FTS index are
rebuilt from the rows each time it runs.
"""

import peewee as pw

#: indexes this schema no longer has (each a prefix of another index of its table)
DROPPED = ("job_workflow", "job_state", "job_tag_job_id", "job_tag_tag", "record_project_id", "record_tag_record_id",
           "record_tag_tag", "record_version_record_id", "project_permission_project_id")

#: index -> (table, columns)
CREATED = {
    "job_state_updated_at": ("job", ("state", "updated_at")),
    "job_tag_tag_job_id": ("job_tag", ("tag", "job_id")),  # job_key from schema 11 on: see job_column
    "record_tag_tag_record_id": ("record_tag", ("tag", "record_id")),
    "record_project_id_sort_time": ("record", ("project_id", "sort_time")),
}

#: the record columns a search looks in (a substring of any, in any case)
SEARCHED = ("label", "reason", "outcome", "main_file", "version", "user")

COUNTS = "job_state_count"
FTS = "record_fts"


def is_postgres(database):
    return isinstance(database, pw.PostgresqlDatabase)


def fts_available(database):
    """Whether ``database`` (SQLite) has the FTS5 trigram tokenizer (SQLite 3.34+ built with FTS5)."""
    try:
        database.execute_sql("CREATE VIRTUAL TABLE temp.bdb_fts_probe USING fts5(x, tokenize='trigram')")
        database.execute_sql("DROP TABLE temp.bdb_fts_probe")
        return True
    except pw.OperationalError:
        return False


def has_table(database, name):
    if is_postgres(database):
        return database.table_exists(name)
    row = database.execute_sql("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    return row is not None


def job_column(database, table):
    """The column of ``table`` (history, tags) that names its job: ``job_key`` on a database whose
    tables today's models made or schema 11 rebuilt, ``job_id`` before (the older migrations run
    on both)."""
    return "job_key" if "job_key" in {c.name for c in database.get_columns(table)} else "job_id"


def migrate(database, progress=None):
    """Bring the indexes, counts and search index to schema 8; ``progress(step_text)`` is called
    before each step (the ``db init`` progress bar)."""
    step = progress or (lambda text: None)
    step("project keep_versions")
    if "keep_versions" not in {c.name for c in database.get_columns("project")}:
        database.execute_sql('ALTER TABLE "project" ADD COLUMN "keep_versions" INTEGER')
    for name in DROPPED:
        step(f"drop index {name}")
        database.execute_sql(f'DROP INDEX IF EXISTS "{name}"')
    for name, (table, columns) in CREATED.items():
        step(f"index {name}")
        if table == "job_tag":
            columns = tuple(job_column(database, table) if c == "job_id" else c for c in columns)
        database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ({", ".join(columns)})')
    step("index job_name_lower")
    if is_postgres(database):
        database.execute_sql('CREATE INDEX IF NOT EXISTS "job_name_lower" ON "job" (lower(name) text_pattern_ops)')
    else:
        database.execute_sql('CREATE INDEX IF NOT EXISTS "job_name_lower" ON "job" (lower(name))')
    if is_postgres(database):
        step("record search index")
        _postgres_search(database)
        return
    step("job state counts")
    _sqlite_counts(database)
    step("record search index")
    if fts_available(database):
        _sqlite_fts(database)


migrate.takes_progress = True


def _sqlite_counts(database):
    run = database.execute_sql
    run(f'CREATE TABLE IF NOT EXISTS "{COUNTS}" (workflow TEXT NOT NULL, state TEXT NOT NULL, '
        'n INTEGER NOT NULL, PRIMARY KEY (workflow, state)) WITHOUT ROWID')
    plus = (f'INSERT INTO "{COUNTS}" (workflow, state, n) VALUES (NEW.workflow, NEW.state, 1) '
            'ON CONFLICT (workflow, state) DO UPDATE SET n = n + 1;')
    minus = f'UPDATE "{COUNTS}" SET n = n - 1 WHERE workflow = OLD.workflow AND state = OLD.state;'
    run(f'CREATE TRIGGER IF NOT EXISTS job_count_insert AFTER INSERT ON job BEGIN {plus} END')
    run(f'CREATE TRIGGER IF NOT EXISTS job_count_delete AFTER DELETE ON job BEGIN {minus} END')
    run('CREATE TRIGGER IF NOT EXISTS job_count_update AFTER UPDATE OF workflow, state ON job '
        f'WHEN OLD.workflow IS NOT NEW.workflow OR OLD.state IS NOT NEW.state BEGIN {minus} {plus} END')
    run(f'DELETE FROM "{COUNTS}"')
    run(f'INSERT INTO "{COUNTS}" (workflow, state, n) SELECT workflow, state, COUNT(*) FROM job '
        'GROUP BY workflow, state')


def _sqlite_fts(database):
    run = database.execute_sql
    columns = ", ".join(f'"{c}"' for c in SEARCHED)
    new = ", ".join(f'NEW."{c}"' for c in SEARCHED)
    old = ", ".join(f'OLD."{c}"' for c in SEARCHED)
    created = not has_table(database, FTS)
    run(f'CREATE VIRTUAL TABLE IF NOT EXISTS "{FTS}" USING fts5({columns}, content="record", '
        "content_rowid=id, tokenize='trigram')")
    run(f'CREATE TRIGGER IF NOT EXISTS record_fts_insert AFTER INSERT ON record BEGIN '
        f'INSERT INTO "{FTS}" (rowid, {columns}) VALUES (NEW.id, {new}); END')
    run(f'CREATE TRIGGER IF NOT EXISTS record_fts_delete AFTER DELETE ON record BEGIN '
        f'INSERT INTO "{FTS}" ("{FTS}", rowid, {columns}) VALUES (\'delete\', OLD.id, {old}); END')
    run(f'CREATE TRIGGER IF NOT EXISTS record_fts_update AFTER UPDATE OF {columns} ON record BEGIN '
        f'INSERT INTO "{FTS}" ("{FTS}", rowid, {columns}) VALUES (\'delete\', OLD.id, {old}); '
        f'INSERT INTO "{FTS}" (rowid, {columns}) VALUES (NEW.id, {new}); END')
    if created:
        run(f'INSERT INTO "{FTS}" ("{FTS}") VALUES (\'rebuild\')')


def search_text_sql():
    """The PostgreSQL expression a record search index is made on (the searched columns joined
    by a character no search holds)."""
    return "(" + " || chr(1) || ".join(f'lower("{c}")' for c in SEARCHED) + ")"


def _postgres_search(database):
    try:
        with database.atomic():  # a savepoint: a refused extension leaves the upgrade going
            database.execute_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except pw.DatabaseError:
        return
    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "record_search_trgm" ON "record" '
                         f'USING gin ({search_text_sql()} gin_trgm_ops)')


def postgres_search_ready(database):
    row = database.execute_sql("SELECT 1 FROM pg_indexes WHERE indexname = 'record_search_trgm'").fetchone()
    return row is not None


def kept_counts(database, filters):
    """``[(workflow, state, count)]`` from the counts the job triggers keep (SQLite, schema 8) when
    ``filters`` hold at most a workflow and states (already checked); else None: count the jobs."""
    filters = {k: v for k, v in (filters or {}).items() if v is not None}
    if set(filters) - {"workflow", "state"} or is_postgres(database):
        return None
    p = database.param
    sql, params = f'SELECT workflow, state, n FROM "{COUNTS}" WHERE n > 0', []
    if "workflow" in filters:
        sql, params = sql + f" AND workflow = {p}", params + [filters["workflow"]]
    if "state" in filters:
        wanted = [filters["state"]] if isinstance(filters["state"], str) else list(filters["state"])
        sql += f" AND state IN ({', '.join([p] * len(wanted))})" if wanted else " AND 0"
        params += wanted
    try:
        return [tuple(row) for row in database.execute_sql(sql, params).fetchall()]
    except pw.OperationalError:  # no such table: a schema older than 8 (a read-only reader)
        return None
