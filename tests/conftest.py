import os
import subprocess
import sys

import pytest

from balsamdb.dbdir import DBDirectory

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
            [sys.executable, "-m", "balsamdb", *map(str, args)],
            env=child_env, input=input, capture_output=True, text=True, timeout=timeout,
            cwd=cwd or tmp_path,
        )

    return run
