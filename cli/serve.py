"""`db serve`: the HTTP record store (the Sumatra Server API) of a DB directory."""

import click

from balsamdb.settings import resolve_db_path

from .common import CONTEXT_SETTINGS, PORT, path_option


def _prefix(ctx, param, value):
    if any(c in value for c in "?#") or " " in value:
        raise click.BadParameter("a URL path such as /records/")
    return "/" + value.strip("/") + "/" if value.strip("/") else "/"


@click.command("serve", context_settings=CONTEXT_SETTINGS)
@path_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; keep loopback behind a reverse proxy (see docs/http.md).")
@click.option("--port", type=PORT, default=8000, show_default=True,
              help="TCP port (0: a free one, printed at start).")
@click.option("--prefix", default="/", show_default=True, callback=_prefix,
              help="URL path the store is served under, e.g. /records/.")
@click.option("--threads", type=click.IntRange(1, 256), default=16, show_default=True,
              help="Requests handled at once.")
@click.option("--max-body-mb", type=click.IntRange(1, 1024), default=64, show_default=True,
              help="Largest request body (a record with its program output) in MB.")
@click.option("--trusted-proxy", metavar="ADDR",
              help="Address of a reverse proxy whose X-Forwarded-Proto/Host/Port headers to believe "
                   "(record URLs then carry the proxy's https://host).")
@click.option("--create-race-window", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="For this long after a project is made, a PUT of it that changes nothing answers 201 "
                   "(smt's create), so that jobs racing to create it all succeed.")
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True, metavar="SECONDS",
              help="An idle connection is closed after this long, and so is one whose request is still "
                   "arriving after it at less than 64 KiB/s (a slowloris); and an answer left unread this long.")
@click.option("--max-connections", type=click.IntRange(2, 100000), default=1024, show_default=True,
              help="Open connections in all; at the bound, idle and slow ones make room for a new one.")
@click.option("--max-connections-per-address", type=click.IntRange(1, 100000), default=256, show_default=True,
              help="Open connections of one client address (not of --trusted-proxy).")
def serve(path, host, port, prefix, threads, max_body_mb, trusted_proxy, create_race_window, timeout,
          max_connections, max_connections_per_address):
    """Serve the records over HTTP as Sumatra Server does, for smt and browsers

    Runs in the foreground until Ctrl-C or SIGTERM; logs go to P/log/http.log.
    Users log in with HTTP Basic (add them with `db user add`); writes take the
    same path as every other write, so start `db dbserver` first.

    Example:

    \b
        db user add ada && db user grant ada MyProject --create
        db serve --path ~/runs/db --port 8000
        smt init --store=http://ada:PASSWORD@127.0.0.1:8000/ MyProject
    """
    try:
        from balsamdb.server import http as http_store
    except ImportError as exc:
        raise click.ClickException(f"db serve needs Flask and waitress ({exc}); "
                                   "install them with: pip install 'balsamdb[http]'") from None

    db_path, _source = resolve_db_path(path)

    def ready(url):
        click.echo(f"serving {db_path} at {url} (Ctrl-C to stop)")

    http_store.serve(db_path, host=host, port=port, prefix=prefix, threads=threads,
                     max_body=max_body_mb * 1024 * 1024, trusted_proxy=trusted_proxy,
                     create_window=create_race_window, ready=ready,
                     limits={"timeout": timeout, "total": max_connections,
                             "per_address": min(max_connections_per_address, max_connections)})
