"""`db serve` checks log-ins and permissions on its read-only connections, not through the write server.

Every request of a logged-in user needs the user (password hash, admin flag, projects) and the
project it names; `db serve` reads them on the read-only connections of its pages
(dbserver/http/reads.py).  So log-ins and page reads are answered while the write server is stopped
(SIGSTOP: it looks alive, and answers nothing), and a change made through the write server (a grant,
an admin flag, a new password, a removed user) is seen by the very next request: nothing is cached.
Writes still go through the write server: while it is stopped a save is spooled and answered 202.
Each test runs on SQLite and on PostgreSQL.
"""

import os
import signal

import pytest
from helpers import address, wait_for
from served import PASSWORDS, Served
from records import sweep_record as record
from served import HTML

import balsamdb
from balsamdb.passwords import hash_password


@pytest.fixture
def store(served_dbdir, tmp_path, request, monkeypatch):
    """`db serve` (with a short client deadline: a save spools after 1 s) on a DB directory with users
    ada (admin, project P) and bob (no project), project Q of ada, and one record in P."""
    with balsamdb.connect(served_dbdir) as db:
        db.call("user_save", name="ada", password_hash=hash_password(PASSWORDS["ada"]), admin=True)
        db.call("user_save", name="bob", password_hash=hash_password(PASSWORDS["bob"]))
        db.call("permission_grant", project="P", user="ada")
        db.call("permission_grant", project="Q", user="ada")
        db.call("record_save", project="P", record=record("first", 1))
        db.jobs.create("one", workflow="w")
    monkeypatch.setenv("BALSAMDB_CLIENT_TIMEOUT", "0.3")
    monkeypatch.setenv("BALSAMDB_CLIENT_DEADLINE", "1")
    served = Served(served_dbdir, tmp_path, "--create-race-window", "0")
    request.addfinalizer(served.stop)
    return served


def _server_requests(path):
    with balsamdb.connect(path) as db:
        return db.call("status")["requests"]


def test_logins_and_permission_checks_never_ask_the_write_server(store):
    """Log-ins (right and wrong), permission checks and pages: not one request to the write server."""
    before = _server_requests(store.path)
    for _ in range(5):
        assert store.request("GET", "", user="ada").status == 200
        assert store.request("GET", "P/", user="ada", headers=HTML).status == 200
        assert store.request("GET", "P/first/", user="ada").json()["label"] == "first"
        assert store.request("GET", "P/first/?version=1", user="ada").json()["label"] == "first"
        assert store.request("GET", "P/first/?versions", user="ada").json()["versions"][0]["version"] == 1
        assert store.request("GET", "P/", user="ada").json()["records"][0].endswith("/P/first/")  # smt's listing
        assert store.request("GET", "P/", user="bob").status == 404
        assert store.request("GET", "_balsamdb/jobs/?format=json", user="ada").status == 200
        assert store.request("GET", "P/", user="nobody").status == 401
    sent = _server_requests(store.path) - before - 1  # less the status request itself
    assert sent == 0, f"45 log-ins, permission checks and reads sent {sent} requests to the write server"


def test_logins_and_pages_are_answered_while_the_write_server_is_stopped(store):
    """The write server stopped (SIGSTOP): log-ins, permission checks, the project list, the record
    list, a record, its versions, the jobs page and the Sumatra API's reads answer; a wrong password is a 401 that says so; a save waits in
    the spool (202) and is stored once the server runs again."""
    pid = address(store.path)["server"]["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        projects = store.request("GET", "", user="ada")
        assert projects.status == 200 and [p["name"] for p in projects.json()] == ["P", "Q"], projects
        page = store.request("GET", "P/", user="ada", headers=HTML)
        assert page.status == 200 and "first" in page.text, page
        assert store.request("GET", "P/first/", user="ada").json()["label"] == "first"
        assert store.request("GET", "P/first/", user="ada", headers=HTML).status == 200
        versions = store.request("GET", "P/first/?versions", user="ada")
        assert [v["version"] for v in versions.json()["versions"]] == [1], versions
        assert store.request("GET", "_balsamdb/jobs/", user="ada", headers=HTML).status == 200
        # the Sumatra API's reads, as smt sends them
        assert store.request("GET", "P/", user="ada").json()["records"][0].endswith("/P/first/")
        assert store.request("GET", "P/last/", user="ada").json()["label"] == "first"
        assert store.request("GET", "P/tag/odd/", user="ada").json()["records"][0].endswith("/P/first/")
        assert store.request("GET", "P/permissions/", user="ada").json()["users"] == ["ada"]
        assert store.request("GET", "P/", user="bob").status == 404
        wrong = store.request("GET", "P/", headers={"Authorization": "Basic YWRhOm5vcGU="})  # ada:nope
        assert wrong.status == 401 and "WWW-Authenticate" in wrong.headers, wrong
        assert wrong.json()["error"] == "wrong user name or password"
        saved = store.request("PUT", "P/second/", body=record("second", 2), user="ada")
        assert saved.status == 202 and "waits in the spool" in saved.json()["error"], saved
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: store.request("GET", "P/second/", user="ada").status == 200, 60,
             "the spooled save, stored once the write server runs again")


def test_a_change_made_through_the_write_server_is_seen_by_the_next_request(store):
    """No cache between the database and the checks: a grant, an admin flag, a new password and a
    removed user each take effect on the very next request."""
    assert store.request("GET", "Q/", user="bob").status == 404
    assert store.request("GET", "_balsamdb/jobs/", user="bob").status == 403
    with balsamdb.connect(store.path) as db:
        db.call("permission_grant", project="Q", user="bob")
    assert store.request("GET", "Q/", user="bob").status == 200
    with balsamdb.connect(store.path) as db:
        db.call("user_save", name="bob", admin=True)
    assert store.request("GET", "_balsamdb/jobs/", user="bob").status == 200
    assert store.request("GET", "P/", user="bob").status == 200  # an admin may use every project
    assert store.request("GET", "P/", user="ada").status == 200  # her password, now among the verified ones
    with balsamdb.connect(store.path) as db:
        db.call("user_save", name="ada", password_hash=hash_password("a new one"))
    assert store.request("GET", "P/", user="ada").status == 401, "the old password, refused at once"
    with balsamdb.connect(store.path) as db:
        db.call("user_delete", name="bob")
    gone = store.request("GET", "Q/", user="bob")
    assert gone.status == 401 and gone.json()["error"] == "wrong user name or password", gone
