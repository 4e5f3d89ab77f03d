"""The operations that the write server answers itself, outside any transaction: registered
like every other operation (their docstrings are their specification, ``kind`` server in
docs/protocol.md), run by the write server with ``server=`` itself (see
``balsamdb.server.writer.ops``).  A process writing directly (no server) refuses them."""

from .registry import operation


@operation(write=False, server=True)
def ping(*, server):
    """Whether the server answers: `{"pong": true, "epoch", "pid"}` (the epoch changes on every
    start of the server)."""
    return server.ping()


@operation(write=False, server=True)
def status(*, server):
    """The server's counters: requests, writes, errors, rejected, batches, mean/last/max batch,
    queue depth, mean commit ms, spool, uptime; `spool_pending` (spooled writes not yet applied),
    `spool_drain_per_s` (applied per second over the last 10 s), `spool_last_drain_per_s` (the
    rate of the latest drain, also once it is over), `held_requests` (live requests waiting for
    them), `holding_replies` (sent to them so far), `spool_refused` (why the database refuses them, or null)."""
    return server.status()


@operation(write=False, server=True)
def spool_drain(*, server):
    """Apply a batch of the spooled writes now: `{"applied", "pending"}` (the server drains them
    by itself; this is for `db spool --drain`)."""
    return server.spool_drain()


@operation(write=False, server=True)
def bulk_copy_detach(*, server):
    """Detach the source file that ``bulk_copy`` attached to the server's connection (outside any
    transaction: SQLite refuses a DETACH inside one): `{"detached": true}`, or false when none was."""
    return server.bulk_copy_detach()
