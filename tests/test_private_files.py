"""Private files, also as root with PostgreSQL (issue 12, item 5).

Everything balsamdb creates in a DB directory is owner-only (directories 0700, files 0600), except the
traversal (0711, no listing) that a PostgreSQL cluster run by another account needs to reach pgdata
and log/postgres.  A second Unix user, made by the test, can neither list nor read any of it.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
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


def as_user(user, action):
    """Run ``action()`` in a child that became ``user``; fails when it raised."""
    _name, uid, gid = user
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.environ["HOME"] = "/nonexistent"  # root's settings file is not theirs to read
            action()
            code = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"the action as {user[0]} failed"


def test_an_export_into_a_shared_directory_cannot_be_captured_by_another_user(second_user, tmp_path):
    """`db export FILE` wrote FILE.partial with O_CREAT|O_TRUNC: another user who made that file
    first in a shared directory (/tmp, a project folder) kept it as its owner, mode 666, and read the
    export (users' password hashes).  Now the temporary file has a random name made with O_EXCL
    and O_NOFOLLOW, mode 600, and is renamed over FILE: what the other user made is never written."""
    from balsamdb.passwords import hash_password

    shared = Path(tempfile.mkdtemp(prefix="bdb-shared-", dir="/tmp"))
    try:
        os.chmod(shared, 0o1777)  # like /tmp: everyone may create, only owners may remove
        target, planted = shared / "backup.jsonl", shared / "backup.jsonl.partial"

        def plant():
            for path in (planted, target):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                os.fchmod(fd, 0o666)
                os.close(fd)
            os.symlink(target, shared / f".{target.name}.link.partial")

        as_user(second_user, plant)
        db = tmp_path / "db"
        init_db_directory(db)
        with balsamdb.connect(db) as handle:
            handle.call("user_save", name="ada", password_hash=hash_password("a secret"))
        old_umask = os.umask(0o022)
        try:
            done = db_cli("export", target, "--path", db)
        finally:
            os.umask(old_umask)
        assert done.returncode == 0, done.stderr
        info = os.lstat(target)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o600), (info.st_uid, oct(info.st_mode))
        assert "password_hash" in target.read_text()
        assert os.stat(planted).st_size == 0 and os.stat(planted).st_uid == second_user[1]  # never written
        assert attempts_as(second_user, [target]) == [f"DENIED {target}"]
        assert sorted(p.name for p in shared.iterdir()) == [f".{target.name}.link.partial", target.name,
                                                             planted.name]  # no temporary file left
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_root_makes_job_folders_that_belong_to_the_db_directorys_owner(second_user, reachable_tmp, tmp_path):
    """As root, `db job add ... --path /home/alice/db` made data/ and the job's folder owned by root,
    mode 700: alice's job could not use its own working directory.  Root now gives what it makes
    to the DB directory's owner, and only inside directories of that owner: a symlink alice puts
    in data/ leads root nowhere else (a root-owned directory: refused, nothing made there), while one
    to a scratch directory of hers is followed."""
    name, uid, gid = second_user
    home = reachable_tmp / name
    home.mkdir(mode=0o700)
    os.chown(home, uid, gid)
    db, scratch = home / "db", home / "scratch"

    def alice_makes_her_db():
        init_db_directory(db)
        shutil.rmtree(db / "data")  # as in a DB directory made before data/ was: root makes data/ too
        os.mkdir(scratch, 0o700)

    def alice_plants_symlinks():
        os.symlink(scratch, db / "data" / "on-scratch")
        os.symlink(rootonly, db / "data" / "elsewhere")

    as_user(second_user, alice_makes_her_db)
    rootonly = Path(tempfile.mkdtemp(prefix="bdb-root-only-"))
    try:
        made = db_cli("job", "add", "sim", "--workflow", "sweep", "--path", db, "--json")
        assert made.returncode == 0, made.stderr
        workdir = Path(json.loads(made.stdout)["working_directory"])
        for path in (db / "data", db / "data" / "sweep", workdir):
            info = os.lstat(path)
            assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (uid, gid, 0o700), (path, info)
        as_user(second_user, lambda: (workdir / "out.txt").write_text("the job's output"))
        as_user(second_user, alice_plants_symlinks)
        scratched = db_cli("job", "add", "big", "--workflow", "on-scratch", "--path", db, "--json")
        assert scratched.returncode == 0, scratched.stderr
        there = list(scratch.iterdir())
        assert len(there) == 1 and os.stat(there[0]).st_uid == uid, there
        refused = db_cli("job", "add", "evil", "--workflow", "elsewhere", "--path", db)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "does not belong to user id" in refused.stderr and "the job was not created" in refused.stderr, \
            refused.stderr
        assert list(rootonly.iterdir()) == []
        with balsamdb.connect(db) as handle:
            assert sorted(job.name for job in handle.jobs.all()) == ["big", "sim"]
    finally:
        shutil.rmtree(rootonly, ignore_errors=True)


def test_a_write_root_spools_into_someone_elses_db_directory_stays_usable_by_them(second_user, reachable_tmp):
    """Root's spooled write made spool/ and (since spool positions) spool/seq/ as root, mode 700:
    the owner's own spooled writes then failed, and their server could not read root's file.
    What root makes in the spool now belongs to the DB directory's owner."""
    name, uid, gid = second_user
    home = reachable_tmp / name
    home.mkdir(mode=0o700)
    os.chown(home, uid, gid)
    db = home / "db"
    as_user(second_user, lambda: init_db_directory(db))
    shutil.rmtree(db / "spool", ignore_errors=True)
    os.mkdir(db / "spool", 0o700)
    os.chown(db / "spool", uid, gid)
    with balsamdb.connect(db, require_server=True) as handle:
        assert handle.records.save("P", {"label": "by-root"}).spooled
    made = {str(p.relative_to(db / "spool")): (p.lstat().st_uid, p.lstat().st_gid) for p in (db / "spool").rglob("*")}
    assert made and {k: v for k, v in made.items() if v != (uid, gid)} == {}, made

    def owner_spools_too():
        with balsamdb.connect(db, require_server=True) as handle:
            assert handle.records.save("P", {"label": "by-owner"}).spooled
        for path in (db / "spool" / "new").iterdir():
            path.read_bytes()  # what their server will read

    as_user(second_user, owner_spools_too)


def test_an_export_onto_another_users_file_in_a_sticky_directory_is_refused_in_one_line(second_user, reachable_tmp):
    """The other way round: alice exports to /tmp-like F that root made first (mode 666).  The
    sticky directory lets her neither replace nor (now) write into it: one line says whose it is,
    root's file keeps its content, and no temporary file is left."""
    name, uid, gid = second_user
    shared = Path(tempfile.mkdtemp(prefix="bdb-shared-", dir="/tmp"))
    try:
        os.chmod(shared, 0o1777)
        target = shared / "backup.jsonl"
        target.write_text("root's own file\n")
        os.chmod(target, 0o666)
        home = reachable_tmp / name
        home.mkdir(mode=0o700)
        os.chown(home, uid, gid)

        def alice_exports():
            init_db_directory(home / "db")
            done = subprocess.run([sys.executable, "-m", "balsamdb.cli", "export", str(target), "--path",
                                   str(home / "db")], capture_output=True, text=True, timeout=60)
            (home / "result").write_text(f"{done.returncode}\n{done.stderr}")

        as_user(second_user, alice_exports)
        code, _, err = (home / "result").read_text().partition("\n")
        assert code == "1" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "backup.jsonl there belongs to user id 0" in err and "choose another name" in err, err
        assert target.read_text() == "root's own file\n"
        assert sorted(p.name for p in shared.iterdir()) == ["backup.jsonl"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)
