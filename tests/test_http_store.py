"""The HTTP record store (`db serve`): real servers, real sockets, and Sumatra's own `smt` client.

Every test starts `db serve` as a process on a free port of 127.0.0.1 in front of a DB directory
whose write server runs (``served_dbdir``), and stops it in a finalizer.
"""

import base64
import hashlib
import http.client
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
from helpers import require_smt
from records import sumatra_record as record
from smt_client import SmtSession
from served import PASSWORDS, SERVE_MAIN, START_DEADLINE, STOP_DEADLINE, Served  # noqa: F401

import balsamdb
from balsamdb.server.http.app import CREATE_RACE_WINDOW
from balsamdb.passwords import hash_password

SMT_TIMEOUT = 120.0
RECORD_TYPE = "application/vnd.sumatra.record-v4+json"
PROJECT_TYPE = "application/vnd.sumatra.project-v4+json"



def _add_users(path):
    with balsamdb.connect(path) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password))


@pytest.fixture
def start_store(served_dbdir, tmp_path, request):
    """``start_store(*options)`` runs `db serve` on ``served_dbdir`` (users ada and bob added)."""
    _add_users(served_dbdir)

    def start(*options):
        served = Served(served_dbdir, tmp_path, *options)
        request.addfinalizer(served.stop)
        return served

    yield start
    # Whatever a test sent, the server answered it without failing itself.
    log = (served_dbdir / "log" / "http.log").read_text()
    failures = [line for line in log.splitlines()
                if "Traceback" in line or re.search(r" 5\d\d \S+ [\d.]+ ms$", line)]
    assert not failures, failures


@pytest.fixture
def store(start_store):
    return start_store("--create-race-window", "0")


sqlite_only = pytest.mark.parametrize("backend", ["sqlite3"])


def put_record(store, project, doc, user="ada"):
    return store.request("PUT", f"{quote(project)}/{quote(doc['label'])}/", doc, user=user,
                         headers={"Content-Type": RECORD_TYPE})


# -- the protocol, on both backends ---------------------------------------------------------------------------

def test_a_project_and_its_records_as_smt_uses_them(store):
    anonymous = store.request("GET", "MyProject/", headers={"Accept": f"{PROJECT_TYPE}, application/json"})
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"] == 'Basic realm="balsamdb"'
    assert store.request("GET", "MyProject/", user="ada").status == 404
    for _ in range(2):  # two jobs racing to create the project both see 201
        made = store.request("PUT", "MyProject/", {}, user="ada", headers={"Content-Type": PROJECT_TYPE})
        assert made.status == 201, made
    assert store.request("PUT", "MyProject/", {}, user="bob").status == 403

    first = record("20240501-120000")
    assert put_record(store, "MyProject", first).status == 201
    assert store.request("PUT", "MyProject/", {}, user="ada").status == 200  # records, old enough: an update
    done = dict(first, duration=1.5, tags=["_finished_"], stdout_stderr="ran\n", user="Ada <ada@lab>",
                output_data=[{"path": "out.txt", "digest": "f734", "metadata": {}, "creation": "2024-05-01 12:00:01"}])
    assert put_record(store, "MyProject", done).status == 200
    got = store.request("GET", "MyProject/20240501-120000/", user="ada",
                        headers={"Accept": f"{RECORD_TYPE}, application/json"})
    assert got.status == 200 and got.json() == done
    assert got.headers["Content-Type"] == RECORD_TYPE and got.headers["Cache-Control"] == "no-cache"

    # Labels may hold ':', '|', spaces and '/'; the listing is absolute URLs, newest first.
    odd = record("run:2|b c/d", timestamp="2024-05-03 08:00:00+0000", tags=["paper", "best"])
    older = record("20240502-090000", timestamp="2024-05-02 09:00:00+0000", tags=["paper"])
    assert put_record(store, "MyProject", odd).status == 201
    assert put_record(store, "MyProject", older).status == 201
    listing = store.request("GET", "MyProject/", user="ada", headers={"Accept": PROJECT_TYPE}).json()
    urls = listing["records"]
    assert [store.request("GET", u, user="ada").json()["label"] for u in urls] == \
        ["run:2|b c/d", "20240502-090000", "20240501-120000"]
    assert all(u.startswith(store.base + "MyProject/") for u in urls)
    tagged = store.request("GET", "MyProject/?tags=paper,best", user="ada").json()["records"]  # any of them
    assert [store.request("GET", u, user="ada").json()["label"] for u in tagged] == ["run:2|b c/d", "20240502-090000"]

    last = store.request("GET", "MyProject/last/", user="ada", headers={"Accept": RECORD_TYPE})
    assert last.status == 200 and last.json() == odd

    deleted = store.request("DELETE", "MyProject/tag/paper/", user="ada")
    assert (deleted.status, deleted.text, deleted.headers["Content-Type"].split(";")[0]) == (200, "2", "text/plain")
    gone = store.request("DELETE", "MyProject/20240501-120000/", user="ada")
    assert (gone.status, gone.body) == (204, b"")
    assert store.request("DELETE", "MyProject/20240501-120000/", user="ada").status == 404
    assert store.request("GET", "MyProject/last/", user="ada").status == 404
    with balsamdb.connect(store.path) as db:
        assert db.records.labels("MyProject") == []


