"""The DB directory: its layout, ``db init``, schema upgrades and the database connection.

::

    PATH/
      balsamdb.json       what kind of DB directory this is (db_type, format)
      db.sqlite3          sqlite3 only
      dbwriter_address    written by the watchdog (see address_file.py)
      secret              the key that signs every request, mode 0600
      data/<workflow>/<job name>_<short id>/
      log/  spool/
"""

import json
import os
import secrets
from pathlib import Path

import peewee as pw

from . import address_file, models
from .exceptions import ConfigError, NotADBDirectory, StorageError

DB_TYPES = ("sqlite3", "postgres")
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
    def data_dir(self):
        return self.path / "data"

    @property
    def log_dir(self):
        return self.path / "log"

    @property
    def spool_dir(self):
        return self.path / "spool"

    def is_db_directory(self):
        return self.config_file.is_file()

    def config(self):
        """The contents of ``balsamdb.json``; raises when this is not a DB directory."""
        if not self.path.exists():
            raise NotADBDirectory(f"{self.path} does not exist; create it with: db init {self.path}")
        if not self.path.is_dir():
            raise NotADBDirectory(f"{self.path} is a file, not a DB directory")
        try:
            data = json.loads(self.config_file.read_text())
        except FileNotFoundError:
            raise NotADBDirectory(
                f"{self.path} is not a balsamdb DB directory (no {CONFIG_NAME}); create one with: db init PATH"
            ) from None
        except (OSError, ValueError) as exc:
            raise NotADBDirectory(f"{self.config_file} is unreadable ({exc}); restore it or re-run db init") from None
        if data.get("db_type") not in DB_TYPES:
            raise NotADBDirectory(f"{self.config_file} names an unknown db_type {data.get('db_type')!r}")
        return data

    @property
    def db_type(self):
        return self.config()["db_type"]

    def secret(self):
        """The signing key (bytes).  Only the directory's owner can read it."""
        try:
            return self.secret_file.read_bytes().strip()
        except FileNotFoundError:
            raise ConfigError(f"{self.secret_file} is missing; run: db init {self.path}") from None
        except PermissionError:
            raise ConfigError(
                f"cannot read {self.secret_file}: only the owner of the DB directory may write to it"
            ) from None

    def read_address(self):
        return address_file.read(self.address_file)

    # -- database -----------------------------------------------------------
    def open_database(self, settings, busy_timeout=None):
        """A new peewee database for this directory (not yet connected)."""
        config = self.config()
        if config["db_type"] == "sqlite3":
            timeout = settings.direct_deadline if busy_timeout is None else busy_timeout
            return pw.SqliteDatabase(
                str(self.sqlite_file),
                timeout=timeout,
                pragmas={
                    "journal_mode": "wal",
                    "synchronous": settings.sqlite_synchronous,
                    "foreign_keys": 1,
                },
            )
        raise ConfigError("PostgreSQL DB directories are not supported yet by this version")

    # -- creation and upgrade -----------------------------------------------
    def init(self, db_type="sqlite3", mode=0o700, settings=None):
        """Create this DB directory, or upgrade an existing one in place.

        Returns a list of sentences saying what was done.  Refuses a path that is
        a file, a non-empty directory that is not a DB directory, an unknown
        db type, and a db type different from the existing one.
        """
        from .settings import load_settings

        settings = settings or load_settings()
        if db_type not in DB_TYPES:
            raise ConfigError(f"unknown db type {db_type!r}; choose one of: {', '.join(DB_TYPES)}")
        done = []
        if self.path.exists() and not self.path.is_dir():
            raise NotADBDirectory(f"{self.path} is a file; choose a directory path")
        if self.is_db_directory():
            existing = self.config()["db_type"]
            if existing != db_type:
                raise ConfigError(f"{self.path} is already a {existing} DB directory, not {db_type}")
        else:
            if self.path.exists() and any(not p.name.startswith(".") for p in self.path.iterdir()):
                raise NotADBDirectory(
                    f"{self.path} is a non-empty directory that is not a DB directory; choose an empty or new path"
                )
            if db_type == "postgres":
                raise ConfigError("--db-type postgres is not available yet in this version; use sqlite3")
            self.path.mkdir(parents=True, exist_ok=True)
            os.chmod(self.path, mode)
            done.append(f"created DB directory {self.path} ({db_type}, mode {mode:o})")
        for sub in (self.data_dir, self.log_dir, self.spool_dir):
            sub.mkdir(exist_ok=True)
        if not self.secret_file.exists():
            _write_private(self.secret_file, secrets.token_hex(32).encode() + b"\n")
            done.append(f"wrote a new secret to {self.secret_file} (mode 600)")
        if not self.address_file.exists():
            address_file.write_atomic(self.address_file, address_file.stopped_record(db_type))
        if not self.config_file.exists():
            address_file.write_atomic(self.config_file, {"db_type": db_type, "format": FORMAT})
        database = self.open_database(settings, busy_timeout=60)
        try:
            database.connect()
            upgraded = models.upgrade(database)
        except pw.OperationalError as exc:
            raise StorageError(f"cannot create or upgrade {self.sqlite_file}: {exc}") from None
        finally:
            database.close()
        done.extend(upgraded)
        if not upgraded and not done:
            done.append(f"{self.path} is already a current {db_type} DB directory (schema {models.SCHEMA_VERSION})")
        return done


def _write_private(path, content):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def job_working_directory(workflow, name, job_id):
    """Working directory of a job, relative to its DB directory:
    ``data/<workflow>/<name>_<first 8 characters of the id>``."""
    return f"data/{_safe_part(workflow)}/{_safe_part(name)}_{job_id[:8]}"


def _safe_part(text):
    """A file-name-safe rendering of a workflow or job name."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.") else "_" for c in str(text)).strip(".")
    return cleaned or "_"
