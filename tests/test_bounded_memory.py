"""Memory bounded against peers without the secret, and a same-host socket only the owner can use
(issue 12, item 4).  Real server processes started by `db dbserver`."""

import json
import os
import socket
import stat
import time

import pytest
import zmq

import balsamdb
from balsamdb import protocol
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import RequestTooLarge

from helpers import address, db_cli, kill_everything, passable_dir, wait_for

MB = 1024 * 1024
FRAME_MB = 200
PEERS = 6
RSS_BOUND_MB = 400


def peak_rss_mb(pid):
    """The peak resident memory of ``pid`` (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@pytest.fixture
def started(dbdir):
    db_cli("dbserver", "--path", dbdir, check=True)
    try:
        yield dbdir
    finally:
        db_cli("dbserver", "--stop", "--path", dbdir)
        kill_everything(dbdir)


def test_six_200_mb_unsigned_frames_leave_the_server_small_and_answering(started):
    """Six peers without the secret each send one 200 MB frame over TCP: the server drops each
    (and its connection) unread; its peak memory stays under 400 MB and it goes on answering."""
    path = started
    info = address(path)
    server_pid = info["server"]["pid"]
    assert info["max_request_bytes"] == 64 * MB
    before = peak_rss_mb(server_pid)
    payload = protocol.MAGIC + b"0" * 32 + b"x" * (FRAME_MB * MB)
    ctx = zmq.Context()
    sockets, monitors = [], []
    try:
        for _ in range(PEERS):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            # One connection each: what a dropped peer does next is not the point.
            sock.setsockopt(zmq.RECONNECT_IVL, 60_000)
            monitors.append(sock.get_monitor_socket(zmq.EVENT_DISCONNECTED))
            sock.connect(info["address"])
            sock.send_multipart([b"", payload], copy=False)
            sockets.append(sock)
        # Each peer either gets an answer (the frame was read: the old behaviour) or is dropped.
        outcome = {}
        poller = zmq.Poller()
        for i in range(PEERS):
            poller.register(sockets[i], zmq.POLLIN)
            poller.register(monitors[i], zmq.POLLIN)
        deadline = time.monotonic() + 120
        while len(outcome) < PEERS and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                for i in range(PEERS):
                    if sock is sockets[i]:
                        sock.recv_multipart()
                        outcome[i] = "answered"
                    elif sock is monitors[i]:
                        sock.recv_multipart()
                        outcome.setdefault(i, "dropped")
        assert len(outcome) == PEERS, f"after 120 s only {outcome} of {PEERS} peers were answered or dropped"
        peak = peak_rss_mb(server_pid)
        print(f"server peak RSS: {before:.0f} MB before, {peak:.0f} MB after {PEERS} x {FRAME_MB} MB frames")
        assert peak < RSS_BOUND_MB, f"the server's peak RSS reached {peak:.0f} MB ({outcome})"
        assert set(outcome.values()) == {"dropped"}, outcome
    finally:
        for sock in sockets + monitors:
            sock.close(linger=0)
        ctx.term()
    db = balsamdb.connect(path, require_server=True)
    db.jobs.create(name="still-answering")
    assert db.last_route == "server" and address(path)["server"]["pid"] == server_pid


def test_a_batch_is_bounded_in_bytes(dbdir):
    """With max_batch_bytes 4 MB, twenty 1 MB requests that wait together are taken at most five
    at a time (four of them reach the bound), not all twenty into one group commit.  The server's
    own receive_batch on a real socket (inproc: every message is queued once its send returns)."""
    from balsamdb.server.writer.server import WriteServer
    from balsamdb.settings import load_settings

    server = WriteServer(DBDirectory(dbdir), settings=load_settings(max_batch_bytes=4 * MB))
    ctx = zmq.Context()
    server.socket = ctx.socket(zmq.ROUTER)
    server.socket.bind("inproc://batch")
    peers = []
    try:
        for i in range(20):
            peer = ctx.socket(zmq.DEALER)
            peer.connect("inproc://batch")
            peer.send_multipart([b"", b"x" * MB])
            peers.append(peer)
        sizes = []
        while sum(sizes) < 20:
            batch = server.receive_batch()
            assert batch, f"only {sum(sizes)} of 20 messages arrived"
            sizes.append(len(batch))
        assert max(sizes) <= 5, sizes
    finally:
        for sock in peers + [server.socket]:
            sock.close(linger=0)
        ctx.term()


def test_the_client_refuses_a_write_larger_than_the_server_reads(tmp_path):
    """The server publishes its limit in the address file; a client with a larger limit of its own
    refuses the write at once instead of sending a message the server drops unread."""
    path = tmp_path / "db"
    DBDirectory(path).init()
    env = dict(os.environ, BALSAMDB_MAX_REQUEST_BYTES="100000")
    db_cli("dbserver", "--path", path, env=env, check=True)
    try:
        assert address(path)["max_request_bytes"] == 100000
        db = balsamdb.connect(path, client_deadline=30)
        started = time.monotonic()
        with pytest.raises(RequestTooLarge, match="exceeds the limit of 100000 bytes of the server"):
            db.records.save("P", {"label": "big", "stdout_stderr": "y" * 200_000})
        assert time.monotonic() - started < 2.0
        assert db.records.save("P", {"label": "small"}) is True
        assert not (path / "spool" / "new").exists() or not os.listdir(path / "spool" / "new")
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)


def test_the_same_host_socket_is_a_private_file_in_the_db_directory(started):
    path = started
    info = address(path)
    assert info["local_address"] == f"ipc://{path}/server.ipc", info
    mode = os.stat(path / "server.ipc").st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    # No abstract socket of this server is left listening (any user could connect to one).
    with open("/proc/net/unix") as handle:
        abstract = [line for line in handle if f"@balsamdb-{info['epoch']}" in line]
    assert abstract == [], abstract
    db = balsamdb.connect(path, require_server=True)
    db.jobs.create(name="over-ipc")
    assert db.last_route == "server"
    assert db._server._address[0] == info["local_address"]


def test_a_db_directory_path_too_long_for_a_socket_uses_tcp(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "db"
    DBDirectory(deep).init()
    db_cli("dbserver", "--path", deep, check=True)
    try:
        info = address(deep)
        assert "local_address" not in info and info["address"].startswith("tcp://")
        db = balsamdb.connect(deep, require_server=True)
        db.jobs.create(name="over-tcp")
        assert db.last_route == "server"
    finally:
        db_cli("dbserver", "--stop", "--path", deep)
        kill_everything(deep)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second user (CI runs as root)")
def test_another_user_cannot_connect_to_the_same_host_socket():
    import shutil

    # A DB directory that another user can reach (pytest's own tmp directories are 0700), opened for
    # traversal as for a PostgreSQL cluster run by another account: only the socket's mode protects it.
    base = passable_dir("bdb-ipc-")
    path = base / "db"
    DBDirectory(path).init()
    os.chmod(path, 0o711)
    sock_path = str(path / "server.ipc")
    try:
        db_cli("dbserver", "--path", path, check=True)
        pid = os.fork()
        if pid == 0:  # the child becomes nobody and tries to connect
            code = 3
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.stat(sock_path)  # it can reach the socket file (else code 3)...
                with socket.socket(socket.AF_UNIX) as unix:
                    try:
                        unix.connect(sock_path)  # ...but not connect
                        code = 1
                    except PermissionError:
                        code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, \
            f"exit {os.waitstatus_to_exitcode(status)}: 1 = another user connected, 3 = the test could not reach it"
        with socket.socket(socket.AF_UNIX) as unix:
            unix.connect(sock_path)  # its owner can
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)
        shutil.rmtree(base, ignore_errors=True)


def test_max_batch_bytes_setting_is_checked():
    from balsamdb.exceptions import ConfigError
    from balsamdb.settings import load_settings

    assert load_settings().max_batch_bytes == 32 * MB
    with pytest.raises(ConfigError, match="max_batch_bytes must be at least 1024"):
        load_settings(max_batch_bytes=10)
    assert json.dumps(load_settings(max_batch_bytes=2048).max_batch_bytes) == "2048"