def test_a_write_once_field_that_changes_is_a_409(store):
    doc = record("clash")
    assert put_record(store, "P", doc).status == 201
    assert store.request("PUT", "P/", {"write_once": True}, user="ada").status == 200
    other = dict(doc, main_file="other.py", script_arguments="3 4")
    refused = put_record(store, "P", other)
    assert refused.status == 409
    assert "main_file" in refused.json()["error"] and "script_arguments" in refused.json()["error"]
    with balsamdb.connect(store.path) as db:
        assert db.records.get("P", "clash") == doc
    bad = store.request("PUT", "P/broken/", b'{"label": "broken", ', user="ada")
    assert bad.status == 400 and "not valid JSON" in bad.json()["error"]
    wrong = store.request("PUT", "P/x/", record("y"), user="ada")
    assert wrong.status == 400 and "differs" in wrong.json()["error"]
    reserved = store.request("PUT", "P/last/", record("last"), user="ada")
    assert reserved.status == 400 and "another label" in reserved.json()["error"]


def test_users_permissions_and_public_projects(store):
    assert put_record(store, "Secret", record("s1")).status == 201  # ada made it: hers
    # a read answers a non-member as for a project that does not exist: reads tell nobody which exist
    assert store.request("GET", "Secret/", user="bob").status == 404
    assert store.request("GET", "Secret/s1/", user="bob").status == 404
    hidden, missing = (store.request("GET", f"{p}/", user="bob").json()["error"] for p in ("Secret", "NoSuch"))
    assert hidden.replace("Secret", "NoSuch") == missing and "no project 'NoSuch' that user 'bob' may use" in missing
    assert store.request("PUT", "Secret/s2/", record("s2"), user="bob").status == 403
    assert store.request("DELETE", "Secret/s1/", user="bob").status == 403
    wrong = store.request("GET", "Secret/", headers={"Authorization": "Basic " + base64.b64encode(
        b"ada:not her password").decode()})
    assert wrong.status == 401 and "WWW-Authenticate" in wrong.headers
    assert store.request("GET", "Secret/", user="nobody").status == 401

    # The project list shows what the caller may read; anonymous callers are asked to log in
    # while some project is hidden from them.
    assert put_record(store, "Open", record("o1"), user="bob").status == 201
    assert store.request("GET", "").status == 401
    assert [p["id"] for p in store.request("GET", "", user="ada").json()] == ["Secret"]
    assert [p["id"] for p in store.request("GET", "", user="bob").json()] == ["Open"]

    assert store.request("PUT", "Open/", {"public": True}, user="ada").status == 403  # not hers
    assert store.request("PUT", "Open/", {"public": True, "description": "for all"}, user="bob").status == 200
    assert store.request("GET", "Open/").json()["description"] == "for all"
    assert store.request("GET", "Open/o1/").json()["label"] == "o1"  # anonymous
    assert store.request("GET", "Open/o1/", user="ada").status == 200  # any user
    assert store.request("PUT", "Open/o2/", record("o2")).status == 401
    assert store.request("PUT", "Open/o2/", record("o2"), user="ada").status == 403
    assert [p["id"] for p in store.request("GET", "", user="ada").json()] == ["Open", "Secret"]

    members = store.request("GET", "Open/permissions/", user="bob")
    assert members.status == 200 and members.json()["users"] == ["bob"]
    assert store.request("GET", "Open/permissions/").status == 401
    assert store.request("GET", "Open/permissions/", user="ada").status == 403
    granted = store.request("POST", "Open/permissions/", {"user": "ada"}, user="bob")
    assert granted.status == 201 and granted.json()["users"] == ["ada", "bob"]
    assert store.request("POST", "Open/permissions/", {"user": "ghost"}, user="bob").status == 404
    assert put_record(store, "Open", record("o2")).status == 201  # ada may write now


