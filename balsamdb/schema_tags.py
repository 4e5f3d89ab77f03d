"""Schema 9 (issue 22): the jobs of a tag in creation order, from the tag side.

``jobs.filter(tags=[X], limit=20)`` read every job of the tag (20,000 at a million jobs, one in
50 tagged) and sorted them by creation, because the order lived in the job table and the tag in
the tag table.  Each tag row now carries its job's ``created_at`` (written with the row by every
path that inserts tags: the create path, ``job_modify`` of tags, ``import_items``; a job's
``created_at`` never changes, except by an import, which rewrites its tag rows), indexed as
``(tag, created_at, job_id)``: the first 20 jobs of a tag are 20 index entries.  The index also
answers "the ids of the jobs with tag X" (the ``IN`` of the other filters) as the schema-8
``(tag, job_id)`` index did, so that one is dropped: the tag table keeps two indexes, as before.
The job table's ``(created_at)`` index, a prefix of ``(created_at, id)``, is dropped too.

Idempotent on SQLite and PostgreSQL: the column is added when missing, the rows without a time
get their job's, the index is made IF NOT EXISTS.
"""

INDEX = "job_tag_tag_created_at"
REPLACED = "job_tag_tag_job_id"
PREFIX = "job_created_at"


def migrate(database, progress=None):
    """Bring the tag table to schema 9; ``progress(step_text)`` before each step."""
    import peewee as pw

    step = progress or (lambda text: None)
    postgres = isinstance(database, pw.PostgresqlDatabase)
    step("job_tag created_at")
    if "created_at" not in {c.name for c in database.get_columns("job_tag")}:
        kind = "DOUBLE PRECISION" if postgres else "REAL"
        database.execute_sql(f'ALTER TABLE "job_tag" ADD COLUMN "created_at" {kind}')
    step("job_tag created_at from the jobs")
    from .schema_scale import job_column
    column = job_column(database, "job_tag")  # job_key on today's tables (schema 11)
    by = '"job"."key"' if column == "job_key" else '"job"."id"'
    database.execute_sql(f'UPDATE "job_tag" SET "created_at" = (SELECT "created_at" FROM "job" '
                         f'WHERE {by} = "job_tag"."{column}") WHERE "created_at" IS NULL')
    step(f"index {INDEX}")
    database.execute_sql(f'CREATE INDEX IF NOT EXISTS "{INDEX}" ON "job_tag" ("tag", "created_at", "{column}")')
    database.execute_sql(f'DROP INDEX IF EXISTS "{REPLACED}"')
    # (created_at) is a prefix of (created_at, id), which every read by creation uses: one index
    # fewer for each job insert (the capacity issue measured 2.8 µs a job at 100k).
    database.execute_sql(f'DROP INDEX IF EXISTS "{PREFIX}"')


migrate.takes_progress = True
