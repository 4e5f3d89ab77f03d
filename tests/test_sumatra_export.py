"""Reading `smt export` files (balsamdb.sumatra_export): a real Sumatra project, and malformed files."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from records import bare_record as _record
from fixtures import smt_project as smt  # noqa: F401  (the fixture: a real Sumatra project)

from balsamdb.exceptions import BadRequest
from balsamdb.sumatra_export import is_smt_export, read_smt_export

def test_a_real_smt_export(smt):
    smt("init", "--main=main.py", "--executable=" + sys.executable, "MyProject")
    first = smt("run", "--reason=first try", "default.param", "n=2").stdout
    first = first.split("Record label for this run: '", 1)[1].split("'", 1)[0]
    smt("run", "--label=second", "--tag=t0", "default.param", "n=3", "alpha=2.5")
    smt("tag", "paper", "second")
    smt("export")

    path = smt.workdir / ".smt" / "records_export.json"
    assert is_smt_export(path.read_bytes()[:64])
    written = json.loads(path.read_text())
    assert isinstance(written, list)

    pairs = read_smt_export(path)  # the project name comes from .smt/project_export.json
    assert [p for p, _ in pairs] == ["MyProject", "MyProject"]
    docs = {doc["label"]: doc for _, doc in pairs}
    assert set(docs) == {first, "second"}
    assert [doc["label"] for _, doc in pairs] == [r["label"] for r in written]  # file order kept
    assert [doc for _, doc in pairs] == written                                 # documents unchanged

    second = docs["second"]
    assert isinstance(second["tags"], list) and {"paper", "t0"} <= set(second["tags"])
    assert "paper" not in docs[first]["tags"]
    assert second["parameters"]["type"] == "SimpleParameterSet"
    assert "n = 3" in second["parameters"]["content"] and "alpha = 2.5" in second["parameters"]["content"]
    assert "n = 2" in docs[first]["parameters"]["content"]
    assert docs[first]["reason"] == "first try"
    # Sumatra takes as output every file of Data/ changed since the run's start rounded down to the second,
    # so a fast second run may list out-2.txt too.
    assert "out-3.txt" in [d["path"] for d in second["output_data"]]
    assert [d["path"] for d in docs[first]["output_data"]] == ["out-2.txt"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d{4}", second["timestamp"])
    assert "project_id" not in second

    # The same dicts that smt's HTTP store PUTs: it sends serialization.encode_record(record).
    # In a child process: smt's default store is Django's when Django is installed, and Django can be
    # configured once per process (other tests of this run may have done it already).
    child = subprocess.run([sys.executable, "-c", (
        "import json, sys; from sumatra.projects import load_project; "
        "from sumatra.recordstore import serialization; project = load_project(sys.argv[1]); "
        "print(json.dumps([json.loads(serialization.encode_record(r)) "
        "for r in project.record_store.list(project.name)]))"), str(smt.workdir)],
        capture_output=True, text=True, timeout=120, cwd=smt.workdir)
    assert child.returncode == 0, child.stderr[-3000:]
    put_bodies = json.loads(child.stdout.strip().splitlines()[-1])
    assert sorted(put_bodies, key=lambda d: d["label"]) == sorted(written, key=lambda d: d["label"])

    # An explicit project wins over project_export.json; without either, the error asks for --project.
    assert {p for p, _ in read_smt_export(path, project="Other")} == {"Other"}
    alone = smt.workdir.parent / "records_export.json"
    shutil.copy(path, alone)
    with pytest.raises(BadRequest, match="--project"):
        read_smt_export(alone)
    assert [p for p, _ in read_smt_export(alone, project="Mine")] == ["Mine", "Mine"]


# -- without smt -------------------------------------------------------------------------------------------------

def _write(tmp_path, content, name="records_export.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return path


@pytest.mark.parametrize("head, expected", [
    (b'[{\n  "label": "a"', True),
    (b"\xef\xbb\xbf \n [ \n {", True),
    (b"[]", True),
    (b"[", True),
    (b'{"balsamdb_export": 1, "version": 1}\n{"kind": "job"}', False),
    (b"", False),
    (b"  \n", False),
    (b"[1, 2]", False),
    (b'["a"]', False),
    (b"not json", False),
])
def test_is_smt_export(head, expected):
    assert is_smt_export(head) is expected


def test_project_id_names_the_project_and_is_removed(tmp_path):
    path = _write(tmp_path, [_record("a", project_id="P1"), _record("b"), _record("a", project_id="P2")])
    pairs = read_smt_export(path, project="Given")
    assert [(p, d["label"]) for p, d in pairs] == [("P1", "a"), ("Given", "b"), ("P2", "a")]
    assert all("project_id" not in d for _, d in pairs)


def test_an_empty_export(tmp_path):
    assert read_smt_export(_write(tmp_path, "[]")) == []


@pytest.mark.parametrize("content, reason", [
    ("{not json", "not valid JSON"),
    ('{"balsamdb_export": 1}\n{"kind": "job"}\n', "balsamdb export"),
    ({"label": "a"}, "holds a JSON object, not the list"),
    ([_record("a"), 3], "record 2 of 2 .* is a JSON number"),
    ([{"timestamp": "2024-01-01 12:00:00"}], "record 1 of 1 .* has no label"),
    ([_record("")], "has no label"),
    ([_record(None)], "has no label"),
    ([_record("a", project_id="")], "project_id"),
    ([_record("a"), _record("a")], "label 'a' appears twice"),
])
def test_invalid_files(tmp_path, content, reason):
    with pytest.raises(BadRequest, match=reason):
        read_smt_export(_write(tmp_path, content), project="P")


def test_unreadable_files(tmp_path):
    with pytest.raises(BadRequest, match="cannot read"):
        read_smt_export(tmp_path / "missing.json", project="P")
    with pytest.raises(BadRequest, match="cannot read"):
        read_smt_export(tmp_path, project="P")
    (tmp_path / "latin1.json").write_bytes(b'[{"label": "caf\xe9"}]')
    with pytest.raises(BadRequest, match="not UTF-8"):
        read_smt_export(tmp_path / "latin1.json", project="P")


def test_no_project_anywhere(tmp_path):
    path = _write(tmp_path, [_record("a")])
    with pytest.raises(BadRequest, match="pass the Sumatra project name with --project"):
        read_smt_export(path)
    (tmp_path / "project_export.json").write_text("not json")  # an unusable project file is no project
    with pytest.raises(BadRequest, match="--project"):
        read_smt_export(path)
    (tmp_path / "project_export.json").write_text(json.dumps({"name": "FromFile", "description": ""}))
    assert read_smt_export(path)[0][0] == "FromFile"
