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
from balsamdb.request import Request, new_request_id
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
    assert SERVER_OPS == {"ping", "status", "spool_drain", "bulk_copy_detach"}
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


def test_an_operations_policy_is_a_field_of_its_registration():
    """Issue 28 §2: what used to be name lists and ``if name == ...`` beside the registry (the
    answers that are a job, the writes that change jobs, the checks before a spool) are fields of
    each Operation; these are the sets the lists held."""
    assert {n for n, op in OPERATIONS.items() if op.answer == "job"} == {"job_create", "job_update_state", "job_modify"}
    assert {n for n, op in OPERATIONS.items() if op.changes_jobs} == {"job_modify", "job_delete", "import_items"}
    assert OPERATIONS["job_delete"].changes_jobs({"job_ids": ["a"]}) == ["a"]
    assert OPERATIONS["import_items"].changes_jobs({"items": [{"kind": "job", "id": "a"}], "dry_run": True}) is None
    assert OPERATIONS["job_acquire"].write and not OPERATIONS["job_acquire"].spooled
    assert OPERATIONS["job_create"].spooled and not OPERATIONS["job_get"].spooled
    for name, params in (("job_create", {"job": {"name": "a", "no_such_field": 1}}), ("job_bulk_create", {"jobs": []}),
                         ("job_create", {"job": {"name": "a"}, "extra": 1})):
        with pytest.raises(BadRequest):
            OPERATIONS[name].check_offline(params)
    OPERATIONS["job_create"].check_offline({"job": {"name": "a"}})


def test_one_request_from_the_client_to_the_server():
    """Issue 28 §3: the Request a client makes is what the server reads back: same id, time stamp
    and operation (looked up once on each side); the HTTP wire names the stamp ``sent``."""
    import time

    made = Request.make("job_create", {"job": {"name": "a"}})
    assert len(made.id) == 32 and made.write and made.spooled and made.for_writer
    read = Request.from_message(protocol.decode(SECRET, protocol.encode_request(SECRET, made.message())),
                                now=time.time(), envelope=[b"peer"])
    assert (read.id, read.op, read.params, read.ts) == (made.id, made.op, made.params, made.ts)
    assert read.operation is made.operation is OPERATIONS["job_create"]
    assert made.message(stamp="sent")["sent"] == made.ts and "ts" not in made.message(stamp="sent")
    assert not Request.make("job_get", {"job_id": "x"}).for_writer and Request.make("status", {}).for_writer
    assert Request.make("no_such_op", {}).for_writer  # the write server names the known ones
    with pytest.raises(BadRequest):
        Request.from_message({"id": "x", "op": "ping", "params": []})


def test_request_ids_are_in_time_order():
    """Issue 22: a request id starts with the time in milliseconds (the record of applied ids, keyed
    by it, grows at its end) and is otherwise random: 32 hex characters, no two alike."""
    import time

    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and len(set(ids)) == len(ids)
    assert before <= int(ids[0][:12], 16) <= int(ids[-1][:12], 16) <= after
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)
    assert len({i[12:] for i in ids}) == len(ids)
    assert Request.make("status", {}).id[:12] >= ids[-1][:12]
