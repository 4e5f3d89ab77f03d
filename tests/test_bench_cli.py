"""`db bench`: its options give one-line errors, and the capacity benchmark measures real servers and
reads back what they answered (a short run: the numbers themselves live in docs/benchmarks.md)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from balsamdb.cli.main import main


@pytest.mark.parametrize("args, says", [
    (["--writers", "0"], "at least 1"),
    (["--writers", "abc"], "comma-separated whole numbers"),
    (["--modes", "foo"], "unknown foo"),
    (["--writes", "0"], "--writes"),
    (["--capacity", "--inflight", "0"], "at least 1"),
    (["--capacity", "--targets", "sqlite,mysql"], "unknown mysql"),
    (["--capacity", "--prefill", "-1"], "--prefill"),
    (["--scale", "--writers", "8,32"], "one number"),
    (["--scale", "--sizes", "10000", "--records", "10,20"], "per size"),
    (["--scale", "--backend", "mysql"], "mysql"),
])
def test_bad_options_are_one_line_errors(args, says):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and says in result.output, result.output


def test_capacity_run_counts_every_answered_write(tmp_path):
    out = tmp_path / "capacity.json"
    run = subprocess.run([sys.executable, "-m", "balsamdb.cli", "bench", "--capacity", "--inflight", "8",
                          "--seconds", "1", "--repeat", "1", "--targets", "sqlite,null", "--prefill", "7000",
                          "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "vs null" in run.stdout, run.stdout
    data = json.loads(out.read_text())
    rows = {r["target"]: r for r in data["summary"]}
    assert set(rows) == {"sqlite", "null"}
    assert rows["sqlite"]["writes_per_s"] > 0 and rows["null"]["vs_null"] == 1.0
    (sqlite_run,) = [r for r in data["runs"] if r["target"] == "sqlite"]
    # every answered create is in the database, once; the generator stopped sending when the window closed
    assert sqlite_run["ok"] > 0 and sqlite_run["errors"] == 0 and sqlite_run["unanswered"] == 0
    assert sqlite_run["stored"] == sqlite_run["ok"], sqlite_run
    assert sqlite_run["prefilled"] == 7000, sqlite_run  # --prefill: two bulk_create chunks, the last one short


def test_scale_smoke_at_10k_jobs(tmp_path):
    """`db bench --scale` at its smallest size, on SQLite: every target of its table is measured (a
    number, with its verdict), and the read-back is right (nothing lost or duplicated, the state counts
    hold every job made).  Writers, bulk and pages are cut down to keep it short; the numbers
    themselves live in docs/benchmarks.md."""
    out = tmp_path / "scale.json"
    run = subprocess.run([sys.executable, "-m", "balsamdb.cli", "bench", "--scale", "--sizes", "10000",
                          "--records", "300", "--backend", "sqlite3", "--writers", "2", "--writes", "10",
                          "--bulk", "500", "--repeat", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    row = json.loads(out.read_text())["sqlite3"]["10000"]
    from balsamdb.bench.scale_targets import TARGETS

    missing = [key for key, *_rest in TARGETS if not isinstance(row.get(key), (int, float))]
    assert not missing and not row["notes"], (missing, row)
    assert row["lost_or_duplicated"] == 0 and row["records_counted"] == 300, row
    assert row["counted"] == 10000, row  # state_counts() read before the benchmark's own writes
    assert row["jobs"] > 10000 + 2 * 500, row  # and the bulk and writers' jobs were read back on top
    assert "| jobs.state_counts() ms | < 300 |" in run.stdout and ("✓" in run.stdout or "✗" in run.stdout)
    assert not list(tmp_path.glob("bdb-scale-*")), "the DB directories are removed"
