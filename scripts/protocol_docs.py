"""Write the tables of docs/protocol.md from the code: the error codes from the exception
classes (balsamdb/exceptions.py) and the operations from their registry (balsamdb/operations/).

    python scripts/protocol_docs.py          # rewrite the generated parts of docs/protocol.md
    python scripts/protocol_docs.py --check  # exit 1 if they are out of date

Only the text between a ``<!-- generated: NAME -->`` line and the next ``<!-- end of generated
table -->`` line is rewritten.  tests/test_docs.py runs the check, so a new operation or error
cannot go undocumented.
"""

import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from balsamdb import exceptions  # noqa: E402
from balsamdb.operations import OPERATIONS  # noqa: E402

TARGET = ROOT / "docs" / "protocol.md"
END = "<!-- end of generated table -->"


def _cell(text):
    text = re.sub(r":\w+:`~?", "`", " ".join(text.split()))  # reST roles (:mod:`x`) as code
    return text.replace("``", "`").replace("|", "\\|")


def errors_table():
    rows = ["| code | error | HTTP | meaning | what the client should do |", "|---|---|---|---|---|"]
    for cls in exceptions.ERRORS_BY_CODE.values():
        rows.append(f"| `{cls.code}` | `{cls.__name__}` | {cls.http_status} | {_cell(inspect.getdoc(cls) or '')} "
                    f"| {_cell(cls.advice)} |")
    return "\n".join(rows)


def _parameters(op):
    out = []
    for name, parameter in op.signature.parameters.items():
        out.append(f"`{name}`" if parameter.default is inspect.Parameter.empty
                   else f"`{name}={parameter.default!r}`")
    return ", ".join(out)


def operations_table():
    rows = ["| operation | kind | parameters | specification (its docstring) |", "|---|---|---|---|"]
    for name, op in OPERATIONS.items():
        rows.append(f"| `{name}` | {('write' if op.spool else 'write, never spooled') if op.write else 'server' if op.server else 'read'} | {_parameters(op)} | {_cell(op.doc)} |")
    return "\n".join(rows)


GENERATED = {"errors": errors_table, "operations": operations_table}


def render(text):
    def replace(match):
        name = match.group(1)
        if name not in GENERATED:
            sys.exit(f"docs/protocol.md names an unknown generated table {name!r}; known: {', '.join(GENERATED)}")
        return f"<!-- generated: {name} -->\n{GENERATED[name]()}\n{END}"
    return re.sub(r"<!-- generated: (\w+) -->\n.*?" + re.escape(END), replace, text, flags=re.S)


def main():
    text = TARGET.read_text()
    missing = [name for name in GENERATED if f"<!-- generated: {name} -->" not in text]
    if missing:
        sys.exit(f"docs/protocol.md lacks the markers of {', '.join(missing)}")
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            sys.exit("docs/protocol.md is out of date: run python scripts/protocol_docs.py")
        return
    TARGET.write_text(new)


if __name__ == "__main__":
    main()
