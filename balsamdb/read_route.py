"""Where a client's read goes: never to the write server.

- SQLite, the file on a local file system as this host sees it (statfs, as for direct writes),
  and the server running on this host or none running: the client reads the file itself on a
  read-only connection (:class:`balsamdb.reads.Reader`): WAL readers never block the writer.
- Otherwise (another host, a network file system, PostgreSQL, ``local_reads`` off): the read
  service named in the address file (``read_address``), with the same signed envelope as writes.
  A long read there is answered with *working* replies while it runs, so the client waits for it
  and never sends it again on a fresh socket while the service lives; a resend after a real
  timeout carries the same id and joins the running read.  A server of an older release without a
  read service gets the read itself.

Read your writes: an acknowledged write is committed before its answer, so any later read sees it.
A write of this client that waits in the spool is applied first: while a server runs the read
waits until the spool file is gone (up to ``client_deadline``, then :class:`ServerUnavailable`
says why); with no server it is refused at once, as the read could not see it.
"""

import socket
import time

from . import address_file
from .client import ServerClient, unavailable
from .exceptions import ServerUnavailable, TryAgain
from .request import Request

_POLL = 0.02  # seconds between looks at the address file or the spool while waiting


def reader_info(info):
    """The address record of the read service named in ``info``, in the form :class:`ServerClient`
    takes (the liveness check then watches the read service's process)."""
    return {"address": info["read_address"], "curve_public": info.get("curve_public"), "host": info.get("host"),
            "state": "running", "server": info.get("reader"), "epoch": info.get("epoch")}


def reader_alive(info):
    return address_file.server_alive(reader_info(info))


class ReadRoute:
    """The read half of :class:`balsamdb.api.Database` (which holds the address cache, the spool
    writer and the settings used here)."""

    def _local_reads(self, info, state):
        """Whether this client reads the SQLite file itself (see the module's docstring)."""
        if self.db_type != "sqlite3" or not self.settings.local_reads:
            return False
        if state == "up" and info.get("host") != socket.gethostname():
            return False
        return self._direct_allowed()

    def _read(self, request):
        started = time.monotonic()
        deadline = started + self.settings.client_deadline
        recheck = False
        while True:
            info, state = self._address(recheck)
            if state == "down":
                self._check_config()
            if state != "coming":
                self._wait_own_spool(state, deadline)
            if state != "coming" and self._local_reads(info, state):
                answer = self._local_reader().run(request.op, request.params)
                if (answer.get("error") or {}).get("code") != TryAgain.code:
                    self.last_read_route = "local"
                    return answer
            elif state == "up" and info.get("read_address") and reader_alive(info):
                request.stamp()  # signed afresh on every try: never refused as a replay
                answer = self._reader_client().try_once(reader_info(info), request, self._address_path,
                                                        self._encoded(request, info))
                if answer is not None and (answer.get("error") or {}).get("code") != TryAgain.code:
                    self.last_read_route = "reader"
                    return answer
            elif state == "up" and "reader_state" not in info:
                answer = self._send(info, request, self._address_path)  # a server without a read service
                if answer is not None and (answer.get("error") or {}).get("code") != TryAgain.code:
                    self.last_read_route = "server"
                    return answer
            elif state == "down":
                raise ServerUnavailable(
                    f"no balsamdb server runs for {self.dbdir.path} ({info.get('reason') or info.get('state')}"
                    f"{self._direct_refusal()}); start one with: db dbserver --path {self.dbdir.path}")
            time.sleep(_POLL)  # the server or its read service (re)starts
            recheck = True
            if time.monotonic() >= deadline:
                raise unavailable(self._address_path, time.monotonic() - started)

    def read_service_status(self):
        """The counters of the read service (``status`` sent to it): reads started, done, joined by a
        resend, timed out; None when no read service is named or it does not answer in time."""
        info, state = self._address(recheck=True)
        if state != "up" or not info.get("read_address") or not reader_alive(info):
            return None
        request = Request.make("status", {})
        deadline = time.monotonic() + self.settings.client_deadline
        while time.monotonic() < deadline:
            answer = self._reader_client().try_once(reader_info(info), request, self._address_path,
                                                    self._encoded(request, info))
            if answer is not None:
                return answer.get("result") if answer.get("ok") else None
        return None

    def _wait_own_spool(self, state, deadline):
        """A read sees this client's writes: wait while one of them waits in the spool for a running
        server; refuse when none runs (see the module's docstring)."""
        if not self._spool_writer.waiting():
            return
        if state == "down":
            raise ServerUnavailable(
                f"a write of this process waits in {self._spool_writer.spool.new} and no server runs to apply "
                f"it, so a read would not see it; start one with: db dbserver --path {self.dbdir.path}")
        while self._spool_writer.waiting():
            if time.monotonic() >= deadline:
                raise ServerUnavailable(
                    f"a write of this process still waits in {self._spool_writer.spool.new} after "
                    f"{self.settings.client_deadline:.0f} s (the server drains the spool), so a read would not "
                    "see it yet; try again, or see db dbserver --status")
            time.sleep(_POLL)

    def _reader_client(self):
        if self._read_client is None:
            self._read_client = ServerClient(self.dbdir.secret(), self.settings)
            self._read_client.kind = "reader"
        return self._read_client

    def _local_reader(self):
        if self._local_store is None:
            from .reads import Reader

            self._local_store = Reader(self.dbdir, self.settings)
        return self._local_store
