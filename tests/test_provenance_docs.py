"""docs/provenance.md's walk-through, run as written: every command of its block in one bash,
in an empty directory, with a real server (stopped by the walk-through and by the finalizer)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import db_cli, kill_everything

ROOT = Path(__file__).resolve().parent.parent


def walkthrough():
    text = (ROOT / "docs" / "provenance.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```console\n(.*?)```", text, re.S).group(1)
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def test_the_provenance_walkthrough_runs_as_written(tmp_path, request):
    pytest.importorskip("prov")
    pytest.importorskip("rocrate")
    pytest.importorskip("yaml")
    request.addfinalizer(lambda: kill_everything(tmp_path / "db"))
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", tmp_path / "db"))
    commands = walkthrough()
    assert len(commands) > 10
    script = "set -euo pipefail\n" + "".join(f"echo '>>> {i}'\n{c}\n" for i, c in enumerate(commands))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("BALSAM_DB_PATH", None)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "records (1):" in out and "_r1" in out                     # db job show
    assert out.count("demo ") >= 2 and "result.txt" in out              # the finds
    assert (tmp_path / "demo.prov.json").exists() and (tmp_path / "demo-crate" / "ro-crate-metadata.json").exists()
    from prov.model import ProvDocument
    from rocrate.rocrate import ROCrate

    prov_doc = ProvDocument.deserialize(content=(tmp_path / "demo.prov.json").read_text(), format="json")
    assert any(type(r).__name__ == "ProvActivity" for r in prov_doc.get_records())
    assert [e for e in ROCrate(tmp_path / "demo-crate").get_entities() if e.type == "CreateAction"]
    listed = out.split(">>> 17")[1]                                     # db record ls demo: both records
    assert len([line for line in listed.splitlines() if line[:8].isdigit()]) == 2, listed
    import balsamdb

    with balsamdb.connect(tmp_path / "db") as db:
        main = next(d for d in db.records.list("demo") if d["balsamdb"]["capture"] == "python")
    # the DB directory under the working directory is not an output (its files change with each write)
    assert [k["path"] for k in main["output_data"]] == ["summary.txt"], main["output_data"]
