"""Promises of docs/guarantees.md that the mutation suite (scripts/mutants.py) found unchecked:
each test here kills a mutant that every earlier test let through (issue 25).

- the server's connection is durable (a weaker ``synchronous`` on it went unnoticed: the
  strace test of COMMIT before the answer holds a WAL write, which NORMAL makes as well);
- the client refuses an answer signed with another key;
- the watchdog's backoff, and that it never gives up however many starts fail;
- no direct read or write of a SQLite file on a network file system (the FUSE test reads only
  after a spooled write of its own, which keeps a read off the file anyway);
- the relay forwards its oldest waiting save first, and a restarted relay numbers new saves after
  the waiting ones (the end-to-end relay tests only time out, in minutes);
- the watchdog rewrites a corrupt address file within a second (quick form of the fault test);
- a list parameter of numbers (or lists, or "") is a bad request, never an internal error;
- group commits (the 64-process test checks them too, in two minutes);
- a start refused while another host's heartbeat or server lock is fresh (the two-host test needs
  FUSE mounts in namespaces; this one writes those files by hand).
"""

import time

import pytest

import balsamdb
from balsamdb import address_file, filesystems
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import AuthenticationError, ServerUnavailable

NFS_MAGIC = 0x6969


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_server_reports_the_durability_its_connection_has(served_dbdir):
    """Under the default `sqlite_synchronous` FULL, `db dbserver --status` reads synchronous back from
    the server's own connection: FULL, or NORMAL with the WAL flusher running, which has flushed the
    commits it answered (broken: the connection NORMAL and no flusher)."""
    with balsamdb.connect(served_dbdir) as db:
        db.jobs.create(name="answered", make_workdir=False)
        status = db.server_status()
    assert status["synchronous"] == "FULL", status
    if status["connection_synchronous"] != "FULL":
        assert status["connection_synchronous"] == "NORMAL" and status["flusher"] is True, status
        assert status["flushes"] >= 1 and status["flushed_commits"] >= 1, status


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_client_refuses_an_answer_signed_with_another_key(served_dbdir):
    """The running server signs with the secret it read at its start; the client, reading a new
    secret from the file, must refuse the server's answer as not signed with its key (and never
    take the server's error for its own)."""
    secret = served_dbdir / "secret"
    secret.write_bytes(b"f" * 64 + b"\n")
    with balsamdb.connect(served_dbdir, spool=False, client_deadline=10) as db:
        with pytest.raises(AuthenticationError, match="answer is not signed with this DB directory's secret"):
            db.jobs.create(name="signed-with-another-key")


def test_the_watchdog_backs_off_and_never_gives_up(dbdir):
    """Fifty failed starts in a row: 0, 0.25, 0.5, 1, ... up to 30 s between tries, never more and
    never the end; a server that lived past HEALTHY_AFTER starts the backoff over (broken: no
    backoff; a watchdog that stops trying after a few failures)."""
    from balsamdb.server.supervisor import watchdog

    dog = watchdog.Watchdog(DBDirectory(dbdir))
    delays = []
    for _ in range(50):
        now = time.monotonic()
        dog.schedule_restart("test: the server exited at once")
        delays.append(dog.restart_at - now)
        assert not dog.stopping and dog.server is None
    expected = [0.0] + [min(0.25 * 2 ** i, watchdog.MAX_BACKOFF) for i in range(49)]
    assert delays == pytest.approx(expected, abs=0.05), delays
    assert address_file.read(DBDirectory(dbdir).address_file)["state"] == "restarting"
    dog.schedule_restart("test: it ran a while", lived=watchdog.HEALTHY_AFTER + 1)
    assert dog.restart_at - time.monotonic() <= 0.1  # healthy for a while: restarted at once


def test_no_direct_read_or_write_on_a_network_file_system(dbdir, monkeypatch):
    """A fresh connection to a DB directory whose file system statfs calls NFS (the magic number
    is the only thing made up here: no NFS server in a test), no server running: its first call, a
    read, is refused saying why; a write spools; the SQLite file is not opened for either
    (broken: reads going direct on a network file system)."""
    monkeypatch.setattr(filesystems, "statfs_magic", lambda path: NFS_MAGIC)
    with balsamdb.connect(dbdir, client_deadline=2) as db:
        with pytest.raises(ServerUnavailable, match="nfs .statfs type 0x6969. is not a known local file system"):
            db.jobs.count()
        assert db.last_route != "direct"
        spooled = db.jobs.create(name="on-nfs")
        assert spooled.spooled and db.last_route == "spool"
    monkeypatch.undo()
    with balsamdb.connect(dbdir) as local:
        assert local.jobs.count() == 0  # nothing went to the file: it waits in the spool
        assert len(list((dbdir / "spool" / "new").iterdir())) == 1


