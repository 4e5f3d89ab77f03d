"""User settings: one table of defaults, one place that applies precedence.

Precedence, for every setting: an explicit argument > the environment variable
``BALSAMDB_<NAME>`` > the user settings file > the default below.  The DB
directory has one more source, ``BALSAM_DB_PATH`` (the name Balsam users know),
and a last fallback (see :func:`resolve_db_path`).

The settings file is JSON: ``$BALSAMDB_SETTINGS`` if set, else
``$XDG_CONFIG_HOME/balsamdb/settings.json`` (``~/.config/balsamdb/settings.json``).
Nothing here runs at import time.
"""

import json
import os
import warnings
from dataclasses import make_dataclass
from pathlib import Path

from .exceptions import ConfigError

#: name -> (default, type, what it means)
DEFAULTS = {
    "default_db_path": (None, str, "DB directory used when neither --path nor BALSAM_DB_PATH is given"),
    "client_timeout": (2.0, float, "seconds to wait for one reply before retrying on a fresh socket"),
    "client_deadline": (30.0, float, "seconds a client keeps trying to reach a server before spooling (or raising)"),
    "require_server": (False, bool, "never write SQLite directly: with no server, writes are spooled (or refused)"),
    "spool": (True, bool, "when no server can be reached, keep writes in P/spool for the server (off: raise)"),
    "direct_deadline": (120.0, float, "seconds a direct SQLite write keeps retrying a locked database"),
    "sqlite_synchronous": ("FULL", str, "SQLite synchronous pragma: FULL (durable) or NORMAL (faster, may lose the last commits on power loss)"),
    "sqlite_cache_mb": (64, int, "SQLite page cache of each connection in MB (SQLite's own default is 2 MB: "
                                 "too small for the indexes of a DB of 10^5 jobs and more)"),
    "max_request_bytes": (64 * 1024 * 1024, int, "largest request the server accepts (a larger message is "
                                                 "dropped, with its connection, before it is read)"),
    "max_batch_bytes": (32 * 1024 * 1024, int, "the write server takes requests into one group commit until they "
                                               "hold this many bytes (or 1024 requests); one request always fits"),
    "applied_retention_days": (7.0, float, "days the server keeps the id and answer of each applied write, so that a "
                                           "retry is answered instead of applied again (retries come within minutes)"),
    "job_dir_mode": ("700", str, "permissions (octal) of the job working directories a client makes in "
                                 "data/: 700 private to the owner, 750 readable by the group"),
    "remote_spool_dir": (None, str, "where writes to an unreachable HTTP store wait (default: "
                                    "$XDG_DATA_HOME/balsamdb/remote-spool, one subdirectory per store)"),
    "require_explicit_db": (False, bool, "refuse the last fallback (default_db/ of a source checkout, or the per-user "
                                         "directory): a DB directory must be named by --path, BALSAM_DB_PATH or "
                                         "default_db_path"),
    "local_reads": (True, bool, "on the server's host, with the SQLite file on a local file system, read it on "
                                "read-only connections in this process (off: every read goes to the read service)"),
    "read_time_limit": (120.0, float, "seconds one read (one page of a listing) may run before the database stops "
                                      "it with an error (read_timeout); pages of a streamed listing are each timed"),
    "heartbeat_stale_after": (30.0, float, "seconds after which the heartbeat of a watchdog on another host counts "
                                           "as dead, so that db dbserver may start here (at least 6)"),
}


def settings_file():
    """Path of the user settings file (it need not exist)."""
    explicit = os.environ.get("BALSAMDB_SETTINGS")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "balsamdb" / "settings.json"


def _read_settings_file():
    path = settings_file()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}; fix or delete it") from None
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a JSON object")
    unknown = sorted(set(data) - set(DEFAULTS))
    if unknown:
        raise ConfigError(
            f"settings file {path} has unknown keys {unknown}; known keys: {sorted(DEFAULTS)}"
        )
    return data


def _coerce(name, value, kind, source):
    if value is None:
        return None
    try:
        if kind is bool and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(value)
            return lowered in ("1", "true", "yes", "on")
        if kind is bool:
            return bool(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name}={value!r} from {source} is not a valid {kind.__name__}") from None


