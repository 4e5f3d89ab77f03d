"""The suite stops what it starts, whatever happens (issue 24, item 15): a `db dbserver` that a
fixture runs and that times out has already started a detached watchdog and server."""

import os
import subprocess

import pytest
from helpers import db_cli, processes_for

from balsamdb.dbdir import DBDirectory

HANGING_SERVER = """import time
try:
    command = open("/proc/self/cmdline", "rb").read().split(b"\\0")
except OSError:
    command = []
if b"balsamdb.server.writer.server" in command:
    time.sleep(600)  # wait-ok: a server that never comes up: `db dbserver` waits for it
"""


def test_a_dbserver_start_that_times_out_leaves_nothing_running(tmp_path):
    """Before: the watchdog and its (hanging) server went on running after the TimeoutExpired of
    `db dbserver`, and a fixture that started it in its setup never ran its finalizer."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANGING_SERVER)
    env = dict(os.environ, PYTHONPATH=str(site))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            db_cli("dbserver", "--path", path, timeout=8, env=env)
        left = [(p.pid, " ".join(p.cmdline()[:4])) for p in processes_for(path) if p.is_running()]
        assert left == [], f"still running after the timed-out start: {left}"
    finally:
        for proc in processes_for(path):
            proc.kill()
