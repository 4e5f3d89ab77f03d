"""PostgreSQL cluster control (dbserver/postgres/cluster.py) with real initdb, pg_ctl and postgres.

Every cluster a test starts is stopped by the ``pg_base`` finalizer, which also kills any postgres process
still running in or naming a directory of the test.

As root, postgres runs as the ``postgres`` (or ``nobody``) user, which must be able to pass through every
directory above the DB directory.  pytest's ``tmp_path`` lies under ``/tmp/pytest-of-root``, mode 0700,
and every pytest session (a concurrent one too) resets that mode at its start, so as root these tests use
a private ``mkdtemp`` directory under /tmp instead (mode 0711, removed afterwards).  Its paths are also
short.  Non-root, they use ``tmp_path``.
"""

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import peewee as pw
import psutil
import psycopg2
import pytest

from balsamdb.exceptions import ConfigError
from balsamdb.server.postgres import cluster as pg
from balsamdb.server.postgres import host as pg_host  # where the binaries are looked for
from balsamdb.server.postgres import initdb as pg_init  # initdb runs the binaries it finds

from helpers import passable_dir, wait_for

IS_ROOT = os.geteuid() == 0
REPO = Path(pg.__file__).resolve().parent.parent.parent  # the checkout: dbserver/postgres/cluster.py

try:
    pg.find_binaries()
    HAVE_POSTGRES = True
except ConfigError:
    HAVE_POSTGRES = False
needs_postgres = pytest.mark.skipif(not HAVE_POSTGRES, reason="PostgreSQL server binaries are not installed")


def postgres_processes(under):
    """Live processes that run in, or name on their command line, ``under`` or a path inside it."""
    under = os.path.realpath(under)
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        cwd = proc.info["cwd"] or ""
        named = any(under in part for part in proc.info["cmdline"] or [])
        if cwd == under or cwd.startswith(under + os.sep) or named:
            found.append(proc)
    return found


