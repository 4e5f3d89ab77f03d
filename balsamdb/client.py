"""The client of the write server: Lazy Pirate over a ZeroMQ REQ socket.

One request is sent, and the reply awaited in short slices.  When no reply
comes within ``client_timeout`` seconds, or the server named in the address
file is seen to die, the socket is closed with linger 0, the address file is
read again, and the *same* request (same id) is sent on a fresh socket; the
server answers a retry of an applied write from its record, so retries never
duplicate.  After ``client_deadline`` seconds without an answer the caller gets
:class:`ServerUnavailable`.  A *holding reply* (the server first applies spooled
writes that arrived before this request) is progress: the request is sent again on
the same socket and the wait starts over, however long the spool takes.
"""

import logging
import os
import socket
import time

import zmq

from . import address_file, protocol
from .address_file import network_namespace as _network_namespace
from .exceptions import AuthenticationError, ServerUnavailable

log = logging.getLogger(__name__)

_SLICE_MS = 50          # poll granularity while waiting for a reply
_LIVENESS_EVERY = 0.25  # seconds between checks that the server still lives


class _Context:
    """A ZeroMQ context per process (a forked child must not reuse its parent's)."""

    pid = None
    context = None
    keys = None
    _host = None
    _netns = None

    @classmethod
    def get(cls):
        if cls.pid != os.getpid():
            cls.context, cls.pid, cls.keys, cls._host, cls._netns = zmq.Context(), os.getpid(), None, None, None
        return cls.context

    @classmethod
    def host(cls):
        if cls.pid != os.getpid() or cls._host is None:
            cls.get()
            cls._host = socket.gethostname()
        return cls._host

    @classmethod
    def netns(cls):
        if cls.pid != os.getpid() or cls._netns is None:
            cls.get()
            cls._netns = _network_namespace() or ""
        return cls._netns or None

    @classmethod
    def curve_keys(cls):
        cls.get()
        if cls.keys is None:
            cls.keys = zmq.curve_keypair()
        return cls.keys


class ServerClient:
    """Sends requests to the server named in an address record."""

    kind = "server"

    def __init__(self, secret, settings):
        self.secret = secret
        self.settings = settings
        self._socket = None
        self._address = None
        self._pid = os.getpid()
        self._local_failed = set()  # local addresses that did not answer (another network namespace?)

    def close(self):
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _connect(self, address, curve_public=None):
        if self._pid != os.getpid():
            # Forked: the parent's socket belongs to the parent's context; drop it, never close it here.
            self._socket, self._pid = None, os.getpid()
        if self._socket is None or self._address != (address, curve_public):
            self.close()
            sock = _Context.get().socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            # Waiting slices by a receive timeout, not sock.poll (which builds a zmq.Poller per call).
            sock.setsockopt(zmq.RCVTIMEO, _SLICE_MS)
            if curve_public:
                # The server encrypts (CURVE): our key pair is made per process, its public key
                # comes from the address file.
                public, secret = _Context.curve_keys()
                sock.curve_serverkey = curve_public.encode()
                sock.curve_publickey = public
                sock.curve_secretkey = secret
            sock.connect(address)
            self._socket, self._address = sock, (address, curve_public)
        return self._socket

    def try_once(self, info, request, address_path, frames=None):
        """Send ``request`` (a :class:`~balsamdb.request.Request`, already encoded as ``frames``, if
        given) to the server of ``info`` and wait for the answer.

        Returns the answer body, or None when this try should be abandoned (no
        reply in time, or the server died or was replaced meanwhile).
        """
        target = info["address"]
        local = info.get("local_address")
        if local and local not in self._local_failed and info.get("host") == _Context.host() \
                and info.get("netns") == _Context.netns():
            target = local
        sock = self._connect(target, info.get("curve_public"))
        try:
            return self._exchange(sock, info, request, address_path, frames, target, local)
        except BaseException:
            # Interrupted between send and receive (KeyboardInterrupt, an alarm, a bad answer):
            # a REQ socket still waiting for its reply is useless, so never keep it.
            self.close()
            raise

    def _exchange(self, sock, info, request, address_path, frames, target, local):
        frames = frames or protocol.encode(self.secret, request.message())
        sock.send(frames[0]) if len(frames) == 1 else sock.send_multipart(frames)  # one frame: send is cheaper
        give_up = time.monotonic() + self.settings.client_timeout
        next_check = time.monotonic() + _LIVENESS_EVERY
        while True:
            try:
                frames = [sock.recv()]  # the server answers with one frame (a REQ socket strips the envelope)
                while sock.rcvmore:  # (not a balsamdb answer: decode refuses it below)
                    frames.append(sock.recv())
            except zmq.Again:
                frames = None
            if frames is not None:
                try:
                    answer = protocol.decode(self.secret, frames, strict=False)  # old rows may hold NaN
                except AuthenticationError:
                    self.close()
                    raise AuthenticationError(
                        "the server's answer is not signed with this DB directory's secret"
                    ) from None
                # A REQ socket gets exactly one reply per request, so this is ours: a reply
                # without an id is the server refusing a message whose id it could not read.
                if answer.get("id") not in (request.id, None):
                    log.warning("dropping an answer to another request (%s)", answer.get("id"))
                    continue
                if not protocol.is_holding(answer):
                    return answer
                # Progress, not a timeout: the server applies spooled writes that go before
                # this one.  Send it again on this socket, signed afresh (a long drain must
                # not make it look like a replay), and wait a whole timeout again.  (The
                # timeout is checked next, as after an empty slice.)
                log.debug("the server drains the spool first (%s left); waiting", answer.get("pending"))
                frames = protocol.encode(self.secret, request.stamp().message())
                sock.send_multipart(frames)
                give_up = time.monotonic() + self.settings.client_timeout
            now = time.monotonic()
            if now >= give_up:
                log.info("no answer from %s in %.1f s; retrying on a fresh socket",
                         target, self.settings.client_timeout)
                if target == local:
                    self._local_failed.add(local)  # next try over TCP
                self.close()
                return None
            if now >= next_check:
                next_check = now + _LIVENESS_EVERY
                current = address_file.read(address_path)
                if current.get("epoch") != info.get("epoch") or not address_file.server_alive(info):
                    log.info("server %s went away; retrying", info["address"])
                    self.close()
                    return None


def server_state(info):
    """``"up"``: a live server is named; ``"coming"``: its watchdog lives and
    will (re)start it; ``"down"``: no server runs and none is coming."""
    if address_file.server_alive(info):
        return "up"
    if info.get("state") in ("running", "restarting") and address_file.watchdog_alive(info):
        return "coming"
    return "down"


def unavailable(address_path, waited):
    info = address_file.read(address_path)
    return ServerUnavailable(
        f"no answer from the balsamdb server within {waited:.0f} s "
        f"(address file says: {info.get('state')}{', ' + info['reason'] if info.get('reason') else ''})"
    )
