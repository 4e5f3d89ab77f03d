"""Bounds on the connections of ``db serve`` and ``db relay``, so that one client cannot starve the rest.

waitress alone stops accepting at 100 open connections (``connection_limit``) and closes an idle one only
after 120 s; a slow request (a header sent a byte at a time) is never closed while bytes trickle in.  So
100 idle sockets shut every logged-in user out.  The server made here keeps waitress, with these rules
(docs/http.md, "Connections"):

- **idle** connections (no request in progress, no answer waiting to be sent) are closed after
  ``timeout`` seconds; a **request** still arriving ``timeout`` seconds after its first byte is cut
  (its connection closed) unless it came at :data:`MIN_RATE` (64 KiB/s) on average: a large record
  on a busy link goes on, a header sent a byte at a time does not; an answer that the client does
  not read for ``timeout`` seconds is dropped with its connection;
- one client address holds at most ``per_address`` connections, and all together at most ``total``.  A
  connection over a bound makes room rather than being refused: the oldest idle connection goes first
  (of the same address for the per-address bound, of the address holding the most connections for the
  total), then the oldest connection still sending its request.  Only when every connection in the way
  is being answered is the new one closed at once.

So idle and slow connections cost a newcomer nothing, and a busy one is never cut.  With
``trusted_proxy`` every connection comes from the proxy: its address has no per-address bound.
"""

import logging
import socket
import time

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

log = logging.getLogger("balsamdb.server.http")

TIMEOUT = 30.0         # seconds: idle connections, a request's arrival, an unread answer
MIN_RATE = 64 * 1024   # bytes/s: a request still arriving after TIMEOUT must have come at least this fast
PER_ADDRESS = 256      # connections of one client address: a node's jobs saving at once stay well below
TOTAL = 1024           # connections in all (each takes a file descriptor, two while a body is buffered)

IDLE, RECEIVING, BUSY, CLOSING = "idle", "receiving", "busy", "closing"


class GuardedChannel(HTTPChannel):
    """waitress's channel, knowing when the request it is receiving began."""

    request_started = None  # time.monotonic() of the first byte of the request being received
    request_bytes = 0       # bytes of it received so far

    def received(self, data):
        before = self.request
        result = super().received(data)
        if self.request is None:
            self.request_started, self.request_bytes = None, 0
        elif self.request is not before or self.request_started is None:
            self.request_started, self.request_bytes = time.monotonic(), len(data)
        else:
            self.request_bytes += len(data)
        return result

    def too_slow(self, now, timeout):
        """True for a request older than ``timeout`` that arrives slower than :data:`MIN_RATE`."""
        age = now - (self.request_started or now)
        return age > timeout and self.request_bytes < MIN_RATE * age

    def state(self):
        if not self.connected or self.will_close:
            return CLOSING
        if self.requests or self.total_outbufs_len or self.close_when_flushed:
            return BUSY  # being answered (or its answer sent): never cut to make room
        return RECEIVING if self.request is not None else IDLE


class GuardedServer(TcpWSGIServer):
    """waitress's TCP server with the bounds of this module (runs them on its loop thread)."""

    channel_class = GuardedChannel

    def __init__(self, *args, guard, **kwargs):
        self.guard = guard
        super().__init__(*args, **kwargs)

    def handle_accept(self):
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            if not self.guard.make_room(self.active_channels.values(), addr[0]):
                conn.close()
                return
            self.set_socket_options(conn)
        except OSError:
            return  # the peer left before the accept completed; nothing to serve
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def maintenance(self, now):
        self.guard.expire(list(self.active_channels.values()))


