"""Requests stamped far from the receiver's clock are refused, in both directions.

ZeroMQ: every request carries ``ts``; one more than ``protocol.MAX_AGE`` (300 s) away from the
server's clock, before or after, is refused as a replay (a captured message cannot be sent again
later, nor one stamped ahead to stay valid longer).  HTTP operation endpoint: ``sent`` older than the
retention of applied ids is refused (409: it could be applied twice), and one more than
``MAX_CLOCK_SKEW`` (300 s) in the future is refused (400: the client's clock is wrong).
"""

import base64
import time
import uuid

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.passwords import hash_password
from balsamdb.server.http import MAX_CLOCK_SKEW, create_app
from balsamdb.settings import load_settings
from helpers import address, job_ids_in_db


def _send(path, message):
    secret = DBDirectory(path).secret()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address(path)["address"])
        sock.send_multipart([b""] + protocol.encode(secret, message))
        assert sock.poll(10000), "the server did not answer"
        return protocol.decode(secret, sock.recv_multipart()[1:])
    finally:
        sock.close()


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_zeromq_refuses_requests_stamped_an_hour_away_in_either_direction(served_dbdir):
    outcomes = {}
    for offset in (3600, -3600, 60, -60):
        job_id = str(uuid.uuid4())
        answer = _send(served_dbdir, {"id": f"skew-{offset}", "op": "job_create", "ts": time.time() + offset,
                                      "params": {"job": {"id": job_id, "name": f"skew{offset}"}}})
        outcomes[offset] = (answer["ok"], (answer.get("error") or {}).get("code"), job_id in job_ids_in_db(served_dbdir))
    assert outcomes == {3600: (False, "auth", False), -3600: (False, "auth", False),
                        60: (True, None, True), -60: (True, None, True)}, outcomes


def test_http_operation_endpoint_refuses_writes_stamped_in_the_future_or_too_old(dbdir):
    with balsamdb.connect(dbdir) as db:
        db.call("user_save", name="ada", password_hash=hash_password("pw"))
        db.call("permission_grant", project="P", user="ada")
    client = create_app(dbdir).test_client()
    headers = {"Authorization": "Basic " + base64.b64encode(b"ada:pw").decode()}
    retention = load_settings().applied_retention_days * 86400
    statuses = {}
    for name, offset in [("an hour ahead", 3600), ("just past the skew", MAX_CLOCK_SKEW + 30),
                         ("a minute ahead", 60), ("an hour ago", -3600), ("older than the retention", -retention)]:
        answer = client.post("/_balsamdb/call", headers=headers, json={
            "id": f"skew-{uuid.uuid4().hex}", "op": "record_save", "sent": time.time() + offset,
            "params": {"project": "P", "record": {"label": name}}})
        statuses[name] = answer.status_code
    assert statuses == {"an hour ahead": 400, "just past the skew": 400, "a minute ahead": 200,
                        "an hour ago": 200, "older than the retention": 409}, statuses
    with balsamdb.connect(dbdir) as db:
        assert sorted(db.records.labels("P")) == ["a minute ahead", "an hour ago"]