# -- SQLite only: the real smt client, load, malformed input, pages ------------------------------------------

@pytest.fixture
def smt(tmp_path):
    require_smt("httplib2")
    return SmtSession(tmp_path / "work")


def _label_of(run):
    return run.stdout.split("Record label for this run: '", 1)[1].split("'", 1)[0]


@sqlite_only
def test_the_smt_client_end_to_end(start_store, smt):
    store = start_store()
    public_url = store.url().replace("http://", "http://ada:PASSWORD@")
    smt("init", f"--store={store.url('ada')}", "--main=main.py", "--executable=" + sys.executable, "MyProject")
    smt.transcript[-1] = smt.transcript[-1].replace(store.url("ada"), public_url)  # no password in the log
    first = smt("run", "--reason=first try", "1", "2")
    label = _label_of(first)
    assert "computed 1 2" in first.stdout and "Data keys are [out-1-2.txt(" in first.stdout

    with balsamdb.connect(store.path) as db:
        doc = db.records.get("MyProject", label)
    assert doc["duration"] > 0 and doc["reason"] == "first try" and "_finished_" in doc["tags"]
    assert [o["path"] for o in doc["output_data"]] == ["out-1-2.txt"]
    assert "computed 1 2" in doc["stdout_stderr"] and doc["platforms"] and doc["script_arguments"] == "1 2"
    assert store.request("GET", f"MyProject/{label}/", user="ada").json() == doc

    second = _label_of(smt("run", "--label=second", "3"))
    listed = smt("list", "-l")
    assert f"Label            : {label}" in listed.stdout and "Label            : second" in listed.stdout
    assert "Duration         : " in listed.stdout and "Script_Arguments : 1 2" in listed.stdout
    assert sorted(smt("list").stdout.split()) == sorted([label, second])

    smt("tag", "paper", label)
    smt("comment", "looks right")                    # the most recent record (GET {p}/last/)
    smt("comment", label, "the first one")
    assert smt("list", "paper").stdout.split() == [label]
    with balsamdb.connect(store.path) as db:
        assert "paper" in db.records.get("MyProject", label)["tags"]
        assert db.records.get("MyProject", label)["outcome"] == "the first one"
        assert db.records.get("MyProject", "second")["outcome"] == "looks right"

    # Same label, different provenance: the record is replaced, its earlier versions kept.
    again = smt("run", "--label=second", "4")
    assert "computed 4" in again.stdout
    with balsamdb.connect(store.path) as db:
        assert db.records.get("MyProject", "second")["script_arguments"] == "4"
        versions = db.records.versions("MyProject", "second")
        assert db.records.get("MyProject", "second", version=versions[0]["version"])["script_arguments"] == "3"

    deleted = smt("delete", "--tag", "paper")
    assert deleted.stdout.strip() == "1 records deleted."
    smt("run", "--label=third", "5")
    smt("delete", "second")
    assert "Could not delete" not in smt.transcript[-1]
    with balsamdb.connect(store.path) as db:
        assert db.records.labels("MyProject") == ["third"]
    assert smt("list").stdout.split() == ["third"]

    transcript = "\n".join(smt.transcript)
    (smt.workdir.parent / "smt-session.txt").write_text(transcript)
    print("\n---- smt session ----\n" + transcript)


@sqlite_only
def test_sixteen_smt_runs_at_once(start_store, smt):
    store = start_store()
    smt("init", f"--store={store.url('ada')}", "--main=main.py", "--executable=" + sys.executable,
        "--labelgenerator=uuid", "Crowd")
    procs = [smt.popen("run", str(i)) for i in range(16)]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=SMT_TIMEOUT * 2)
        outputs.append(out)
        assert proc.returncode == 0, out
    labels = {_label_of(type("Run", (), {"stdout": out})) for out in outputs}
    assert len(labels) == 16
    with balsamdb.connect(store.path) as db:
        docs = db.records.list("Crowd")
    assert {d["label"] for d in docs} == labels
    assert sorted(d["script_arguments"] for d in docs) == sorted(str(i) for i in range(16))
    assert all(d["duration"] and d["output_data"] and "_finished_" in d["tags"] for d in docs)
    # An unchanged PUT of the project answers 201 within the race window after its creation (a late
    # racer), 200 after it: the window is wall time, and a loaded machine can take longer than it.
    with balsamdb.connect(store.path) as db:
        created = db.call("project_get", name="Crowd", count=False)["created_at"]
    before = time.time() - created
    status = store.request("PUT", "Crowd/", {}, user="ada").status
    after = time.time() - created
    if after < CREATE_RACE_WINDOW:
        assert status == 201, (status, after)
    elif before >= CREATE_RACE_WINDOW:
        assert status == 200, (status, before)
    else:
        assert status in (200, 201), (status, before, after)  # the window ended during the request


