"""`db bench`: the public scoreboard, balsamdb against what a user would otherwise do."""

import click

from .common import CONTEXT_SETTINGS

MODES = "daemon,daemon-pg,sqlite-default,sqlite-wal,filelock,postgres,ceiling"


@click.command("bench", context_settings=CONTEXT_SETTINGS)
@click.option("--writers", default="8,32,64,256", show_default=True, help="Comma-separated writer process counts.")
@click.option("--writes", default=100, show_default=True, help="Small writes per writer process.")
@click.option("--modes", default=MODES, show_default=True,
              help="What to compare (also daemon-curve: the daemon with encrypted traffic).")
@click.option("--repeat", default=1, show_default=True, help="Interleaved repetitions; medians are shown.")
@click.option("--bulk", default=100_000, show_default=True, metavar="N",
              help="Jobs for the bulk_create comparison (0: skip it).")
@click.option("--json", "json_out", metavar="FILE", help="Write every result to FILE.")
@click.option("--plot", metavar="PNG", help="Draw throughput and p99 latency (needs matplotlib: pip install .[bench]).")
def bench(writers, writes, modes, repeat, bulk, json_out, plot):
    """Measure concurrent writers: the daemon against direct SQLite, a file lock,
    direct PostgreSQL and the messaging ceiling

    For each number of writer processes, each mode runs with fresh databases in
    /tmp: writes/s, p50/p99/max latency, errors, lost and duplicated writes
    (read back), server and client CPU per write and the server's peak memory,
    with each mode's throughput relative to the daemon.  PostgreSQL modes need
    the server binaries (initdb, pg_ctl).  Takes minutes; shows progress.

    Example:

    \b
        db bench --writers 8,64 --writes 100 --repeat 3 --json r.json --plot writers.png
        db bench --modes daemon,sqlite-wal,ceiling --bulk 0
    """
    from balsamdb.server.bench.writers import main

    argv = ["--writers", writers, "--writes", str(writes), "--modes", modes, "--repeat", str(repeat),
            "--bulk", str(bulk)]
    if json_out:
        argv += ["--json", json_out]
    if plot:
        argv += ["--plot", plot]
    main(argv)
