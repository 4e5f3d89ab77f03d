"""One request record through the write path (issue 13 item 3), in process: the server's own
operations are registered like the others, the reply frames come from protocol.py, and the
applier fills in each request and gives insert-only operations their inserter explicitly."""

import json
import uuid

import pytest

from balsamdb import protocol
from balsamdb.applier import apply
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import BadRequest
from balsamdb.models import MODELS
from balsamdb.operations import OPERATIONS, SERVER_OPS, lookup
from balsamdb.request import Request
from balsamdb.settings import load_settings
from balsamdb.statements import statements

SECRET = b"s" * 32


@pytest.fixture
def database(dbdir):
    db = DBDirectory(dbdir).open_database(load_settings(), busy_timeout=30)
    db.connect(reuse_if_open=True)
    yield db
    db.close()


def test_the_servers_own_operations_are_in_the_registry():
    assert SERVER_OPS == {"ping", "status", "spool_drain"}
    for name in SERVER_OPS:
        op = lookup(name)
        assert op.server and not op.write and op.doc
        assert list(op.signature.parameters) == []  # ``server`` is given by the server, never sent
    assert not any(op.server for name, op in OPERATIONS.items() if name not in SERVER_OPS)


def test_a_process_without_server_refuses_the_servers_operations(database):
    with database.bind_ctx(MODELS):
        answer, = (r.answer for r in apply(database, [Request(uuid.uuid4().hex, "status", {})], database.atomic))
    assert answer["ok"] is False and answer["error"]["code"] == BadRequest.code
    assert "answered by the write server only" in answer["error"]["message"]


def test_the_applier_fills_in_each_request(database):
    job_id = str(uuid.uuid4())
    requests = [Request(uuid.uuid4().hex, "job_create", {"job": {"id": job_id, "name": "a"}}),
                Request(uuid.uuid4().hex, "job_get", {"job_id": job_id}),
                Request(uuid.uuid4().hex, "no_such_op", {})]
    assert [r.write for r in requests] == [True, False, False]
    with database.bind_ctx(MODELS):
        apply(database, requests, database.atomic)
    create, get, unknown = requests
    assert create.answer["ok"] and create.answer["result"]["id"] == job_id
    # The stored text of a write applied now is its answer; reads and refusals store none.
    assert json.loads(create.text) == create.answer
    assert get.answer["ok"] and get.text is None
    assert unknown.answer["error"]["code"] == BadRequest.code and unknown.text is None
    # The insert-only operation got its inserter from the applier: nothing is left on the
    # database's cached statements (no flag, no pending rows) after the batch.
    assert not hasattr(statements(database), "deferring") and not hasattr(statements(database), "_pending")


def test_replies_carry_the_id_whether_encoded_now_or_stored():
    stored = json.dumps({"ok": True, "result": {"n": 1}}, separators=(",", ":"))
    for frames in (protocol.reply(SECRET, "r1", None, stored),
                   protocol.reply(SECRET, "r1", {"ok": True, "result": {"n": 1}})):
        assert protocol.decode(SECRET, frames) == {"id": "r1", "ok": True, "result": {"n": 1}}
    refused = Request(None, None, None, envelope=[b"peer"]).refuse(BadRequest("no").to_dict())
    frames = refused.reply(SECRET)
    assert frames[0] == b"peer" and protocol.decode(SECRET, frames[1:])["id"] is None


def test_the_quick_parameter_check_agrees_with_the_signature():
    """bind_params answers most requests without Signature.bind: for every operation it accepts
    and refuses what the signature does (no parameters, all, the required ones, one unknown)."""
    from balsamdb.operations import bind_params

    for op in OPERATIONS.values():
        for params in ({}, {n: 1 for n in op.names}, {n: 1 for n in op.required},
                       dict({n: 1 for n in op.required}, unknown=1)):
            try:
                op.signature.bind(**params)
                expected = True
            except TypeError:
                expected = False
            try:
                bind_params(op, params)
                accepted = True
            except BadRequest:
                accepted = False
            assert accepted == expected, (op.name, params)