@sqlite_only
def test_sixty_four_clients_at_once(store):
    assert store.request("PUT", "Load/", {}, user="ada").status == 201

    def client(i):
        statuses = []
        for j in range(3):
            doc = record(f"c{i}-{j}", timestamp=f"2024-05-01 12:{i:02d}:{j:02d}+0000")
            statuses.append(put_record(store, "Load", doc).status)
            got = store.request("GET", f"Load/c{i}-{j}/", user="ada")
            statuses.append(got.status if got.json() == doc else -1)
        statuses.append(store.request("GET", "Load/", user="ada").status)
        return statuses

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(client, range(64)))
    assert all(s == [201, 200, 201, 200, 201, 200, 200] for s in results), results
    with balsamdb.connect(store.path) as db:
        assert len(db.records.labels("Load")) == 192


@sqlite_only
def test_large_records_and_oversized_bodies(store):
    output = ("x" * 99 + "\n") * 50_000 + "é ü 漢字"  # 5 MB of program output, some of it not ASCII
    doc = record("big", stdout_stderr=output, diff="d" * 100_000)
    assert put_record(store, "Big", doc).status == 201
    assert store.request("GET", "Big/big/", user="ada").json() == doc

    conn = http.client.HTTPConnection("127.0.0.1", store.port, timeout=30)
    try:
        conn.putrequest("PUT", "/Big/huge/")
        conn.putheader("Content-Length", str(65 * 1024 * 1024))
        conn.putheader("Content-Type", RECORD_TYPE)
        conn.endheaders()
        assert conn.getresponse().status == 413
    finally:
        conn.close()
    assert store.request("GET", "Big/", user="ada").status == 200


@sqlite_only
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(store):
    assert put_record(store, "P", record("r1")).status == 201
    answers = {
        "invalid UTF-8 body": store.request("PUT", "P/r2/", b'{"label": "r2\xff\xfe"}', user="ada").status,
        "a JSON list": store.request("PUT", "P/r2/", b"[1, 2]", user="ada").status,
        "invalid UTF-8 path": store.request("GET", "P/%FF%FE/", user="ada").status,
        "bad Basic token": store.request("GET", "P/", headers={"Authorization": "Basic !!!"}).status,
        "Basic of invalid UTF-8": store.request("GET", "P/", headers={
            "Authorization": "Basic " + base64.b64encode(b"ada:\xff").decode()}).status,
        "POST on a record": store.request("POST", "P/r1/", b"{}", user="ada").status,
        "PATCH a project": store.request("PATCH", "P/", b"{}", user="ada").status,
        "unknown URL": store.request("GET", "P/r1/extra/thing/", user="ada").status,
        "public not a bool": store.request("PUT", "P/", {"public": "yes"}, user="ada").status,
        "grant without a user": store.request("POST", "P/permissions/", {}, user="ada").status,
        "empty tag": store.request("DELETE", "P/tag//", user="ada").status,
    }
    assert answers == {
        "invalid UTF-8 body": 400, "a JSON list": 400, "invalid UTF-8 path": 404, "bad Basic token": 401,
        "Basic of invalid UTF-8": 401, "POST on a record": 405, "PATCH a project": 405, "unknown URL": 404,
        "public not a bool": 400, "grant without a user": 400, "empty tag": 404,
    }
    huge = store.request("GET", "P/", user="ada", headers={"X-Filler": "a" * 300_000})
    assert 400 <= huge.status < 500
    with socket.create_connection(("127.0.0.1", store.port), timeout=10) as sock:
        sock.sendall(b"NONSENSE \xff\xfe\r\nHost: x\r\n\r\n")
        reply = sock.recv(100)
    assert reply.startswith(b"HTTP/1.") and reply.split()[1].startswith(b"4"), reply
    assert store.request("GET", "P/r1/", user="ada").json() == record("r1")
    assert "Traceback" not in (store.path / "log" / "http.log").read_text()