def dead(pid):
    """True once ``pid`` is gone or a zombie (nobody may reap it in a container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def pg_base(tmp_path):
    """A directory the PostgreSQL user can pass through; its finalizer stops every cluster under it."""
    if IS_ROOT:
        base = passable_dir("bdb-pg-")
    else:
        base = tmp_path
    yield base
    try:
        for pgdata in base.rglob("pgdata"):
            pg.stop_cluster(pgdata.parent, mode="immediate", deadline=10)
    finally:
        leftovers = postgres_processes(base)
        for proc in leftovers:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(leftovers, timeout=10)
        if IS_ROOT:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_dir(pg_base):
    """A DB directory ``P`` (mode 0700, with ``log/``) for a cluster."""
    path = pg_base / "db"
    path.mkdir(mode=0o700)
    (path / "log").mkdir()
    return path


@pytest.fixture
def initialized(pg_dir):
    pg_init.init_cluster(pg_dir)
    return pg_dir


def fake_binaries(directory, initdb_script):
    """A directory with an ``initdb`` shell script and inert pg_ctl/postgres; returns Binaries."""
    directory.mkdir(parents=True)
    for name, body in (("initdb", initdb_script), ("pg_ctl", "exit 1"), ("postgres", "exit 1")):
        script = directory / name
        script.write_text("#!/bin/sh\n" + body + "\n")
        script.chmod(0o755)
    return pg_host.Binaries(str(directory / "initdb"), str(directory / "pg_ctl"), str(directory / "postgres"))


# -- finding the binaries ---------------------------------------------------------------------------------
@needs_postgres
def test_find_binaries_returns_one_directory_with_all_programs():
    binaries = pg.find_binaries()
    for path in (binaries.initdb, binaries.pg_ctl, binaries.postgres):
        assert os.path.isabs(path) and os.access(path, os.X_OK)
    assert len({os.path.dirname(p) for p in (binaries.initdb, binaries.pg_ctl, binaries.postgres)}) == 1


def test_missing_binaries_name_what_to_install(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(pg_host, "SEARCH_GLOBS", (str(empty / "*" / "bin"),))
    with pytest.raises(ConfigError) as info:
        pg.find_binaries()
    message = info.value.message
    assert "apt-get install postgresql" in message and "conda install -c conda-forge postgresql" in message


def test_missing_binaries_refuse_init_before_touching_the_directory(pg_dir, monkeypatch, tmp_path):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(pg_host, "SEARCH_GLOBS", ())
    with pytest.raises(ConfigError, match="apt-get install postgresql"):
        pg_init.init_cluster(pg_dir)
    assert not (pg_dir / "pgdata").exists() and not (pg_dir / "postgres.password").exists()


def test_newest_complete_version_wins_numerically(tmp_path, monkeypatch):
    for version, names in (("9.6", pg_host.REQUIRED), ("15", pg_host.REQUIRED), ("16", ("initdb", "pg_ctl"))):
        bindir = tmp_path / "lib" / version / "bin"
        bindir.mkdir(parents=True)
        for name in names:
            (bindir / name).write_text("#!/bin/sh\n")
            (bindir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    monkeypatch.setattr(pg_host, "SEARCH_GLOBS", (str(tmp_path / "lib" / "*" / "bin"),))
    # 16 lacks postgres, and 15 beats 9.6 although "9.6" > "15" as text.
    assert pg.find_binaries().initdb == str(tmp_path / "lib" / "15" / "bin" / "initdb")


# -- pure parts ---------------------------------------------------------------------------------------------
def test_listen_addresses_always_cover_loopback_and_refuse_shell_text():
    assert pg._listen_addresses("127.0.0.1") == "127.0.0.1"
    assert pg._listen_addresses("*") == "*"
    assert pg._listen_addresses("10.1.2.3") == "127.0.0.1,10.1.2.3"
    for bad in ("127.0.0.1; rm -rf /", "'*'", "a b$(id)"):
        with pytest.raises(ConfigError, match="invalid listen address"):
            pg._listen_addresses(bad)


# -- init -------------------------------------------------------------------------------------------------
@needs_postgres
def test_init_writes_private_password_and_no_trust(pg_dir):
    done = pg_init.init_cluster(pg_dir)
    assert any("created a PostgreSQL" in line for line in done)
    password_file = pg_dir / "postgres.password"
    st = os.stat(password_file)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert len(password_file.read_text().strip()) >= 32
    hba = (pg_dir / "pgdata" / "pg_hba.conf").read_text()
    assert "trust" not in hba
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all(rule[-1] == "scram-sha-256" for rule in rules)
    assert not list(pg_dir.glob(".initdb-pw-*")), "the temporary password copy for initdb was left behind"
    assert "already holds a PostgreSQL" in pg_init.init_cluster(pg_dir)[0]


@pytest.mark.skipif(not IS_ROOT, reason="only root hands the cluster to another user")
@needs_postgres
def test_init_as_root_hands_pgdata_to_an_unprivileged_user(pg_dir):
    done = pg_init.init_cluster(pg_dir)
    account = pg.service_account()
    assert account.name in ("postgres", "nobody")
    assert os.stat(pg_dir / "pgdata").st_uid == account.uid
    assert os.stat(pg_dir / "log" / "postgres").st_uid == account.uid
    assert stat.S_IMODE(os.stat(pg_dir).st_mode) == 0o711
    assert any("711" in line and account.name in line for line in done)
    assert os.stat(pg_dir / "postgres.password").st_uid == 0


@pytest.mark.skipif(not IS_ROOT, reason="only root hands the cluster to another user")
@needs_postgres
def test_init_as_root_names_the_directory_the_postgres_user_cannot_pass(pg_base):
    private = pg_base / "private"
    private.mkdir(mode=0o700)
    target = private / "db"
    target.mkdir()
    with pytest.raises(ConfigError) as info:
        pg_init.init_cluster(target)
    assert f"{private} (mode 700" in info.value.message and f"chmod o+x {private}" in info.value.message
    assert not (target / "pgdata").exists() and stat.S_IMODE(os.stat(private).st_mode) == 0o700


def test_initdb_failure_quotes_its_log(pg_dir, monkeypatch):
    binaries = fake_binaries(pg_dir.parent / "fake", 'echo "initdb: error: the disk is on fire" >&2; exit 1')
    monkeypatch.setattr(pg_init, "find_binaries", lambda: binaries)
    with pytest.raises(ConfigError) as info:
        pg_init.init_cluster(pg_dir)
    assert "initdb failed (exit 1)" in info.value.message and "the disk is on fire" in info.value.message
    assert not list(pg_dir.glob(".initdb-pw-*"))


def test_initdb_past_its_deadline_is_killed_with_its_children(pg_dir, monkeypatch):
    binaries = fake_binaries(pg_dir.parent / "fake", 'sleep 61 & echo "child $!"; wait')
    monkeypatch.setattr(pg_init, "find_binaries", lambda: binaries)
    with pytest.raises(ConfigError, match="did not finish within 1 s"):
        pg_init.init_cluster(pg_dir, deadline=1)
    log_text = (pg_dir / "log" / "postgres" / "initdb.log").read_text()
    child = int(log_text.split("child ")[1].split()[0])
    wait_for(lambda: dead(child), 5, f"the initdb child {child} to be killed")


# -- start, connect, stop ----------------------------------------------------------------------------------
@needs_postgres
def test_init_start_connect_write_stop_restart(pg_dir):
    pg_init.init_cluster(pg_dir)
    port = pg.start_cluster(pg_dir)
    pid = pg.cluster_pid(pg_dir)
    assert pid is not None and pg.is_healthy(pg_dir, port)
    expected_user = pg.service_account(pg_dir / "pgdata").name if IS_ROOT else pwd.getpwuid(os.getuid()).pw_name
    assert psutil.Process(pid).username() == expected_user
    if IS_ROOT:
        assert os.stat(pg_dir / "log" / "postgres" / "postgresql.log").st_uid == pwd.getpwnam(expected_user).pw_uid
    pidfile = (pg_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
    assert pidfile[3] == str(port) and pidfile[4] == "" and pidfile[5] == "127.0.0.1", \
        "TCP on loopback only, no unix socket (line 5 is the socket directory, line 6 the listen address)"

    database = pw.PostgresqlDatabase(pg.DATABASE, **pg.connection_params(pg_dir, port))
    database.execute_sql("CREATE TABLE job (id serial PRIMARY KEY, name text NOT NULL)")
    database.execute_sql("INSERT INTO job (name) VALUES (%s), (%s)", ("a", "b"))
    database.close()

    assert pg.start_cluster(pg_dir) == port, "a second start returns the running cluster's port"
    with pytest.raises(ConfigError, match=f"already runs .* on port {port}"):
        pg.start_cluster(pg_dir, port=port + 1 if port < 65535 else port - 1)

    assert pg.stop_cluster(pg_dir) is True
    assert pg.cluster_pid(pg_dir) is None and not pg.is_healthy(pg_dir, port)
    assert not postgres_processes(pg_dir / "pgdata")
    assert pg.stop_cluster(pg_dir) is False

    port = pg.start_cluster(pg_dir)
    database = pw.PostgresqlDatabase(pg.DATABASE, **pg.connection_params(pg_dir, port))
    assert database.execute_sql("SELECT name FROM job ORDER BY id").fetchall() == [("a",), ("b",)]
    database.close()


@needs_postgres
def test_wrong_password_is_refused(initialized):
    port = pg.start_cluster(initialized)
    params = dict(pg.connection_params(initialized, port), password="not-the-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(dbname=pg.DATABASE, connect_timeout=5, **params).close()


@needs_postgres
def test_start_after_kill_9_of_the_postmaster(initialized):
    port = pg.start_cluster(initialized)
    pid = pg.cluster_pid(initialized)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pg.cluster_pid(initialized) is None, 10, "the killed postmaster to be seen as gone")
    assert (initialized / "pgdata" / "postmaster.pid").exists(), "the stale pid file this test is about"
    port = pg.start_cluster(initialized)
    assert pg.cluster_pid(initialized) not in (None, pid) and pg.is_healthy(initialized, port)


@needs_postgres
def test_start_after_kill_9_with_a_surviving_child(initialized):
    """A child that outlives its postmaster (here: stopped) holds the shared memory that a new postmaster
    refuses to share; start_cluster kills it."""
    pg.start_cluster(initialized)
    pid = pg.cluster_pid(initialized)
    child = psutil.Process(pid).children()[0]
    child.suspend()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pg.cluster_pid(initialized) is None, 10, "the killed postmaster to be seen as gone")
    assert not dead(child.pid)
    port = pg.start_cluster(initialized)
    assert dead(child.pid) and pg.is_healthy(initialized, port)


@needs_postgres
def test_start_with_a_pid_file_naming_an_unrelated_live_process(initialized):
    """After a crash and a reboot the stale pid may belong to someone else; postgres alone would refuse."""
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pg.start_cluster(initialized)
        pg.stop_cluster(initialized)
        (initialized / "pgdata" / "postmaster.pid").write_text(f"{unrelated.pid}\n{initialized / 'pgdata'}\n")
        assert pg.cluster_pid(initialized) is None
        port = pg.start_cluster(initialized)
        assert pg.is_healthy(initialized, port) and unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait()


@needs_postgres
def test_postmaster_is_recognised_when_its_cwd_is_hidden(initialized, monkeypatch):
    """Root without CAP_SYS_PTRACE (Docker) cannot read another user's cwd; the command line names pgdata."""
    pg.start_cluster(initialized)
    pid = pg.cluster_pid(initialized)

    def hidden(self):
        raise psutil.AccessDenied(self.pid)

    monkeypatch.setattr(psutil.Process, "cwd", hidden)
    assert pg.cluster_pid(initialized) == pid
    assert pg.stop_cluster(initialized) is True
    assert pg.cluster_pid(initialized) is None and dead(pid)


