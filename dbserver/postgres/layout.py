"""Where the PostgreSQL cluster of a DB directory keeps its files, and how to connect to it
(see :mod:`balsamdb.server.postgres.cluster` for its life cycle)."""

from dataclasses import dataclass
from pathlib import Path

from balsamdb.exceptions import ConfigError
from balsamdb.wording import shell_path

SUPERUSER = "balsamdb"          # the role initdb creates; it owns the database below
DATABASE = "balsamdb"           # the database the models live in
CONNECT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ClusterLayout:
    root: Path

    @property
    def pgdata(self):
        return self.root / "pgdata"

    @property
    def password_file(self):
        return self.root / "postgres.password"

    @property
    def log_dir(self):
        return self.root / "log" / "postgres"

    @property
    def server_log(self):
        return self.log_dir / "postgresql.log"

    @property
    def pg_ctl_log(self):
        return self.log_dir / "pg_ctl.log"

    @property
    def initdb_log(self):
        return self.log_dir / "initdb.log"

    def is_initialized(self):
        return (self.pgdata / "PG_VERSION").is_file()


def layout(dbdir_path):
    """Accepts a path or a :class:`balsamdb.dbdir.DBDirectory`."""
    root = Path(getattr(dbdir_path, "path", dbdir_path)).expanduser().absolute()
    if not root.is_dir():
        raise ConfigError(f"{shell_path(root)} is not a DB directory; "
                          f"create it with: db init {shell_path(root)} --db-type postgres")
    return ClusterLayout(root)


def read_password(dbdir_path):
    """The password of the ``balsamdb`` role, from ``P/postgres.password``."""
    path = layout(dbdir_path).password_file
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing; the cluster cannot be used without it "
                          f"(a new cluster gets one from: db init {shell_path(path.parent)} "
                          "--db-type postgres)") from None
    except PermissionError:
        raise ConfigError(f"cannot read {path}: only the owner of the DB directory may use its cluster") from None


def connection_params(dbdir_path, port):
    """Keyword arguments for ``peewee.PostgresqlDatabase(DATABASE, **params)`` or
    ``psycopg2.connect(dbname=DATABASE, **params)``."""
    return {"host": CONNECT_HOST, "port": int(port), "user": SUPERUSER, "password": read_password(dbdir_path)}
