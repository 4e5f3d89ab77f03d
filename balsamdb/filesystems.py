"""Which file system holds a DB directory, as this host sees it: may SQLite be written directly there?

SQLite's WAL mode needs shared memory on the host that holds the file, and the locking of network
and cluster file systems (NFS, Lustre, GPFS, BeeGFS, CephFS, CIFS, FUSE mounts such as sshfs) is
not reliable enough for it: writing directly there corrupts databases.  So a client writes directly
only when the database file is on a file system of :data:`LOCAL` (by the ``f_type`` magic number of
``statfs(2)``); on any other (network, cluster, FUSE, or unknown) its writes go to the spool while no
server runs, with no setting needed.  A local disk exported over NFS is then written directly on its
own host and spooled from the others.
"""

import ctypes
import os
import sys

#: statfs magic numbers of file systems on which direct SQLite writes are safe (linux/magic.h).
LOCAL = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x2FC12FC1: "zfs",
    0xF2F52010: "f2fs",
    0x01021994: "tmpfs",
    0x794C7630: "overlay",
}

#: Names for the magic numbers of common network, cluster and FUSE file systems (all count as remote,
#: as does every number not in :data:`LOCAL`); only for messages.
REMOTE_NAMES = {
    0x6969: "nfs",
    0x0BD00BD0: "lustre",
    0x47504653: "gpfs",
    0x19830326: "beegfs",
    0x00C36400: "cephfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x65735546: "fuse",
    0x01021997: "9p",
    0x5346414F: "afs",
    0x6B414653: "afs",
    0x013111A8: "ibrix",
}


class _Statfs(ctypes.Structure):
    # f_type (__fsword_t, a C long) comes first in struct statfs on every Linux architecture;
    # the rest is room for the fields we do not read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 512)]


def statfs_magic(path):
    """The ``f_type`` of the file system holding ``path`` (an int), or None where statfs has none."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(str(path)), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return buf.f_type & 0xFFFFFFFF


def describe_magic(magic):
    """``{"type": name, "magic": "0x...", "local": bool}`` for a statfs magic number."""
    if magic is None:
        return {"type": "unknown (no statfs type on this platform)", "magic": None, "local": True}
    name = LOCAL.get(magic) or REMOTE_NAMES.get(magic) or "unknown"
    return {"type": name, "magic": f"0x{magic:X}", "local": magic in LOCAL}


def describe(path):
    """What file system holds ``path`` and whether it counts as local; see :func:`describe_magic`."""
    return describe_magic(statfs_magic(path))


def sqlite_location(dbdir):
    """The path whose file system decides: the SQLite file, or the DB directory before it exists."""
    return dbdir.sqlite_file if dbdir.sqlite_file.exists() else dbdir.path


def direct_writes_allowed(dbdir):
    """``(allowed, why)``: may this host write ``dbdir``'s SQLite file directly (no server running)?"""
    info = describe(sqlite_location(dbdir))
    if info["local"]:
        return True, f"{info['type']} is a local file system"
    return False, (f"{info['type']} (statfs type {info['magic']}) is not a known local file system: SQLite "
                   "is not written directly there; writes wait in the spool for a server")
