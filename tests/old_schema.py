"""A database as balsamdb before schema 11 made it: history and tags name their job by its id, the job
table's primary key is the id.  Made from a database of today's schema, keeping every row, so that the
upgrade tests start from what an existing DB directory holds."""

import peewee as pw

JOB_OLD = ('CREATE TABLE "job_old" ("id" VARCHAR(36) NOT NULL PRIMARY KEY, "name" VARCHAR(255) NOT NULL, '
           '"workflow" VARCHAR(255) NOT NULL, "application" TEXT NOT NULL, "args" TEXT NOT NULL, '
           '"description" TEXT NOT NULL, "state" VARCHAR(32) NOT NULL, "state_message" TEXT NOT NULL, '
           '"working_directory" TEXT NOT NULL, "num_nodes" INTEGER NOT NULL, "ranks_per_node" INTEGER NOT NULL, '
           '"threads_per_rank" INTEGER NOT NULL, "wall_time_minutes" REAL NOT NULL, "environ" TEXT NOT NULL, '
           '"parents" TEXT NOT NULL, "tags" TEXT NOT NULL, "data" TEXT NOT NULL, "created_at" REAL NOT NULL, '
           '"updated_at" REAL NOT NULL, "owner" VARCHAR(255), "lease_expires" REAL, "renewed_at" REAL)')
HISTORY_OLD = ('CREATE TABLE "job_state_change_old" ("id" INTEGER NOT NULL PRIMARY KEY, "job_id" VARCHAR(36) NOT NULL, '
               '"time" REAL NOT NULL, "from_state" VARCHAR(32), "to_state" VARCHAR(32) NOT NULL, "message" TEXT NOT NULL, '
               'FOREIGN KEY ("job_id") REFERENCES "job_old" ("id") ON DELETE CASCADE)')
TAG_OLD = ('CREATE TABLE "job_tag_old" ("job_id" VARCHAR(36) NOT NULL, "tag" VARCHAR(255) NOT NULL, "created_at" REAL, '
           'PRIMARY KEY ("job_id", "tag"), FOREIGN KEY ("job_id") REFERENCES "job_old" ("id") ON DELETE CASCADE)')
JOB_COLUMNS = ("id", "name", "workflow", "application", "args", "description", "state", "state_message",
               "working_directory", "num_nodes", "ranks_per_node", "threads_per_rank", "wall_time_minutes", "environ",
               "parents", "tags", "data", "created_at", "updated_at", "owner", "lease_expires", "renewed_at")


def to_id_keys(database):
    """Make history and tags of ``database`` (today's schema) name their job by id, as schema 10 did."""
    if isinstance(database, pw.PostgresqlDatabase):
        _postgres(database)
    else:
        _sqlite(database)


def _sqlite(database):
    run = database.execute_sql
    kept = run("SELECT sql FROM sqlite_master WHERE tbl_name = 'job' AND type IN ('index', 'trigger') "
               "AND sql IS NOT NULL AND name <> 'job_id' ORDER BY type, name").fetchall()
    run(JOB_OLD)
    names = ", ".join(f'"{c}"' for c in JOB_COLUMNS)
    run(f'INSERT INTO "job_old" ({names}) SELECT {names} FROM "job" ORDER BY "key"')
    run(HISTORY_OLD)
    run('INSERT INTO "job_state_change_old" SELECT h.id, j.id, h.time, h.from_state, h.to_state, h.message '
        'FROM "job_state_change" h JOIN "job" j ON j."key" = h.job_key ORDER BY h.id')
    run(TAG_OLD)
    run('INSERT INTO "job_tag_old" SELECT j.id, t.tag, t.created_at FROM "job_tag" t JOIN "job" j ON j."key" = t.job_key')
    for table in ("job_state_change", "job_tag", "job"):
        run(f'DROP TABLE "{table}"')
    for table in ("job", "job_state_change", "job_tag"):
        run(f'ALTER TABLE "{table}_old" RENAME TO "{table}"')
    for (sql,) in kept:
        run(sql)
    run('CREATE INDEX "job_state_change_job_id" ON "job_state_change" ("job_id")')
    run('CREATE INDEX "job_state_change_to_state_time" ON "job_state_change" ("to_state", "time")')
    run('CREATE INDEX "job_tag_tag_created_at" ON "job_tag" ("tag", "created_at", "job_id")')


def _postgres(database):
    run = database.execute_sql
    for table in ("job_state_change", "job_tag"):
        run(f'ALTER TABLE "{table}" ADD COLUMN "job_id" VARCHAR(36)')
        run(f'UPDATE "{table}" t SET "job_id" = j.id FROM "job" j WHERE j."key" = t.job_key')
        run(f'ALTER TABLE "{table}" ALTER COLUMN "job_id" SET NOT NULL')
        run(f'ALTER TABLE "{table}" DROP COLUMN "job_key" CASCADE')
    run('ALTER TABLE "job" DROP COLUMN "key" CASCADE')
    run('DROP INDEX "job_id"')
    run('ALTER TABLE "job" ADD PRIMARY KEY ("id")')
    run('ALTER TABLE "job_tag" ADD PRIMARY KEY ("job_id", "tag")')
    for table in ("job_state_change", "job_tag"):
        run(f'ALTER TABLE "{table}" ADD FOREIGN KEY ("job_id") REFERENCES "job" ("id") ON DELETE CASCADE')
    run('CREATE INDEX "job_state_change_job_id" ON "job_state_change" ("job_id")')
    run('CREATE INDEX "job_tag_tag_created_at" ON "job_tag" ("tag", "created_at", "job_id")')


def has_id_keys(database):
    return "job_id" in {c.name for c in database.get_columns("job_state_change")}
