"""Jobs that move themselves (issue 26), with the real write server on each backend:
dependencies released in the commit, lost runs found on the server's clock, `db run`, the
never-spooled claim, and the launcher of docs/launchers.md run as written.

Claims under load (16 launchers, server kills, two daemons on one PostgreSQL) are in
tests/test_claims.py.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import balsamdb
from balsamdb.exceptions import BadRequest, NotFound, ServerUnavailable

from helpers import db_cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
SWEEP_EVERY = 1.0  # s between the server's looks for expired leases (committer.LOST_RUNS_EVERY)


def _finish(db, job_id, request_id=None):
    for state in ("RUNNING", "RUN_DONE"):
        db.jobs.update_state(job_id, state)
    return db.request("job_update_state", {"job_id": job_id, "state": "JOB_FINISHED", "message": "done"},
                      request_id=request_id)


def _releases(db, job_id):
    return [h for h in db.jobs.history(job_id) if h["to_state"] == "READY" and h["message"].startswith("released")]


def test_dependencies_released_in_the_commit(served_dbdir, backend):
    """Children move AWAITING_PARENTS -> READY in the commit of their last parent's JOB_FINISHED,
    exactly once (a replayed request releases nothing more); a FAILED parent leaves its child
    waiting and `db job show` / `db ls --waiting-on` say so; unknown parents and cycles (at
    create, in one bulk_create, through job_modify) are refused and change nothing; a spooled
    child after its spooled parent is released when the spool is applied."""
    path = served_dbdir
    db = balsamdb.connect(path)
    p1 = db.jobs.create("p1", workflow="deps", state="READY").id
    p2 = db.jobs.create("p2", workflow="deps", state="READY").id
    c1, c2, d = (str(uuid.uuid4()) for _ in range(3))
    # Parents among themselves in one bulk_create: c2 waits for c1, which waits for p1 and p2.
    db.jobs.bulk_create([{"name": "c2", "workflow": "deps", "id": c2, "parents": [c1]},
                         {"name": "c1", "workflow": "deps", "id": c1, "parents": [p1, p2]},
                         {"name": "d", "workflow": "deps", "id": d, "parents": [p1]}])
    assert {db.jobs.get(i).state for i in (c1, c2, d)} == {"AWAITING_PARENTS"}

    # Refusals change nothing.
    before = db.jobs.count()
    ghost = str(uuid.uuid4())
    with pytest.raises(NotFound, match="unknown parent"):
        db.jobs.create("orphan", parents=[ghost])
    x, y = str(uuid.uuid4()), str(uuid.uuid4())
    with pytest.raises(BadRequest, match="cycle"):
        db.jobs.bulk_create([{"name": "x", "id": x, "parents": [y]}, {"name": "y", "id": y, "parents": [x]}])
    with pytest.raises(BadRequest, match="cycle"):
        db.jobs.modify(p1, parents=[c2])  # c2 -> c1 -> p1 -> c2
    with pytest.raises(NotFound, match="unknown parent"):
        db.jobs.modify(d, parents=[ghost])
    assert db.jobs.count() == before and db.jobs.get(p1).parents == [] and db.jobs.get(d).parents == [p1]

    # p1 finishes: d is released (its only parent); c1 still waits for p2.
    first = str(uuid.uuid4().hex)
    _finish(db, p1, request_id=first)
    assert db.jobs.get(d).state == "READY" and len(_releases(db, d)) == 1
    assert p1 in _releases(db, d)[0]["message"]
    assert db.jobs.get(c1).state == "AWAITING_PARENTS"
    # The same request again (a client's retry): answered from the record, nothing released twice.
    db.request("job_update_state", {"job_id": p1, "state": "JOB_FINISHED", "message": "done"}, request_id=first)
    assert len(_releases(db, d)) == 1

    # p2 fails: c1 keeps waiting, and says for what.
    db.jobs.update_state(p2, "FAILED", "node crashed")
    assert db.jobs.get(c1).state == "AWAITING_PARENTS"
    waiting = db.call("job_get", job_id=c1)["waiting_on"]
    assert [(w["id"], w["state"], w["blocked"]) for w in waiting] == [(p2, "FAILED", True)]
    shown = db_cli("job", "show", c1, "--path", path, check=True).stdout
    assert re.search(rf"waiting on:\s+{p2[:8]} p2 \(FAILED: blocked", shown), shown
    # A new child of the FAILED parent waits, also once its other parent finishes (broken: a
    # final parent taken for a finished one).
    q = db.jobs.create("q", workflow="deps", state="READY").id
    e = db.jobs.create("e", workflow="deps", parents=[p2]).id
    f = db.jobs.create("f", workflow="deps", parents=[p2, q]).id
    assert db.jobs.get(e).state == "AWAITING_PARENTS" and db.jobs.get(f).state == "AWAITING_PARENTS"
    # d, released, gets q as a parent: q's end releases f's other wait only, never d again
    # (broken: the children of a finished parent read whatever their state).
    db.jobs.modify(d, parents=[p1, q])
    _finish(db, q)
    assert db.jobs.get(f).state == "AWAITING_PARENTS" and _releases(db, f) == []
    assert db.jobs.get(d).state == "READY" and len(_releases(db, d)) == 1
    listed = db_cli("ls", "--waiting-on", p2[:8], "--path", path, check=True).stdout
    assert c1[:8] in listed and d[:8] not in listed, listed
    listed = json.loads(db_cli("ls", "--waiting-on", p1, "--json", "--path", path, check=True).stdout)
    assert listed == [], "d was released: nothing waits for p1 any more"

    # p2 restarted and finished: c1 released; c2 (waiting for c1) still waits.
    db.jobs.update_state(p2, "RESTART_READY")
    _finish(db, p2)
    assert db.jobs.get(c1).state == "READY" and len(_releases(db, c1)) == 1
    assert db.jobs.get(c2).state == "AWAITING_PARENTS"
    _finish(db, c1)
    assert db.jobs.get(c2).state == "READY" and len(_releases(db, c2)) == 1

    # A parent created finished: a new child starts READY.
    late = db.jobs.create("late", workflow="deps", parents=[p1])
    assert late.state == "READY"

    # Spooled: no server; the parent, its child and the parent's states wait in the spool.
    assert db_cli("dbserver", "--stop", "--path", path).returncode == 0
    offline = balsamdb.connect(path, require_server=True, client_deadline=2)
    s_parent = offline.jobs.create("s-parent", workflow="deps", state="READY")
    s_child = offline.jobs.create("s-child", workflow="deps", parents=[s_parent.id])
    assert s_parent.spooled and s_child.spooled
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        assert offline.jobs.update_state(s_parent.id, state).spooled is True
    # A claim is never spooled: it fails at once, and leaves nothing in the spool.
    waiting_files = len(list((Path(path) / "spool" / "new").iterdir()))
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="never spooled"):
        offline.jobs.acquire(1, owner="nobody")
    assert time.monotonic() - started < 2.0, "the claim waited instead of failing at once"
    assert len(list((Path(path) / "spool" / "new").iterdir())) == waiting_files
    assert db_cli("dbserver", "--path", path).returncode == 0
    wait_for(lambda: not list((Path(path) / "spool" / "new").iterdir()), 60, "the spool to be applied")
    db = balsamdb.connect(path)
    assert db.jobs.get(s_child.id).state == "READY" and len(_releases(db, s_child.id)) == 1


def test_lost_runs_found_within_a_lease(served_dbdir, tmp_path, backend):
    """A SIGKILLed `db run` stops renewing: the server makes its job RUN_TIMEOUT then RESTART_READY
    within one lease of the last renewal (on the server's clock), with a history row naming the
    owner; a claim never started is released (state kept); a workflow with the `stop` policy
    keeps its lost run in RUN_TIMEOUT; `--status` counts them.  A `db run` that ends records its
    exit status and output tails."""
    path = served_dbdir
    db = balsamdb.connect(path)
    lease = 3.0

    # db run that finishes: exit status, tails, RUN_DONE / RUN_ERROR, its exit code.
    done = db_cli("run", "--path", path, "--name", "ok", "--workflow", "runs", "--",
                  sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)")
    assert done.returncode == 0, done.stderr
    (ok,) = db.jobs.filter(name="ok")
    assert ok.state == "RUN_DONE" and ok.owner is None
    assert ok.data["run"]["exit_status"] == 0 and ok.data["run"]["stdout_tail"] == "out\n"
    assert ok.data["run"]["stderr_tail"] == "err\n"
    failing = db.jobs.create("fails", workflow="runs", state="READY")
    failed = db_cli("run", failing.id[:8], "--path", path, "--", sys.executable, "-c", "raise SystemExit(3)")
    assert failed.returncode == 3
    assert db.jobs.get(failing.id).state == "RUN_ERROR" and db.jobs.get(failing.id).data["run"]["exit_status"] == 3

    # A claim never started: released when its lease expires, state kept.
    claimed = db.jobs.create("claimed", workflow="runs", state="READY")
    (held,) = db.jobs.acquire(1, owner="idle-launcher", lease=4, ids=[claimed.id])
    assert held.owner == "idle-launcher"
    assert db.jobs.acquire(1, owner="other", ids=[claimed.id]) == [], "a held job was handed to a second owner"
    # A RUNNING job of a workflow whose policy is stop.
    db.jobs.set_lost_run_policy("keep", "stop")
    kept = db.jobs.create("kept", workflow="keep", state="READY")
    db.jobs.acquire(1, owner="dying-launcher", lease=4, ids=[kept.id])
    db.jobs.update_state(kept.id, "RUNNING", owner="dying-launcher")

    # db run, SIGKILLed while its command runs.
    marker = tmp_path / "started"
    victim = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "run", "--path", str(path), "--name", "victim",
                               "--workflow", "runs", "--lease", str(lease), "--", sys.executable, "-c",
                               f"import pathlib, time; pathlib.Path({str(marker)!r}).write_text('x'); "
                               "time.sleep(300)"],  # wait-ok: the job itself, killed by the test
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(marker.exists, 60, "the command of db run to start")
        (job,) = db.jobs.filter(name="victim")
        assert job.state == "RUNNING" and job.owner
        wait_for(lambda: db.jobs.get(job.id).renewed_at > job.renewed_at, 3 * lease, "a renewal of the lease")
        victim.kill()  # SIGKILL of db run alone: its renewing thread dies with it
        victim.wait()
        final = wait_for(lambda: (lambda j: j if j.state == "RESTART_READY" else None)(db.jobs.get(job.id)),
                         lease + 20, "the lost run to be found")
    finally:
        try:
            os.killpg(victim.pid, signal.SIGKILL)  # the command it left behind
        except ProcessLookupError:
            pass
        victim.wait()
    assert final.owner is None
    history = db.jobs.history(job.id)
    lost = [h for h in history if h["to_state"] == "RUN_TIMEOUT"]
    assert len(lost) == 1 and job.owner in lost[0]["message"], history
    last_renewal = float(re.search(r"last renewal ([0-9.]+)", lost[0]["message"]).group(1))
    # Found within one lease of the last renewal, on the server's clock (plus its look interval
    # and one second for a loaded machine: the write server may be busy when the lease expires).
    assert lost[0]["time"] - last_renewal <= lease + SWEEP_EVERY + 1.0, (lost[0], last_renewal)
    assert history[-1]["to_state"] == "RESTART_READY" and "policy" in history[-1]["message"]

    released = wait_for(lambda: (lambda j: j if j.owner is None else None)(db.jobs.get(claimed.id)), 20,
                        "the idle claim to be released")
    assert released.state == "READY"
    assert "claim released" in db.jobs.history(claimed.id)[-1]["message"]
    assert "idle-launcher" in db.jobs.history(claimed.id)[-1]["message"]
    stopped = wait_for(lambda: (lambda j: j if j.state != "RUNNING" else None)(db.jobs.get(kept.id)), 20,
                       "the lost run of the stop workflow")
    assert stopped.state == "RUN_TIMEOUT"
    # The owner that lost its lease cannot record an end any more.
    with pytest.raises(balsamdb.Conflict, match="not held by dying-launcher"):
        db.jobs.update_state(kept.id, "RESTART_READY", owner="dying-launcher")

    status = json.loads(db_cli("dbserver", "--status", "--json", "--path", path, check=True).stdout)["server_status"]
    assert status["lost_runs"] == 2 and status["lost_runs_restarted"] == 1 and status["claims_expired"] >= 1, status
    assert db.jobs.get(ok.id).state == "RUN_DONE"  # a job that ended is never touched by the look

    # The CLI of claims: the lost run restarted and the released claim are free again.
    taken = json.loads(db_cli("job", "acquire", "5", "--owner", "cli-launcher", "--lease", "600", "-w", "runs",
                              "--json", "--path", path, check=True).stdout)
    assert sorted(j["id"] for j in taken) == sorted([job.id, claimed.id])
    assert {j["owner"] for j in taken} == {"cli-launcher"}
    listed = db_cli("ls", "--owner", "cli-launcher", "--path", path, check=True).stdout
    assert "cli-launcher" in listed and job.id[:8] in listed, listed
    out = db_cli("job", "release", "--owner", "cli-launcher", job.id[:8], "--path", path, check=True).stdout
    assert out.strip() == "released 1 job"
    assert json.loads(db_cli("job", "policy", "keep", "--json", "--path", path, check=True).stdout)[0]["lost_runs"] \
        == "stop"


def test_launcher_page_example_runs_as_written(served_dbdir, tmp_path, backend):
    """The launcher of docs/launchers.md, extracted from the page, runs a workflow of five jobs
    (the last two waiting for the first three) to JOB_FINISHED, and a failing one to RUN_ERROR."""
    page = (ROOT / "docs" / "launchers.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert len(code.splitlines()) <= 32, "the page promises a launcher of about 30 lines"
    script = tmp_path / "launcher.py"
    script.write_text(code)
    db = balsamdb.connect(served_dbdir)
    marker = "import pathlib, sys; pathlib.Path('ran').write_text(sys.argv[1])"
    firsts = [db.jobs.create(f"first-{i}", workflow="demo", state="READY", application=sys.executable,
                             args=f"-c \"{marker}\" {i}").id for i in range(3)]
    thens = [db.jobs.create(f"then-{i}", workflow="demo", parents=firsts, application=sys.executable,
                            args=f"-c \"{marker}\" then{i}").id for i in range(2)]
    bad = db.jobs.create("bad", workflow="demo", state="READY", application=sys.executable,
                         args="-c 'raise SystemExit(5)'").id
    env = dict(os.environ, BALSAM_DB_PATH=str(served_dbdir))
    run = subprocess.run([sys.executable, str(script), "demo"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "no job left in workflow demo" in run.stdout
    for job_id in firsts + thens:
        job = db.jobs.get(job_id)
        assert job.state == "JOB_FINISHED" and job.owner is None, (job.name, job.state)
        assert (Path(job.working_directory) / "ran").exists()
    assert db.jobs.get(bad).state == "RUN_ERROR" and db.jobs.get(bad).owner is None
    # The children started only after their parents finished.
    finished = max(h["time"] for i in firsts for h in db.jobs.history(i) if h["to_state"] == "JOB_FINISHED")
    assert all(h["time"] >= finished for i in thens for h in db.jobs.history(i) if h["to_state"] == "RUNNING")


def test_schema_6_upgrade_from_schema_5_in_place(served_dbdir, backend):
    """A schema-5 database (no claim columns, no job_parent table) is upgraded in place and
    idempotently: the claim columns and indexes are made, and the parents of existing jobs are
    linked (a parent that does not exist is left out), so a waiting child is released when its
    parent finishes."""
    from balsamdb import migrations
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    path = served_dbdir
    with balsamdb.connect(path) as db:
        parent = db.jobs.create("parent", state="READY")
        child = db.jobs.create("child", parents=[parent.id])
        stray = db.jobs.create("stray", state="READY")
    assert db_cli("dbserver", "--stop", "--path", path).returncode == 0
    ghost = str(uuid.uuid4())
    database = DBDirectory(path).open_database(load_settings(), busy_timeout=30)
    database.connect()
    with database.atomic():  # back to schema 5, as the release before issue 26 left it
        for index in ("job_lease_expires", "job_free_state_workflow"):
            database.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
        for column in ("owner", "lease_expires", "renewed_at"):
            database.execute_sql(f'ALTER TABLE "job" DROP COLUMN "{column}"')
        database.execute_sql('DROP TABLE "job_parent"')
        database.execute_sql('DROP TABLE "workflow_policy"')
        # An old job whose parent never existed (nothing checked parents before schema 6).
        database.execute_sql('UPDATE "job" SET "parents" = %s WHERE "id" = %s'.replace("%s", database.param),
                             (json.dumps([ghost]), stray.id))
        database.execute_sql('UPDATE "schema_version" SET "version" = 5')
    database.close()
    done = DBDirectory(path).init(backend)
    assert any("schema 5 -> 6" in line for line in done), done
    assert DBDirectory(path).init(backend) == [
        f"{path} is already a current {backend} DB directory (schema {migrations.SCHEMA_VERSION})"]
    assert db_cli("dbserver", "--path", path).returncode == 0
    with balsamdb.connect(path) as db:
        assert db.call("job_get", job_id=child.id)["waiting_on"][0]["id"] == parent.id
        assert sorted(j.name for j in db.jobs.acquire(5, owner="after-upgrade")) == ["parent", "stray"]
        for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
            db.jobs.update_state(parent.id, state, owner="after-upgrade")
        assert db.jobs.get(child.id).state == "READY"
