"""What every command shares: the ``--path`` and ``--json`` options, opening the
DB, printing tables and JSON, and the one place where library errors become
click errors."""

import functools
import itertools
import json
import warnings
from datetime import datetime

import click

import balsamdb
from balsamdb.exceptions import NotFound
from balsamdb.jsonio import dumps_indented
from balsamdb.settings import DefaultDBWarning

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}

PATH_HELP = ("DB directory; default: $BALSAM_DB_PATH, then default_db_path in the settings file, "
             "then default_db/ of a source checkout or a per-user directory")

# What to do next, added to a library message that does not already say it: (class, the
# start of the message it fits, hint).  A message that names a `db` command already says it.
_HINTS = (
    (NotFound, "no job", "check the id: `db ls` lists the jobs"),
    (NotFound, "no record", "`db record ls PROJECT` lists the records of a project"),
)


def hint_for(exc, message):
    """``message`` with the hint that fits ``exc``, when it lacks one."""
    if "db " in message:
        return message
    for cls, start, hint in _HINTS:
        if isinstance(exc, cls) and message.startswith(start):
            return f"{message}; {hint}"
    return message


_NOTED = set()  # notes already shown by this process: each is said once


def _show_note(message, category, filename, lineno, file=None, line=None, _shown=warnings.showwarning):
    if not issubclass(category, DefaultDBWarning):
        _shown(message, category, filename, lineno, file, line)
    elif str(message) not in _NOTED:
        _NOTED.add(str(message))
        click.echo(f"Note: {message}", err=True)


class BalsamGroup(click.Group):
    """A click group that turns any :class:`balsamdb.BalsamDBError` raised by a
    command below it into a :class:`click.ClickException`: a message on stderr
    and exit status 1, never a traceback.  This is the only place the CLI
    translates library errors.  It also shows, once per process, a note on
    stderr when no DB directory was named and a default one is used."""

    def invoke(self, ctx):
        with warnings.catch_warnings():
            warnings.simplefilter("always", DefaultDBWarning)  # _show_note says each once
            warnings.showwarning = _show_note
            try:
                return super().invoke(ctx)
            except balsamdb.BalsamDBError as exc:
                message = exc.message or str(exc) or type(exc).__name__
                raise click.ClickException(hint_for(exc, message)) from None


# Every TCP port option of the CLI: 0 (a free one) to 65535; 80000 is refused, never wrapped around.
PORT = click.IntRange(0, 65535)


def path_option(function):
    """``--path P``: the DB directory to use (None lets the library choose).  click checks nothing
    (readable=False): the library says what is wrong with a path, e.g. that it belongs to another user."""
    return click.option(
        "--path", "path", type=click.Path(file_okay=True, dir_okay=True, readable=False), default=None,
        metavar="DIR", help=PATH_HELP,
    )(function)


def json_option(function):
    """``--json``: print JSON for scripts instead of text for people."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text")(function)


def open_db(path):
    """``balsamdb.connect(path)``: use as ``with open_db(path) as db:``."""
    return balsamdb.connect(path)


def echo_json(data):
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def parse_json(value, example, param_hint=None):
    """``value`` parsed as JSON, or a :class:`click.BadParameter` that shows ``example``."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}); give a JSON object such as {example}",
                                 param_hint=param_hint) from None


def format_time(seconds):
    """Local time of UNIX ``seconds``, to the second."""
    if seconds is None:
        return ""
    return _local_second(int(seconds // 1))


@functools.lru_cache(maxsize=4096)
def _local_second(second):
    # A listing's jobs share few seconds (a bulk_create's all share one): made once per second.
    return datetime.fromtimestamp(second).strftime("%Y-%m-%d %H:%M:%S")


def shorten(text, width):
    text = str(text)
    return text if len(text) <= width else text[:width - 1] + "…"


def echo_json_stream(items):
    """Print ``items`` (an iterator) as one JSON list, each item as it comes (the same text as
    :func:`echo_json` of the whole list, never holding it)."""
    first = True
    parts = []
    for item in items:
        parts.append(("[\n  " if first else ",\n  ") + dumps_indented(item).replace("\n", "\n  "))
        first = False
        if len(parts) >= 100:  # one write per 100 items
            click.echo("".join(parts), nl=False)
            parts = []
    if parts:
        click.echo("".join(parts), nl=False)
    click.echo("[]" if first else "\n]")


def echo_table_stream(headers, rows, measure=200):
    """Print ``rows`` (an iterator of lists of strings) under ``headers`` as they come: the column
    widths are those of the first ``measure`` rows (a later, longer cell widens only its line).
    Returns the number of rows printed."""
    head = []
    for row in rows:
        head.append(row)
        if len(head) >= measure:
            break
    widths = [max([len(h)] + [len(r[i]) for r in head]) for i, h in enumerate(headers)]

    template = "  ".join(f"%-{w}s" for w in widths)  # "%-8s" is c.ljust(8): one format per line

    def line(cells):
        return (template % tuple(cells)).rstrip()

    if not head:
        return 0
    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    count = 0
    lines = []
    for row in itertools.chain(head, rows):
        lines.append(line(row))
        count += 1
        if len(lines) >= 2000:  # one write per 2000 rows: click.echo per line cost a third of `db ls`
            click.echo("\n".join(lines))
            lines = []
    if lines:
        click.echo("\n".join(lines))
    return count


def echo_table(headers, rows):
    """Print ``rows`` (lists of strings) under ``headers`` in aligned columns."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    template = "  ".join(f"%-{w}s" for w in widths)  # "%-8s" is c.ljust(8): one format per line

    def line(cells):
        return (template % tuple(cells)).rstrip()

    click.echo(line(headers))
    click.echo(line(["-" * w for w in widths]))
    for row in rows:
        click.echo(line(row))
