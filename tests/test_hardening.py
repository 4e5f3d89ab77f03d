"""Input hardening (issue 12, item 7): secrets, `db init` under a running server, NaN, bodies, logins.

Real processes: the write server started by `db dbserver`, `db init` and `db serve` run as the CLI does.
"""

import json
import math
import os
import sqlite3
import time

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import AuthenticationError, BadRequest, ConfigError

from helpers import address, db_cli, kill_everything, wait_for


# -- the secret --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"\n", b"short-secret\n"])
def test_an_empty_or_short_secret_is_refused_by_client_and_server(dbdir, content):
    (dbdir / "secret").write_bytes(content)
    with pytest.raises(ConfigError, match="a secret needs at least 32"):
        balsamdb.connect(dbdir, require_server=True).jobs.create(name="j")
    started = db_cli("dbserver", "--path", dbdir)
    try:
        assert started.returncode != 0, started.stdout
        assert "a secret needs at least 32" in started.stderr, started.stderr
        assert "Traceback" not in started.stderr
    finally:
        db_cli("dbserver", "--stop", "--path", dbdir)


def test_db_init_under_a_running_server_changes_nothing_and_refuses_changes(served_dbdir, run_db, backend):
    path = served_dbdir
    db = balsamdb.connect(path, require_server=True)
    db.jobs.create(name="before")
    again = run_db("init", path, *(["--db-type", "postgres"] if backend == "postgres" else []))
    assert again.returncode == 0, again.stderr
    assert "is already a current" in again.stdout
    # The error of a client whose secret is gone says "db init"; under a running server it must refuse.
    secret = (path / "secret").read_bytes()
    (path / "secret").unlink()
    refused = run_db("init", path, *(["--db-type", "postgres"] if backend == "postgres" else []))
    assert refused.returncode != 0, refused.stdout
    assert "write a new secret" in refused.stderr and "Stop it first" in refused.stderr, refused.stderr
    assert not (path / "secret").exists(), "db init wrote a new secret under the running server"
    (path / "secret").write_bytes(secret)
    (path / "secret").chmod(0o600)
    db.jobs.create(name="after")  # the server's answers are still verifiable
    assert sorted(j.name for j in db.jobs.filter()) == ["after", "before"]


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_db_init_under_a_running_server_refuses_a_schema_upgrade(served_dbdir, run_db):
    path = served_dbdir
    from balsamdb import migrations, models

    table = models.SchemaVersion._meta.table_name

    with sqlite3.connect(path / "db.sqlite3") as con:
        con.execute(f"UPDATE {table} SET version = ?", (migrations.SCHEMA_VERSION - 1,))
    refused = run_db("init", path)
    assert refused.returncode != 0, refused.stdout
    assert "upgrade the schema" in refused.stderr and "Stop it first" in refused.stderr, refused.stderr
    with sqlite3.connect(path / "db.sqlite3") as con:
        assert con.execute(f"SELECT version FROM {table}").fetchone()[0] == migrations.SCHEMA_VERSION - 1


# -- NaN and infinities ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["server", "direct", "spool"])
def test_nan_in_a_payload_is_refused_by_the_client_before_it_is_sent_or_spooled(dbdir, route):
    if route == "server":
        db_cli("dbserver", "--path", dbdir, check=True)
    try:
        db = balsamdb.connect(dbdir, require_server=route == "spool")
        job = db.jobs.create(name="j", data={"x": 1.0})
        for bad in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(BadRequest, match="NaN or an infinity.*None .null.*string"):
                db.jobs.modify(job.id, data={"x": bad})
            with pytest.raises(BadRequest, match="NaN or an infinity"):
                db.records.save("P", {"label": "r", "value": bad})
        assert not list((dbdir / "spool" / "new").glob("*.req"))[1:], "a NaN write was spooled"
        if route != "spool":
            assert db.jobs.get(job.id).data == {"x": 1.0}
            assert "P" not in [p["name"] for p in db.projects.list()]  # nothing stored, not even the project
    finally:
        if route == "server":
            db_cli("dbserver", "--stop", "--path", dbdir)


