"""The PostgreSQL of this host: where its server binaries are, the unprivileged account that runs
them when balsamdb runs as root, and running them as that account (see :mod:`balsamdb.server.postgres.cluster`
for the cluster of a DB directory, and why an account)."""

import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from balsamdb.exceptions import ConfigError

SEARCH_GLOBS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin")
SERVICE_USERS = ("postgres", "nobody")
INSTALL_HINT = ("install the PostgreSQL server binaries, e.g. `apt-get install postgresql` (Debian/Ubuntu) "
                "or `conda install -c conda-forge postgresql`, or put the directory holding initdb, pg_ctl "
                "and postgres on PATH")
REQUIRED = ("initdb", "pg_ctl", "postgres")


# -- binaries -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Binaries:
    """Absolute paths of the PostgreSQL server programs, all from one directory."""

    initdb: str
    pg_ctl: str
    postgres: str
    pg_isready: str = None     # optional; from the same directory, else from PATH


def find_binaries():
    """The first directory on PATH that holds initdb, pg_ctl and postgres, else the newest
    ``/usr/lib/postgresql/<version>/bin`` (see ``SEARCH_GLOBS``).  Raises ConfigError naming what to install."""
    candidates = [os.path.abspath(d) for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    found = []
    for pattern in SEARCH_GLOBS:
        found.extend(glob.glob(pattern))
    candidates.extend(sorted(found, key=_version_key, reverse=True))
    for directory in candidates:
        paths = {name: os.path.join(directory, name) for name in REQUIRED + ("pg_isready",)}
        if all(_is_executable(paths[name]) for name in REQUIRED):
            isready = paths["pg_isready"] if _is_executable(paths["pg_isready"]) else shutil.which("pg_isready")
            return Binaries(paths["initdb"], paths["pg_ctl"], paths["postgres"], isready)
    where = ", ".join(SEARCH_GLOBS)
    raise ConfigError(f"PostgreSQL server binaries (initdb, pg_ctl, postgres) were found neither on PATH "
                      f"nor in {where}; {INSTALL_HINT}")


def _version_key(directory):
    """Sort key for ``.../15/bin``, ``.../9.6/bin``, ``postgresql@16/bin``: the numbers in the path."""
    return tuple(int(n) for n in re.findall(r"\d+", directory))


def _is_executable(path):
    return os.path.isfile(path) and os.access(path, os.X_OK)


# -- the account that runs postgres ---------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceAccount:
    """The unprivileged user that runs the PostgreSQL binaries when balsamdb runs as root."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self):
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def may_traverse(self, path):
        """True when this account has search (x) permission on directory ``path``."""
        st = os.stat(path)
        if st.st_uid == self.uid:
            return bool(st.st_mode & stat.S_IXUSR)
        if st.st_gid in os.getgrouplist(self.name, self.gid):
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)


def service_account(pgdata=None):
    """None when not root (everything runs as the caller).  As root: the owner of an existing ``pgdata``,
    else the ``postgres`` user, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    if pgdata is not None and Path(pgdata, "PG_VERSION").exists():
        owner = os.stat(pgdata).st_uid
        if owner != 0:
            entry = pwd.getpwuid(owner)
            return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
    for name in SERVICE_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return ServiceAccount(entry.pw_name, entry.pw_uid, entry.pw_gid)
    raise ConfigError("PostgreSQL refuses to run as root and neither a 'postgres' nor a 'nobody' user exists; "
                      "create one (e.g. `useradd --system postgres`) or run balsamdb as an ordinary user")



# -- subprocesses ---------------------------------------------------------------------------------------
def run_as(cmd, log_path, deadline, account, what):
    """Run ``cmd`` (as ``account`` when given) with its output appended to ``log_path``; return its exit
    code.  After ``deadline`` seconds its whole process group is killed and ConfigError raised."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    kwargs = account.popen_kwargs() if account is not None else {}
    with open(log_path, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd="/", env=env, start_new_session=True, **kwargs)
        try:
            return proc.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise ConfigError(f"{what} did not finish within {deadline:.0f} s and was killed; last lines of "
                              f"{log_path}:\n{log_tail(log_path)}\nCheck that the disk is not full or slow "
                              f"and try again") from None


def log_tail(path, lines=15):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


# -- the account's way to the cluster's directories ------------------------------------------------
def prepare_directories(paths, account):
    """Make ``pgdata`` and ``log/postgres``; as root hand them to ``account`` and open the way to them."""
    done = []
    if account is not None:
        check_reachable(paths.root, account)
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    if not paths.pgdata.exists():
        paths.pgdata.mkdir(mode=0o700)
    if account is None:
        return done
    for directory in (paths.pgdata, paths.log_dir):
        os.chown(directory, account.uid, account.gid)
        os.chmod(directory, 0o700)
    if paths.server_log.exists():
        os.chown(paths.server_log, account.uid, account.gid)
    for directory in (paths.root, paths.log_dir.parent):
        if not account.may_traverse(directory):
            mode = stat.S_IMODE(os.stat(directory).st_mode) | 0o011
            os.chmod(directory, mode)
            done.append(f"changed the mode of {directory} to {mode:o} so that the PostgreSQL user "
                        f"{account.name} can pass through it (it still cannot list it)")
    done.append(f"PostgreSQL refuses to run as root: {paths.pgdata} and {paths.log_dir} belong to user "
                f"{account.name}, which runs initdb, pg_ctl and postgres")
    return done


def check_reachable(root, account):
    """Every directory above ``root`` must let ``account`` pass; we never change directories outside P."""
    for directory in reversed(root.parents):
        if not account.may_traverse(directory):
            st = os.stat(directory)
            raise ConfigError(
                f"the PostgreSQL user {account.name} cannot reach {root}: {directory} (mode "
                f"{stat.S_IMODE(st.st_mode):o}, owner {user_name(st.st_uid)}) does not let it pass. Run "
                f"`chmod o+x {directory}` or put the DB directory where {account.name} can reach it")


def user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
