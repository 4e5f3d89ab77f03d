"""``balsamdb.connect("http://...")``: the same API over HTTP, against a real `db serve` process,
with exactly-once retries and a local spool that survives a killed HTTP store."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import balsamdb
from balsamdb.exceptions import AuthenticationError, BadRequest, ConfigError, NotFound
from balsamdb.passwords import hash_password
from helpers import db_cli, wait_for
from served import Served

ADMIN, ADMIN_PW = "lab", "lab admin pw"
USERS = {"ada": "ada-s3cret!", "bob": "bob's pass phrase"}
WRITER_DEADLINE = 120.0


def _url(served, user, password):
    return f"http://{user}:{password}@127.0.0.1:{served.port}/"


@pytest.fixture
def remote(served_dbdir, tmp_path, request):
    """(`db serve` process, admin connection, local connection) for a served DB directory."""
    with balsamdb.connect(served_dbdir) as local:
        local.call("user_save", name=ADMIN, password_hash=hash_password(ADMIN_PW), admin=True)
        for name, password in USERS.items():
            local.call("user_save", name=name, password_hash=hash_password(password))
    served = Served(served_dbdir, tmp_path)
    request.addfinalizer(served.stop)
    db = balsamdb.connect(_url(served, ADMIN, ADMIN_PW), client_deadline=10,
                          remote_spool_dir=str(tmp_path / "remote-spool"))
    request.addfinalizer(db.close)
    local = balsamdb.connect(served_dbdir)
    request.addfinalizer(local.close)
    return served, db, local


def test_the_same_api_over_http(remote):
    served, db, local = remote
    assert db.ping()["pong"] is True
    job = db.jobs.create(name="sim", workflow="sweep", tags=["a"], num_nodes=2, data={"x": 1})
    assert job.working_directory == f"data/sweep/sim_{job.id[:8]}"  # relative: it lives beside the store
    db.jobs.update_state(job.id, "READY", "queued")
    db.jobs.update_state(job.id, "RUNNING")
    ids = db.jobs.bulk_create([{"name": f"b{i}", "workflow": "bulk"} for i in range(50)])
    assert db.jobs.count(workflow="bulk") == 50 == local.jobs.count(workflow="bulk")
    assert [h["to_state"] for h in db.jobs.history(job.id)] == ["CREATED", "READY", "RUNNING"]
    assert db.jobs.get(job.id).to_dict()["state"] == local.jobs.get(job.id).state == "RUNNING"
    assert sorted(j.id for j in db.jobs.filter(workflow="bulk")) == sorted(ids)
    assert db.jobs.delete(*ids[:10]) == 10 and local.jobs.count(workflow="bulk") == 40

    assert db.records.save("P", {"label": "r1", "tags": ["t"], "reason": "why"}) is True
    assert db.records.save("P", {"label": "r1", "tags": ["t"], "reason": "why not"}) is False
    assert db.records.tag("P", "r1", add=["u"]) == ["t", "u"]
    assert local.records.get("P", "r1") == db.records.get("P", "r1") == \
        {"label": "r1", "tags": ["t", "u"], "reason": "why not"}
    assert db.records.labels("P", tags=["u"]) == ["r1"]
    with pytest.raises(NotFound):
        db.records.get("P", "nope")
    assert [p["name"] for p in db.projects.list()] == ["P"]
    assert db.records.delete("P", "r1") == 1 and local.records.labels("P") == []
    assert db.last_route == "http"


def test_a_retry_of_one_request_id_is_applied_once(remote):
    served, db, local = remote
    spec = {"id": "6f1c2d7e-0000-4000-8000-000000000001", "name": "once"}
    first = db.request("job_create", {"job": spec}, request_id="retry-me-0123456789")
    again = db.request("job_create", {"job": spec}, request_id="retry-me-0123456789")
    assert first == again and local.jobs.count(name="once") == 1
    # Another user's request with the same id is another request.
    ada = balsamdb.connect(_url(served, "ada", USERS["ada"]), client_deadline=5)
    assert ada.request("record_save", {"project": "A", "record": {"label": "x"}},
                       request_id="retry-me-0123456789") == {"created": True, "version": 1}
    assert local.records.labels("A") == ["x"]


def test_users_reach_only_their_projects(remote):
    served, db, local = remote
    ada = balsamdb.connect(_url(served, "ada", USERS["ada"]), client_deadline=5)
    bob = balsamdb.connect(_url(served, "bob", USERS["bob"]), client_deadline=5)
    assert ada.records.save("Ada", {"label": "mine"}) is True  # a new project is hers
    assert ada.records.labels("Ada") == ["mine"]
    with pytest.raises(NotFound, match="no project 'Ada' that user 'bob' may use"):
        bob.records.labels("Ada")  # a non-member is told what a missing project tells (docs/http.md)
    with pytest.raises(AuthenticationError, match="needs an admin"):
        ada.jobs.create(name="nope")
    with pytest.raises(AuthenticationError, match="needs an admin"):
        ada.call("export_items", kind="user")
    assert [p["name"] for p in bob.projects.list()] == []
    local.projects.save("Open", public=True)
    assert [p["name"] for p in bob.projects.list()] == ["Open"]
    wrong = balsamdb.connect(f"http://ada:wrong@127.0.0.1:{served.port}/", client_deadline=5)
    with pytest.raises(AuthenticationError, match="wrong user name or password"):
        wrong.records.labels("Ada")
    with pytest.raises(BadRequest, match="reserved|endpoint"):
        ada.records.save("_balsamdb", {"label": "x"})
    assert local.jobs.count() == 0


def test_bad_requests_to_the_operation_endpoint(remote):
    served, db, local = remote
    auth = {"user": "ada"}
    from served import PASSWORDS  # ada's password in served.py is the one USERS has
    assert PASSWORDS["ada"] == USERS["ada"]
    cases = [
        (b"not json", 400, "not valid JSON"),
        (json.dumps({"id": "short", "op": "ping", "params": {}}).encode(), 400, "id must be"),
        (json.dumps({"id": "x" * 20, "op": "drop_tables", "params": {}}).encode(), 400, "unknown operation"),
        (json.dumps({"id": "x" * 20, "op": "record_labels", "params": []}).encode(), 400, "params must"),
        (json.dumps({"id": "x" * 20, "op": "record_labels", "params": {"project": "A", "x": 1}}).encode(), 400,
         "unexpected keyword"),
    ]
    for body, status, words in cases:
        answer = served.request("POST", "_balsamdb/call", body, headers={"Content-Type": "application/json"},
                                **auth)
        assert answer.status == status and words in answer.json()["error"]["message"], answer
        assert answer.json()["ok"] is False
    anonymous = served.request("POST", "_balsamdb/call", b"{}")
    assert anonymous.status == 401 and "WWW-Authenticate" in anonymous.headers
    info = served.request("GET", "_balsamdb/", user="ada").json()
    assert info["api"] == 1 and info["user"] == "ada" and info["admin"] is False
    not_ours = balsamdb.connect(f"http://ada:x@127.0.0.1:{served.port}/nothing-here/", client_deadline=5)
    with pytest.raises((ConfigError, AuthenticationError)):
        not_ours.ping()


WRITER = textwrap.dedent("""
    import json, os, sys, time
    import balsamdb
    url, spool_dir, count, go, back = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[6]
    db = balsamdb.connect(url, client_deadline=0.5, remote_spool_dir=spool_dir)
    routes = []
    for i in range(count):
        result = db.records.save("Spooled", {"label": f"w{i:04d}", "tags": ["w"]})
        routes.append(db.last_route)
        if i == count // 3:
            open(go, "w").close()   # the test kills the store now, and restarts it
            while db.records.save("Spooled", {"label": f"w{i:04d}", "tags": ["w"]}) and not os.path.exists(back):
                time.sleep(0.01)  # wait-ok: a second save of one label changes nothing; the test's deadline bounds it
        time.sleep(0.01)  # wait-ok: pacing the writes so that some meet the store down
    deadline = time.monotonic() + float(sys.argv[5])
    while not db.drain_spool():
        if time.monotonic() > deadline:
            sys.exit("the spool did not drain: " + str(db.spool.count()))
    print(json.dumps({"routes": routes, "left": db.spool.count()}))
