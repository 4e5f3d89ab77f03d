"""Switching a DB directory to another store (``db configure --store``)."""

import os
import time

from ..exceptions import ConfigError
from ..wording import plural
from .copying import SLACK, copy_store, one_pass
from .endpoints import postgres_store, sqlite_file_store
from ..wording import shell_path

def copy_applied_requests(source, destination, chunk=2000):
    """Copy the record of applied request ids (id, time, answer) between two peewee
    databases, keeping what the destination already holds; returns how many were read."""
    import peewee as pw

    from ..models import AppliedRequest
    from ..models import quoter

    q_src, q_dst = quoter(source), quoter(destination)
    table = AppliedRequest._meta.table_name
    select = (f"SELECT {q_src('request_id')}, {q_src('applied_at')}, {q_src('response')} FROM {q_src(table)} "
              f"WHERE {q_src('request_id')} > {source.param} ORDER BY {q_src('request_id')} LIMIT {int(chunk)}")
    columns = f"INSERT INTO {q_dst(table)} ({q_dst('request_id')}, {q_dst('applied_at')}, {q_dst('response')})"
    postgres = isinstance(destination, pw.PostgresqlDatabase)
    last, total = "", 0
    while True:
        rows = source.execute_sql(select, (last,)).fetchall()
        if not rows:
            from ..answers import copy_bases  # what compact answers refer to

            copy_bases(source, destination)
            return total
        with destination.atomic():
            if postgres:  # one round trip per chunk, not per row
                from psycopg2.extras import execute_values

                execute_values(destination.cursor(), columns + " VALUES %s ON CONFLICT DO NOTHING", rows,
                               page_size=len(rows))
            else:
                p = destination.param
                destination.cursor().executemany(f"{columns} VALUES ({p}, {p}, {p}) ON CONFLICT DO NOTHING", rows)
        total += len(rows)
        last = rows[-1][0]


# -- switching a DB directory to another store ------------------------------------------------------------------

def configure_store(path, url, progress=False, log=None):
    """Copy DB directory ``path`` into the PostgreSQL database ``url``, verify, then make
    ``path`` use it from now on.  The old database is left where it was.  Returns the
    copy's report with ``old_database`` and ``arrived_after_switch``."""
    from .. import address_file
    from ..client import server_state
    from ..dbdir import DBDirectory
    from ..private_files import read_private, write_private
    from ..urls import redact

    say = log or (lambda sentence: None)
    dbdir = DBDirectory(path)
    config = dbdir.config()
    if not str(url).startswith(("postgres://", "postgresql://")):
        raise ConfigError("--store takes a postgresql://user:password@host:port/dbname URL; to move to another "
                          "DB directory, use db copy and point BALSAM_DB_PATH at the new one")
    if server_state(dbdir.read_address()) != "down":
        raise ConfigError(f"a server runs for {dbdir.path}: stop it first "
                          f"(db dbserver --stop --path {shell_path(dbdir.path)}), "
                          "so that no write lands in the old database during the switch")
    from ..spool import Spool

    waiting = Spool(dbdir.spool_dir).count()
    if waiting:
        raise ConfigError(f"{plural(waiting, 'write waits', 'writes wait')} in {dbdir.spool_dir}: start the server once (db dbserver --path "
                          f"{dbdir.path}) so that it applies them, stop it, then run db configure again")
    if config["db_type"] == "postgres" and not config.get("external"):
        raise ConfigError(f"{dbdir.path} has its own PostgreSQL cluster; "
                          f"copy it with db copy {shell_path(dbdir.path)} URL "
                          "while its server runs, then use the URL with db init --db-type postgres --url")
    if config["db_type"] == "sqlite3":
        old_name = str(dbdir.sqlite_file)
        src = sqlite_file_store(dbdir.sqlite_file)
    else:
        old_url = read_private(dbdir.postgres_url_file)
        if old_url == str(url):
            raise ConfigError(f"{dbdir.path} already uses {redact(url)}")
        old_name = redact(old_url)
        src = postgres_store(old_url, create=False)
    dst = postgres_store(str(url), create=True)
    try:
        report = copy_store(src, dst, progress=progress, log=say)
        # The ids of applied writes move too, before the switch: a client that retries a write
        # across it gets its first answer, not a second application (again after it, for late ones).
        report["request_ids_copied"] = copy_applied_requests(src.db.database, dst.db.database)
        # The switch: the URL first (0600), then the configuration that names it, each atomically.
        tmp_url = dbdir.postgres_url_file.with_name(dbdir.postgres_url_file.name + ".new")
        if tmp_url.exists():
            tmp_url.unlink()
        write_private(tmp_url, str(url).encode())
        os.replace(tmp_url, dbdir.postgres_url_file)
        previous = {"db_type": config["db_type"], "database": old_name, "until": time.time()}
        new_config = dict(config, db_type="postgres", external=True,
                          previous=(config.get("previous") or []) + [previous])
        address_file.write_atomic(dbdir.config_file, new_config)
        address_file.write_atomic(dbdir.address_file, address_file.stopped_record("postgres"))
        say(f"{dbdir.path} now uses {redact(url)}")
        # A process that opened the old database before the switch may still have written to it.
        _start, late = one_pass(src, dst, report["kinds"], report["verification"]["until"] - SLACK, False, None,
                                 None)
        report["arrived_after_switch"] = {k: v["added"] + v["updated"] for k, v in late.items()
                                          if v["added"] or v["updated"]}
        copy_applied_requests(src.db.database, dst.db.database)
    finally:
        src.close()
        dst.close()
    report["old_database"] = old_name
    report["new_store"] = redact(url)
    return report