@needs_postgres
@pytest.mark.parametrize("precheck", [True, False], ids=["refused-before-pg_ctl", "refused-by-postgres"])
def test_start_on_a_taken_port_fails_clearly(initialized, precheck, monkeypatch):
    """An explicit port that is taken is an error (never silently another port): the caller asked for it."""
    if not precheck:    # as when another program takes the port between our check and postgres's bind
        monkeypatch.setattr(pg, "_check_port_free", lambda listen, port: None)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            pg.start_cluster(initialized, port=port)
    assert f"port {port}" in info.value.message and "in use" in info.value.message
    assert "give none" in info.value.message
    if not precheck:
        assert "could not bind" in info.value.message, "the message quotes the server log"
    assert pg.cluster_pid(initialized) is None and not postgres_processes(initialized / "pgdata")


@needs_postgres
def test_a_free_port_taken_before_postgres_binds_it_is_replaced(initialized, monkeypatch):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        offers = [taken]
        real_free_port = pg._free_port
        monkeypatch.setattr(pg, "_free_port", lambda listen: offers.pop() if offers else real_free_port(listen))
        port = pg.start_cluster(initialized)
    assert port != taken and pg.is_healthy(initialized, port)


@needs_postgres
def test_start_and_stop_without_a_cluster(pg_dir):
    assert pg.stop_cluster(pg_dir) is False
    with pytest.raises(ConfigError, match="unknown stop mode"):
        pg.stop_cluster(pg_dir, mode="quick")
    with pytest.raises(ConfigError, match="db init .* --db-type postgres"):
        pg.start_cluster(pg_dir)
    assert pg.cluster_pid(pg_dir) is None


