"""Schema 11 (issue 22): the tables that are only joined hold the job's internal integer key.

A job's id is a random UUID (kept: working directories and the CLI's 8-character prefixes name jobs by
it), so every index keyed by it takes each new job at a random place: at a million jobs each insert into
the history's job index and the tag table's key read and wrote pages all over the file, and a bulk load
ran at 0.36x the rate of a fresh database.  The job table now has an integer key (SQLite: the rowid,
``key INTEGER PRIMARY KEY``, so the table is stored as before, with ``id`` in a unique index;
PostgreSQL: a ``BIGSERIAL``), and ``job_state_change.job_key`` and ``job_tag.job_key`` hold it: new jobs
take the next keys, and those indexes fill at their end (scripts/key_order_cost.py measured 79 ->
34.5 us a job at 1M).  Nothing outside the database sees the key: rows name jobs by id everywhere else.

The upgrade keeps every row.  SQLite cannot change a table's primary key in place, so the job table is
rebuilt (keys given in creation order), and the history and tags with it; their indexes and the job
table's triggers are made again.  PostgreSQL adds the columns, fills them and moves the constraints.
Idempotent: a database whose job table has its key already is left as it is.
"""

import peewee as pw

from . import schema_tags
from .models import Job, JobStateChange, JobTag

#: what a job is named by in the tables rebuilt here: (table, old column, new column)
REKEYED = (("job_state_change", "job_id", "job_key"), ("job_tag", "job_id", "job_key"))
#: the indexes of the rebuilt tables whose name changes (SQLite): the others are made again as they were
RENAMED_INDEXES = {"sqlite_autoindex_job_1": "job_id", "job_state_change_job_id": "job_state_change_job_key"}


def _columns(database, table):
    return [c.name for c in database.get_columns(table)]


def migrate(database, progress=None):
    """Bring the job keys to schema 11; ``progress(step_text)`` before each step."""
    step = progress or (lambda text: None)
    if "key" in _columns(database, "job") and all(new in _columns(database, t) for t, _old, new in REKEYED):
        return
    if isinstance(database, pw.PostgresqlDatabase):
        _postgres(database, step)
    else:
        _sqlite(database, step)


migrate.takes_progress = True


def _create_sql(database, model, name):
    """The CREATE TABLE of ``model`` (today's) under the table name ``name``, its references to the
    job table made to ``job_new``."""
    context = database.get_sql_context()
    sql, params = context.sql(model._schema._create_table(safe=False)).query()
    assert not params
    table = model._meta.table_name
    sql = sql.replace(f'CREATE TABLE "{table}"', f'CREATE TABLE "{name}"', 1)
    return sql.replace('REFERENCES "job" ', 'REFERENCES "job_new" ')


def _sqlite(database, step):
    run = database.execute_sql
    # The job table's own indexes and triggers, made again on the new table (by their SQL: the
    # indexes of earlier schemas, the partial one of free jobs, the state counts' triggers).
    kept = run("SELECT sql FROM sqlite_master WHERE tbl_name = 'job' AND type IN ('index', 'trigger') "
               "AND sql IS NOT NULL ORDER BY type, name").fetchall()
    stats = _saved_stats(database)
    step("job keys: the job table in creation order")
    run(_create_sql(database, Job, "job_new"))
    own = [c for c in _columns(database, "job") if c != "key"]
    names = ", ".join(f'"{c}"' for c in own)
    run(f'INSERT INTO "job_new" ({names}) SELECT {names} FROM "job" ORDER BY "created_at", "id"')
    run('CREATE UNIQUE INDEX "job_id" ON "job_new" ("id")')  # what the history and tags are joined by
    for (table, old, new), model in zip(REKEYED, (JobStateChange, JobTag)):
        step(f"job keys: {table}")
        run(_create_sql(database, model, f"{table}_new"))
        others = [c for c in _columns(database, table) if c != old]
        names = ", ".join(f'"{c}"' for c in others)
        picked = ", ".join(f't."{c}"' for c in others)
        run(f'INSERT INTO "{table}_new" ("{new}", {names}) SELECT n."key", {picked} FROM "{table}" t '
            f'JOIN "job_new" n ON n."id" = t."{old}" ORDER BY t.rowid')
    step("job keys: replace the tables")
    # The children first: the job table is then referenced by no table, and its drop deletes nothing
    # through a foreign key.  Renaming job_new makes the new tables' references name "job".
    for table, _old, _new in REKEYED:
        run(f'DROP TABLE "{table}"')
    run('DROP TABLE "job"')
    run('ALTER TABLE "job_new" RENAME TO "job"')
    for table, _old, _new in REKEYED:
        run(f'ALTER TABLE "{table}_new" RENAME TO "{table}"')
    step("job keys: indexes")
    for (sql,) in kept:
        run(sql)
    _indexes(database)
    _restore_stats(database, stats)


