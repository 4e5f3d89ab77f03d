"""The docs keep up with the code."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links, "the README links to the docs"
    missing = [link for link in links if not link.startswith("http") and not (ROOT / link).exists()]
    assert not missing, missing


def test_the_readme_tours_db_init_prints_what_db_init_prints(tmp_path):
    """The tour's `db init /tmp/tour/db` transcript is what `db init` prints today (a new schema
    step shows up there too) (broken: the README before issue 24, four schema steps behind)."""
    readme = (ROOT / "README.md").read_text()
    shown = readme.split("$ db init /tmp/tour/db\n", 1)[1].split("\n$ ", 1)[0]
    made = tmp_path / "tour" / "db"
    proc = subprocess.run([sys.executable, "-m", "balsamdb.cli", "init", str(made)], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.replace(str(tmp_path / "tour"), "/tmp/tour").rstrip("\n") == shown


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "scripts/dev.py demo" in first_block and "scripts/dev.py test" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "scripts/dev.py test" in ci, "CI runs the README's test command"


def test_every_operation_is_documented_in_the_protocol_page():
    from balsamdb.operations import OPERATIONS

    protocol = (ROOT / "docs" / "protocol.md").read_text()
    missing = [name for name in OPERATIONS if f"`{name}`" not in protocol]
    assert not missing, f"docs/protocol.md lacks {missing}"
    for name, op in OPERATIONS.items():
        assert op.doc, f"operation {name} has no docstring (its specification)"


def test_every_guarantee_names_tests_that_exist():
    """Each row of docs/guarantees.md names a test file, and every test it names is defined there."""
    rows = [line for line in (ROOT / "docs" / "guarantees.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| promise") and not set(line) <= set("|- ")]
    assert rows
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        names = re.findall(r"`([^`]+)`", cell)
        current = None
        for name in names:
            file, _, test = name.partition("::")
            if file.startswith("test_") and file.endswith(".py"):
                current = ROOT / "tests" / file
                assert current.exists(), f"{row}: no {file}"
            elif name.startswith("test_"):
                test = name  # a test of the file named before it
            else:
                continue  # a command, an option
            if test:
                assert current is not None, f"{row}: {test} names no file"
                assert re.search(rf"^def {re.escape(test)}\(", current.read_text(), re.M), \
                    f"{row}: {current.name} has no test {test}"
        assert current is not None, f"a promise without a test: {row}"


def test_protocol_tables_are_current():
    """docs/protocol.md's error and operation tables are generated from the exception classes and
    the operation registry (scripts/protocol_docs.py); a change to either shows here."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "protocol_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
