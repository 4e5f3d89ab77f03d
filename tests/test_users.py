"""Users and project permissions for the HTTP record store: the CLI and what the store keeps."""

import json

import pytest

import balsamdb
from balsamdb.passwords import hash_password, verify_password

from fixtures import cli_store as store  # noqa: F401  (the fixture: SQLite direct, PostgreSQL served)
from helpers import db_cli


def _db(*args, **kw):
    return db_cli(*args, **kw)


def _run_with_stdin(args, text):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "balsamdb.cli", *map(str, args)], input=text,
                          capture_output=True, text=True, timeout=60)


def test_user_life_cycle(store):
    added = _run_with_stdin(["user", "add", "ada", "--path", store, "--password-stdin"], "s3cret pass\n")
    assert added.returncode == 0 and "added user ada" in added.stdout, added.stderr
    with balsamdb.connect(store) as db:
        stored = db.call("user_get", name="ada")["password_hash"]
    assert "s3cret" not in stored and verify_password("s3cret pass", stored)
    assert not verify_password("wrong", stored)

    granted = _db("user", "grant", "ada", "MyProject", "--create", "--path", store, check=True)
    assert "may now use project MyProject" in granted.stdout
    listed = json.loads(_db("user", "ls", "--json", "--path", store, check=True).stdout)
    assert [(u["name"], u["projects"]) for u in listed] == [("ada", ["MyProject"])]

    changed = _run_with_stdin(["user", "passwd", "ada", "--path", store, "--password-stdin"], "new one\n")
    assert changed.returncode == 0, changed.stderr
    with balsamdb.connect(store) as db:
        assert verify_password("new one", db.call("user_get", name="ada")["password_hash"])
        assert db.call("permission_list", project="MyProject") == ["ada"]

    assert "removed user ada" in _db("user", "rm", "ada", "--path", store, check=True).stdout
    with balsamdb.connect(store) as db:
        assert db.call("user_list") == [] and db.call("permission_list", project="MyProject") == []


def test_user_errors_are_clear(store):
    missing = _db("user", "rm", "nobody-here", "--path", store)
    assert missing.returncode == 1 and "no user 'nobody-here'" in missing.stderr and "Traceback" not in missing.stderr
    grant = _db("user", "grant", "ghost", "P", "--create", "--path", store)
    assert grant.returncode == 1 and "db user add ghost" in grant.stderr
    bad = _run_with_stdin(["user", "add", "bad name!", "--path", store, "--password-stdin"], "x\n")
    assert bad.returncode == 1 and "letters, digits" in bad.stderr
    empty = _run_with_stdin(["user", "add", "ada", "--path", store, "--password-stdin"], "\n")
    assert empty.returncode == 2 and "may not be empty" in empty.stderr
    with balsamdb.connect(store) as db:
        with pytest.raises(balsamdb.BadRequest, match="hash_password"):
            db.call("user_save", name="eve", password_hash="plain text")  # the store takes hashes only
        assert db.call("user_list") == []


def test_password_hashes_are_salted():
    first, second = hash_password("same"), hash_password("same")
    assert first != second and verify_password("same", first) and verify_password("same", second)
    assert not verify_password("same", "garbage") and not verify_password("same", "md5$x$y$z$a$b")
