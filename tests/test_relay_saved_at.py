"""The headers with which `db relay` tells the store when a save it forwards was made and for whom
(``Balsamdb-Saved-At``, ``Balsamdb-Saved-By``), and the relay's token file (0600 or refused)."""

import os
import time

import pytest
from helpers import db_cli
from records import sumatra_record as record
from fixtures import admin_served as served  # noqa: F401  (the fixture: bob is an admin, ada is not)
from fixtures import put_as as put

import balsamdb


def test_the_store_keeps_the_time_and_author_a_relay_sends(served):
    an_hour_ago = time.time() - 3600
    assert put(served, "ada", record("r1"), {"Balsamdb-Saved-At": repr(an_hour_ago),
                                             "Balsamdb-Saved-By": "relay@node7"})[0] == 201
    before = time.time()
    assert put(served, "ada", record("r1", reason="later"), {"Balsamdb-Saved-At": str(time.time() + 86400)})[0] == 200
    assert put(served, "bob", record("r2"), {"Balsamdb-Saved-By": "relay@node7"})[0] == 201
    status, body = put(served, "ada", record("r3"), {"Balsamdb-Saved-At": "yesterday"})
    assert status == 400 and "Balsamdb-Saved-At must be a time in UNIX seconds" in body, body
    with balsamdb.connect(served.path) as db:
        first, second = db.records.versions("P", "r1")
        assert first["saved_at"] == pytest.approx(an_hour_ago, abs=1e-3)
        assert first["saved_by"] == "ada for relay@node7"  # not an admin: the name it logged in with stays
        assert before <= second["saved_at"] <= time.time()  # a time in the future is now
        assert second["saved_by"] == "ada"
        assert db.records.versions("P", "r2")[0]["saved_by"] == "relay@node7"  # bob is an admin
        assert "r3" not in db.records.labels("P")


def test_a_token_file_that_others_may_read_is_refused(tmp_path, request):
    directory = tmp_path / "relay"
    request.addfinalizer(lambda: db_cli("relay", "--stop", "--dir", directory))  # should one start after all
    directory.mkdir(mode=0o700)
    token = directory / "token"
    token.write_text("relay:some-password\n")
    os.chmod(token, 0o644)
    started = db_cli("relay", "--to", "http://ada:pw@127.0.0.1:9/", "--dir", directory, "--port", "0")
    assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
    assert "mode 0644: others may read the relay's password; make it 0600" in started.stderr, started.stderr
    assert not (directory / "relay.json").exists()
    os.chmod(token, 0o600)
    token.write_text("no colon here\n")
    refused = db_cli("relay", "--to", "http://ada:pw@127.0.0.1:9/", "--dir", directory, "--port", "0")
    assert refused.returncode == 1 and "must hold one line user:password" in refused.stderr, refused.stderr
