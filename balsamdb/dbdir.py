"""The DB directory: its layout, ``db init``, schema upgrades and the database connection.

::

    PATH/
      balsamdb.json       what kind of DB directory this is (db_type, format)
      db.sqlite3          sqlite3 only
      dbwriter_address    written by the watchdog (see address_file.py)
      secret              the key that signs every request, mode 0600
      pgdata/             postgres with its own cluster (postgres.password, mode 0600)
      postgres_url        postgres on an existing server (--url), mode 0600
      data/<workflow>/<job name>_<short id>/
      log/  spool/
"""

import json
import os
import secrets
from pathlib import Path

import peewee as pw

from . import address_file, migrations, schema_upgrade
from .exceptions import ConfigError, NotADBDirectory, StorageError
# (read_private, write_private, check_postgres_url, redact_url: once defined here, still importable from here)
from .private_files import make_private_directories, read_private, write_private
from .urls import check_postgres_url, parse_postgres_url
from .urls import redact as redact_url
from .wording import shell_path

DB_TYPES = ("sqlite3", "postgres")
#: The umask of every balsamdb process that creates files in a DB directory (server, watchdog,
#: HTTP store, db init): directories 0700, files 0600, whatever the user's own umask.
PRIVATE_UMASK = 0o077
CONFIG_NAME = "balsamdb.json"
FORMAT = 1


