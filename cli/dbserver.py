"""`db dbserver`: start, stop and inspect the write server of a DB directory."""

import click


@click.command("dbserver")
def dbserver():
    """Start, stop or show the write server of a DB directory (being written)."""
    raise click.ClickException("not yet")
