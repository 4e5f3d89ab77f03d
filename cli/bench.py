"""`db bench`: the public scoreboard, balsamdb against what a user would otherwise do."""

import click

from .common import CONTEXT_SETTINGS

MODES = "daemon,daemon-pg,sqlite-default,sqlite-wal,filelock,postgres,ceiling"


def _counts(ctx, param, value):
    from ..bench.writers import positive_ints

    try:
        positive_ints(value, f"--{param.name}")
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return value


def _modes(ctx, param, value):
    from ..bench.writers import known_modes

    try:
        known_modes(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[-1]) from None
    return value


def _targets(ctx, param, value):
    from ..bench.capacity import TARGETS

    chosen = [t.strip() for t in value.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TARGETS]
    if not chosen or unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown) or '(none given)'}; choose from {','.join(TARGETS)}")
    return chosen


@click.command("bench", context_settings=CONTEXT_SETTINGS)
@click.option("--writers", default="8,32,64,256", show_default=True, callback=_counts,
              help="Comma-separated writer process counts.")
@click.option("--writes", default=100, show_default=True, type=click.IntRange(min=1),
              help="Small writes per writer process.")
@click.option("--modes", default=MODES, show_default=True, callback=_modes,
              help="What to compare (also daemon-curve: the daemon with encrypted traffic).")
@click.option("--repeat", default=None, type=click.IntRange(min=1),
              help="Interleaved repetitions; medians are shown.  [default: 1, with --capacity 3]")
@click.option("--bulk", default=100_000, show_default=True, metavar="N", type=click.IntRange(min=0),
              help="Jobs for the bulk_create comparison (0: skip it).")
@click.option("--capacity", is_flag=True,
              help="Measure the server alone instead: one load generator keeps --inflight requests in flight.")
@click.option("--inflight", default="16,256,1024", show_default=True, callback=_counts,
              help="With --capacity: comma-separated numbers of requests in flight.")
@click.option("--seconds", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
              help="With --capacity: length of each measurement.")
@click.option("--targets", default="sqlite,postgres,null", show_default=True, callback=_targets,
              help="With --capacity: servers to measure (null: the messaging ceiling, no database).")
@click.option("--prefill", default=0, show_default=True, metavar="N", type=click.IntRange(min=0),
              help="With --capacity: jobs each database holds before the measurement (made, not timed).")
@click.option("--scale", is_flag=True,
              help="Measure issue 22's targets (reads, db ls, pages, rates, copy, export) as DB directories grow "
                   "to --sizes jobs.")
@click.option("--sizes", default="10000,100000,1000000", show_default=True, callback=_counts,
              help="With --scale: comma-separated numbers of jobs.")
@click.option("--records", default="10000,100000,1000000", show_default=True, callback=_counts,
              help="With --scale: records in the DB, one number (at most one a job) or one per size.")
@click.option("--backend", type=click.Choice(["sqlite3", "postgres", "both"]), default="both", show_default=True,
              help="With --scale: the backends (postgres: a cluster the benchmark starts and stops).")
@click.option("--json", "json_out", metavar="FILE", help="Write every result to FILE.")
@click.option("--plot", metavar="PNG", help="Draw throughput and p99 latency (needs matplotlib: pip install .[bench]).")
@click.pass_context
def bench(ctx, writers, writes, modes, repeat, bulk, capacity, inflight, seconds, targets, prefill, scale, sizes,
          records, backend, json_out, plot):
    """Measure concurrent writers: the daemon against direct SQLite, a file lock,
    direct PostgreSQL and the messaging ceiling

    For each number of writer processes, each mode runs with fresh databases in
    /tmp: writes/s, p50/p99/max latency, errors, lost and duplicated writes
    (read back), server and client CPU per write and the server's peak memory,
    with each mode's throughput relative to the daemon.  PostgreSQL modes need
    the server binaries (initdb, pg_ctl).  Takes minutes; shows progress.

    With --scale, one DB directory per --backend grows to each of --sizes
    jobs (and --records records, loaded straight into the database) and, at
    each size, every target of issue 22 is measured with its verdict: the
    API's reads, the CLI's start-up, a full db ls against its bare SQL and a
    writer's p99 while it runs, the web pages of a real db serve, the
    bulk_create and --writers writers' rates (one number; default 32, --writes
    50 each, --bulk 5000) against a fresh DB, db copy and db export, and a
    read-back: a markdown table, and a plot with --plot.

    With --capacity, the clients are taken out of the picture: one load
    generator keeps C pre-signed job creates in flight against the write server
    on SQLite and on PostgreSQL and against a null server that answers at once;
    it shows writes/s, server CPU per write, mean batch and commit time, the
    WAL flusher's commits per flush and flush time (SQLite), peak memory and
    the ratio to the null server, and reads every answered write back.

    Example:

    \b
        db bench --writers 8,64 --writes 100 --repeat 3 --json r.json --plot writers.png
        db bench --modes daemon,sqlite-wal,ceiling --bulk 0
        db bench --capacity --inflight 16,256,1024 --repeat 3
        db bench --capacity --inflight 256 --targets sqlite,null --prefill 1000000
        db bench --scale --sizes 10000,100000 --records 10000 --backend both --plot scale.png
    """
    if scale:
        from ..bench import scale as grow

        given = {name: ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE
                 for name in ("writers", "writes", "bulk", "repeat")}
        if given["writers"] and "," in writers:
            raise click.BadParameter("with --scale: one number of writer processes", param_hint="--writers")
        try:
            grow.records_per_size(sorted(int(n) for n in sizes.split(",")), [int(n) for n in records.split(",")])
        except ValueError as exc:
            raise click.BadParameter(str(exc).split(": ", 1)[-1], param_hint="--records") from None
        argv = ["--sizes", sizes, "--records", records, "--backend", backend,
                "--writers", writers if given["writers"] else "32", "--writes", str(writes if given["writes"] else 50),
                "--bulk", str(bulk if given["bulk"] and bulk else 5000), "--repeat", str(repeat or 5)]
        grow.main(argv + (["--json", json_out] if json_out else []) + (["--plot", plot] if plot else []))
        return
    if capacity:
        from ..bench import capacity as cap

        summary = cap.run(cap.positive_ints(inflight), seconds, repeat or 3, targets, json_out, prefill_jobs=prefill)
        click.echo(cap.format_table(summary))
        return
    from ..bench.writers import main

    argv = ["--writers", writers, "--writes", str(writes), "--modes", modes, "--repeat", str(repeat or 1),
            "--bulk", str(bulk)]
    if json_out:
        argv += ["--json", json_out]
    if plot:
        argv += ["--plot", plot]
    main(argv)