class DBDirectory:
    """One DB directory on disk.  Cheap to make; touches nothing until asked."""

    def __init__(self, path):
        self.path = Path(path).expanduser().absolute()

    def __repr__(self):
        return f"DBDirectory({str(self.path)!r})"

    # -- layout -------------------------------------------------------------
    @property
    def config_file(self):
        return self.path / CONFIG_NAME

    @property
    def sqlite_file(self):
        return self.path / "db.sqlite3"

    @property
    def address_file(self):
        return self.path / "dbwriter_address"

    @property
    def secret_file(self):
        return self.path / "secret"

    @property
    def lock_file(self):
        return self.path / "watchdog.lock"

    @property
    def curve_key_file(self):
        return self.path / "curve.key"

    def curve_keys(self, create=False):
        """The server's CURVE key pair ``(public, secret)`` (Z85 bytes), made on first use when ``create``."""
        import zmq

        try:
            data = json.loads(self.curve_key_file.read_text())
            return data["public"].encode(), data["secret"].encode()
        except FileNotFoundError:
            if not create:
                raise ConfigError(f"{self.curve_key_file} is missing: start the server with --encrypt") from None
        public, secret = zmq.curve_keypair()
        write_private(self.curve_key_file, json.dumps({"public": public.decode(), "secret": secret.decode()}).encode())
        return public, secret

    @property
    def postgres_url_file(self):
        return self.path / "postgres_url"

    @property
    def postgres_password_file(self):
        return self.path / "postgres.password"

    @property
    def pgdata(self):
        return self.path / "pgdata"

    def external_postgres(self):
        """True when this postgres DB directory uses an existing server (``--url``)."""
        return self.config().get("external", False)

    @property
    def data_dir(self):
        return self.path / "data"

    @property
    def log_dir(self):
        return self.path / "log"

    @property
    def spool_dir(self):
        return self.path / "spool"

    def is_db_directory(self):
        try:
            return self.config_file.is_file()
        except PermissionError:
            return True  # it is one, of another user: config() says so

    def config(self):
        """The contents of ``balsamdb.json``; raises when this is not a DB directory."""
        try:
            exists, is_dir = self.path.exists(), self.path.is_dir()
        except PermissionError:
            exists = is_dir = None
        reachable, missing = _nearest_existing_parent(self.path) if not exists else (True, None)
        if exists is None or not reachable:
            raise ConfigError(f"{self.path} belongs to another user: only its owner's processes may use it")
        if not exists:
            also = f", nor does {missing}" if missing is not None else ""
            raise NotADBDirectory(f"{shell_path(self.path)} does not exist{also}; "
                                  f"create it with: db init {shell_path(self.path)}")
        if not is_dir:
            raise NotADBDirectory(f"{self.path} is a file, not a DB directory")
        try:
            data = json.loads(self.config_file.read_text())
        except FileNotFoundError:
            raise NotADBDirectory(
                f"{self.path} is not a balsamdb DB directory (no {CONFIG_NAME}); create one with: db init PATH"
            ) from None
        except PermissionError:
            raise ConfigError(f"{self.path} belongs to another user: only its owner's processes may use it") from None
        except (OSError, ValueError) as exc:
            raise NotADBDirectory(f"{self.config_file} is unreadable ({exc}); restore it or re-run db init") from None
        if data.get("db_type") not in DB_TYPES:
            raise NotADBDirectory(f"{self.config_file} names an unknown db_type {data.get('db_type')!r}")
        return data

    @property
    def db_type(self):
        return self.config()["db_type"]

    def secret(self):
        """The signing key (bytes).  Only the directory's owner can read it.  A missing, empty or
        short one is refused (:data:`MIN_SECRET_BYTES`): it would sign requests anyone can forge."""
        try:
            secret = self.secret_file.read_bytes().strip()
        except FileNotFoundError:
            raise ConfigError(f"{self.secret_file} is missing; run: db init {shell_path(self.path)} "
                              "(after stopping its server, if one runs: "
                              f"db dbserver --stop --path {shell_path(self.path)})"
                              ) from None
        except PermissionError:
            raise ConfigError(
                f"cannot read {self.secret_file}: only the owner of the DB directory may write to it"
            ) from None
        check_secret(secret, self.secret_file, self.path)
        return secret

    def read_address(self):
        return address_file.read(self.address_file)

    def running_server(self):
        """The address record when a server runs (or its watchdog is restarting one) for this
        directory, as far as this host can tell; else None."""
        info = self.read_address()
        if address_file.server_alive(info):
            return info
        if info.get("state") in ("running", "restarting") and address_file.watchdog_alive(info):
            return info
        return None

    def _init_under_server(self, db_type, settings, info):
        """``init`` of a DB directory whose server runs: a no-op when nothing is out of date (job
        scripts run ``db init`` every time), else refused: a new secret would make every answer of
        the running server unverifiable, and a schema upgrade belongs to a stopped database."""
        changes = [f"make {sub.name}/" for sub in (self.data_dir, self.log_dir, self.spool_dir) if not sub.is_dir()]
        if not self.secret_file.exists():
            changes.append("write a new secret (the running server signs with the old one)")
        if db_type == "postgres" and not self.external_postgres() and not (self.pgdata / "PG_VERSION").exists():
            changes.append("make a PostgreSQL cluster")
        else:
            database = self.open_database(settings, busy_timeout=10)
            try:
                database.connect()
                version = migrations.current_version(database)
            except pw.OperationalError as exc:
                raise StorageError(f"cannot read the schema version of {self.path}: {exc}") from None
            finally:
                database.close()
            if version < migrations.SCHEMA_VERSION:
                changes.append(f"upgrade the schema from version {version} to {migrations.SCHEMA_VERSION}")
        server = info.get("server") or info.get("watchdog") or {}
        where = f"pid {server.get('pid', '?')} on {info.get('host', '?')}"
        if changes:
            raise ConfigError(f"the server of {self.path} runs ({where}): db init would {'; '.join(changes)} "
                              f"under it. Stop it first (db dbserver --stop --path {shell_path(self.path)}), then run "
                              "db init again")
        # The same sentence as without a server: nothing was changed (job scripts may read it).
        return [f"{self.path} is already a current {db_type} DB directory (schema {migrations.SCHEMA_VERSION})"]

    # -- database -----------------------------------------------------------
    def open_database(self, settings, busy_timeout=None, postgres_port=None, synchronous=None, shared=False):
        """A new peewee database for this directory (not yet connected).

        ``shared``: one connection that threads use in turn (the write server's loop and its batch
        thread, which hand it over with each batch), not one per thread.

        ``synchronous`` (SQLite) replaces the ``sqlite_synchronous`` setting for this connection:
        the write server commits with NORMAL and flushes the WAL itself (see
        :mod:`balsamdb.server.flusher`).

        For a postgres directory with its own cluster, ``postgres_port`` is the
        port the cluster runs on (the address file says, while a server runs).
        """
        config = self.config()
        if config["db_type"] == "sqlite3":
            import sqlite3

            if sqlite3.sqlite_version_info < (3, 24):
                raise ConfigError(f"this Python's SQLite is {sqlite3.sqlite_version}; balsamdb needs 3.24 or newer "
                                  "(use a newer Python, or pysqlite3)")
            timeout = settings.direct_deadline if busy_timeout is None else busy_timeout
            return schema_upgrade.OptimizingSqlite(
                str(self.sqlite_file),
                timeout=timeout,
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": synchronous or settings.sqlite_synchronous,
                    "foreign_keys": 1,
                    "cache_size": -1024 * max(2, int(settings.sqlite_cache_mb)),  # KiB when negative
                    "journal_size_limit": schema_upgrade.JOURNAL_SIZE_LIMIT,  # the WAL is truncated to this after a checkpoint
                },
                **({"thread_safe": False, "check_same_thread": False} if shared else {}),
            )
        if config.get("external"):
            params = parse_postgres_url(read_private(self.postgres_url_file))
        else:
            if postgres_port is None:
                postgres_port = (self.read_address().get("postgres") or {}).get("port")
            if not postgres_port:
                raise ConfigError(f"the PostgreSQL cluster of {self.path} is not running; "
                                  f"start it with: db dbserver --path {shell_path(self.path)}")
            params = {"database": "balsamdb", "host": "127.0.0.1", "port": int(postgres_port),
                      "user": "balsamdb", "password": read_private(self.postgres_password_file)}
        database = params.pop("database")
        return pw.PostgresqlDatabase(database, connect_timeout=5, **params, **({"thread_safe": False} if shared else {}))

    # -- creation and upgrade -----------------------------------------------
    def init(self, db_type="sqlite3", mode=0o700, settings=None, url=None, make_cluster=None, backup=True,
             say=None, progress=None):
        """See :meth:`_init`; everything it creates is private to its owner (umask 077 meanwhile).

        An upgrade of an existing schema first calls ``say(sentence)`` with its row counts and an
        estimate of its time, then (``backup``, SQLite) copies the database to
        ``backup-schema-<N>-<time>.sqlite3`` in the DB directory; ``progress(step)`` is called
        before each step of the upgrade."""
        previous = os.umask(PRIVATE_UMASK)
        self._upgrade_options = {"backup": backup, "say": say or (lambda text: None), "progress": progress}
        try:
            return self._init(db_type, mode, settings, url, make_cluster)
        finally:
            os.umask(previous)

    def _init(self, db_type, mode, settings, url, make_cluster):
        """Create this DB directory, or upgrade an existing one in place.

        ``db_type`` postgres makes a PostgreSQL cluster in ``pgdata/`` with
        ``make_cluster(path)`` (the server side's ``postgres.init_cluster``, which
        :func:`balsamdb.server.dbinit.init_db_directory` passes; the schema is
        created when the server first starts it), or, with ``url``
        (``postgresql://user:password@host:port/dbname``), uses that existing
        server: checked now, and the schema created now.

        Returns a list of sentences saying what was done.  Refuses a path that is
        a file, a non-empty directory that is not a DB directory, an unknown
        db type, and a db type different from the existing one.
        """
        from .settings import load_settings

        settings = settings or load_settings()
        if db_type not in DB_TYPES:
            raise ConfigError(f"unknown db type {db_type!r}; choose one of: {', '.join(DB_TYPES)}")
        if url and db_type != "postgres":
            raise ConfigError("--url names a PostgreSQL server: use it with --db-type postgres")
        external = url or (self.is_db_directory() and self.external_postgres())
        if db_type == "postgres" and not external and make_cluster is None:
            raise ConfigError("a PostgreSQL cluster is made by the server side: run `db init "
                              f"{self.path} --db-type postgres` or balsamdb.server.dbinit.init_db_directory()")
        done = []
        if self.path.exists() and not self.path.is_dir():
            raise NotADBDirectory(f"{self.path} is a file; choose a directory path")
        if self.is_db_directory():
            config = self.config()
            if config["db_type"] != db_type:
                raise ConfigError(f"{self.path} is already a {config['db_type']} DB directory, not {db_type}")
            if url and not config.get("external"):
                raise ConfigError(f"{self.path} has its own PostgreSQL cluster; --url applies to new DB directories")
            running = self.running_server()
            if running is not None:
                return self._init_under_server(db_type, settings, running)
        else:
            if self.path.exists() and any(not p.name.startswith(".") for p in self.path.iterdir()):
                raise NotADBDirectory(
                    f"{self.path} is a non-empty directory that is not a DB directory; choose an empty or new path"
                )
            if url:
                check_postgres_url(url)  # before anything is made
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, mode)
            done.append(f"created DB directory {self.path} ({db_type}, mode {mode:o})")
        for sub in (self.data_dir, self.log_dir, self.spool_dir):
            if not sub.is_dir():
                sub.mkdir(mode=0o700)
        if not self.secret_file.exists():
            write_private(self.secret_file, secrets.token_hex(32).encode() + b"\n")
            done.append(f"wrote a new secret to {self.secret_file} (mode 600)")
        if url and not self.postgres_url_file.exists():
            write_private(self.postgres_url_file, url.encode())
            done.append(f"uses the PostgreSQL server {redact_url(url)} (URL kept in {self.postgres_url_file}, mode 600)")
        if not self.address_file.exists():
            address_file.write_atomic(self.address_file, address_file.stopped_record(db_type))
        if not self.config_file.exists():
            address_file.write_atomic(self.config_file, {"db_type": db_type, "format": FORMAT,
                                                         "external": bool(url)})
        if db_type == "postgres" and not self.external_postgres():
            done.extend(make_cluster(self.path))
            done.append("the schema is created when `db dbserver` first starts the cluster")
            return done
        if db_type == "sqlite3" and not self.sqlite_file.exists():
            # Once, before anything is written (WAL mode writes the header): later vacuums can then
            # run with the server up (db vacuum); an older file is converted by an offline db vacuum.
            import sqlite3

            con = sqlite3.connect(str(self.sqlite_file))
            con.execute("PRAGMA auto_vacuum = INCREMENTAL")
            con.execute("PRAGMA journal_mode = wal")
            con.close()
        database = self.open_database(settings, busy_timeout=60)
        try:
            database.connect()
            done.extend(schema_upgrade.before_upgrade(self, database))
            upgraded = migrations.upgrade(database, progress=self._upgrade_options["progress"])
        except pw.OperationalError as exc:
            raise StorageError(f"cannot create or upgrade the database of {self.path}: {exc}") from None
        finally:
            database.close()
        done.extend(upgraded)
        if not upgraded and not done:
            done.append(f"{self.path} is already a current {db_type} DB directory (schema {migrations.SCHEMA_VERSION})")
        return done


def _nearest_existing_parent(path):
    """``(reachable, missing)`` for a ``path`` that does not exist (or cannot be seen):
    whether its nearest existing parent lets us in, and the highest parent that is
    missing too (a typo in a directory name), or None when only ``path`` is missing."""
    missing = None
    for parent in path.parents:
        try:
            if parent.exists():
                return os.access(parent, os.X_OK), missing
        except PermissionError:
            return False, missing
        missing = parent
    return True, missing
#: The shortest secret accepted: ``db init`` writes 64 random hex digits (256 bits).
MIN_SECRET_BYTES = 32


def check_secret(secret, where, path):
    """Raise :class:`ConfigError` when ``secret`` (bytes, from ``where``) is too short to be a key."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{where} holds {'nothing' if not secret else f'only {len(secret)} bytes'}: a secret needs at least "
            f"{MIN_SECRET_BYTES} (anyone could guess a short one). Stop the server if one runs "
            f"(db dbserver --stop --path {shell_path(path)}), delete {where} and run: db init {shell_path(path)}")