@sqlite_only
def test_json_or_html_by_accept_or_format(store):
    evil = record("<script>alert(1)</script>", tags=["<b>bold</b>"], outcome="a & b",
                  stdout_stderr="<img src=x onerror=alert(2)>")
    assert put_record(store, "Pages", evil).status == 201
    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    listing = store.request("GET", "Pages/", user="ada", headers=browser)
    assert listing.status == 200 and listing.headers["Content-Type"].startswith("text/html")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing.text and "<script>" not in listing.text
    assert "&lt;b&gt;bold&lt;/b&gt;" in listing.text and "a &amp; b" in listing.text
    page = store.request("GET", f"Pages/{quote(evil['label'])}/", user="ada", headers=browser)
    assert page.status == 200 and "&lt;img src=x onerror=alert(2)&gt;" in page.text and "<img" not in page.text
    projects = store.request("GET", "?format=html", user="ada")
    assert projects.headers["Content-Type"].startswith("text/html") and ">Pages</a>" in projects.text
    forced = store.request("GET", "Pages/?format=json", user="ada", headers=browser)
    assert forced.headers["Content-Type"] == "application/json" and forced.json()["id"] == "Pages"
    assert store.request("GET", "Pages/?format=xml", user="ada").status == 406
    assert store.request("GET", "Pages/", user="ada", headers={"Accept": "application/xml"}).status == 406
    typed = store.request("GET", "Pages/", user="ada", headers={"Accept": f"{PROJECT_TYPE}, application/json"})
    assert typed.headers["Content-Type"] == PROJECT_TYPE
    plain = store.request("GET", "Pages/", user="ada", headers={"Accept": "*/*"})
    assert plain.headers["Content-Type"] == "application/json"
    login = store.request("GET", "", headers=browser)
    assert login.status == 401 and "Log in" in login.text


@sqlite_only
def test_served_under_a_prefix(start_store):
    store = start_store("--prefix", "/records/", "--trusted-proxy", "127.0.0.1")
    assert store.request("PUT", "Pre/", {}, user="ada").status == 201
    assert put_record(store, "Pre", record("a b")).status == 201
    urls = store.request("GET", "Pre/", user="ada").json()["records"]
    assert urls == [f"http://127.0.0.1:{store.port}/records/Pre/a%20b/"]
    assert store.request("GET", urls[0], user="ada").json()["label"] == "a b"
    assert store.request("GET", f"http://127.0.0.1:{store.port}/Pre/", user="ada").status == 404
    assert [p["uri"] for p in store.request("GET", "", user="ada").json()] == \
        [f"http://127.0.0.1:{store.port}/records/Pre/"]
    # Behind a TLS proxy (docs/http.md): the URLs are the ones the client used.
    proxied = store.request("GET", "Pre/", user="ada", headers={
        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "records.lab.example.org",
        "X-Forwarded-Port": "443", "X-Forwarded-For": "192.0.2.7"})
    assert proxied.json()["records"] == ["https://records.lab.example.org/records/Pre/a%20b/"]


@sqlite_only
def test_a_busy_port_is_a_clear_error(store):
    second = subprocess.run([sys.executable, "-c", SERVE_MAIN, "serve", "--path", str(store.path),
                             "--port", str(store.port)], capture_output=True, text=True, timeout=60)
    assert second.returncode == 1 and "choose another --port" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert store.request("GET", "", user="ada").status == 200


# -- unit tests of the pure parts ---------------------------------------------------------------------------------

def test_password_checks_are_cached_by_user_password_and_hash(monkeypatch):
    from balsamdb.server import http as http_store

    calls = []

    def counting(password, stored):
        calls.append(password)
        return password == "right"

    monkeypatch.setattr(http_store.auth, "verify_password", counting)
    cache = http_store.PasswordCache(seconds=60)
    assert cache.check("ada", "right", "h1") and cache.check("ada", "right", "h1") and calls == ["right"]
    assert not cache.check("ada", "wrong", "h1") and not cache.check("ada", "wrong", "h1")
    assert calls == ["right", "wrong", "wrong"]  # failures are checked every time
    assert cache.check("ada", "right", "h2") and len(calls) == 4  # a new stored hash: checked again
    key = ("ada", hashlib.sha256(b"right").hexdigest(), "h1")
    assert key in cache._valid_until
    expired = http_store.PasswordCache(seconds=0)
    expired.check("ada", "right", "h1")
    expired.check("ada", "right", "h1")
    assert len(calls) == 6


def test_threads_each_get_their_own_database(dbdir):
    from balsamdb.server.http import Store

    store = Store(dbdir)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(store.db())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len({id(db) for db in seen}) == 4 and store.db() is store.db() and store.db() not in seen
