"""Write docs/cli.md from the commands' own help texts.

    python scripts/cli_docs.py          # rewrite docs/cli.md
    python scripts/cli_docs.py --check  # exit 1 if docs/cli.md is out of date

tests/test_docs.py runs the check, so a new or changed command cannot go
undocumented.
"""

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balsamdb.cli.main import main as db  # noqa: E402

HEADER = """# The `db` command

Generated from the commands' help by `python scripts/cli_docs.py`; do not edit by hand.
`db`, `balsamdb` and `python -m balsamdb.cli` are the same command.  Every command
takes `-h`; commands that print data take `--json`.  Errors go to stderr as one
sentence that says what to do, with exit status 1 (2 for a wrong option).
"""


def walk(command, names):
    yield names, command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from walk(command.commands[name], names + [name])


def render():
    parts = [HEADER]
    for names, command in walk(db, ["db"]):
        with click.Context(command, info_name=" ".join(names), help_option_names=["-h", "--help"],
                           terminal_width=88, max_content_width=88) as ctx:
            text = command.get_help(ctx)
        parts.append(f"\n## `{' '.join(names)}`\n\n```\n{text}\n```\n")
    return "".join(parts)


def main():
    target = ROOT / "docs" / "cli.md"
    text = render()
    if "--check" in sys.argv:
        if not target.exists() or target.read_text() != text:
            sys.exit("docs/cli.md is out of date: run python scripts/cli_docs.py")
        return
    target.write_text(text)


if __name__ == "__main__":
    main()