def _raw_request(path, body_text):
    """Send ``body_text`` (a str of JSON, signed with the right secret) and return the answer body."""
    secret = DBDirectory(path).secret()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address(path)["address"])
    try:
        sock.send_multipart([b""] + protocol.encode_body(secret, body_text.encode()))
        assert sock.poll(10000), "no answer within 10 s"
        return json.loads(sock.recv_multipart()[1][36:])
    finally:
        sock.close()


def test_the_server_refuses_nan_and_infinities_in_the_envelope_and_the_payload(served_dbdir):
    path = served_dbdir
    now = time.time()
    job = '{"name": "j", "data": {"x": %s}}'
    cases = {
        "ts NaN": ('{"id": "a1", "op": "ping", "params": {}, "ts": NaN}', "bad_request"),
        "ts Infinity": ('{"id": "a2", "op": "ping", "params": {}, "ts": Infinity}', "bad_request"),
        "ts 1e999": ('{"id": "a3", "op": "ping", "params": {}, "ts": 1e999}', "bad_request"),
        "id NaN": ('{"id": NaN, "op": "ping", "params": {}, "ts": %r}' % now, "bad_request"),
        "data NaN": ('{"id": "a5", "op": "job_create", "params": {"job": %s}, "ts": %r}' % (job % "NaN", now),
                     "bad_request"),
        "data -Infinity": ('{"id": "a6", "op": "job_create", "params": {"job": %s}, "ts": %r}'
                           % (job % "-Infinity", now), "bad_request"),
        "data 1e400": ('{"id": "a7", "op": "job_create", "params": {"job": %s}, "ts": %r}' % (job % "1e400", now),
                       "bad_request"),
    }
    codes = {name: (_raw_request(path, text).get("error") or {}).get("code") for name, (text, _) in cases.items()}
    assert codes == {name: code for name, (_, code) in cases.items()}
    ok = _raw_request(path, '{"id": "a8", "op": "ping", "params": {}, "ts": %r}' % time.time())
    assert ok["ok"], ok
    assert balsamdb.connect(path).jobs.count() == 0


