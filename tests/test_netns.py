"""Server and clients on different hosts: network namespaces made by the test, the link cut during a run.

Needs root and iproute2 (`ip netns`); CI runs as root and installs iproute2.  An ordinary user runs
it (SQLite only) with scripts/test_unprivileged.sh, in user and network namespaces of its own.  Traffic goes only to
addresses of the two test hosts made here (a veth pair), never anywhere else.
"""

import os
import shutil
import subprocess
import uuid

import pytest

from history import REGISTER_LABELS, check_writers
from helpers import Writers, address, db_cli, job_ids_in_db, kill_everything, skip_or_fail, wait_for

HOST_IP, CLIENT_IP = "10.254.77.1", "10.254.77.2"


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _netns_usable():
    if os.geteuid() != 0:
        return "needs root to make network namespaces (as an ordinary user: scripts/test_unprivileged.sh)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    probe = "bdbprobe" + uuid.uuid4().hex[:6]
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"`ip netns add` is not permitted here: {exc}"
    return None


@pytest.fixture
def client_host():
    """A network namespace (the 'client host') joined to this host by a veth pair; removed afterwards."""
    reason = _netns_usable()
    if reason:
        skip_or_fail(f"network namespaces must work for this test: {reason}")
    name = "bdb" + uuid.uuid4().hex[:8]
    host_if, ns_if = f"vh{name[3:9]}", f"vn{name[3:9]}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{CLIENT_IP}/30", "dev", ns_if)
        _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_if
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


@pytest.mark.unprivileged  # root, or an ordinary user with scripts/test_unprivileged.sh
def test_clients_on_another_host_survive_a_cut_link(any_dbdir, client_host, tmp_path, backend):
    namespace, host_if = client_host
    path = any_dbdir
    db_cli("dbserver", "--path", path, "--bind", HOST_IP, check=True)
    try:
        info = address(path)
        assert info["address"].startswith(f"tcp://{HOST_IP}:") and info["curve_public"], info
        env = dict(os.environ, BALSAMDB_CLIENT_TIMEOUT="0.5", BALSAMDB_CLIENT_DEADLINE="1.5",
                   BALSAMDB_REQUIRE_SERVER="1", WRITER_REGISTERS=str(REGISTER_LABELS))
        writers = Writers(path, tmp_path, nprocs=8, count=150, env=env,
                          prefix=["ip", "netns", "exec", namespace])
        try:
            writers.start()
            wait_for(lambda: writers.acked_so_far() >= 200, 120, "200 writes from the other host")
            _run("ip", "link", "set", host_if, "down")  # the cable is cut
            try:
                spool_new = path / "spool" / "new"
                wait_for(lambda: spool_new.exists() and len(os.listdir(spool_new)) >= 8, 60,
                         "writes to be spooled while the link is down")
            finally:
                _run("ip", "link", "set", host_if, "up")
            results = writers.wait(timeout=300)
        finally:
            writers.kill()
        assert all(code == 0 for code, _o, _e in results), [e[-400:] for c, _o, e in results if c]
        routes = " ".join(out for _c, out, _e in results)
        assert "server=" in routes and "spool=" in routes, routes
        acked = writers.acked_ids()
        assert len(acked) == 1200
        wait_for(lambda: len(job_ids_in_db(path)) >= 1200 and not os.listdir(path / "spool" / "new"),
                 60, "the spooled writes to be applied")
        stored = job_ids_in_db(path)
        assert sorted(stored) == sorted(acked), "every write exactly once"
        check_writers(path, writers, registers=REGISTER_LABELS)
        print(f"\nnetns[{backend}]: {routes}")
    finally:
        db_cli("dbserver", "--stop", "--path", path)
        kill_everything(path)
