"""`db relay`: a local relay between `smt` and a record store that keeps saves while the store is away."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from .common import CONTEXT_SETTINGS, PORT, echo_json, json_option

START_DEADLINE = 30.0
STOP_DEADLINE = 60.0


def _info(directory):
    try:
        return json.loads((Path(directory) / "relay.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid):
    """True while process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _status(directory):
    info = _info(directory)
    if info is None or not _alive(info["pid"]):
        return None
    user, _, password = (Path(directory) / "token").read_text().strip().partition(":")
    request = urllib.request.Request(info["url"] + "_relay/status", headers={
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dict(json.loads(answer.read()), url=info["url"], pid=info["pid"])


@click.command("relay", context_settings=CONTEXT_SETTINGS)
@click.option("--to", "store", metavar="URL", help="The record store: http(s)://user:password@host:port/prefix/")
@click.option("--dir", "directory", type=click.Path(file_okay=False, readable=False), default=".balsamdb-relay",
              show_default=True,
              help="The relay's directory: spool, cache, token file, log (made 0700)")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on")
@click.option("--port", type=PORT, default=8100, show_default=True,
              help="TCP port (0: a free one)")
@click.option("--stop", is_flag=True, help="Stop the relay of --dir (saves still waiting stay in its spool)")
@click.option("--status", is_flag=True, help="Say whether it runs, and how many saves wait")
@json_option
def relay(store, directory, host, port, stop, status, as_json):
    """Run a relay for smt: saves answered at once, forwarded when the store can take them

    smt talks to the relay as to a Sumatra record store.  Each save is kept
    durably in the relay's spool and answered at once; the relay forwards the
    saves to the store in order, retrying while it is down, and answers reads
    from the store with its not yet forwarded saves laid over them, or from
    its own copy while the store is away.  Clients log in with the user and
    password in DIR/token (made at the first start, mode 0600).

    Example:

    \b
        db relay --to https://ada:PW@records.lab/ --dir ~/.relay --port 8100
        smt init --store=http://relay:$(cut -d: -f2 ~/.relay/token)@127.0.0.1:8100/ MyProject
        db relay --status --dir ~/.relay
        db relay --stop --dir ~/.relay
    """
    if stop:
        info = _info(directory)
        if info is None or not _alive(info["pid"]):
            click.echo(f"no relay runs for {directory}")
            return
        os.kill(info["pid"], signal.SIGTERM)
        end = time.monotonic() + STOP_DEADLINE
        while _alive(info["pid"]):
            if time.monotonic() > end:
                raise click.ClickException(f"the relay (pid {info['pid']}) did not stop within {STOP_DEADLINE:.0f} s")
            time.sleep(0.05)  # wait-ok: polls the process with the deadline above
        click.echo(f"stopped the relay at {info['url']}")
        return
    if status:
        try:
            found = _status(directory)
        except (OSError, urllib.error.URLError) as exc:
            raise click.ClickException(f"the relay of {directory} does not answer: {exc}") from None
        if as_json:
            echo_json(found or {"running": False})
        elif found is None:
            click.echo(f"no relay runs for {directory}")
        else:
            click.echo(f"relay at {found['url']} (pid {found['pid']}) to {found['store']}: {found['waiting']} saves "
                       f"waiting, {found['forwarded']} forwarded, {found['refused']} refused by the store; "
                       f"store {'up' if found['store_up'] else 'unreachable'}")
        return
    if not store:
        raise click.UsageError("give the store: --to http(s)://user:password@host:port/")
    from balsamdb.remote import split_url

    split_url(store)  # a clear error for a URL that is not one
    running = _info(directory)
    if running is not None and _alive(running["pid"]):
        raise click.ClickException(f"a relay already runs for {directory} at {running['url']} (db relay --stop)")
    Path(directory).mkdir(mode=0o700, parents=True, exist_ok=True)
    from balsamdb.exceptions import ConfigError
    from balsamdb.server.relay.spool import make_token

    try:
        make_token(directory)  # made here, or refused here when others may read it
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    (Path(directory) / "relay.json").unlink(missing_ok=True)
    env = dict(os.environ, BALSAMDB_RELAY_TO=store)  # not on the command line, where ps shows it
    # 0600: the relay's files are its owner's only, whatever the umask (the directory may be 755)
    with os.fdopen(os.open(Path(directory) / "relay.out", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                           0o600), "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "balsamdb.server.relay.app", str(directory), host, str(port)],
                                env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    end = time.monotonic() + START_DEADLINE
    while True:
        info = _info(directory)
        if info is not None and info["pid"] == proc.pid:
            break
        if proc.poll() is not None or time.monotonic() > end:
            tail = (Path(directory) / "relay.out").read_text(errors="replace").strip().splitlines()[-5:]
            if proc.poll() is None:
                proc.kill()
            raise click.ClickException("the relay did not start: " + (" | ".join(tail) or "no output"))
        time.sleep(0.05)  # wait-ok: polls for the relay's address with the deadline above
    if as_json:
        echo_json({"url": info["url"], "pid": proc.pid, "token_file": str(Path(directory) / "token")})
    else:
        click.echo(f"relay at {info['url']} (pid {proc.pid}); clients log in with {Path(directory) / 'token'}")
