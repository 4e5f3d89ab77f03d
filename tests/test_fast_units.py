"""The fast in-process layer (issue 15 §5): CLI commands through click's CliRunner and the HTTP
store through Flask's test client, on a SQLite DB directory used directly (no server, no
subprocess, no socket).  The real-process tests of the same features stay where they are;
these run in seconds and say quickly which layer broke."""

import base64
import json
import subprocess
import sys

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
    first = _db(dbdir, "user", "grant", "ada", "P", "--create")  # P does not exist yet
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
    from balsamdb.server.http import create_app

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
    page = store_client.get("/P/run-1/?format=html", headers=ada)  # a template from dbserver/http/templates/
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    assert b"<h1>run-1</h1>" in page.data and b"logged in as ada" in page.data
    missing = store_client.get("/P/none/", headers=ada)
    assert missing.status_code == 404 and missing.get_json()["status"] == 404
    assert store_client.get("/P/run-1/", headers=_auth("ada", "wrong")).status_code == 401
    # what a record holds is escaped on the pages (the list and the record)
    evil = {"label": "<b>x</b>", "reason": "<i>why</i>"}
    assert store_client.put("/P/%3Cb%3Ex%3C%2Fb%3E/", data=json.dumps(evil), headers=ada).status_code == 201
    for url in ("/P/?format=html", "/P/%3Cb%3Ex%3C%2Fb%3E/?format=html"):
        shown = store_client.get(url, headers=ada).get_data(as_text=True)
        assert "&lt;b&gt;x&lt;/b&gt;" in shown and "<b>x" not in shown and "<i>why" not in shown, url
    # without JavaScript the list's compare button works: the page does not disable it for a script to enable
    listing_page = store_client.get("/P/?format=html", headers=ada).get_data(as_text=True)
    button = listing_page.split('class="compare"', 1)[0].rsplit("<button", 1)[1] + listing_page.split(
        'class="compare"', 1)[1].split(">", 1)[0]
    assert "disabled" not in button, button
    # smt's listing stays whole and unpaged; ?sort= sorts, -COLUMN descending
    plain = store_client.get("/P/", headers=ada).get_json()
    assert len(plain["records"]) == 2 and "count" not in plain and "page" not in plain, plain
    for sort, first in (("label", "/P/%3Cb%3Ex%3C/b%3E/"), ("-label", "/P/run-1/")):
        found = store_client.get(f"/P/?sort={sort}", headers=ada).get_json()["records"]
        assert found[0].endswith(first), (sort, found)
    # long program output is folded with its size, not cut
    output = "".join(f"step {i}\n" for i in range(100))
    assert store_client.put("/P/long/", data=json.dumps({"label": "long", "stdout_stderr": output}),
                            headers=ada).status_code == 201
    page = store_client.get("/P/long/?format=html", headers=ada).get_data(as_text=True)
    assert f"<summary>101 lines, {len(output)} characters (show)</summary>" in page and "step 99" in page
    # a password beyond ASCII, or not UTF-8 at all, is a wrong password (401), never a 500
    assert store_client.get("/P/run-1/", headers=_auth("ada", "pässwort")).status_code == 401
    not_utf8 = {"Authorization": "Basic " + base64.b64encode(b"ada:\xff\xfe").decode()}
    assert store_client.get("/P/run-1/", headers=not_utf8).status_code == 401


def test_a_save_that_waits_in_the_spool_is_answered_202(store_client, monkeypatch):
    """No server and direct writes off: the store's save is spooled, and the Sumatra client is told
    so (202 with Retry-After), not told it is stored (broken: a spooled save answered 201)."""
    monkeypatch.setenv("BALSAMDB_REQUIRE_SERVER", "1")
    saved = store_client.put("/P/later/", data=json.dumps({"label": "later"}), headers=_auth("ada", "pw"))
    assert saved.status_code == 202 and "waits in the spool" in saved.get_json()["error"], saved.data
    assert saved.headers["Retry-After"] == "10"