def test_strict_json_unit():
    assert protocol.loads_strict(b'{"a": [1.5, -2e10, null]}') == {"a": [1.5, -2e10, None]}
    for text in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e999}'):
        with pytest.raises(BadRequest, match="NaN or an infinity"):
            protocol.loads_strict(text)
    with pytest.raises(BadRequest, match="nested too deeply"):
        protocol.loads_strict(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(BadRequest, match="NaN or an infinity"):
        protocol.dumps_request({"op": "job_create", "params": {"x": math.nan}})
    # Behind the parser, the replay check refuses a non-finite time stamp too (NaN never expires).
    for ts in (math.nan, math.inf, -math.inf):
        with pytest.raises(AuthenticationError, match="finite time stamp"):
            protocol.check_request({"id": "x", "op": "ping", "params": {}, "ts": ts}, now=time.time())


# -- stray entries in the spool --------------------------------------------------------------------------------

def test_stray_entries_in_spool_new_move_to_failed_with_the_reason(dbdir):
    path = dbdir
    db = balsamdb.connect(path, require_server=True)
    waits = db.jobs.create(name="spooled")
    assert waits.spooled
    new = path / "spool" / "new"
    (new / "00000000000000000001-stray-dir.req").mkdir()
    os.mkfifo(new / "00000000000000000002-stray-fifo.req")
    db_cli("dbserver", "--path", path, check=True)
    try:
        wait_for(lambda: not os.listdir(new), 30, "spool/new to empty")
        assert [j.name for j in balsamdb.connect(path).jobs.filter()] == ["spooled"]
        failed = sorted(p.name for p in (path / "spool" / "failed").iterdir())
        assert failed == ["00000000000000000001-stray-dir.req", "00000000000000000001-stray-dir.req.answer.json",
                          "00000000000000000002-stray-fifo.req", "00000000000000000002-stray-fifo.req.answer.json"]
        reasons = [json.loads((path / "spool" / "failed" / name).read_text())["error"]["message"]
                   for name in failed if name.endswith(".json")]
        assert reasons == ["stray entry in spool/new: a directory, not a spooled write",
                           "stray entry in spool/new: not a regular file, not a spooled write"]
        status = balsamdb.connect(path).server_status()
        assert status["spool_pending"] == 0 and status["spool_failed"] == 2
        shown = db_cli("spool", "--path", path, timeout=30)
        assert shown.returncode == 0 and "stray entry" in shown.stdout, shown
        log = (path / "log" / "server.log").read_text()
        assert log.count("stray-dir.req is no spooled write") == 1, log
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


# -- db serve: bodies, log lines and logins ---------------------------------------------------------------------

@pytest.fixture
def http_store(served_dbdir, tmp_path, request):
    from balsamdb.passwords import hash_password
    from served import PASSWORDS, Served

    with balsamdb.connect(served_dbdir) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password))
    served = Served(served_dbdir, tmp_path, "--create-race-window", "0")
    request.addfinalizer(served.stop)
    return served


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_deep_bodies_and_nan_get_400_and_the_store_keeps_serving(http_store):
    store = http_store
    assert store.request("PUT", "P/", {}, user="ada").status == 201
    answers = {}
    for depth in (990, 100_000):
        body = b'{"label": "deep", "parameters": ' + b"[" * depth + b"]" * depth + b"}"
        answers[f"record {depth} deep"] = store.request("PUT", "P/deep/", body, user="ada").status
        call = b'{"id": "0123456789abcdef", "op": "project_list", "params": {"x": ' + b"[" * depth + \
               b"]" * depth + b"}}"
        answers[f"operation {depth} deep"] = store.request("POST", "_balsamdb/call", call, user="ada").status
    for constant in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        answer = store.request("PUT", "P/nan/", b'{"label": "nan", "duration": ' + constant + b"}", user="ada")
        answers[f"record {constant.decode()}"] = answer.status
        if answer.status == 400:
            assert "NaN or an infinity" in answer.json()["error"]
    assert answers == {"record 990 deep": 400, "operation 990 deep": 400, "record 100000 deep": 400,
                       "operation 100000 deep": 400, "record NaN": 400, "record Infinity": 400,
                       "record -Infinity": 400, "record 1e999": 400}
    assert store.request("GET", "P/nan/", user="ada").status == 404
    assert store.request("PUT", "P/fine/", {"label": "fine", "duration": 1.5}, user="ada").status == 201
    assert "Traceback" not in (store.path / "log" / "http.log").read_text()


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_control_characters_in_a_request_cannot_forge_a_log_line(http_store):
    store = http_store
    forged = "2030-01-01 00:00:00,000 1 balsamdb.server.http INFO GET /admin 200 root 1.0 ms"
    path = "P%0a" + forged.replace(" ", "%20") + "%0d%1b[31m/"
    store.request("GET", path, user="ada")
    store.request("GET", "", headers={"Authorization": "Basic " + __import__("base64").b64encode(
        ("evil\n" + forged + ":x").encode()).decode()})
    lines = (store.path / "log" / "http.log").read_text().splitlines()
    assert not [line for line in lines if line.startswith("2030-")], lines
    assert any("P\\x0a2030-01-01" in line and "\\x0d\\x1b[31m" in line for line in lines), lines


def _login_app(path):
    """The real WSGI application of `db serve` on ``path``, driven in this process (to count hashes)."""
    from balsamdb.server.http import create_app

    return create_app(path).test_client()


