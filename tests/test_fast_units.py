"""The fast in-process layer (issue 15 §5): CLI commands through click's CliRunner and the HTTP
store through Flask's test client, on a SQLite DB directory used directly (no server, no
subprocess, no socket).  The real-process tests of the same features stay where they are;
these run in seconds and say quickly which layer broke."""

import base64
import json

import pytest
from click.testing import CliRunner

import balsamdb
from balsamdb.exceptions import ERRORS_BY_CODE, NotFound
from balsamdb.passwords import hash_password

flask = pytest.importorskip("flask")


def _db(dbdir, *args, input=None):
    from balsamdb.cli.main import main

    return CliRunner().invoke(main, [*args, "--path", str(dbdir)], input=input, catch_exceptions=False)


def test_user_commands_in_process(dbdir):
    added = _db(dbdir, "user", "add", "ada", "--password-stdin", input="secret\n")
    assert added.exit_code == 0 and added.output.strip() == "added user ada", added.output
    again = _db(dbdir, "user", "add", "ada", "--password-stdin", input="other\n")
    assert again.output.strip() == "changed the password of ada", again.output
    first = _db(dbdir, "user", "grant", "ada", "P")
    second = _db(dbdir, "user", "grant", "ada", "P")
    assert first.output.strip() == "ada may now use project P", first.output
    assert second.output.strip() == "ada could already use project P", second.output
    listed = json.loads(_db(dbdir, "user", "ls", "--json").output)
    assert [(u["name"], u["projects"], u["admin"]) for u in listed] == [("ada", ["P"], False)]
    assert _db(dbdir, "user", "rm", "ada").output.strip() == "removed user ada"
    gone = _db(dbdir, "user", "rm", "ada")
    assert gone.exit_code == 1 and "no user 'ada'" in gone.output and "Traceback" not in gone.output


def test_users_facade(dbdir):
    with balsamdb.connect(dbdir) as db:
        assert db.users.save("ada", password_hash=hash_password("x")) is True
        assert db.users.save("ada", admin=True) is False
        assert db.users.grant("ada", "P") is True and db.users.grant("ada", "P") is False
        assert db.users.permissions("P") == ["ada"]
        user = db.users.get("ada")
        assert user["admin"] is True and user["projects"] == ["P"] and user["password_hash"].startswith("scrypt$")
        assert [u["name"] for u in db.users.list()] == ["ada"]
        assert db.users.delete("ada") == 1
        with pytest.raises(NotFound):
            db.users.get("ada")


def _auth(name, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.fixture
def store_client(dbdir):
    from balsamdb.server.http_store import create_app

    with balsamdb.connect(dbdir) as db:
        db.users.save("ada", password_hash=hash_password("pw"))
        db.users.grant("ada", "P")
    return create_app(dbdir).test_client()


def test_sumatra_api_in_process(store_client):
    ada = _auth("ada", "pw")
    assert store_client.get("/P/").status_code == 401  # not public: log in first
    record = {"label": "run-1", "reason": "a test", "tags": ["t"], "timestamp": "2026-01-02 03:04:05"}
    put = store_client.put("/P/run-1/", data=json.dumps(record), headers=ada)
    assert put.status_code == 201, put.data
    got = store_client.get("/P/run-1/", headers=ada)
    assert got.status_code == 200 and got.get_json() == record
    listing = store_client.get("/P/?tags=t", headers=ada).get_json()
    assert listing["records"] == ["http://localhost/P/run-1/"]
    page = store_client.get("/P/run-1/?format=html", headers=ada)  # a template from dbserver/templates/
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert b"<h1>run-1</h1>" in page.data and b"logged in as ada" in page.data
    missing = store_client.get("/P/none/", headers=ada)
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    assert store_client.get("/P/run-1/", headers=_auth("ada", "wrong")).status_code == 401


def test_operation_endpoint_answers_each_error_with_its_class_status(store_client):
    ada = _auth("ada", "pw")

    def call(op, **params):
        body = {"id": "0123456789abcdef" + op, "op": op, "params": params}
        return store_client.post("/_balsamdb/call", data=json.dumps(body), headers=ada)

    answer = call("record_save", project="P", record={"label": "x"})
    assert answer.status_code == 200 and answer.get_json()["result"]["created"] is True
    for (op, params), code in ((("no_such_op", {}), "bad_request"), (("record_get", {"project": "P", "label": "y"}),
                                                                       "not_found")):
        answer = call(op, **params)
        assert answer.get_json()["error"]["code"] == code
        assert answer.status_code == ERRORS_BY_CODE[code].http_status, (code, answer.status_code)