def test_pages_under_a_prefix_link_their_own_files_in_process(dbdir):
    from balsamdb.server.http import create_app

    with balsamdb.connect(dbdir) as db:
        db.users.save("ada", password_hash=hash_password("pw"))
        db.users.grant("ada", "P")
    from werkzeug.test import Client

    client = Client(create_app(dbdir, prefix="/lab/"))  # behind the prefix's dispatcher, as `db serve --prefix`
    page = client.get("/lab/P/?format=html", headers=_auth("ada", "pw"))
    assert page.status_code == 200, page.data[-500:]
    assert b'src="http://localhost/lab/_balsamdb/static/balsamdb.js"' in page.data, page.data[:1500]
    assert b"startRefresh" in client.get("/lab/_balsamdb/static/balsamdb.js").data


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


def test_the_python_api_takes_job_id_prefixes_as_db_job_does(dbdir):
    from balsamdb.exceptions import BadRequest, Conflict

    with balsamdb.connect(dbdir) as db:
        a = db.jobs.create("a", id="aaaa1111-0000-4000-8000-000000000001", make_workdir=False)
        db.jobs.create("b", id="aaaa2222-0000-4000-8000-000000000002", make_workdir=False)
        assert db.jobs.get("aaaa1").id == a.id and db.jobs.resolve_ids(["AAAA1111"]) == [a.id]
        assert db.jobs.update_state("aaaa1", "READY").state == "READY"
        with pytest.raises(Conflict, match="ambiguous: it matches 2 jobs"):
            db.jobs.get("aaaa")
        with pytest.raises(NotFound, match="no job id starts with 'bbbb'"):
            db.jobs.get("bbbb")
        with pytest.raises(BadRequest, match="is not a job id"):
            db.jobs.get("aa")
        assert db.jobs.delete("aaaa2") == 1
    shown = _db(dbdir, "job", "show", "aaaa")  # one job left: the prefix is unique now
    assert shown.exit_code == 0 and a.id in shown.output, shown.output
    bad = _db(dbdir, "job", "show", "zz")
    assert bad.exit_code == 2 and "'zz' is not a job id" in bad.output


def test_many_ids_are_deleted_in_requests_of_delete_chunk_ids(dbdir):
    """db.jobs.delete (and so `db job rm`) sends at most DELETE_CHUNK ids per request: a
    request's size stays bounded whatever the caller passes."""
    with balsamdb.connect(dbdir) as db:
        ids = db.jobs.bulk_create([{"name": f"j{i}"} for i in range(1201)], make_workdir=False)
        sizes = []
        call = db.call

        def counting_call(op, **params):  # a spy: the real call still runs
            if op == "job_delete":
                sizes.append(len(params["job_ids"]))
            return call(op, **params)

        db.call = counting_call
        assert db.jobs.delete(*ids[:1200]) == 1200
        assert sizes == [500, 500, 200]
        del db.call
    removed = _db(dbdir, "job", "rm", "--workflow", "default", "--yes")
    assert removed.exit_code == 0 and removed.output.strip() == "removed 1 job", removed.output


def _file_size_limit():
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))


def test_export_file_is_complete_or_absent(dbdir, tmp_path):
    from balsamdb import transfer

    with balsamdb.connect(dbdir) as db:
        db.records.save("P", {"label": "r1", "tags": []})
    store = transfer.open_store(str(dbdir))
    try:
        target = tmp_path / "out.jsonl"
        footer = transfer.export_file(store, target)
        assert footer["counts"]["record"] == 1 and target.exists() and not (tmp_path / "out.jsonl.partial").exists()
        assert target.stat().st_mode & 0o777 == 0o600
        (tmp_path / "full.jsonl.partial").symlink_to("/dev/full")  # a symlink where the old name was: not followed
        transfer.export_file(store, tmp_path / "full.jsonl")
        assert (tmp_path / "full.jsonl").read_bytes() == target.read_bytes()
    finally:
        store.close()
    written = _db(dbdir, "export", str(tmp_path / "cli.jsonl"))
    assert written.exit_code == 0 and (tmp_path / "cli.jsonl").read_bytes() == target.read_bytes(), written.output
    with balsamdb.connect(dbdir) as db:
        db.records.save("P", {"label": "big", "tags": [], "reason": "x" * 200_000})
    failing = subprocess.run([sys.executable, "-m", "balsamdb.cli", "export", str(tmp_path / "big.jsonl"), "--path",
                              str(dbdir)], capture_output=True, text=True, timeout=60, preexec_fn=_file_size_limit)
    assert failing.returncode == 1 and "cannot write" in failing.stderr and "File too large" in failing.stderr, \
        failing.stderr  # a write that fails (here: a 64 KB file size limit, as a full disk would)
    assert sorted(p.name for p in tmp_path.iterdir() if "big" in p.name) == []  # neither the file nor a temporary


