"""`db relay`: `smt` keeps working while its record store is down, and nothing is lost or doubled."""

import base64
import json
import socket
import sys
import time
import urllib.error
import urllib.request

import pytest
from helpers import db_cli, require_smt
from fixtures import relay_status as status
from fixtures import relay_store as store  # noqa: F401  (the fixture: a DB directory served over HTTP)

import balsamdb

RUNS = 16
HOST = socket.gethostname()
DRAIN_DEADLINE = 300.0


@pytest.fixture
def relay(store, tmp_path, request):
    served, _restart = store
    directory = tmp_path / "relay"
    started = db_cli("relay", "--to", served.url("ada"), "--dir", directory, "--port", "0", "--json")
    request.addfinalizer(lambda: db_cli("relay", "--stop", "--dir", directory))
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    assert oct((directory / "token").stat().st_mode & 0o777) == "0o600"
    assert oct(directory.stat().st_mode & 0o777) == "0o700"
    user, _, password = (directory / "token").read_text().strip().partition(":")
    return info["url"], user, password, directory


def test_smt_runs_through_the_relay_while_the_store_is_down(store, relay, tmp_path):
    require_smt("httplib2")
    from smt_client import SmtSession

    served, restart = store
    url, user, password, directory = relay
    smt = SmtSession(tmp_path / "work")
    relay_url = url.replace("http://", f"http://{user}:{password}@")
    smt("init", f"--store={relay_url}", "--main=main.py", "--executable=" + sys.executable,
        "--labelgenerator=uuid", "Offline")
    smt("run", "--label=before", "0")  # through the relay while the store is up
    procs = [smt.popen("run", str(i)) for i in range(1, RUNS + 1)]
    served.proc.kill()  # the store goes away while the runs save
    served.proc.wait(30)
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        outputs.append(out)
    labels = {out.split("Record label for this run: '", 1)[1].split("'", 1)[0] for out in outputs}
    assert len(labels) == RUNS
    listed = smt("list")  # reads while the store is down: from the relay's spool and copy
    assert labels | {"before"} <= set(listed.stdout.split())
    waiting = status(url, user, password)
    assert waiting["waiting"] > 0 and waiting["store_up"] is False, waiting
    unrefused = db_cli("relay", "--status", "--dir", directory)
    assert "store unreachable" in unrefused.stdout, unrefused.stdout

    restarted = time.time()
    restart()
    end = time.monotonic() + DRAIN_DEADLINE
    while (now := status(url, user, password))["waiting"]:
        assert time.monotonic() < end, f"the relay did not forward its spool within {DRAIN_DEADLINE} s: {now}"
        time.sleep(0.2)  # wait-ok: polls the relay's status with the deadline above
    assert now["refused"] == 0
    with balsamdb.connect(served.path) as db:
        assert set(db.records.labels("Offline")) == labels | {"before"}
        for label in labels:
            doc = db.records.get("Offline", label)
            assert doc["duration"] and doc["output_data"] and "_finished_" in doc["tags"], doc
            versions = [db.records.get("Offline", label, version=v["version"])
                        for v in db.records.versions("Offline", label)]
            tags = [v["tags"] for v in versions]
            assert len(versions) == 5 and tags[0] == ["_initialized_"] and tags[-1] == ["_finished_"], tags
            # the store's user (ada, not an admin), for the relay's client: see test_relay_saved_at.py
            assert {v["saved_by"] for v in db.records.versions("Offline", label)} == {f"ada for {user}@{HOST}"}
            # every save was answered while the store was down: its version keeps that time
            assert all(v["saved_at"] < restarted for v in db.records.versions("Offline", label))
    (tmp_path / "relay-session.txt").write_text("\n".join(smt.transcript))
    print("\n---- smt through the relay ----\n" + "\n".join(smt.transcript[-3:]))


def test_the_relay_wants_its_token(relay):
    url, user, _password, _directory = relay
    for auth in (None, f"{user}:wrong"):
        request = urllib.request.Request(url, headers={} if auth is None else {
            "Authorization": "Basic " + base64.b64encode(auth.encode()).decode()})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401 and "Basic" in refused.value.headers["WWW-Authenticate"]
    assert url.startswith("http://127.0.0.1:")


def test_answered_saves_survive_a_killed_relay(store, relay):
    import http.client
    import os
    import signal
    from urllib.parse import urlsplit

    from records import sumatra_record as record

    served, restart = store
    url, user, password, directory = relay
    token = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    where = urlsplit(url)

    def call(method, path, doc=None):
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
        conn.request(method, path, None if doc is None else json.dumps(doc), {"Authorization": token})
        answer = conn.getresponse()
        try:
            return answer.status, answer.read()
        finally:
            conn.close()

    assert call("PUT", "/Kept/early/", record("early", tags=["other"]))[0] == 201  # forwarded, then cached
    end = time.monotonic() + DRAIN_DEADLINE
    while (now := status(url, user, password))["waiting"]:
        assert time.monotonic() < end, now
        time.sleep(0.05)  # wait-ok: polls the relay's status with the deadline above
    served.proc.kill()
    served.proc.wait(30)
    docs = [record(f"r{i}", tags=["_finished_"] + (["special"] if i == 0 else []), stdout_stderr=f"output {i} ✓")
            for i in range(3)]
    for doc in docs:
        assert call("PUT", f"/Kept/{doc['label']}/", doc)[0] == 201
    answered = time.time()
    # listed while the store is down: from the spool and the cache, with ?tags= matching as the store does
    for query, expected in (("", {"early", "r0", "r1", "r2"}), ("?tags=special", {"r0"}), ("?tags=other", {"early"})):
        code, body = call("GET", f"/Kept/{query}")
        assert code == 200 and {u.rstrip("/").rsplit("/", 1)[-1] for u in json.loads(body)["records"]} == expected
    assert status(url, user, password)["waiting"] == 3
    pid = json.loads((directory / "relay.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < end, "the killed relay did not go away"
        time.sleep(0.05)  # wait-ok: polls for the process to end, with the deadline above
    restart()
    again = db_cli("relay", "--to", served.url("ada"), "--dir", directory, "--port", "0", "--json")
    assert again.returncode == 0, again.stderr
    url = json.loads(again.stdout)["url"]
    end = time.monotonic() + DRAIN_DEADLINE
    while (now := status(url, user, password))["waiting"]:
        assert time.monotonic() < end, now
        time.sleep(0.1)  # wait-ok: polls the relay's status with the deadline above
    with balsamdb.connect(served.path) as db:
        assert [db.records.get("Kept", d["label"]) for d in docs] == docs
        assert all(len(db.records.versions("Kept", d["label"])) == 1 for d in docs)
        # each version has the time the relay answered the save, not the (later) time it was forwarded
        saved = [db.records.versions("Kept", d["label"])[0] for d in docs]
        assert all(v["saved_at"] <= answered for v in saved), (answered, saved)
        assert [v["saved_at"] for v in saved] == sorted(v["saved_at"] for v in saved)
        assert {v["saved_by"] for v in saved} == {f"ada for {user}@{HOST}"}
