"""What a watchdog tells the others: the address file and the heartbeat.

Clients find the write server and the read service through the address file (``P/dbwriter_address``,
see :mod:`balsamdb.address_file`); a start on another host sees a live watchdog by its heartbeat
(``P/heartbeat``, see :mod:`.liveness`).  :class:`Publisher` writes both for the watchdog:

* ``write_address(state)``: the record of each state ("running", "restarting", "stopped") from
  what the watchdog knows (its server, its read service, its postgres cluster, an orphan it stops);
* ``check_address_file()``: rewrites the file when it no longer names this server (deleted,
  corrupted, overwritten);
* ``beat()``: refreshes the heartbeat, or sets the watchdog stopping when a watchdog of another
  host took the DB directory over (``db dbserver --force``).

A file that cannot be written (a full or read-only disk) is logged once per cause and tried again at
the next check: supervision goes on.  :class:`.watchdog.Watchdog` inherits these methods; they read its
attributes (set in its ``__init__``) and keep what could not be written in ``self.unwritable``.
"""

import logging
import socket

from balsamdb import address_file

from balsamdb.server.supervisor import liveness

log = logging.getLogger("balsamdb.server.supervisor.watchdog")  # the watchdog's log lines, one logger


class Publisher:
    """The address file and the heartbeat of a :class:`.watchdog.Watchdog` (its base class)."""

    def public_host(self):
        """The host name clients connect to: this host's name when the watchdog binds every address."""
        if self.bind_host in ("0.0.0.0", "*", "::"):
            return socket.getfqdn()
        return self.bind_host

    def write_address(self, state, epoch=None, reason=None):
        """Write the address file for ``state`` ("running" with the server's ``epoch``, "restarting",
        "stopped"), saying ``reason`` when given."""
        record = {
            "state": state, "db_type": self.db_type, "protocol": address_file.PROTOCOL_VERSION,
            "host": socket.gethostname(), "watchdog": self.identity, "started_at": self.started_at,
            "bind": self.bind_host,
        }
        if state == "running":
            record.update(address=f"tcp://{self.public_host()}:{self.port}", epoch=epoch,
                          server=address_file.process_identity(self.server.pid),
                          server_started_at=self.server_started, restarts=self.restarts)
            if self.max_request_bytes:  # a larger message is dropped unread: clients refuse it before sending
                record["max_request_bytes"] = self.max_request_bytes
            if self.local_address:
                record["local_address"] = self.local_address
                record["netns"] = address_file.network_namespace()
            if self.curve_public:
                record["curve_public"] = self.curve_public
            record.update(self.reader.address_fields())
        if self.managed_postgres and self.pg_port and state != "stopped":
            from balsamdb.server.postgres import cluster as postgres

            record["postgres"] = {"managed": True, "port": self.pg_port, "listen": self.bind_host,
                                  "pid": postgres.cluster_pid(self.dbdir.path)}
        if reason:
            record["reason"] = reason
        if state == "restarting" and self.orphan:
            record["orphan"] = self.orphan
        if state == "running" and self.replaced_orphan:
            record["replaced_orphan"] = self.replaced_orphan  # db dbserver says what it took the start
        try:
            address_file.write_atomic(self.dbdir.address_file, record)
        except OSError as exc:  # a full or read-only disk: keep supervising; the next check retries
            if self.unwritable.get("address") != exc.strerror:  # once per cause, not twice a second
                log.error("cannot write the address file (%s); clients may see it as stale", exc)
            self.unwritable["address"] = exc.strerror
            return
        if self.unwritable.pop("address", None):
            log.info("the address file can be written again")


    def check_address_file(self):
        """Rewrite the address file when it no longer names this server (deleted,
        corrupted, overwritten): clients find the server again within a second."""
        info = address_file.read(self.dbdir.address_file)
        if info.get("epoch") == self.epoch and info.get("state") == "running":
            return
        if info.get("watchdog") not in (None, self.identity):
            self.beat()  # another watchdog wrote it: one on another host may have taken over
            if self.stopping:
                return
        if "address" not in self.unwritable:
            log.warning("the address file no longer names this server (%s); rewriting it",
                        info.get("reason") or f"state {info.get('state')}, epoch {info.get('epoch')}")
        self.write_address("running", epoch=self.epoch)


    def beat(self):
        """Refresh the heartbeat, unless a watchdog of another host wrote it: then that one
        took the DB directory over (``db dbserver --force``) and this one yields."""
        record = liveness.read_heartbeat(self.dbdir)
        if record and record.get("watchdog") and record.get("state") != "stopped" \
                and not liveness.same_watchdog(record, self.identity) and self.epoch is not None:
            log.error("the watchdog pid %s on host %s took this DB directory over (db dbserver --force); "
                      "stopping this server and watchdog", (record.get("watchdog") or {}).get("pid"),
                      record.get("host"))
            self.taken_over_by = record
            self.stopping = True
            return
        try:
            liveness.write_heartbeat(self.dbdir, self.identity)
        except OSError as exc:  # a read-only or full disk: logged once, tried again at every beat
            if self.unwritable.get("heartbeat") != exc.strerror:
                log.error("cannot write the heartbeat %s (%s)", liveness.heartbeat_file(self.dbdir), exc)
            self.unwritable["heartbeat"] = exc.strerror
            return
        if self.unwritable.pop("heartbeat", None):
            log.info("the heartbeat can be written again")
