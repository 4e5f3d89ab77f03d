"""Private files, also as root with PostgreSQL (issue 12, item 5).

Everything balsamdb creates in a DB directory is owner-only (directories 0700, files 0600), except the
traversal (0711, no listing) that a PostgreSQL cluster run by another account needs to reach pgdata
and log/postgres.  A second Unix user, made by the test, can neither list nor read any of it.
"""

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

import balsamdb
from balsamdb.server.dbinit import init_db_directory

from helpers import db_cli, kill_everything, skip_or_fail

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make and be a second user (CI runs as root)")

OWNED_BY_POSTGRES = ("pgdata", os.path.join("log", "postgres"))


@pytest.fixture
def second_user():
    """A Unix user made for this test (removed afterwards): ``(name, uid, gid)``."""
    if shutil.which("useradd") is None:
        skip_or_fail("useradd is missing (package passwd)")
    name = f"bdbt{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    try:
        import pwd

        entry = pwd.getpwnam(name)
        yield name, entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


@pytest.fixture
def reachable_tmp():
    """A directory that other users may pass through (as a home or project directory would be)."""
    base = Path(tempfile.mkdtemp(prefix="bdb-private-", dir="/tmp"))
    os.chmod(base, 0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def balsamdb_entries(path):
    """Every file and directory under ``path`` except what the PostgreSQL account owns."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel = os.path.relpath(dirpath, path)
        dirnames[:] = [d for d in dirnames if os.path.normpath(os.path.join(rel, d)) not in OWNED_BY_POSTGRES]
        entries.extend(Path(dirpath) / name for name in dirnames + filenames)
    return entries


def attempts_as(user, paths):
    """In a child that became ``user``: what happened on listing or reading each path."""
    _name, uid, gid = user
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            lines = []
            for path in paths:
                try:
                    if os.path.isdir(path):
                        os.listdir(path)
                    else:
                        with open(path, "rb") as handle:
                            handle.read(1)
                    lines.append(f"OPEN {path}")
                except PermissionError:
                    lines.append(f"DENIED {path}")
                except OSError as exc:
                    lines.append(f"{type(exc).__name__} {path}")
            os.write(write_end, "\n".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return [line for line in b"".join(chunks).decode().splitlines() if line]


def use_everything(path, spool_too=True):
    """Create what a DB directory holds in use: jobs with working directories, records, logs, a spooled write."""
    started = db_cli("dbserver", "--path", path)
    assert started.returncode == 0, started.stderr
    try:
        db = balsamdb.connect(path)
        job = db.jobs.create(name="j", workflow="w", data={"secret": "result"})
        (Path(job.working_directory) / "out.txt").write_text("job output")
        db.records.save("P", {"label": "r"})
        db_cli("dbserver", "--status", "--path", path, check=True)
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)
    if spool_too:
        waits = balsamdb.connect(path, require_server=True).jobs.create(name="spooled")
        assert waits.spooled
    return job


def check_private(path, user, traversable=()):
    offenders = []
    for entry in balsamdb_entries(path):
        mode = stat.S_IMODE(os.lstat(entry).st_mode)
        rel = str(entry.relative_to(path))
        if rel in traversable:
            if mode & 0o066:  # others may pass (x), never list or read
                offenders.append(f"{rel} {mode:o}")
        elif entry.name == "out.txt":
            continue  # written by the job, not by balsamdb: private all the same behind its directory
        elif mode & 0o077:
            offenders.append(f"{rel} {mode:o}")
    assert offenders == [], f"not owner-only: {offenders}"
    root_mode = stat.S_IMODE(os.stat(path).st_mode)
    assert root_mode in ((0o711,) if "." in traversable else (0o700,)), f"{path} is {root_mode:o}"
    # The second user sees nothing: every entry it tries is denied (those behind a denied one are too).
    tries = attempts_as(user, [path] + balsamdb_entries(path))
    opened = [line for line in tries if not line.startswith("DENIED")]
    assert opened == [], opened


def test_a_sqlite_db_directory_in_use_is_private(second_user, reachable_tmp):
    old_umask = os.umask(0o022)  # a usual umask: balsamdb must not depend on a strict one
    try:
        path = reachable_tmp / "db"
        init_db_directory(path)
        use_everything(path)
    finally:
        os.umask(old_umask)
    check_private(path, second_user)


def test_a_postgres_db_directory_run_as_root_is_private_but_for_the_traversal(second_user, reachable_tmp):
    from helpers import postgres_available as _postgres_available

    if not _postgres_available():
        skip_or_fail("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    old_umask = os.umask(0o022)
    try:
        path = reachable_tmp / "pgdb"
        init_db_directory(path, "postgres")
        use_everything(path)
    finally:
        os.umask(old_umask)
    check_private(path, second_user, traversable=(".", "log"))
    # The cluster's own files belong to its account, and its directories are closed to everyone else.
    for owned in OWNED_BY_POSTGRES:
        assert stat.S_IMODE(os.stat(path / owned).st_mode) == 0o700


def test_job_directories_follow_the_job_dir_mode_setting(reachable_tmp):
    path = reachable_tmp / "db"
    init_db_directory(path)
    db = balsamdb.connect(path, job_dir_mode="750")
    job = db.jobs.create(name="shared", workflow="team")
    assert stat.S_IMODE(os.stat(job.working_directory).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(path / "data" / "team").st_mode) == 0o750
    private = balsamdb.connect(path).jobs.create(name="mine", workflow="solo")
    assert stat.S_IMODE(os.stat(private.working_directory).st_mode) == 0o700
    with pytest.raises(balsamdb.BalsamDBError, match="job_dir_mode='644' must be an octal mode"):
        balsamdb.connect(path, job_dir_mode="644")
