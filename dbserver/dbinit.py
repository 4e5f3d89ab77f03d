"""Create or upgrade a DB directory, including the server-side part: a PostgreSQL cluster of its own.

The core's :meth:`balsamdb.dbdir.DBDirectory.init` makes the directory, its secret and its schema;
a cluster in ``pgdata/`` needs the server's PostgreSQL control, so ``db init`` (and anything else that
makes DB directories, such as tests and benchmarks) calls :func:`init_db_directory`.
"""

from balsamdb.dbdir import DBDirectory

from balsamdb.server.postgres.initdb import init_cluster


def init_db_directory(path, db_type="sqlite3", **options):
    """``DBDirectory(path).init(db_type, **options)`` that can also make a PostgreSQL cluster.

    Returns the list of sentences saying what was done, as ``DBDirectory.init`` does.
    """
    return DBDirectory(path).init(db_type, make_cluster=init_cluster, **options)
