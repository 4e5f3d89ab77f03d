"""Order across the spool: a spooled write is never overtaken by a later live write
(issue 12, item 1).  Real processes, a real server started with the CLI, both backends."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import db_cli, kill_everything, wait_for

import balsamdb
from balsamdb import crash_points
from balsamdb.spool import Spool

CLIENT = Path(__file__).resolve().parent / "order_client.py"
SPOOLING = {"BALSAMDB_REQUIRE_SERVER": "1"}  # no server: every write goes to the spool


def _env(extra):
    import os

    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    env.update(extra)
    return env


def _client(path, *args, env=SPOOLING):
    """Start tests/order_client.py as a process."""
    return subprocess.Popen([sys.executable, str(CLIENT), str(path), *map(str, args)], env=_env(env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[3:]} still running after {timeout} s: {err[-2000:]}")
    assert proc.returncode == 0, f"{proc.args[3:]} exited {proc.returncode}: {err[-2000:]}"
    return json.loads(out.strip().splitlines()[-1])


def _run(path, *args, env=SPOOLING):
    return _finish(_client(path, *args, env=env))


def _pending(path):
    return Spool(Path(path) / "spool").count()


@pytest.fixture
def stopped_after(request):
    """Register a DB directory whose server processes are stopped after the test."""
    paths = []
    yield paths.append
    for path in paths:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def _start_server(path, go=None, fault=None):
    """``db dbserver`` in the background; returns it once the address file names a live server
    (sooner than the command itself returns: the drain is then at its beginning), after
    making the file ``go``, if given, which lets a waiting client send at once.  With ``fault``
    (a path), the server reads it as its fault file (balsamdb.crash_points: a pause point)."""
    from helpers import address, server_pids

    starting = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "dbserver", "--path", str(path)],
                                env=_env({"BALSAMDB_FAULT_FILE": str(fault)} if fault else {}),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def named():
        try:
            info = address(path)
        except (OSError, ValueError):
            return None
        return info.get("state") == "running" and len(server_pids(path)) == 2 and info

    try:
        wait_for(named, 60, "the address file to name a running server", interval=0.002)
        if go is not None:
            Path(go).write_text("go")
    except BaseException:
        starting.kill()
        starting.communicate()
        raise
    return starting


def _started(starting):
    _out, err = starting.communicate(timeout=60)
    assert starting.returncode == 0, err


def _job(path, job_id):
    with balsamdb.connect(path) as db:
        return db.call("job_get", job_id=job_id)


def _job_read_directly(path, job_id):
    """The job as the database holds it, read with no server running (on either backend)."""
    from balsamdb.dbdir import DBDirectory
    from balsamdb.reads import Reader
    from balsamdb.settings import load_settings

    reader = Reader(DBDirectory(path), load_settings())
    try:
        answer = reader.run("job_get", {"job_id": job_id})
    finally:
        reader.close()
    assert answer["ok"], answer
    return answer["result"]


def test_a_live_write_waits_for_every_spooled_write(any_dbdir, stopped_after, tmp_path):
    """4 processes spool 1,500 creates each (require_server, no server); job J's create comes
    first and its modify to "old" last.  The server starts; another process modifies J to "new"
    while thousands of files still wait (the drain is paused until its first holding reply: a
    pause point, so that the write never comes after a quick drain).  The server holds it until
    the drain is past: its client gets holding replies and, with client_timeout 1.5 s and
    client_deadline 3 s, neither resends on a fresh socket nor spools.  J ends "new"; the status
    says how fast it drained."""
    path = any_dbdir
    stopped_after(path)
    fault = tmp_path / "fault"
    fault.write_text(crash_points.DRAIN_PAUSED)
    job_id = str(uuid.uuid4())
    assert _run(path, "create", job_id)["spooled"] == 1
    fillers = [_client(path, "fill", 1500) for _ in range(4)]
    assert sum(_finish(proc)["spooled"] for proc in fillers) == 6000
    assert _run(path, "modify", job_id, "old")["spooled"] == 1
    assert _pending(path) == 6002 > 4096

    go = Path(path).parent / "go"
    live = _client(path, "modify", job_id, "new",
                   env={"BALSAMDB_CLIENT_TIMEOUT": "1.5", "BALSAMDB_CLIENT_DEADLINE": "3", "ORDER_GO": str(go)})
    _started(_start_server(path, go, fault))
    with balsamdb.connect(path) as db:
        wait_for(lambda: db.server_status()["holding_replies"] >= 1, 60, "a holding reply", interval=0.02)
        fault.unlink()  # the drain goes on
    live = _finish(live)
    print(f"live write after 6,002 spooled ones: {live}")
    wait_for(lambda: _pending(path) == 0, 120, "the spool to drain")  # so that a late 'old' would be seen
    assert _job(path, job_id)["data"] == {"result": "new"}, \
        f"the spooled 'old' was applied after the live 'new' (live: {live})"
    assert live["route"] == "server" and live["spooled"] == 0 and live["fresh_sockets"] == 0, \
        f"the live write was not held as progress: {live}"
    assert live["holding"] >= 1 and live["left"] > 1024, \
        f"the live write did not arrive while many spooled writes waited (the test proves nothing): {live}"
    with balsamdb.connect(path) as db:
        assert db.call("job_count") == 6001
    status = json.loads(db_cli("dbserver", "--status", "--json", "--path", path, check=True).stdout)
    server = status["server_status"]
    assert server["spool_pending"] == 0 and server["held_requests"] == 0, server
    assert server["spooled_applied"] == 6002 and server["spool_last_drain_per_s"] > 0, server
    text = db_cli("dbserver", "--status", "--path", path, check=True).stdout
    assert "spooled writes/s in the last drain" in text, text


def test_a_live_state_change_after_spooled_create_and_running_succeeds(any_dbdir, stopped_after, tmp_path):
    """The loud variant: J's create and its move to RUNNING are spooled behind 3,000 other
    writes; a live RUN_DONE sent once the server starts succeeds (if it overtook them, it
    would refer to a job that does not exist yet, or make an illegal CREATED -> RUN_DONE), on
    the socket it was sent on: the holding replies renew its wait.  The drain is held (a pause
    point) until the server has sent the live write its 7th holding reply: each comes at least
    0.3 s after the copy it answers was sent, so the client had read the 6th at least 1.8 s after
    its first send, past its 1.5 s reply timeout: only the renewals kept it on its socket."""
    path = any_dbdir
    stopped_after(path)
    fault = tmp_path / "fault"
    fault.write_text(crash_points.DRAIN_PAUSED)
    job_id = str(uuid.uuid4())
    fillers = [_client(path, "fill", 750) for _ in range(4)]
    assert sum(_finish(proc)["spooled"] for proc in fillers) == 3000
    assert _run(path, "create", job_id)["spooled"] == 1
    assert _run(path, "state", job_id, "RUNNING")["spooled"] == 1
    go = Path(path).parent / "go"
    outcome = _client(path, "state", job_id, "RUN_DONE",
                      env={"ORDER_GO": str(go), "BALSAMDB_CLIENT_TIMEOUT": "1.5"})
    _started(_start_server(path, go, fault))
    with balsamdb.connect(path) as db:
        wait_for(lambda: db.server_status()["holding_replies"] >= 7, 60, "the 7th holding reply", interval=0.02)
        fault.unlink()  # the drain goes on
    outcome = _finish(outcome)
    assert outcome["holding"] >= 6 and outcome["left"] == 3002, outcome
    assert outcome["route"] == "server" and outcome["fresh_sockets"] == 0, \
        f"the held write was resent or spooled: its holding replies did not renew its wait: {outcome}"
    job = _job(path, job_id)
    assert job["state"] == "RUN_DONE"
    assert [h["to_state"] for h in job["history"]] == ["CREATED", "RUNNING", "RUN_DONE"]


def test_a_direct_writer_spools_behind_another_process_s_spooled_writes(dbdir, stopped_after):
    """No server, SQLite: J is created directly; another process (require_server) spools a
    modify to "old"; a process that may write directly spools its modify to "new" behind it
    instead of writing it now.  Once a server runs, J ends "new"."""
    path = dbdir
    stopped_after(path)
    job_id = str(uuid.uuid4())
    assert _run(path, "create", job_id, env={})["route"] == "direct"
    assert _run(path, "modify", job_id, "old")["spooled"] == 1
    direct = _run(path, "modify", job_id, "new", env={})
    assert direct["route"] == "spool", f"a direct write went before another process's spooled one: {direct}"
    assert _job(path, job_id)["data"] == {}, "nothing may be written while spooled writes wait"
    assert _run(path, "fill", 1, env={})["route"] == "spool"  # and so on, while they wait
    db_cli("dbserver", "--path", path, check=True)
    wait_for(lambda: _pending(path) == 0, 60, "the spool to drain")
    assert _job(path, job_id)["data"] == {"result": "new"}
    db_cli("dbserver", "--stop", "--path", path, check=True)
    assert _run(path, "modify", job_id, "later", env={})["route"] == "direct"  # the spool is empty again


def test_a_write_held_when_the_server_stops_goes_to_the_spool_behind_the_files(any_dbdir, stopped_after, tmp_path):
    """J is created.  The server is stopped (SIGTERM to its watchdog, as db dbserver --stop) while it
    holds a live modify of J behind 3,000 spooled writes (J's modify to "old" last): the held write is
    not applied out of order; its client spools it behind the files that wait, and the next
    server applies it after them: J ends "new".  A pause point holds the drain and the holding
    replies, so that the live write is in the barrier at the stop (without it, the stop could
    come while its client was resending it after a holding reply)."""
    path = any_dbdir
    stopped_after(path)
    fault = tmp_path / "fault"
    fault.write_text(crash_points.HELD_FROZEN)
    job_id = str(uuid.uuid4())
    # J exists before the drain is held: a modify applied at the stop must be seen in J.
    db_cli("dbserver", "--path", path, check=True)
    assert _run(path, "create", job_id, env={})["route"] == "server"
    db_cli("dbserver", "--stop", "--path", path, check=True)
    fillers = [_client(path, "fill", 750) for _ in range(4)]
    assert sum(_finish(proc)["spooled"] for proc in fillers) == 3000
    assert _run(path, "modify", job_id, "old")["spooled"] == 1
    go = Path(path).parent / "go"
    # No holding reply comes, so no resend either: a reply timeout longer than the test.
    live = _client(path, "modify", job_id, "new",
                   env={"ORDER_GO": str(go), "BALSAMDB_CLIENT_TIMEOUT": "120", "BALSAMDB_CLIENT_DEADLINE": "240"})
    _started(_start_server(path, go, fault))
    from helpers import address

    with balsamdb.connect(path) as db:
        wait_for(lambda: db.server_status()["held_requests"] == 1, 60, "the server to hold the live write",
                 interval=0.02)
    os.kill(address(path)["watchdog"]["pid"], signal.SIGTERM)  # what db dbserver --stop does
    wait_for(lambda: address(path).get("state") == "stopped", 60, "the watchdog to stop its server")
    fault.unlink()
    outcome = _finish(live)
    at_stop = _job_read_directly(path, job_id)["data"]
    assert at_stop == {}, f"J was {at_stop} at the stop: the held write was applied then, before the files it waited for"
    assert outcome["route"] == "spool", f"the held write was not spooled behind the files: {outcome}"
    assert _pending(path) == 3002, "the drain was not held, or the write not spooled behind the files"
    log = (Path(path) / "log" / "server.log").read_text()
    assert "1 live requests held behind the spool were not applied" in log
    db_cli("dbserver", "--path", path, check=True)
    wait_for(lambda: _pending(path) == 0, 120, "the spool to drain")
    assert _job(path, job_id)["data"] == {"result": "new"}
