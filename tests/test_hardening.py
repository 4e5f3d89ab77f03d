"""Input hardening (issue 12, item 7): secrets, `db init` under a running server, NaN, bodies, logins.

Real processes: the write server started by `db dbserver`, `db init` and `db serve` run as the CLI does.
"""

import json
import math
import sqlite3
import time

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import AuthenticationError, BadRequest, ConfigError

from helpers import address, db_cli


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
    from balsamdb import models

    table = models.SchemaVersion._meta.table_name

    with sqlite3.connect(path / "db.sqlite3") as con:
        con.execute(f"UPDATE {table} SET version = ?", (models.SCHEMA_VERSION - 1,))
    refused = run_db("init", path)
    assert refused.returncode != 0, refused.stdout
    assert "upgrade the schema" in refused.stderr and "Stop it first" in refused.stderr, refused.stderr
    with sqlite3.connect(path / "db.sqlite3") as con:
        assert con.execute(f"SELECT version FROM {table}").fetchone()[0] == models.SCHEMA_VERSION - 1


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
            assert db.records.labels("P") == []
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