#: The effective settings (one field per name of :data:`DEFAULTS`, in its order): made from the
#: table, so that a new setting is listed once.
Settings = make_dataclass("Settings", [(name, kind) for name, (_default, kind, _doc) in DEFAULTS.items()],
                          frozen=True)
Settings.__module__ = __name__


def load_settings(**overrides):
    """Return the effective :class:`Settings`; ``overrides`` win over everything."""
    from_file = _read_settings_file()
    values = {}
    for name, (default, kind, _doc) in DEFAULTS.items():
        env_name = "BALSAMDB_" + name.upper()
        if overrides.get(name) is not None:
            values[name] = _coerce(name, overrides[name], kind, "the caller")
        elif env_name in os.environ:
            values[name] = _coerce(name, os.environ[env_name], kind, env_name)
        elif name in from_file:
            values[name] = _coerce(name, from_file[name], kind, str(settings_file()))
        else:
            values[name] = default
    if values["sqlite_synchronous"].upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError("sqlite_synchronous must be FULL, EXTRA or NORMAL")
    values["sqlite_synchronous"] = values["sqlite_synchronous"].upper()
    try:
        job_dir_mode = int(str(values["job_dir_mode"]), 8)
    except ValueError:
        job_dir_mode = -1
    if not 0o700 <= job_dir_mode <= 0o777 or job_dir_mode & 0o700 != 0o700:
        raise ConfigError(f"job_dir_mode={values['job_dir_mode']!r} must be an octal mode that gives its owner "
                          "rwx, such as 700 (private, the default) or 750 (the group may read)")
    for name in ("max_request_bytes", "max_batch_bytes"):
        if values[name] < 1024:
            raise ConfigError(f"{name} must be at least 1024 bytes (it is {values[name]})")
    if not values["applied_retention_days"] > 0:
        raise ConfigError("applied_retention_days must be more than 0 (the ids of applied writes must be kept "
                          "at least as long as a retry can come; 7 is the default)")
    if not values["heartbeat_stale_after"] >= 6:
        raise ConfigError("heartbeat_stale_after must be at least 6 seconds (a watchdog refreshes its heartbeat "
                          "every 2 s; 30 is the default)")
    return Settings(**values)


def source_checkout_default():
    """``default_db/`` of a source checkout, or None when installed elsewhere."""
    root = Path(__file__).resolve().parent.parent
    if (root / "setup.cfg").exists() and (root / "default_db").is_dir():
        return root / "default_db"
    return None


def user_data_default():
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "balsamdb" / "default_db"


class DefaultDBWarning(UserWarning):
    """No DB directory was named, so the last fallback was used (the mistake of a
    forgotten ``export BALSAM_DB_PATH``); the CLI shows it once per process."""


CHECKOUT_SOURCE = "default_db/ of the source checkout"
USER_DIR_SOURCE = "the per-user data directory"


def resolve_db_path(path=None, settings=None):
    """Choose the DB directory: returns ``(Path, source)``, source says why.

    When nothing names one, the last fallback is used with a :class:`DefaultDBWarning`,
    or refused with :class:`ConfigError` when ``require_explicit_db`` is on.
    """
    if path:
        return Path(path).expanduser().absolute(), "the --path option"
    env = os.environ.get("BALSAM_DB_PATH")
    if env:
        return Path(env).expanduser().absolute(), "the BALSAM_DB_PATH environment variable"
    settings = settings or load_settings()
    configured = settings.default_db_path
    if configured:
        return Path(configured).expanduser().absolute(), f"default_db_path in {settings_file()}"
    checkout = source_checkout_default()
    chosen, source = (checkout, CHECKOUT_SOURCE) if checkout is not None else (user_data_default(), USER_DIR_SOURCE)
    if settings.require_explicit_db:
        raise ConfigError(f"no DB directory is named and require_explicit_db is on: pass --path, set BALSAM_DB_PATH, "
                          f"or set default_db_path in {settings_file()} (the fallback would be {source}, {chosen})")
    warnings.warn(DefaultDBWarning(f"using {source}, {chosen}; set BALSAM_DB_PATH to choose"), stacklevel=2)
    return chosen, source
