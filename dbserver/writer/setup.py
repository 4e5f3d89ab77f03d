"""The write server's socket and process settings: what one peer may make it hold, the
same-host socket, the open-files limit, the CPU priority, and the routing envelope."""

import logging
import os
import sys

import zmq

from balsamdb import protocol

log = logging.getLogger("balsamdb.server.writer.server")

#: Messages one peer may have queued in the server beyond the one being read: a REQ client has
#: one request in flight, so a few leave room for any well-behaved client (see bound_memory).
RECEIVE_HWM = 4
#: The same-host socket, inside the DB directory (0700): only its owner may connect.
LOCAL_SOCKET = "server.ipc"
_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL


def bound_memory(sock, max_request_bytes):
    """Bound what peers can make the server hold, signed or not.

    A message larger than ``max_request_bytes`` plus the envelope is dropped by ZeroMQ as soon
    as its header announces the size, with its connection, before any of it is stored (clients
    learn the limit from the address file and refuse such a write before sending); at most
    :data:`RECEIVE_HWM` messages wait per peer, after which ZeroMQ stops reading that peer."""
    sock.setsockopt(zmq.MAXMSGSIZE, max_request_bytes + protocol.ENVELOPE_BYTES)
    sock.setsockopt(zmq.RCVHWM, RECEIVE_HWM)


def bind_local(sock, dbdir):
    """Bind the same-host socket ``ipc://P/server.ipc`` (mode 0600 in the 0700 DB directory: other
    users cannot connect, unlike an abstract socket); None (TCP only) when the path is too long."""
    path = dbdir.path / LOCAL_SOCKET
    if not sys.platform.startswith("linux") or len(os.fsencode(path)) > _MAX_SOCKET_PATH:
        log.info("no same-host socket: %s is longer than a Unix socket path may be; clients use TCP", path)
        return None
    address = f"ipc://{path}"
    old_umask = os.umask(0o177)  # made 0600 from the start, not chmodded after a window
    try:
        sock.bind(address)  # ZeroMQ removes a socket file left by a server that died
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return address


def raise_open_files_limit():
    """Every job process keeps a connection open: allow as many as the hard limit permits."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    log.info("open files limit %s (about as many job processes can stay connected)", soft)


def raise_priority():
    """Run ahead of the job processes on a shared host: every one of them waits
    on this process, so starving it slows them all.  Needs privileges (root or
    CAP_SYS_NICE); without them the priority stays as it was."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        log.info("running at nice -10, ahead of job processes on this host")
    except OSError:
        log.info("running at normal priority (no privilege to raise it)")


def split_envelope(frames):
    """Routing frames (identity and, from REQ, the empty delimiter) and the payload."""
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    return frames[:1], frames[1:]
