"""Fuzzing the wire protocol against a real server: it never dies and never writes from a refused request.

Bounded here (BALSAMDB_FUZZ_EXAMPLES, default 120 per property); `python scripts/fuzz.py`
runs the same properties much longer.
"""

import os
import sqlite3
import time

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.operations import OPERATIONS

from helpers import address, db_cli, kill_everything

EXAMPLES = int(os.environ.get("BALSAMDB_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("BALSAMDB_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TABLES = ("job", "job_state_change", "job_tag", "project", "record", "record_tag", "applied_request")


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "db"
    DBDirectory(path).init()
    db_cli("dbserver", "--path", path, check=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address(path)["address"])
    try:
        yield path, DBDirectory(path).secret(), sock
    finally:
        sock.close()
        ctx.term()
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def counts(path):
    con = sqlite3.connect(str(path / "db.sqlite3"), timeout=30)
    try:
        return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def exchange(sock, frames):
    sock.send_multipart([b""] + frames)
    assert sock.poll(10000), "the server did not answer within 10 s"
    reply = sock.recv_multipart()
    assert reply[0] == b"" and len(reply) == 2, "an answer is one frame after the delimiter"
    return reply[1:]


def alive(path, secret, sock):
    ping = protocol.encode(secret, {"id": "ping", "op": "ping", "params": {}, "ts": time.time()})
    return protocol.decode(secret, exchange(sock, ping))["ok"] is True


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
op_names = st.sampled_from(sorted(OPERATIONS) + ["ping", "status", "drop", "", "__init__"]) | st.text(max_size=12)
param_names = st.sampled_from(["job", "jobs", "job_id", "state", "project", "record", "label", "filters",
                               "changes", "tags", "name", "limit", "x"])
# Near-valid requests: real operations with real parameter names and a mix of good and bad values,
# so that the fuzzer reaches the operations' own validation and writes, not only the envelope checks.
job_fields = st.fixed_dictionaries(
    {"name": st.text(max_size=20) | json_values},
    optional={k: json_values | st.text(max_size=10) | st.integers(-5, 5)
              for k in ("workflow", "num_nodes", "tags", "parents", "data", "environ", "state", "id", "args")},
)
near_valid = st.one_of(
    st.fixed_dictionaries({"op": st.just("job_create"), "params": st.fixed_dictionaries({"job": job_fields})}),
    st.fixed_dictionaries({"op": st.just("job_bulk_create"),
                           "params": st.fixed_dictionaries({"jobs": st.lists(job_fields, max_size=3)})}),
    st.fixed_dictionaries({"op": st.just("record_save"), "params": st.fixed_dictionaries({
        "project": st.text(max_size=12) | json_values,
        "record": st.fixed_dictionaries({"label": st.text(max_size=20) | json_values},
                                        optional={"tags": json_values, "timestamp": st.text(max_size=25),
                                                  "duration": json_values, "version": json_values})})}),
    st.fixed_dictionaries({"op": st.sampled_from(["job_update_state", "job_modify", "job_delete", "record_tag",
                                                   "record_delete", "job_filter", "project_save"]),
                           "params": st.dictionaries(param_names, json_values | st.text(max_size=12), max_size=3)}),
).map(lambda r: dict(r, id=os.urandom(8).hex(), ts="now"))
requests = near_valid | st.fixed_dictionaries({
    "id": st.text(min_size=0, max_size=70) | st.integers() | st.none(),
    "op": op_names,
    "params": st.dictionaries(param_names, json_values, max_size=3) | json_values,
    "ts": st.just("now") | json_values,
})


@FUZZ
@given(frames=st.lists(st.binary(max_size=2048), min_size=0, max_size=4))
def test_random_bytes_are_refused_and_change_nothing(fuzz_server, frames):
    path, secret, sock = fuzz_server
    before = counts(path)
    reply = protocol.decode(secret, exchange(sock, frames))
    assert reply["ok"] is False and reply["error"]["code"] in ("bad_request", "auth", "too_large")
    assert counts(path) == before
    assert alive(path, secret, sock)


@FUZZ
@given(request=requests, sign_right=st.booleans())
def test_structured_requests_never_write_when_refused(fuzz_server, request, sign_right):
    path, secret, sock = fuzz_server
    if request["ts"] == "now":
        request["ts"] = time.time()
    before = counts(path)
    reply = protocol.decode(secret, exchange(sock, protocol.encode(secret if sign_right else b"x" * 32, request)))
    assert set(reply) >= {"id", "ok"}
    if not reply["ok"]:
        assert set(reply["error"]) == {"code", "type", "message"} and reply["error"]["code"] != "internal", reply
        after = counts(path)
        # A refused write leaves only the record of its refusal (so that a retry gets the same answer).
        grew = {t for t in TABLES if after[t] != before[t]}
        assert grew <= {"applied_request"}, (request, reply, grew)
    else:
        assert sign_right and isinstance(request["ts"], (int, float))
    assert alive(path, secret, sock)