# -- not root -----------------------------------------------------------------------------------------------
NON_ROOT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import peewee as pw
    from balsamdb.server.postgres import cluster as pg, initdb as pg_init
    path = sys.argv[1]
    result = {"done": pg_init.init_cluster(path)}
    port = pg.start_cluster(path)
    try:
        import psutil
        result["server_user_uid"] = psutil.Process(pg.cluster_pid(path)).uids().real
        db = pw.PostgresqlDatabase(pg.DATABASE, **pg.connection_params(path, port))
        db.execute_sql("CREATE TABLE t (x int)")
        db.execute_sql("INSERT INTO t VALUES (42)")
        result["rows"] = db.execute_sql("SELECT x FROM t").fetchall()
        db.close()
    finally:
        result["stopped"] = pg.stop_cluster(path)
    print(json.dumps(result))
""")


PROBE = "import psycopg2, psutil, peewee, balsamdb.server.postgres.cluster"


def importable_copy(dest):
    """Copy into ``dest`` what ``import balsamdb.server.postgres.cluster`` loads, laid out as installed: the package
    from the source folders (balsamdb/, its server/ from dbserver/) and every third-party module it imports
    (found by importing it in a fresh interpreter), with the folders of shared libraries that wheels bring
    (``*.libs``).  Another user's Python of this version can then import it with ``PYTHONPATH=dest``, even
    when our interpreter and its site-packages lie where that user cannot read (root's, under /root)."""
    listing = subprocess.run([sys.executable, "-c", PROBE + "; import sys, json; print(json.dumps("
                              "[getattr(m, '__file__', None) for m in list(sys.modules.values())]))"],
                             capture_output=True, text=True, timeout=60, check=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "balsamdb", dest / "balsamdb", ignore=ignore)
    shutil.copytree(REPO / "dbserver", dest / "balsamdb" / "server", ignore=ignore)
    site_dirs = set()
    for name in json.loads(listing.stdout):
        path = Path(name or "")
        parts = path.parts
        site = next((i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")), None)
        if site is None or len(parts) <= site + 1:
            continue
        root = Path(*parts[:site + 1])
        site_dirs.add(root)
        top = root / parts[site + 1]
        if top.name == "balsamdb" or (dest / top.name).exists():
            continue
        (shutil.copytree(top, dest / top.name, ignore=ignore) if top.is_dir() else shutil.copy2(top, dest))
    for root in site_dirs:
        for libs in root.glob("*.libs"):
            if not (dest / libs.name).exists():
                shutil.copytree(libs, dest / libs.name)


def python_for(user, copy_dir):
    """An interpreter of this Python version that ``user`` may run and the environment in which it
    imports balsamdb.server.postgres.cluster (from a copy in ``copy_dir``), or ``(None, env)`` when there is
    none; fails when one runs but cannot import it (the copy misses something)."""
    importable_copy(copy_dir)
    env = {"PYTHONPATH": str(copy_dir), "PATH": os.environ.get("PATH", ""), "HOME": "/", "LC_ALL": "C"}
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    failures = []
    for candidate in (sys.executable, f"/usr/bin/{name}", f"/usr/local/bin/{name}"):
        try:
            probe = subprocess.run([candidate, "-c", PROBE], user=user, env=env, cwd="/", capture_output=True,
                                   text=True, timeout=60)
        except OSError:         # missing, or not executable by that user
            continue
        if probe.returncode == 0:
            return candidate, env
        failures.append(f"{candidate}: {probe.stderr.strip().splitlines()[-1:]}")
    assert not failures, f"{user} runs Python {name} but cannot import balsamdb from {copy_dir}: {failures}"
    return None, env


@pytest.fixture
def copy_dir():
    """A directory that every user may read (mode 0755), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="bdb-py-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a process as another user")
@needs_postgres
def test_non_root_user_runs_everything_as_itself(pg_dir, copy_dir):
    user = pwd.getpwnam("nobody")
    python, env = python_for("nobody", copy_dir)
    if python is None:
        pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that user nobody may run")
    own = pg_dir.parent / "own"     # pg_dir is root's 0700 directory; pg_base lets nobody pass
    own.mkdir(mode=0o700)
    os.chown(own, user.pw_uid, user.pw_gid)
    proc = subprocess.run([python, "-c", NON_ROOT_SCRIPT, str(own)], user="nobody", group=user.pw_gid,
                          extra_groups=[], env=env, cwd="/", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["rows"] == [[42]] and result["stopped"] is True
    assert result["server_user_uid"] == user.pw_uid
    assert not any("711" in line or "refuses to run as root" in line for line in result["done"])
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o700, "a non-root caller's DB directory is left alone"
    for name in ("pgdata", "postgres.password", "log/postgres"):
        assert os.stat(own / name).st_uid == user.pw_uid
    assert stat.S_IMODE(os.stat(own / "postgres.password").st_mode) == 0o600
