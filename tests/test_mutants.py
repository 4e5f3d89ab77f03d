"""The guarantee mutation suite's own checks, in seconds (the run itself is `python3
scripts/mutants.py`, which CI runs after the tests): every mutant still applies to this tree and
names one row of docs/guarantees.md, and every section of that page has mutants."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _runner():
    spec = importlib.util.spec_from_file_location("mutants_runner", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_mutant_still_applies_and_every_section_has_mutants():
    runner = _runner()
    mutants, rows = runner.load_mutants(), runner.guarantee_rows()
    assert len(mutants) >= 40
    assert runner.problems(mutants, rows) == {}, "fix these mutants (scripts/mutants.py --check)"
    sections = {section for section, _ in rows}
    covered = {runner.row_of(m, rows)[0] for m in mutants}
    assert sections - covered == set(), f"sections of docs/guarantees.md without a mutant: {sections - covered}"


def test_the_check_fails_loudly_on_a_mutant_that_no_longer_applies():
    runner = _runner()
    rows = runner.guarantee_rows()
    mutant = runner.load_mutants()[0]
    gone = type(mutant)(**{**mutant.__dict__, "old": mutant.old + "# not in the file"})
    moved = type(mutant)(**{**mutant.__dict__, "name": "moved", "file": "dbserver/nowhere.py"})
    vague = type(mutant)(**{**mutant.__dict__, "name": "vague", "row": "the"})
    found = runner.problems([gone, moved, vague], rows)
    assert "occurs 0 times" in found[mutant.name]
    assert "does not exist" in found["moved"]
    assert "matches" in found["vague"] and "rows" in found["vague"]
