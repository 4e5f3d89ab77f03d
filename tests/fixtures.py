"""Fixtures that several test files share (each file imports the ones it uses by name; pytest takes a
fixture imported into a test module as that module's own).  The fixtures every file may use without an
import (``dbdir``, ``run_db``, ``backend``, ``any_dbdir``, ``served_dbdir``, ``pg_cluster``) stay in
conftest.py; no test imports conftest."""

import base64
import json
import os
import shutil
import urllib.error
import urllib.request

import psutil
import pytest

from helpers import kill_everything, passable_dir, require_smt, start_server, stop_server
from served import PASSWORDS, Served


@pytest.fixture
def cli_store(backend, request):
    """A fresh DB directory on each backend, as job scripts meet it: sqlite3 with no server (the CLI
    writes directly), postgres with its server running (stopped by ``served_dbdir``).
    test_cli.py, test_first_hour.py and test_users.py use it as ``store``."""
    return request.getfixturevalue("served_dbdir" if backend == "postgres" else "any_dbdir")


def _add_users(path, admins=()):
    import balsamdb
    from balsamdb.passwords import hash_password

    with balsamdb.connect(path) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password), admin=name in admins)


@pytest.fixture
def sqlite_dir(tmp_path):
    """``sqlite_dir(name)`` makes a fresh SQLite DB directory ``tmp_path/name``; whatever runs for one
    afterwards is stopped (test_record_versions.py, test_transfer.py)."""
    from balsamdb.dbdir import DBDirectory

    made = []

    def make(name):
        path = tmp_path / name
        DBDirectory(path).init()
        made.append(path)
        return path

    yield make
    for path in made:
        kill_everything(path)


# -- a store behind `db serve`, for the relay -----------------------------------------------------------------

@pytest.fixture
def relay_store(tmp_path, request):
    """A SQLite DB directory (users ada and bob) with its write server and `db serve` in front;
    returns (the Served, restart()) where restart() starts `db serve` again on the same port.
    test_relay.py and test_attack_relay_import.py use it as ``store``."""
    from balsamdb.dbdir import DBDirectory

    path = tmp_path / "db"
    DBDirectory(path).init()
    request.addfinalizer(lambda: kill_everything(path))
    _add_users(path)
    request.addfinalizer(lambda: stop_server(path))
    start_server(path)
    servers = [Served(path, tmp_path)]
    request.addfinalizer(lambda: [s.stop() for s in servers if s.proc.poll() is None])

    def restart():
        servers.append(Served(path, tmp_path, port=servers[0].port))
        return servers[-1]

    return servers[0], restart


def relay_status(url, user, password):
    """The relay's GET _relay/status, as a dict."""
    request = urllib.request.Request(url + "_relay/status", headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


@pytest.fixture
def admin_served(tmp_path, request):
    """`db serve` on a SQLite DB directory written directly, where bob is an admin and ada is not.
    test_relay_saved_at.py and test_attack_relay_import.py use it as ``served``."""
    from balsamdb.dbdir import DBDirectory

    path = tmp_path / "db"
    DBDirectory(path).init()
    request.addfinalizer(lambda: kill_everything(path))
    _add_users(path, admins=("bob",))
    server = Served(path, tmp_path)
    request.addfinalizer(server.stop)
    return server


def put_as(served, user, doc, headers):
    """PUT ``doc`` as record P/{label}/ with ``headers``; returns (status, body text)."""
    auth = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    request = urllib.request.Request(f"{served.url()}P/{doc['label']}/", data=json.dumps(doc).encode(), method="PUT",
                                     headers=dict(headers, Authorization=f"Basic {auth}",
                                                  **{"Content-Type": "application/json"}))
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# -- a DB directory with its own PostgreSQL cluster -----------------------------------------------------------

def postgres_processes(under):
    """Live postgres processes that run in, or name on their command line, ``under`` or a path in it."""
    under = os.path.realpath(under)
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "name"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["name"] not in ("postgres", "postmaster"):
            continue
        try:
            cwd = proc.cwd()
        except psutil.Error:
            cwd = ""
        if cwd.startswith(under) or any(under in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


@pytest.fixture
def pg_dbdir(pg_cluster):  # pg_cluster: skips (or fails on CI) without PostgreSQL binaries
    """A path for a postgres DB directory that the PostgreSQL user can reach; all stopped afterwards."""
    base = passable_dir("bdb-own-pg-")
    path = base / "db"
    try:
        yield path
    finally:
        stop_server(path)
        leftovers = postgres_processes(base)
        for proc in leftovers:
            proc.kill()
        psutil.wait_procs(leftovers, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


# -- a real Sumatra project ------------------------------------------------------------------------------------

@pytest.fixture
def smt_project(tmp_path):
    """A git working copy with main.py and default.param in which `smt` commands run (smt_client.SmtProject).
    test_sumatra_export.py and test_transfer.py use it as ``smt``."""
    from smt_client import SmtProject

    require_smt()
    return SmtProject(tmp_path / "work")
