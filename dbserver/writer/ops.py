"""What the write server answers itself: the ``server`` given to the operations registered
with ``server=True`` (ping, status, spool_drain; see :mod:`balsamdb.operations.server`)."""

import logging
import os

from balsamdb import operations
from balsamdb.exceptions import BalsamDBError, ServerError

log = logging.getLogger("balsamdb.server.writer.server")

SYNCHRONOUS_NAMES = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


class ServerOperations:
    def __init__(self, server):
        self.server = server
        self.queue_depth = 0  # the requests that arrived with the one being answered

    def answer(self, requests, queue_depth=0):
        """Fill in the answers of ``requests`` (server operations); returns them."""
        self.queue_depth = queue_depth
        for request in requests:
            try:
                operations.bind_params(request.operation, request.params)
                request.answer = {"ok": True, "result": request.operation.function(**request.params, server=self)}
            except BalsamDBError as exc:
                request.refuse(exc.to_dict())
            except Exception as exc:  # no request may stop the server
                log.exception("%s failed", request.op)
                request.refuse(ServerError(f"{request.op} failed: {type(exc).__name__}: {exc}").to_dict())
        return requests

    def ping(self):
        return {"pong": True, "epoch": self.server.epoch, "pid": os.getpid()}

    def spool_drain(self):
        # One batch per request (db spool --drain); the loop drains the spool by itself.
        server = self.server
        return {"applied": server.drain_spool(once=True),
                "pending": len(server.barrier.waiting(server.spool.names()))}

    def bulk_copy_detach(self):
        from balsamdb.operations.store_bulk import ALIAS, attached

        server = self.server
        if server.db_type != "sqlite3":
            return {"detached": False}
        server.committer.settle()  # the connection is the batch thread's while it runs a batch
        if attached(server.database) is None:
            return {"detached": False}
        server.database.execute_sql(f"DETACH DATABASE {ALIAS}")
        return {"detached": True}

    def status(self):
        server = self.server
        status = server.stats.to_dict()
        status.update(queue_depth=self.queue_depth, encrypted=server.encrypt,
                      pid=os.getpid(), epoch=server.epoch, port=server.port, db_type=server.db_type,
                      path=str(server.dbdir.path), synchronous=server.settings.sqlite_synchronous,
                      spool_pending=len(server.barrier.waiting(server.spool.names())),
                      spool_failed=len(server.spool.failures()),
                      spool_drain_per_s=round(server.barrier.rate(), 1),
                      spool_last_drain_per_s=round(server.barrier.last_rate(), 1),
                      held_requests=server.barrier.held(), spool_refused=server.spool_refused,
                      connection_synchronous=self.connection_synchronous(),
                      durable_after_flush=len(server.outbox))
        status.update(server.flusher.counters() if server.flusher is not None else {"flusher": False})
        return status

    def connection_synchronous(self):
        """PRAGMA synchronous of the server's own SQLite connection (NORMAL with the flusher), or None."""
        if self.server.db_type != "sqlite3":
            return None
        try:
            self.server.committer.settle()  # the connection is the batch thread's while it runs a batch
            level = self.server.database.execute_sql("PRAGMA synchronous").fetchone()[0]
        except Exception as exc:  # a status must answer even when the connection is broken
            log.warning("could not read PRAGMA synchronous: %s", exc)
            return None
        return SYNCHRONOUS_NAMES.get(level, str(level))