def _basic(name, password):
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_unknown_user_and_wrong_password_cost_one_hash_each(served_dbdir, monkeypatch):
    import hashlib

    from balsamdb.passwords import hash_password

    balsamdb.connect(served_dbdir).call("user_save", name="ada", password_hash=hash_password("right-one"))
    client = _login_app(served_dbdir)
    calls = []
    real = hashlib.scrypt

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counting)
    client.get("/", headers=_basic("nobody-here", "guess"))  # the dummy hash is made once, on first need
    costs = {}
    for name in ("ada", "nobody-here", "ada", "nobody-here"):
        calls.clear()
        answer = client.get("/", headers=_basic(name, "wrong"), environ_base={"REMOTE_ADDR": "10.0.0.9"})
        costs.setdefault(name, []).append((answer.status_code, len(calls)))
    assert costs == {"ada": [(401, 1), (401, 1)], "nobody-here": [(401, 1), (401, 1)]}
    calls.clear()
    assert client.get("/", headers=_basic("ada", "right-one")).status_code == 200 and len(calls) == 1


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_failed_logins_are_throttled_and_a_legitimate_user_is_still_served(served_dbdir):
    from balsamdb.passwords import hash_password
    from balsamdb.server.http import login_guard as http_auth

    balsamdb.connect(served_dbdir).call("user_save", name="ada", password_hash=hash_password("right-one"))
    client = _login_app(served_dbdir)
    attacker = {"REMOTE_ADDR": "10.6.6.6"}
    statuses = [client.get("/", headers=_basic("ada", f"guess{i}"), environ_base=attacker).status_code
                for i in range(http_auth.PAIR_LIMIT + 3)]
    assert statuses == [401] * http_auth.PAIR_LIMIT + [429] * 3
    throttled = client.get("/", headers=_basic("ada", "right-one"), environ_base=attacker)
    assert throttled.status_code == 429 and 1 <= int(throttled.headers["Retry-After"]) <= http_auth.WINDOW
    # The guessing run goes on from many addresses: ada, from her own address, is still served.
    for i in range(http_auth.USER_LIMIT):
        client.get("/", headers=_basic("ada", f"spread{i}"), environ_base={"REMOTE_ADDR": f"10.7.{i}.1"})
    legit = client.get("/", headers=_basic("ada", "right-one"), environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert legit.status_code == 200
    # ...and stays served on every request, while an address that failed for ada is refused.
    for _ in range(3):
        assert client.get("/", headers=_basic("ada", "right-one"),
                          environ_base={"REMOTE_ADDR": "10.0.0.7"}).status_code == 200
    assert client.get("/", headers=_basic("ada", "guess"), environ_base={"REMOTE_ADDR": "10.7.3.1"}
                      ).status_code == 429
    # An address that never failed for a user is not refused, even for a user under a guessing run.
    assert client.get("/", headers=_basic("ada", "typo"), environ_base={"REMOTE_ADDR": "10.0.0.8"}
                      ).status_code == 401


def test_nan_is_refused_by_the_http_client_before_it_sends_or_spools(tmp_path):
    """The HTTP client refuses NaN before anything: no request (nothing listens there), no spooled file."""
    spool_dir = tmp_path / "remote-spool"
    db = balsamdb.connect("http://ada:pw@127.0.0.1:9/", remote_spool_dir=str(spool_dir), client_deadline=1)
    started = time.monotonic()
    with pytest.raises(BadRequest, match="NaN or an infinity"):
        db.records.save("P", {"label": "r", "duration": float("nan")})
    assert time.monotonic() - started < 1.0
    assert not spool_dir.exists() or not [p for p in spool_dir.rglob("*.req")]


def test_rows_stored_with_nan_before_it_was_refused_can_still_be_read(dbdir):
    """An answer is read leniently: a row that an older version stored with NaN is returned, not refused."""
    db = balsamdb.connect(dbdir)
    job = db.jobs.create(name="old", data={"x": 1.0})
    from balsamdb import models

    table = models.Job._meta.table_name
    with sqlite3.connect(dbdir / "db.sqlite3") as con:
        assert con.execute(f"UPDATE {table} SET data = ? WHERE id = ?", ('{"x": NaN}', job.id)).rowcount == 1
    db_cli("dbserver", "--path", dbdir, check=True)
    try:
        served = balsamdb.connect(dbdir, require_server=True)
        assert math.isnan(served.jobs.get(job.id).data["x"]) and served.last_read_route in ("local", "reader")
        # ...and it can be mended: a finite value replaces it.
        served.jobs.modify(job.id, data={"x": None})
        assert served.jobs.get(job.id).data == {"x": None}
    finally:
        db_cli("dbserver", "--stop", "--path", dbdir)
        kill_everything(dbdir)