def test_record_rm_checks_every_label_before_removing_any(dbdir):
    with balsamdb.connect(dbdir) as db:
        for label in ("r1", "r2"):
            db.records.save("P", {"label": label, "tags": []})
        with pytest.raises(NotFound, match="no record 'typo' in project 'P'; nothing was removed"):
            db.records.delete_labels("P", ["r1", "typo"])
        assert sorted(db.records.labels("P")) == ["r1", "r2"]
    refused = _db(dbdir, "record", "rm", "P", "r2", "typo")
    assert refused.exit_code == 1 and "nothing was removed" in refused.output
    removed = _db(dbdir, "record", "rm", "P", "r1", "r2", "r1")
    assert removed.exit_code == 0 and removed.output.strip() == "removed 2 records", removed.output


def test_two_versions_of_a_record_compare_side_by_side(store_client):
    """Issue 17: a record's versions page links each version to the one before, and
    ``?versions&compare=1,2`` shows them side by side with the changed parameter marked (HTML and JSON)."""
    ada = _auth("ada", "pw")
    first = {"label": "run-1", "timestamp": "2026-01-02 03:04:05", "outcome": "",
             "parameters": {"content": "n = 2\nalpha = 1", "type": "SimpleParameterSet"}}
    second = dict(first, outcome="converged", parameters={"content": "n = 3\nalpha = 1", "type": "SimpleParameterSet"})
    for doc in (first, second):
        assert store_client.put("/P/run-1/", data=json.dumps(doc), headers=ada).status_code in (200, 201)
    listing = store_client.get("/P/run-1/?versions&format=html", headers=ada)
    assert listing.status_code == 200 and b'href="?versions&amp;compare=1,2"' in listing.data, listing.data[-2000:]
    assert b'name="compare" value="1"' in listing.data and b"compare the ticked versions" in listing.data

    data = store_client.get("/P/run-1/?versions&compare=1,2&format=json", headers=ada).get_json()
    assert data["versions"] == [1, 2] and data["records"][1].endswith("/P/run-1/?version=2")
    changed = {(d["section"], d["name"]) for d in data["differences"]}
    assert any(section == "parameters" and name == "n" for section, name in changed), data["differences"]
    assert not any(name == "alpha" for _, name in changed)
    page = store_client.get("/P/run-1/?versions=&compare=1&compare=2&format=html", headers=ada)  # the form's query
    assert page.status_code == 200 and b"Compare 2 versions" in page.data
    row = page.data.split(b'data-name="n"', 1)[1].split(b"</tr>", 1)[0]
    assert b"&ne;" in row and b"3" in row, row
    assert b'<tr class="differs" data-name="n">' in page.data and b'<tr data-name="alpha">' in page.data
    assert store_client.get("/P/run-1/?versions&compare=1,x", headers=ada).status_code == 400
    assert store_client.get("/P/run-1/?versions&compare=1,9", headers=ada).status_code == 404
    assert store_client.get("/P/run-1/?versions&compare=1", headers=ada).status_code == 400


