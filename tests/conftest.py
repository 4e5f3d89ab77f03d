import os
import signal
import subprocess
import sys

import pytest

from balsamdb.dbdir import DBDirectory
from balsamdb.server.dbinit import init_db_directory
from helpers import make_db_directory, postgres_available

CLI_TIMEOUT = 60  # seconds; a CLI call that takes longer is a failure, not a hang


@pytest.fixture
def dbdir(tmp_path):
    """A fresh SQLite DB directory; returns its path."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    return path


@pytest.fixture
def run_db(tmp_path):
    """Run the CLI as a real process: ``run_db("ls", "--path", p, env={...}, input="...")``.

    The child sees no BALSAM_DB_PATH or BALSAMDB_* of the caller and no user
    settings file (BALSAMDB_SETTINGS names a file that does not exist), unless
    ``env`` sets them.  Returns the CompletedProcess (text); never raises on a
    non-zero exit.
    """
    base = {k: v for k, v in os.environ.items()
            if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    base["BALSAMDB_SETTINGS"] = str(tmp_path / "no-settings.json")
    base["XDG_DATA_HOME"] = str(tmp_path / "xdg-data")

    def run(*args, env=None, input=None, timeout=CLI_TIMEOUT, cwd=None):
        child_env = dict(base)
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = str(value)
        return subprocess.run(
            [sys.executable, "-m", "balsamdb.cli", *map(str, args)],
            env=child_env, input=input, capture_output=True, text=True, timeout=timeout,
            cwd=cwd or tmp_path,
        )

    return run


# -- both backends ---------------------------------------------------------------------------------------
# Tests of the store, the daemon and the CLI that are not about SQLite itself take the `backend`
# fixture (or `any_dbdir` / `served_dbdir`), and so run once on SQLite and once on PostgreSQL.
# PostgreSQL DB directories here use `--url` on one cluster started for the whole session (a fresh
# database per test); tests/test_postgres_backend.py covers DB directories with their own cluster.

@pytest.fixture(scope="session")
def pg_cluster():
    """One PostgreSQL cluster for the session: yields the URL of its superuser, without a database name."""
    import shutil

    from balsamdb.server.postgres import cluster as postgres

    if not postgres_available():
        from helpers import skip_or_fail

        skip_or_fail("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    from helpers import passable_dir

    # Under root the cluster runs as another user, who must be able to pass through the path.
    base = passable_dir("bdb-session-pg-")
    path = base / "cluster"
    try:
        init_db_directory(path, "postgres")
        port = postgres.start_cluster(path)
        password = (path / "postgres.password").read_text().strip()
        yield f"postgresql://balsamdb:{password}@127.0.0.1:{port}/"
    finally:
        try:
            postgres.stop_cluster(path, mode="immediate", deadline=20)
        finally:
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite3", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def any_dbdir(backend, tmp_path, request):
    """A fresh DB directory on each backend (no server running)."""
    pg_url = request.getfixturevalue("pg_cluster") if backend == "postgres" else None
    return make_db_directory(backend, tmp_path / "db", pg_url)


@pytest.fixture
def served_dbdir(any_dbdir):
    """``any_dbdir`` with its server running; everything of it stopped afterwards."""
    from helpers import start_server, stop_server

    try:  # also when the start itself fails or times out
        start_server(any_dbdir)
        yield any_dbdir
    finally:
        stop_server(any_dbdir)


# -- the quick layer -------------------------------------------------------------------------------------
# `pytest -m "not slow"` (README: the edit-test loop) leaves out every test on PostgreSQL (a cluster to
# start) and the suites that kill and restart processes, run other hosts or build packages.  A test is
# slow here when in doubt: the quick layer must stay quick; CI runs everything.

SLOW_MODULES = frozenset({
    "test_faults", "test_netns", "test_fuzz", "test_postgres_cluster", "test_postgres_backend",
    "test_transfer", "test_packaging", "test_direct_concurrency", "test_security", "test_sumatra_export",
    "test_crash_points",
    "test_claims",
})


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A run stopped with SIGTERM (a timeout, CI cancelling) tears down like Ctrl-C: the finalizers
    # stop every server and PostgreSQL cluster the run started instead of leaving them running.
    signal.signal(signal.SIGTERM, _interrupt)
    config.addinivalue_line(
        "markers", "unprivileged: needs root, or runs as an ordinary user inside user namespaces "
                   "(scripts/test_unprivileged.sh runs these)")
    config.addinivalue_line("markers", "slow: PostgreSQL, fault, multi-host and packaging tests; "
                                       "`-m \"not slow\"` runs the quick layer")


def pytest_collection_modifyitems(config, items):
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_postgres = any(isinstance(v, str) and v.startswith("postgres") for v in params.values())
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES or on_postgres or "pg_cluster" in item.fixturenames:
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    """The last net: a server process of this run (its command line names a path under the run's
    temporary directory) that a finalizer missed is stopped, and named on stderr so the leak is seen."""
    import sys

    import psutil
    from helpers import stop_processes

    try:
        base = str(session.config._tmp_path_factory.getbasetemp())
    except (AttributeError, ValueError):
        return
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any("balsamdb.server." in part for part in cmd) and any(part.startswith(base) for part in cmd):
            left.append(proc)
    if left:
        sys.stderr.write(f"\nconftest: stopping {len(left)} server process(es) that this run left: "
                         f"{[p.pid for p in left]}\n")
        stop_processes(left)
