"""One group commit with requests of every kind: the optimistic pass (deferred inserts, no
savepoints) and the careful pass (a savepoint per request) give the same answers."""

import uuid

import pytest

from balsamdb.applier import apply
from balsamdb.request import Request
from balsamdb.dbdir import DBDirectory
from balsamdb.models import MODELS
from balsamdb.settings import load_settings


@pytest.fixture
def database(any_dbdir):
    db = DBDirectory(any_dbdir).open_database(load_settings(), busy_timeout=30)
    if DBDirectory(any_dbdir).db_type == "postgres":
        from balsamdb import migrations

        db.connect()
        migrations.upgrade(db)
    db.connect(reuse_if_open=True)
    yield db
    db.close()


def _apply(database, requests):
    with database.bind_ctx(MODELS):
        batch = apply(database, [Request(uuid.uuid4().hex, op, params) for op, params in requests], database.atomic)
    return [r.answer for r in batch]


def test_a_batch_mixing_creates_reads_and_a_duplicate(database):
    x, z = str(uuid.uuid4()), str(uuid.uuid4())
    answers = _apply(database, [
        ("job_create", {"job": {"id": x, "name": "x", "tags": ["t"]}}),
        ("job_update_state", {"job_id": x, "state": "READY"}),  # sees the row created just before
        ("job_create", {"job": {"id": x, "name": "again"}}),     # a duplicate id: refused alone
        ("job_create", {"job": {"id": z, "name": "z"}}),
        ("job_get", {"job_id": x}),
        ("job_count", {"filters": {"tags": ["t"]}}),
    ])
    assert [a["ok"] for a in answers] == [True, True, False, True, True, True]
    assert answers[2]["error"]["code"] == "conflict"
    assert answers[4]["result"]["state"] == "READY"
    assert [h["to_state"] for h in answers[4]["result"]["history"]] == ["CREATED", "READY"]
    assert answers[5]["result"] == 1
    with database.bind_ctx(MODELS):
        from balsamdb.models import Job, JobStateChange

        assert sorted(j.id for j in Job.select()) == sorted([x, z])
        assert JobStateChange.select().count() == 3


def test_a_batch_of_creates_is_one_insert_per_table_and_every_answer_is_right(database):
    ids = [str(uuid.uuid4()) for _ in range(50)]
    answers = _apply(database, [("job_create", {"job": {"id": i, "name": f"n{n}", "tags": ["a", "b"]}})
                                for n, i in enumerate(ids)])
    assert all(a["ok"] for a in answers) and [a["result"]["id"] for a in answers] == ids
    with database.bind_ctx(MODELS):
        from balsamdb.models import JobTag

        assert JobTag.select().count() == 100