def _saved_stats(database):
    """The planner's statistics of the tables rebuilt here (``sqlite_stat1`` rows), or none."""
    tables = ", ".join(f"'{t}'" for t in ("job", *(t for t, _old, _new in REKEYED)))
    if not database.execute_sql("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
        return []
    return database.execute_sql(f"SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl IN ({tables})").fetchall()


def _restore_stats(database, rows):
    """Give the rebuilt tables the statistics that ANALYZE left of them (their rows are the same): a
    dropped table takes its rows of ``sqlite_stat1`` with it, and the upgraded database of a million jobs
    was planned without them (the job table's, at least) until the next ANALYZE."""
    names = {name for (name,) in database.execute_sql("SELECT name FROM sqlite_master WHERE type = 'index'")}
    for table, index, stat in rows:
        index = RENAMED_INDEXES.get(index, index)
        if index is None or index in names:
            database.execute_sql("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES (?, ?, ?)", (table, index, stat))


def _indexes(database):
    """The indexes that today's models and the earlier schemas give the job key and the rebuilt tables
    (the history's ``(to_state, time)`` too, which ``migrations._ensure_indexes`` makes only after the
    upgrade: its statistics are restored here, before)."""
    run = database.execute_sql
    run('CREATE UNIQUE INDEX IF NOT EXISTS "job_id" ON "job" ("id")')
    run('CREATE INDEX IF NOT EXISTS "job_state_change_job_key" ON "job_state_change" ("job_key")')
    run('CREATE INDEX IF NOT EXISTS "job_state_change_to_state_time" ON "job_state_change" ("to_state", "time")')
    run(f'CREATE INDEX IF NOT EXISTS "{schema_tags.INDEX}" ON "job_tag" ("tag", "created_at", "job_key")')


def _postgres(database, step):
    run = database.execute_sql
    step("job keys: the job table")
    if "key" not in _columns(database, "job"):
        run('ALTER TABLE "job" ADD COLUMN "key" BIGSERIAL')
    for table, old, new in REKEYED:
        step(f"job keys: {table}")
        if new not in _columns(database, table):
            run(f'ALTER TABLE "{table}" ADD COLUMN "{new}" BIGINT')
        if old in _columns(database, table):
            run(f'UPDATE "{table}" t SET "{new}" = j."key" FROM "job" j WHERE j."id" = t."{old}"')
            run(f'ALTER TABLE "{table}" ALTER COLUMN "{new}" SET NOT NULL')
            # Its foreign key, its index and the tag table's primary key go with the column.
            run(f'ALTER TABLE "{table}" DROP COLUMN "{old}" CASCADE')
    step("job keys: constraints")
    run('CREATE UNIQUE INDEX IF NOT EXISTS "job_id" ON "job" ("id")')
    run('ALTER TABLE "job" DROP CONSTRAINT IF EXISTS "job_pkey"')
    run('ALTER TABLE "job" ADD PRIMARY KEY ("key")')
    run('ALTER TABLE "job_tag" ADD PRIMARY KEY ("job_key", "tag")')
    for table, _old, new in REKEYED:
        run(f'ALTER TABLE "{table}" ADD CONSTRAINT "{table}_{new}_fkey" FOREIGN KEY ("{new}") '
            'REFERENCES "job" ("key") ON DELETE CASCADE')
    _indexes(database)