class Guard:
    """The bounds (see the module docs); ``exempt``: an address without a per-address bound."""

    def __init__(self, timeout=TIMEOUT, per_address=PER_ADDRESS, total=TOTAL, exempt=None):
        self.timeout, self.per_address, self.total, self.exempt = timeout, per_address, total, exempt
        self.refused = 0
        self.closed = {IDLE: 0, RECEIVING: 0, BUSY: 0, CLOSING: 0}

    def make_room(self, channels, address):
        """Close what must go for a new connection from ``address``; False when it cannot come in."""
        channels = [c for c in channels if c.state() != CLOSING]
        mine = [c for c in channels if c.addr and c.addr[0] == address]
        if address != self.exempt and len(mine) >= self.per_address:
            if not self._close_one(mine, "address"):
                return self._refuse(address, f"its {len(mine)} connections are all being answered")
            channels = [c for c in channels if c.state() != CLOSING]
        if len(channels) >= self.total:
            held = {}
            for channel in channels:
                held[channel.addr[0]] = held.get(channel.addr[0], 0) + 1
            if not self._close_one(channels, "total", held):
                return self._refuse(address, f"all {len(channels)} connections are being answered")
        return True

    def _close_one(self, channels, bound, held=None):
        candidates = [c for c in channels if c.state() != BUSY]
        if not candidates:
            return False

        def order(channel):  # idle first, then the address holding the most, then the oldest
            return (channel.state() != IDLE, -(held or {}).get(channel.addr[0], 0),
                    channel.request_started or channel.last_activity)
        victim = min(candidates, key=order)
        self._close(victim, f"to make room (the {bound} bound)")
        return True

    def _close(self, channel, why):
        # Shut down here, closed by the loop right after (waitress's handle_write sees will_close),
        # not closed here: this runs while the loop builds its select() lists or handles their
        # results, where a closed descriptor (or a new connection given its number) would be served
        # by mistake.  The shutdown makes a socket whose peer reads nothing (a full send window:
        # never writable, so never handled) ready at once, and tells the peer now.
        state = channel.state()
        self.closed[state] += 1
        log.debug("closing a connection of %s (%s) %s", channel.addr[0], state, why)
        channel.will_close = True
        try:
            channel.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone

    def _refuse(self, address, why):
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("refused a connection from %s: %s (%d refused so far)", address, why, self.refused)
        return False

    def expire(self, channels):
        """Close idle connections, slow requests and unread answers older than the timeout."""
        wall, mono = time.time(), time.monotonic()
        for channel in channels:
            state = channel.state()
            if state == IDLE and channel.last_activity < wall - self.timeout:
                self._close(channel, f"after {self.timeout:g} s idle")
            elif state == RECEIVING and channel.too_slow(mono, self.timeout):
                self._close(channel, f"after {self.timeout:g} s without the whole request, slower than "
                                     f"{MIN_RATE // 1024} KiB/s")
            elif state == BUSY and channel.total_outbufs_len and channel.last_activity < wall - self.timeout:
                # An answer the client does not read: waitress would keep it (and a worker thread
                # waiting to write more of it) for ever.  Closing wakes that thread.
                self._close(channel, f"after {self.timeout:g} s of its answer unread")


def _fit_file_limit(total):
    """``total``, after raising this process's limit of open files to hold it (two descriptors a
    connection); less when the hard limit is lower."""
    import resource

    need = 2 * total + 64
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        if raised < need:
            total = max(2, (raised - 64) // 2)
            log.warning("the limit of open files (%d) holds %d connections: serving at most that many", raised, total)
    return total


def create_server(app, host, port, threads, max_body, timeout=TIMEOUT, per_address=PER_ADDRESS, total=TOTAL,
                  ident="balsamdb", **options):
    """A waitress server for ``app`` on ``host:port`` with the bounds of this module (not yet running)."""
    total = _fit_file_limit(total)
    guard = Guard(timeout, min(per_address, total), total, exempt=options.get("trusted_proxy"))
    adj = Adjustments(host=host, port=port, threads=threads, max_request_body_size=max_body, ident=ident,
                      # waitress's own bound and sweep stay out of the way: the guard does both
                      connection_limit=total + 64, channel_timeout=max(int(timeout), 1), cleanup_interval=1,
                      **options)
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    # The first address the host name gives (as the URL printed at start names one)
    return GuardedServer(app, {}, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0], guard=guard)
