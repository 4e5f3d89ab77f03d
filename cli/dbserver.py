"""`db dbserver`: start, stop and inspect the write server of a DB directory."""

import datetime

import click

from balsamdb.dbdir import DBDirectory
from balsamdb.settings import resolve_db_path
from balsamdb.wording import plural

from .common import PORT, echo_json, json_option, path_option


def _format_status(info):
    from balsamdb.server.supervisor.control import STATUS_UNHEALTHY

    lines = [f"state:    {info.get('state')} ({info.get('health')})"]
    if info.get("address"):
        lines.append(f"address:  {info['address']}  (db {info.get('db_type')}, host {info.get('host')}, "
                     f"{'CURVE-encrypted' if info.get('curve_public') else 'not encrypted'})")
    if info.get("watchdog") and info.get("state") != "stopped":
        if info.get("exit_code") == 0:
            lines.append(f"watchdog: pid {info['watchdog']['pid']}, restarts {info.get('restarts', 0)}")
        else:
            lines.append(f"watchdog: {info.get('summary')}")
    elif info.get("exit_code") == STATUS_UNHEALTHY:
        lines.append(f"watchdog: {info.get('summary')}")
    if info.get("postgres"):
        pg = info["postgres"]
        lines.append(f"postgres: pid {pg.get('pid')}, port {pg.get('port')}, listening on {pg.get('listen')}")
    if info.get("reason"):
        lines.append(f"reason:   {info['reason']}")
    if info.get("files"):
        lines.append(f"files:    database {info['files']['db.sqlite3'] / 1e6:,.1f} MB, "
                     f"WAL {info['files']['db.sqlite3-wal'] / 1e6:,.1f} MB (db vacuum, db prune)")
    if info.get("spool_pending"):
        lines.append(f"spool:    {plural(info['spool_pending'], 'write waits', 'writes wait')} for a server "
                     "(see db spool)")
    status = info.get("server_status")
    if status:
        uptime = datetime.timedelta(seconds=int(status["uptime"]))
        lines += [
            f"server:   pid {status['pid']}, up {uptime}, epoch {status['epoch'][:8]}",
            f"requests: {status['requests']} served, {status['writes']} written, "
            f"{status['errors']} refused, {status['rejected']} rejected as malformed",
            f"batches:  {status['batches']}, mean size {status['mean_batch']:.1f}, "
            f"last {status['last_batch']}, max {status['max_batch']}, queue depth {status['queue_depth']}, "
            f"mean commit {status['mean_commit_ms']:.2f} ms",
            *_flush_lines(status),
            f"spool:    {status['spool_pending']} waiting, {status['spool_failed']} refused, "
            f"{status['spooled_applied']} applied since start (see db spool)",
            f"leases:   {status.get('lost_runs', 0)} lost runs found ({status.get('lost_runs_restarted', 0)} "
            f"made RESTART_READY), {status.get('claims_expired', 0)} expired claims released, since start",
        ]
        lines += _spool_drain_lines(status)
        if status.get("reads_refused"):
            lines.append(f"reads:    {status['reads_refused']} refused (reads go to the read service)")
    lines += _reader_lines(info)
    return "\n".join(lines)


def _reader_lines(info):
    """The read service's lines of --status: where it listens, its pid and counters."""
    if not info.get("read_address") and info.get("reader_state") != "restarting":
        return []
    reader = info.get("reader_status")
    if info.get("reader_state") == "restarting":
        return ["reader:   restarting (the watchdog starts it again)"]
    if not reader:
        return [f"reader:   {info['read_address']}, not answering"]
    uptime = datetime.timedelta(seconds=int(reader["uptime"]))
    return [f"reader:   pid {reader['pid']}, {info['read_address']}, up {uptime}, {reader['workers']} workers, "
            f"{info.get('reader_restarts', 0)} restarts",
            f"reads:    {reader['reads']} run, {reader['reads_running']} running, {reader['reads_joined']} resends "
            f"joined a running read, {reader['reads_timed_out']} over the time limit "
            f"({reader['read_time_limit']:g} s), longest {reader['max_read_ms']:.0f} ms"]


START_ONLY = ("bind", "port", "encrypt", "force")


def _flush_lines(status):
    """The WAL flusher's line (SQLite under sqlite_synchronous FULL), or none."""
    if not status.get("flusher"):
        return []
    return [f"flushes:  {status['flushes']}, {status['commits_per_flush']:.2f} commits per flush, "
            f"mean {status['mean_flush_ms']:.2f} ms, {status['durable_after_flush']} batches waiting "
            f"(connection synchronous={status.get('connection_synchronous')}, answers after the WAL's fdatasync)"]


