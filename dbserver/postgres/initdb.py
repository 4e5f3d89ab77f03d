"""Creating the PostgreSQL cluster of a DB directory: ``initdb`` as the service account, the role's
password, and a configuration with SCRAM authentication and TCP only (``db init --db-type postgres``
calls :func:`init_cluster`; see :mod:`balsamdb.server.postgres.cluster` for the whole life cycle)."""

import os
import secrets
import tempfile

from balsamdb.exceptions import ConfigError
from balsamdb.private_files import write_private

from balsamdb.server.postgres.host import find_binaries, log_tail, prepare_directories, run_as, service_account
from balsamdb.server.postgres.layout import SUPERUSER, layout, read_password

INITDB_DEADLINE = 120.0         # seconds


def init_cluster(dbdir_path, deadline=INITDB_DEADLINE):
    """Create the cluster in ``P/pgdata`` with initdb; returns sentences saying what was done.

    Idempotent: an existing cluster is left alone.  Raises ConfigError when the binaries are missing,
    ``pgdata`` holds something else, or initdb fails (with the last lines of ``log/postgres/initdb.log``).
    """
    paths = layout(dbdir_path)
    if paths.is_initialized():
        version = (paths.pgdata / "PG_VERSION").read_text().strip()
        return [f"{paths.pgdata} already holds a PostgreSQL {version} cluster"]
    binaries = find_binaries()
    if paths.pgdata.exists() and any(paths.pgdata.iterdir()):
        raise ConfigError(f"{paths.pgdata} is not empty but holds no PostgreSQL cluster (left by a failed "
                          f"initdb?); remove it and run db init again")
    account = service_account()
    done = prepare_directories(paths, account)
    password, sentence = _ensure_password(paths)
    done += sentence
    pwfile = _private_copy(paths.root, password, account)
    try:
        cmd = [binaries.initdb, "-D", str(paths.pgdata), "-U", SUPERUSER, "--auth=scram-sha-256",
               f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C"]
        code = run_as(cmd, paths.initdb_log, deadline, account, "initdb")
    finally:
        os.unlink(pwfile)
    if code != 0:
        raise ConfigError(f"initdb failed (exit {code}) for {paths.pgdata}; last lines of {paths.initdb_log}:\n"
                          f"{log_tail(paths.initdb_log)}\nFix the cause above, remove {paths.pgdata} if it is "
                          f"left behind, and run db init again")
    _configure(paths, account)
    version = (paths.pgdata / "PG_VERSION").read_text().strip()
    runner = f"run as user {account.name}" if account else "run as the current user"
    done.append(f"created a PostgreSQL {version} cluster in {paths.pgdata} (role {SUPERUSER}, SCRAM password "
                f"authentication only, TCP on 127.0.0.1 only, {runner})")
    return done


def _ensure_password(paths):
    """The password of the role, made (and written with mode 0600) on first use."""
    if paths.password_file.exists():
        return read_password(paths.root), []
    password = secrets.token_urlsafe(32)
    write_private(paths.password_file, (password + "\n").encode())
    return password, [f"wrote a new PostgreSQL password to {paths.password_file} (mode 600)"]


def _private_copy(root, password, account):
    """A 0600 copy of the password for initdb's ``--pwfile``, readable by ``account``; caller removes it."""
    fd, name = tempfile.mkstemp(prefix=".initdb-pw-", dir=root)
    with os.fdopen(fd, "w") as handle:
        if account is not None:
            os.fchown(handle.fileno(), account.uid, account.gid)
        handle.write(password + "\n")
    return name


def _configure(paths, account):
    """Write pg_hba.conf (SCRAM everywhere, never trust) and pin TCP-only in postgresql.conf, so that a
    hand-run ``pg_ctl start -D pgdata`` behaves like ours."""
    hba = paths.pgdata / "pg_hba.conf"
    hba.write_text(
        "# Written by balsamdb: SCRAM password authentication for every connection, no password-less method.\n"
        "# Who can connect at all is decided by listen_addresses (127.0.0.1 unless asked otherwise).\n"
        "# TYPE  DATABASE  USER  ADDRESS     METHOD\n"
        "local   all       all               scram-sha-256\n"
        "host    all       all   0.0.0.0/0   scram-sha-256\n"
        "host    all       all   ::/0        scram-sha-256\n")
    os.chmod(hba, 0o600)
    with open(paths.pgdata / "postgresql.conf", "a") as conf:
        conf.write("\n# balsamdb: TCP only (start_cluster passes port and listen_addresses at each start)\n"
                   "listen_addresses = '127.0.0.1'\n"
                   "unix_socket_directories = ''\n"
                   "password_encryption = 'scram-sha-256'\n"
                   "# balsamdb: errors are logged without the failed statement and its DETAIL (row values)\n"
                   "log_min_error_statement = panic\n"
                   "log_error_verbosity = terse\n")
    if account is not None:
        os.chown(hba, account.uid, account.gid)
