"""Who may write, and where the secrets are: real processes, real users."""

import multiprocessing
import os
import pwd
import stat
import time

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory

from helpers import address, db_cli


def files_holding(root, needle):
    """Every file under ``root`` whose bytes contain ``needle`` (the PostgreSQL cluster excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "pgdata"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as handle:
                    if needle in handle.read():
                        found.append(path)
            except OSError:
                pass
    return found


def test_secrets_live_only_in_private_files_and_never_in_logs(served_dbdir, backend):
    path = served_dbdir
    db = balsamdb.connect(path)
    db.jobs.create(name="j")
    db.records.save("P", {"label": "r"})
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address(path)["address"])
    sock.send_multipart([b""] + protocol.encode(b"guess", {"id": "1", "op": "ping", "params": {}, "ts": time.time()}))
    assert sock.poll(5000)
    sock.close()
    db_cli("dbserver", "--status", "--path", path, check=True)
    secret = DBDirectory(path).secret()
    holders = files_holding(path, secret)
    assert holders == [str(path / "secret")], holders
    assert stat.S_IMODE(os.stat(path / "secret").st_mode) == 0o600
    if backend == "postgres":
        url = (path / "postgres_url").read_text().strip()
        password = url.split(":", 2)[2].split("@")[0].encode()
        assert files_holding(path, password) == [str(path / "postgres_url")]
        assert stat.S_IMODE(os.stat(path / "postgres_url").st_mode) == 0o600
    logs = b"".join(p.read_bytes() for p in (path / "log").rglob("*") if p.is_file())
    assert b"bad signature" in logs and secret not in logs


def _as_nobody(path, server_address, pipe):
    """In a forked child: become user nobody, then try to use root's DB directory."""
    user = pwd.getpwnam("nobody")
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    os.environ["HOME"] = user.pw_dir  # as that user's own login would have it
    os.environ.pop("BALSAMDB_SETTINGS", None)
    outcome = {}
    try:
        balsamdb.connect(path).jobs.create(name="intruder")
        outcome["connect"] = "wrote"
    except balsamdb.BalsamDBError as exc:
        outcome["connect"] = f"{type(exc).__name__}: {exc}"
    # Knowing the address is not enough: without the secret every request is refused.
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server_address)
    job = {"name": "intruder"}
    sock.send_multipart([b""] + protocol.encode(b"0" * 64, {"id": "x", "op": "job_create", "params": {"job": job},
                                                              "ts": time.time()}))
    if sock.poll(5000):
        body = sock.recv_multipart()[1]
        outcome["raw"] = body[36:].decode()
    sock.close()
    ctx.term()
    pipe.send(outcome)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (CI runs as root)")
def test_another_user_cannot_write_into_the_db_directory(served_dbdir):
    path = served_dbdir
    fork = multiprocessing.get_context("fork")
    receiver, sender = fork.Pipe(duplex=False)
    child = fork.Process(target=_as_nobody, args=(str(path), address(path)["address"], sender))
    child.start()
    assert receiver.poll(60), "the child said nothing within 60 s"
    result = receiver.recv()
    child.join(30)
    assert child.exitcode == 0
    assert "belongs to another user" in result["connect"], dict(result)
    assert '"code":"auth"' in result["raw"], dict(result)
    assert [j.name for j in balsamdb.connect(path).jobs.filter()] == []


def test_encrypted_server_talks_only_curve(any_dbdir):
    path = any_dbdir
    started = db_cli("dbserver", "--path", path, "--encrypt", check=True)
    try:
        assert "listening at" in started.stdout
        info = address(path)
        assert info["curve_public"] and stat.S_IMODE(os.stat(path / "curve.key").st_mode) == 0o600
        # A client that does not speak CURVE gets no answer at all, even with the right secret
        # (checked first: a server that talks plain text fails here at once, not after a deadline).
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(info["address"])
        secret = DBDirectory(path).secret()
        sock.send_multipart([b""] + protocol.encode(secret, {"id": "p", "op": "ping", "params": {},
                                                             "ts": time.time()}))
        assert not sock.poll(1500), "a plain-text client was answered by an encrypted server"
        sock.close()
        db = balsamdb.connect(path)
        db.jobs.create(name="over-curve")
        assert db.last_route == "server" and db.jobs.count() == 1
        status = db_cli("dbserver", "--status", "--path", path, check=True)
        assert "CURVE-encrypted" in status.stdout
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        from helpers import kill_everything

        kill_everything(path)