def _spool_drain_lines(status):
    """How fast the spool drains and who waits for it, while it does."""
    rate, pending = status.get("spool_drain_per_s") or 0.0, status.get("spool_pending") or 0
    lines = []
    if pending and rate:
        lines.append(f"draining: {rate:.0f} spooled writes/s over the last 10 s, about {pending / rate:.0f} s "
                     f"left; {plural(status.get('held_requests', 0), 'live request waits', 'live requests wait')} for them")
    elif status.get("spool_last_drain_per_s"):
        lines.append(f"drained:  {status['spool_last_drain_per_s']:.0f} spooled writes/s in the last drain")
    if status.get("spool_refused"):
        lines.append(f"blocked:  the database refuses the spooled writes: {status['spool_refused']}")
    return lines


@click.command("dbserver")
@path_option
@click.option("--stop", is_flag=True, help="Stop the server gracefully and wait until no process of it is left.")
@click.option("--status", is_flag=True,
              help="Show pids, address, uptime and counters. Exit status 0: running and supervised; "
                   "1: stopped; 3: unsupervised, restarting or not answering (2: a usage error).")
@click.option("--bind", default="127.0.0.1", show_default=True,
              help="Interface to listen on; use the login node's address or 0.0.0.0 for compute nodes.")
@click.option("--port", type=PORT, default=0, help="TCP port (default: a free one).")
@click.option("--encrypt/--no-encrypt", default=None,
              help="Encrypt traffic with ZeroMQ CURVE (default: on when --bind is not loopback).")
@click.option("--force", is_flag=True,
              help="Start even though a watchdog on another host kept the heartbeat fresh (that one then "
                   "stops); only for a host that is down.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for start or stop.")
@json_option
@click.pass_context
def dbserver(ctx, path, stop, status, bind, port, encrypt, force, timeout, as_json):
    """Start, stop or show the write server of a DB directory.

    Starting returns once the server answers, printing its address; every job
    process that uses the DB directory then writes through it.  When a server
    already runs, it says where, and which of the given options it does not have.
    A start refuses while a watchdog on another host keeps the DB directory's
    heartbeat fresh (see docs/deployment.md).

    \b
    Example:
        db dbserver --path ~/mydb
        db dbserver --status --path ~/mydb
        db dbserver --stop --path ~/mydb
    """
    from balsamdb.server.supervisor import control

    given = [name for name in START_ONLY
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if stop and status:
        raise click.UsageError("--stop and --status cannot be combined: give one")
    if (stop or status) and given:
        raise click.UsageError(f"{', '.join('--' + name for name in given)} only appl{'y' if len(given) > 1 else 'ies'} to "
                               f"starting a server, "
                               f"not with --{'stop' if stop else 'status'}")
    action = "stop" if stop else "status" if status else "start"
    db_path, _source = resolve_db_path(path)
    dbdir = DBDirectory(db_path)
    dbdir.config()
    if action == "stop":
        pids = control.stop(dbdir, deadline=max(timeout, 1.0))
        result = {"stopped": pids, "path": str(dbdir.path)}
        text = f"stopped server of {dbdir.path} (pids {', '.join(map(str, pids))})" if pids \
            else f"no server was running for {dbdir.path}"
    elif action == "status":
        result = control.status(dbdir)
        text = _format_status(result)
    else:
        started = control.start(dbdir, bind=bind, port=port, deadline=timeout, encrypt=encrypt, force=force,
                                say=lambda line: click.echo(line, err=True))
        result = {"already_running": started.already_running, **started.address}
        text = (f"a server already runs for {dbdir.path} at {started.address.get('address')}"
                if started.already_running
                else f"server for {dbdir.path} listening at {started.address.get('address')}")
        if not started.already_running and started.address.get("replaced_orphan"):
            text += (f" (it first stopped pid {started.address['replaced_orphan']}, a server left running by a "
                     "killed watchdog)")
        if started.already_running:
            explicit = {name: value for name, value in (("bind", bind), ("port", port), ("encrypt", encrypt))
                        if name in given}
            skipped = control.unapplied(started.address, **explicit)
            result["not_applied"] = [option for option, _requested, _actual in skipped]
            text += (f" (host {started.address.get('host')}, watchdog pid "
                     f"{(started.address.get('watchdog') or {}).get('pid')})")
            if skipped:
                text += "; not applied: " + ", ".join(
                    f"{option} {requested if option in ('--bind', '--port') else ''}".rstrip()
                    + f" (it has {_has(option, actual)})" for option, requested, actual in skipped)
                text += "; stop it first (db dbserver --stop) to change them"
    if as_json:
        echo_json(result)
    else:
        click.echo(text)
    if action == "status":
        ctx.exit(result["exit_code"])


def _has(option, actual):
    if option == "--bind":
        return f"--bind {actual}"
    if option == "--port":
        return f"port {actual}"
    return "encryption" if actual else "no encryption"