def test_the_backoff_doubles_up_to_its_cap_and_gives_up_before_the_deadline():
    """The one retry rule (balsamdb/backoff.py) of the direct SQLite retry, the HTTP client and the
    watchdog's restarts: doubling delays, capped, and no sleep that would pass the deadline."""
    import time

    from balsamdb.backoff import Backoff, delay_after

    assert [delay_after(n, 0.25, 30.0) for n in range(9)] == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30]
    assert delay_after(10_000, 0.25, 30.0) == 30.0  # no overflow after a very long outage
    start = time.monotonic()
    backoff = Backoff(0.01, 0.04, start + 0.3)
    delays = []
    while True:
        delays.append(backoff.delay)
        if not backoff.sleep():
            break
    elapsed = time.monotonic() - start
    assert delays[:4] == [0.01, 0.02, 0.04, 0.04], delays
    assert elapsed < 0.3 + 0.04, f"slept past the deadline: {elapsed:.3f} s, delays {delays}"
    assert not Backoff(1.0, 2.0, time.monotonic() + 0.5).sleep()  # the first delay would pass it: no sleep


def test_dbserver_status_exit_codes_never_mean_a_usage_error(dbdir):
    """`db dbserver --status` exits 0 running, 1 stopped, 3 unsupervised or unhealthy: never 2, which
    is click's usage error (test_watchdog.py sees the 3 of a real dead watchdog)."""
    from balsamdb.server.supervisor.control import STATUS_RUNNING, STATUS_STOPPED, STATUS_UNHEALTHY

    stopped = _db(dbdir, "dbserver", "--status")
    assert stopped.exit_code == STATUS_STOPPED == 1 and "stopped" in stopped.output, stopped.output
    usage = _db(dbdir, "dbserver", "--status", "--stop")
    assert usage.exit_code == 2 and "cannot be combined" in usage.output, usage.output
    assert (STATUS_RUNNING, STATUS_STOPPED, STATUS_UNHEALTHY) == (0, 1, 3)


def test_watch_bar_says_100_percent_only_when_every_job_finished():
    """`db ls --watch`: 1500 of 1501 finished is 99%, not 100% (tqdm's rounding said 100%)."""
    from balsamdb.cli.ls import _bars

    (almost,) = _bars([{"workflow": "w", "state": "JOB_FINISHED", "count": 1500},
                       {"workflow": "w", "state": "RUNNING", "count": 1}], 80)
    (done,) = _bars([{"workflow": "w", "state": "JOB_FINISHED", "count": 1501}], 80)
    assert " 99%|" in almost and "1500/1501" in almost, almost
    assert "100%|" in done, done


def test_a_view_runs_alone_against_a_real_store(dbdir):
    """The views are module-level functions reading ``app.extensions["balsamdb"]`` (issue 28 §5):
    one is called alone, in a request context of an application on a real DB directory, with no
    test client, no request hooks and no other view in the way."""
    from flask import g

    from balsamdb.server.http import create_app, operation_api, sumatra_api
    from balsamdb.server.http.errors import HTTPError
    from balsamdb.server.http.state import HTTPState, state

    with balsamdb.connect(dbdir) as db:
        db.projects.save("P", public=True)
        db.projects.save("Q")  # private
        db.records.save("P", {"label": "run-1", "reason": "alone", "timestamp": "2026-01-02 03:04:05"})
    app = create_app(dbdir)
    with app.test_request_context("/P/"):
        assert isinstance(state(), HTTPState)
        g.user, g.format, g.content_type = None, "json", "application/json"  # what the hook `begin` sets
        answer = sumatra_api.project_view("P")
        assert answer.status_code == 200 and answer.get_json()["records"] == ["http://localhost/P/run-1/"]
        with pytest.raises(HTTPError) as refused:
            sumatra_api.project_view("Q")  # anonymous, private project: the view itself refuses
        assert refused.value.status == 401
    with app.test_request_context("/_balsamdb/"):
        g.user, g.format, g.content_type = None, "json", "application/json"
        assert operation_api.api_info().get_json() == {"balsamdb": balsamdb.__version__, "api": 1, "user": None,
                                                      "admin": False, "call": "http://localhost/_balsamdb/call"}