""")


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_a_killed_http_store_loses_no_write(remote, tmp_path):
    served, db, local = remote
    go = tmp_path / "go"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, _url(served, ADMIN, ADMIN_PW), str(tmp_path / "wspool"), "300", str(go),
         str(WRITER_DEADLINE), str(tmp_path / "back")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: go.exists() or writer.poll() is not None, 60, "the writer to reach a third")
        os.kill(served.proc.pid, signal.SIGKILL)
        served.proc.wait(10)
        wait_for(lambda: any((tmp_path / "wspool").rglob("*.req")) or writer.poll() is not None, 60,
                 "a write to wait in the local spool")
        restarted = Served(served.path, tmp_path, port=served.port)
        (tmp_path / "back").touch()
        try:
            out, err = writer.communicate(timeout=WRITER_DEADLINE + 30)
        finally:
            restarted.stop()
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
    assert writer.returncode == 0, err
    report = json.loads(out)
    runs = [[route, 1] for route in report["routes"][:1]]
    for route in report["routes"][1:]:
        if route == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([route, 1])
    # Every write was answered by the store or spooled; the spool emptied once the store was back.
    assert report["left"] == 0 and [r[0] for r in runs] == ["http", "spool", "http"], runs
    labels = local.records.labels("Spooled")
    assert sorted(labels) == [f"w{i:04d}" for i in range(300)]  # each exactly once


def test_db_spool_shows_and_drains_the_local_spool(remote, tmp_path):
    served, db, local = remote
    url = _url(served, ADMIN, ADMIN_PW)
    env = dict(os.environ, BALSAMDB_REMOTE_SPOOL_DIR=str(tmp_path / "cli-spool"), BALSAMDB_CLIENT_DEADLINE="0.3")
    dead = f"http://{ADMIN}:{ADMIN_PW}@127.0.0.1:1/"
    offline = balsamdb.connect(dead, client_deadline=0.3, remote_spool_dir=str(tmp_path / "cli-spool"))
    assert offline.records.save("Later", {"label": "a"}).spooled
    shown = db_cli("spool", "--url", dead, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    assert [item["op"] for item in json.loads(shown.stdout)["pending"]] == ["record_save"]
    # The same spool, sent to where the store really is (a store that moved: copy the files).
    moved = balsamdb.connect(url, remote_spool_dir=str(tmp_path / "cli-spool"))
    for path in offline.spool.pending():
        moved.spool.ensure()
        os.rename(path, moved.spool.new / path.name)
    drained = db_cli("spool", "--url", url, "--drain", env=env)
    assert drained.returncode == 0 and "applied 1 spooled" in drained.stdout, drained.stdout + drained.stderr
    assert local.records.labels("Later") == ["a"]


def test_db_which_and_db_ls_take_an_http_store_from_balsam_db_path(remote):
    served, db, local = remote
    db.jobs.create(name="listed-over-http")
    env = dict(os.environ, BALSAM_DB_PATH=_url(served, ADMIN, ADMIN_PW))
    shown = db_cli("which", env=env)
    assert shown.returncode == 0 and f"answers, as {ADMIN} (admin)" in shown.stdout, shown.stdout + shown.stderr
    assert ADMIN_PW not in shown.stdout  # the password is shown as ***
    listed = db_cli("ls", env=env)
    assert listed.returncode == 0 and "listed-over-http" in listed.stdout, listed.stdout + listed.stderr


def test_a_refused_write_is_raised_never_spooled_and_later_writes_flow(remote, tmp_path):
    served, db, local = remote
    from balsamdb.exceptions import InvalidTransition

    job = db.jobs.create(name="strict")
    with pytest.raises(InvalidTransition):
        db.jobs.update_state(job.id, "JOB_FINISHED")  # CREATED -> JOB_FINISHED skips RUNNING
    assert db.spool.count() == 0 and db.last_route == "http"
    assert db.records.save("After", {"label": "next"}) is True  # not stuck behind the refusal
    # A public project's members are not for everyone to see.
    local.projects.save("Open", public=True)
    local.call("permission_grant", project="Open", user="ada")
    bob = balsamdb.connect(_url(served, "bob", USERS["bob"]), client_deadline=5)
    assert bob.records.labels("Open") == []  # reading a public project is fine
    with pytest.raises(AuthenticationError, match="only users"):
        bob.call("permission_list", project="Open")
