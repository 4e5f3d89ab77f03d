"""Spool order within one client (one process): its spooled writes of one job are applied in the
order of its calls.  Only a chain of writes to one job shows order (a set of independent jobs does
not): applied newest first, ``update_state(RUNNING)`` would meet a job that does not exist yet and
be refused into ``spool/failed``.  (The order across processes is the write server's own test.)"""


import pytest

import balsamdb
from balsamdb.passwords import hash_password
from helpers import db_cli, kill_everything, wait_for
from served import Served, free_port

ADMIN, ADMIN_PW = "lab", "lab admin pw"


def _spool_chain(db):
    """create, READY, RUNNING of one job, each of which must be spooled; returns the job id."""
    job = db.jobs.create(name="ordered", make_workdir=False)
    assert job.spooled, f"the create was not spooled (route {db.last_route})"
    for state in ("READY", "RUNNING"):
        spooled = db.jobs.update_state(job.id, state)
        assert getattr(spooled, "spooled", False), f"update_state({state}) was not spooled: {spooled!r}"
        assert db.last_route == "spool"
    return job.id


def test_one_clients_spooled_create_ready_running_apply_in_order(any_dbdir):
    path = any_dbdir
    db = balsamdb.connect(path, require_server=True)
    job_id = _spool_chain(db)
    assert len(list((path / "spool" / "new").iterdir())) == 3
    try:
        db_cli("dbserver", "--path", path, check=True)
        wait_for(lambda: not any((path / "spool" / "new").iterdir()), 30, "the server to apply the spool")
        failed = sorted(p.name for p in (path / "spool" / "failed").iterdir())
        assert failed == [], f"spooled writes were refused: {failed}"
        with balsamdb.connect(path) as reader:
            history = [h["to_state"] for h in reader.jobs.history(job_id)]
            assert history == ["CREATED", "READY", "RUNNING"], history
            assert reader.jobs.get(job_id).state == "RUNNING"
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_http_clients_spooled_chain_is_sent_in_order(served_dbdir, tmp_path, request):
    with balsamdb.connect(served_dbdir) as local:
        local.call("user_save", name=ADMIN, password_hash=hash_password(ADMIN_PW), admin=True)
    port = free_port()  # nothing listens there yet: every write goes to the local spool
    db = balsamdb.connect(f"http://{ADMIN}:{ADMIN_PW}@127.0.0.1:{port}/", client_deadline=0.3,
                          remote_spool_dir=str(tmp_path / "remote-spool"))
    request.addfinalizer(db.close)
    job_id = _spool_chain(db)
    assert db.spool.count() == 3
    served = Served(served_dbdir, tmp_path, port=port)
    request.addfinalizer(served.stop)
    assert db.drain_spool() is True
    assert db.spool.count() == 0 and db.drained == 3
    assert db.spool.failures() == [], db.spool.describe()
    with balsamdb.connect(served_dbdir) as local:
        history = [h["to_state"] for h in local.jobs.history(job_id)]
        assert history == ["CREATED", "READY", "RUNNING"], history


# -- a spooled write goes before the same client's next live write -------------------------------------

def test_a_spooled_write_goes_before_the_clients_next_live_write(any_dbdir):
    """READY waits in the spool; once a server runs, the same client's live RUNNING must come after it
    (CREATED -> RUNNING is legal, RUNNING -> READY is not: an overtaking shows in the history and
    in spool/failed)."""
    path = any_dbdir
    db = balsamdb.connect(path, require_server=True)
    try:
        db_cli("dbserver", "--path", path, check=True)
        job = db.jobs.create(name="ordered", make_workdir=False)
        db_cli("dbserver", "--stop", "--path", path, check=True)
        assert getattr(db.jobs.update_state(job.id, "READY"), "spooled", False)
        db_cli("dbserver", "--path", path, check=True)
        assert db.jobs.update_state(job.id, "RUNNING").state == "RUNNING" and db.last_route == "server"
        history = [h["to_state"] for h in db.jobs.history(job.id)]
        assert history == ["CREATED", "READY", "RUNNING"], history
        assert list((path / "spool" / "failed").iterdir()) == []
    finally:
        db.close()
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_http_clients_spooled_write_goes_before_its_next_live_write(served_dbdir, tmp_path, request):
    with balsamdb.connect(served_dbdir) as local:
        local.call("user_save", name=ADMIN, password_hash=hash_password(ADMIN_PW), admin=True)
    port = free_port()
    served = Served(served_dbdir, tmp_path, port=port)
    request.addfinalizer(lambda: served.stop())
    db = balsamdb.connect(f"http://{ADMIN}:{ADMIN_PW}@127.0.0.1:{port}/", client_deadline=0.5,
                          remote_spool_dir=str(tmp_path / "remote-spool"))
    request.addfinalizer(db.close)
    job = db.jobs.create(name="ordered")
    served.stop()
    assert getattr(db.jobs.update_state(job.id, "READY"), "spooled", False)
    served = Served(served_dbdir, tmp_path, port=port)
    assert db.jobs.update_state(job.id, "RUNNING").state == "RUNNING" and db.last_route == "http"
    assert db.spool.count() == 0 and db.spool.failures() == [], db.spool.describe()
    history = [h["to_state"] for h in db.jobs.history(job.id)]
    assert history == ["CREATED", "READY", "RUNNING"], history