def test_the_relays_spool_reopened_keeps_each_records_saves_in_order(tmp_path):
    """The relay's spool read again at a start (after a SIGKILL): each record's waiting saves are
    forwarded oldest first, whatever order the directory lists them in (broken: read newest first;
    the relay test that covers it end to end only times out, in minutes)."""
    from balsamdb.server.relay.spool import RelaySpool

    directory = tmp_path / "relay"
    spool = RelaySpool(directory)
    for n in range(12):  # more than 9: a string sort of unpadded names would differ
        spool.put("P", f"r{n % 2}", {"label": f"r{n % 2}", "n": n})
    again = RelaySpool(directory)
    for label in ("r0", "r1"):
        numbers = [again.documents[seq][2]["n"] for seq in again.pending[("P", label)]]
        assert numbers == sorted(numbers), f"{label}: forwarded in the order {numbers}"


def test_the_relay_forwards_oldest_first_and_numbers_after_the_waiting_saves(tmp_path):
    """The forwarder takes the oldest waiting save (broken: the newest); a relay started again
    (after a SIGKILL) numbers its next save after every waiting one (broken: by their count, so a
    new save took the number of a waiting one and replaced it), so each record's saves reach the
    store once each and in order."""
    from balsamdb.server.relay.spool import RelaySpool

    directory = tmp_path / "relay"
    spool = RelaySpool(directory)
    for n in range(12):
        spool.put("P", f"r{n % 2}", {"label": f"r{n % 2}", "n": n})

    def forward(spool, count=None):
        sent = []
        while (item := spool.oldest()) is not None and (count is None or len(sent) < count):
            seq, _project, _label, document = item
            sent.append(document["n"])
            spool.done(seq)
        return sent

    assert forward(spool, 3) == [0, 1, 2]
    again = RelaySpool(directory)
    waiting = sorted(again.documents)
    assert again.put("P", "r0", {"label": "r0", "n": 12}) > waiting[-1], waiting
    assert forward(again) == list(range(3, 13))
    assert sorted(p.name for p in (directory / "new").iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_the_watchdog_rewrites_a_corrupt_address_file_within_a_second(served_dbdir):
    """The quick form of test_faults' corrupt-address test: garbage in the address file is replaced
    by the watchdog, for the same server, within about a second (it looks every 0.5 s; broken:
    every 5 s), and clients find the server again."""
    from helpers import address, wait_for

    before = address(served_dbdir)

    def rewritten():
        info = address_file.read(served_dbdir / "dbwriter_address")
        return info.get("state") == "running" and info.get("epoch") == before["epoch"] and info

    # Twice: the second garbage comes right after the watchdog's rewrite, so a full interval to
    # its next look follows (the first one's wait depends on where in its interval it fell).
    for attempt in ("first", "second"):
        (served_dbdir / "dbwriter_address").write_text('garbage {"state": ')
        corrupted = time.monotonic()
        info = wait_for(rewritten, 10, f"the watchdog to rewrite the corrupt address file ({attempt} time)")
        took = time.monotonic() - corrupted
        assert took < 1.5, f"the watchdog took {took:.2f} s to rewrite the address file the {attempt} time " \
                           "(it looks every 0.5 s)"
    assert info["server"]["pid"] == before["server"]["pid"], "a corrupt address file must not restart the server"
    with balsamdb.connect(served_dbdir) as db:
        db.jobs.create(name="after-the-rewrite", make_workdir=False)
        assert db.last_route == "server"


def test_the_server_lock_refuses_a_second_process_while_held(dbdir):
    """While one process holds `server.lock`, another process's hold_server_lock is refused naming
    the holder, and succeeds once it is released (the quick form of test_watchdog's two-server
    test; broken: the lock taken shared)."""
    import subprocess
    import sys

    from balsamdb.server.supervisor import liveness

    probe = ("import sys; from balsamdb.dbdir import DBDirectory; from balsamdb.server.supervisor import liveness\n"
             "try:\n    liveness.hold_server_lock(DBDirectory(sys.argv[1]), deadline=0.2).close()\n"
             "except liveness.LockHeld as exc:\n    sys.exit(f'held: {exc}')\n")
    held = liveness.hold_server_lock(DBDirectory(dbdir))
    try:
        second = subprocess.run([sys.executable, "-c", probe, str(dbdir)], capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "another write server holds" in second.stderr, second.stderr
    finally:
        held.close()
    third = subprocess.run([sys.executable, "-c", probe, str(dbdir)], capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr


def test_a_list_parameter_of_other_items_is_a_bad_request(dbdir):
    """A list parameter whose items are not non-empty strings (numbers, lists, true, "") is refused
    as a bad request naming it, never an internal error, and writes nothing (the fuzzer's 120
    examples did not reach a list of numbers; broken: items taken for strings when truthy)."""
    with balsamdb.connect(dbdir) as db:
        for tags in ([1], [["a"]], [True], [""], "abc", {"a": 1}):
            with pytest.raises(balsamdb.BadRequest, match="tags must be a list of non-empty strings"):
                db.call("job_create", job={"name": "t", "tags": tags})
            with pytest.raises(balsamdb.BadRequest, match="record tags must be a list of non-empty strings"):
                db.call("record_save", project="P", record={"label": "r", "tags": tags})
        assert db.jobs.count() == 0 and db.projects.list() == []


def test_a_start_refuses_while_another_hosts_heartbeat_or_server_lock_is_fresh(dbdir):
    """The quick form of test_watchdog's two-host test (FUSE mounts in namespaces): the files another
    host's watchdog and server keep fresh, written here by hand with that host's name.  A fresh
    heartbeat refuses a start (`db dbserver` says where it runs and how to stop it, and starts
    nothing); a stale one, or one of a stopped watchdog, does not; a fresh `server.lock` of the other
    host (its orphan server, whose watchdog was killed) refuses as well (broken: a heartbeat that
    never turns stale; the server's lock not counted)."""
    import json
    import os
    import socket

    from balsamdb.server.supervisor import control, liveness
    from helpers import db_cli, processes_for

    path = DBDirectory(dbdir)
    other = "host-a-" + socket.gethostname()
    heartbeat = liveness.heartbeat_file(path)
    heartbeat.write_text(json.dumps({"host": other, "watchdog": {"pid": 4242, "started": 1.0},
                                     "beat": time.time(), "every": 2.0, "state": "running"}) + "\n")
    refused = db_cli("dbserver", "--path", dbdir, "--timeout", "10")
    assert refused.returncode == 1, (refused.stdout, refused.stderr)
    assert f"runs on host {other}" in refused.stderr and "db dbserver --stop" in refused.stderr \
        and "--force" in refused.stderr, refused.stderr
    assert not processes_for(dbdir), "a start refused for another host still started something"
    with pytest.raises(control.RunsElsewhere):
        control.check_other_host(path, stale_after=30.0)
    old = time.time() - 31.0
    os.utime(heartbeat, (old, old))
    control.check_other_host(path, stale_after=30.0)  # stale: a start is allowed
    heartbeat.write_text(json.dumps({"host": other, "state": "stopped"}) + "\n")
    control.check_other_host(path, stale_after=30.0)  # that watchdog stopped cleanly
    heartbeat.unlink()
    liveness.server_lock_file(path).write_text(json.dumps({"host": other, "pid": 4343}))
    with pytest.raises(control.RunsElsewhere, match=other):
        control.check_other_host(path, stale_after=30.0)
    os.utime(liveness.server_lock_file(path), (old, old))
    control.check_other_host(path, stale_after=30.0)


@pytest.mark.parametrize("backend", ["sqlite3"])
def test_writes_that_arrive_together_are_committed_together(served_dbdir):
    """200 writes sent at once on one connection (without waiting for answers) are each answered
    once, and some are committed in one batch (a group commit: `max_batch` over 1); the quick form
    of the 64-process test's last check (broken: a batch limit of one)."""
    import uuid

    import zmq

    from balsamdb import protocol
    from helpers import address

    secret = DBDirectory(served_dbdir).secret()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address(served_dbdir)["address"])
        sent = {}
        for i in range(200):
            job_id = str(uuid.uuid4())
            sent[f"together-{job_id[:16]}"] = job_id
        for request_id, job_id in sent.items():
            sock.send_multipart([b""] + protocol.encode(secret, {
                "id": request_id, "op": "job_create", "ts": time.time(),
                "params": {"job": {"id": job_id, "name": "together", "workflow": "w"}}}))
        answers = {}
        deadline = time.monotonic() + 60
        while len(answers) < len(sent) and time.monotonic() < deadline:
            if sock.poll(200):
                answer = protocol.decode(secret, sock.recv_multipart()[1:])
                answers[answer["id"]] = answer
    finally:
        sock.close()
    assert sorted(answers) == sorted(sent) and all(a["ok"] for a in answers.values()), len(answers)
    with balsamdb.connect(served_dbdir) as db:
        assert db.jobs.count(workflow="w") == 200
        assert db.server_status()["max_batch"] > 1, "no group commit: each write was a transaction of its own"
