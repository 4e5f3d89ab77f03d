"""Direct SQLite writes only on a local file system (issue 12, item 6).

The detection by statfs magic number is unit-tested; a real FUSE mount (bindfs, from Debian) shows a
client that spools instead of writing SQLite through it, and `db which` saying so.
"""

import json
import os
import shutil
import subprocess

import pytest

import balsamdb
from balsamdb import filesystems
from balsamdb.dbdir import DBDirectory
from balsamdb.exceptions import ServerUnavailable

from helpers import db_cli, kill_everything, skip_or_fail, wait_for

LOCAL = {"ext2/3/4": 0xEF53, "xfs": 0x58465342, "btrfs": 0x9123683E, "zfs": 0x2FC12FC1, "f2fs": 0xF2F52010,
         "tmpfs": 0x01021994, "overlay": 0x794C7630}
REMOTE = {"nfs": 0x6969, "lustre": 0x0BD00BD0, "gpfs": 0x47504653, "beegfs": 0x19830326, "cephfs": 0x00C36400,
          "cifs": 0xFF534D42, "smb2": 0xFE534D42, "fuse": 0x65735546, "9p": 0x01021997}


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_known_local_file_systems_allow_direct_writes(name):
    info = filesystems.describe_magic(LOCAL[name])
    assert info == {"type": name, "magic": f"0x{LOCAL[name]:X}", "local": True}


@pytest.mark.parametrize("name", sorted(REMOTE))
def test_network_cluster_and_fuse_file_systems_count_as_remote(name):
    info = filesystems.describe_magic(REMOTE[name])
    assert info == {"type": name, "magic": f"0x{REMOTE[name]:X}", "local": False}


def test_an_unknown_file_system_counts_as_remote():
    assert filesystems.describe_magic(0x12345678) == {"type": "unknown", "magic": "0x12345678", "local": False}
    assert filesystems.describe("/proc")["local"] is False  # procfs: not on the local list


def test_statfs_reads_the_magic_of_real_mounts(tmp_path):
    assert filesystems.statfs_magic("/dev/shm") == 0x01021994  # tmpfs
    assert filesystems.statfs_magic("/proc") == 0x9FA0
    assert filesystems.statfs_magic(tmp_path) in LOCAL.values()
    with pytest.raises(FileNotFoundError):
        filesystems.statfs_magic(tmp_path / "missing")


@pytest.fixture
def fuse_mount(tmp_path):
    """``(source, mount)``: ``mount`` shows ``source`` through bindfs, a FUSE file system; unmounted after."""
    if shutil.which("bindfs") is None:
        skip_or_fail("bindfs is not installed (apt-get install bindfs)")
    if not os.path.exists("/dev/fuse"):
        skip_or_fail("no /dev/fuse: FUSE mounts are impossible here")
    source, mount = tmp_path / "source", tmp_path / "mount"
    source.mkdir()
    mount.mkdir()
    done = subprocess.run(["bindfs", "--no-allow-other", str(source), str(mount)], capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        skip_or_fail(f"bindfs failed: {done.stderr.strip()}")
    try:
        wait_for(lambda: filesystems.statfs_magic(mount) == REMOTE["fuse"], 10, "the FUSE mount to appear")
        yield source, mount
    finally:
        subprocess.run(["fusermount", "-u", str(mount)], capture_output=True, timeout=30)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def test_a_client_on_a_fuse_mount_spools_instead_of_writing_sqlite(fuse_mount, run_db):
    source, mount = fuse_mount
    local_path, fuse_path = source / "db", mount / "db"
    DBDirectory(local_path).init()
    # Seen through FUSE: no server runs, yet the write is spooled, not written to SQLite.
    remote = balsamdb.connect(fuse_path)
    spooled = remote.jobs.create(name="through-fuse")
    assert spooled.spooled and remote.last_route == "spool"
    assert len(os.listdir(local_path / "spool" / "new")) == 1
    with pytest.raises(ServerUnavailable, match="a write of this process waits in .* no server runs"):
        remote.jobs.count()  # its own write waits in the spool: a read would not see it (guarantees.md)
    with pytest.raises(ServerUnavailable, match="fuse .statfs type 0x65735546. is not a known local file system"):
        balsamdb.connect(fuse_path).jobs.count()  # a read cannot spool: it says why it does not read directly
    which = run_db("which", "--path", fuse_path, "--json")
    report = json.loads(which.stdout)
    assert report["direct_writes"]["allowed"] is False and report["direct_writes"]["type"] == "fuse", report
    assert "direct writes: no" in run_db("which", "--path", fuse_path).stdout
    assert "direct writes: yes" in run_db("which", "--path", local_path).stdout
    # On the host's own (local) path the same DB directory is written directly, behind the spooled write.
    started = db_cli("dbserver", "--path", local_path)
    try:
        assert started.returncode == 0, started.stderr
        local = balsamdb.connect(local_path)
        wait_for(lambda: local.jobs.count() == 1, 30, "the server to apply the spooled write")
        remote.jobs.create(name="via-server")  # with a server, the FUSE client writes through it
        assert remote.last_route == "server"
    finally:
        db_cli("dbserver", "--stop", "--path", local_path)
        kill_everything(local_path)
    direct = balsamdb.connect(local_path)
    direct.jobs.create(name="direct-on-ext4")
    assert direct.last_route == "direct"
    assert sorted(j.name for j in direct.jobs.filter()) == ["direct-on-ext4", "through-fuse", "via-server"]
