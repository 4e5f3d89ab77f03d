"""The server process of the HTTP store: waitress, stopped by SIGTERM."""

import logging
import os
import signal

from balsamdb.exceptions import ConfigError

from balsamdb.server.http import connections
from balsamdb.server.http.app import CREATE_RACE_WINDOW, MAX_BODY_BYTES, create_app

log = logging.getLogger("balsamdb.server.http")

# -- the server process ------------------------------------------------------------------------------------

def _stop_on_sigterm(signum, frame):
    # waitress's loop turns SystemExit into a graceful stop: requests in progress are
    # finished and answered first.  Raising is the only way into its loop from outside.
    raise SystemExit(0)


def make_server(path, host="127.0.0.1", port=8000, prefix="/", threads=16, max_body=MAX_BODY_BYTES,
                trusted_proxy=None, create_window=CREATE_RACE_WINDOW, limits=None):
    """A waitress server for DB directory ``path`` (not yet running); see :func:`serve`."""
    options = {}
    if trusted_proxy:
        options = {"trusted_proxy": trusted_proxy, "clear_untrusted_proxy_headers": True,
                   "trusted_proxy_headers": "x-forwarded-for x-forwarded-host x-forwarded-proto x-forwarded-port"}
    app = create_app(path, prefix=prefix, max_body=max_body, create_window=create_window)
    return connections.create_server(app, host, port, threads, max_body, **(limits or {}), **options)


def serve(path, host="127.0.0.1", port=8000, prefix="/", threads=16, max_body=MAX_BODY_BYTES,
          trusted_proxy=None, create_window=CREATE_RACE_WINDOW, ready=None, limits=None):
    """Serve DB directory ``path`` over HTTP until SIGTERM or Ctrl-C.

    ``ready(url)`` is called once the socket listens.  Logs go to ``P/log/http.log``.
    ``limits``: ``timeout``, ``per_address``, ``total`` of :mod:`.connections` (its defaults otherwise).
    """
    from balsamdb.dbdir import PRIVATE_UMASK, DBDirectory

    from balsamdb.server.logs import setup_logging

    dbdir = DBDirectory(path)
    dbdir.config()  # a clear error for a path that is not a DB directory
    os.umask(PRIVATE_UMASK)  # this process's files in P (http.log, the spool) are private to its owner
    setup_logging(dbdir.log_dir / "http.log")
    # The worker threads block SIGTERM and SIGINT (they inherit the mask made here), so the kernel
    # gives those to the main thread: one given to a worker would wait for the loop's 1 s select.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        server = make_server(dbdir.path, host, port, prefix, threads, max_body, trusted_proxy, create_window, limits)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another --port (or --host)") from None
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    shown_host = f"[{server.effective_host}]" if ":" in str(server.effective_host) else server.effective_host
    url = f"http://{shown_host}:{server.effective_port}/{prefix.strip('/')}{'/' if prefix.strip('/') else ''}"
    guard = server.guard
    log.info("serving %s (%s) at %s with %d threads, bodies up to %d bytes, connections up to %d (%d per "
             "address), closed after %g s idle or without their whole request%s", dbdir.path, dbdir.db_type, url,
             threads, max_body, guard.total, guard.per_address, guard.timeout,
             f", trusting proxy {trusted_proxy}" if trusted_proxy else "")
    try:
        run_until_sigterm(server, url, ready)
    finally:
        log.info("stopped serving %s", dbdir.path)
    return url


def run_until_sigterm(server, url, ready=None):
    """Run the waitress ``server`` until SIGTERM, calling ``ready(url)`` once it listens; then close it
    (``db serve`` and ``db relay``)."""
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        if ready is not None:
            ready(url)
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.close()
