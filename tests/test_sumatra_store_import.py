"""`db import .smt/records`: the record store that the real `smt` keeps (Django's SQLite file by
default, read with plain SQL, with Django and Sumatra made unimportable; a shelve file without Django,
read through Sumatra's own classes), also while locked; `db copy` of Sumatra's Django store on PostgreSQL."""

import json
import os
import sqlite3
import subprocess
import sys
import threading

import pytest
from helpers import require_smt
from smt_client import SmtProject

import balsamdb
from balsamdb.dbdir import DBDirectory

IMPORT_TIMEOUT = 300


BLOCKER = """import sys

class NoDjango:
    # Every process started with this sitecustomize (and its children) cannot import these.
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("django", "sumatra"):
            raise ModuleNotFoundError(f"{name} is made unimportable by the test", name=name)
        return None

sys.meta_path.insert(0, NoDjango())
"""


def without_django(tmp_path):
    """An environment in which Python processes cannot import django nor sumatra."""
    site = tmp_path / "no-django"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    return dict(os.environ, PYTHONPATH=str(site))


def db_import(*args, env=None):
    return subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "import", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finished(proc):
    out, err = proc.communicate(timeout=IMPORT_TIMEOUT)
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.fixture
def project(tmp_path):
    require_smt("django")
    return SmtProject(tmp_path / "work")


@pytest.fixture
def dst(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    return path


def smt_records(project, name):
    """What smt itself sends to an HTTP store for each record (its own classes, its own JSON)."""
    code = ("import json, sys; from sumatra.projects import load_project; "
            "from sumatra.recordstore import serialization; p = load_project(); "
            "print(json.dumps({r.label: json.loads(serialization.encode_record(r)) "
            "for r in p.record_store.list(p.name)}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project.workdir, env=project.env, capture_output=True,
                          text=True, timeout=60, check=True)
    return json.loads(proc.stdout)


def test_import_of_the_django_store_that_smt_keeps_without_django(project, dst, tmp_path):
    project("init", "--main=main.py", "--executable=" + sys.executable, "MyProject")
    project("run", "--reason=first try", "default.param", "n=2")
    project("run", "--label=second", "--tag=t0", "default.param", "n=3")
    project("tag", "paper", "second")
    (project.workdir / "input.txt").write_text("some input\n")
    project("run", "--label=third", "--reason=with input data", "default.param", "input.txt")
    project("run", "--label=fourth")  # no parameter file
    project("comment", "fourth", "no parameters: a dict")
    (project.workdir / "withdep.py").write_text("import sys\nimport peewee\nprint(peewee.__version__, sys.argv)\n")
    subprocess.run(["git", "add", "withdep.py"], cwd=project.workdir, env=project.env, check=True, timeout=60)
    subprocess.run(["git", "commit", "-q", "-m", "with a dependency"], cwd=project.workdir, env=project.env,
                   check=True, timeout=60)
    project("run", "--main=withdep.py", "--label=fifth", "default.param")  # Sumatra records its dependencies
    store = project.workdir / ".smt" / "records"
    assert store.read_bytes()[:16] == b"SQLite format 3\x00"  # Django's store, smt's default
    no_django = without_django(tmp_path)
    report = finished(db_import(store, "--path", dst, "--json", env=no_django))
    assert report["format"] == "Sumatra record store (Django, SQLite)" and report["verified"] is True
    assert report["items"]["record"]["added"] == 5
    expected = smt_records(project, "MyProject")
    assert expected["third"]["input_data"] and expected["fourth"]["parameters"]["type"] == "dict"
    assert expected["fifth"]["dependencies"] and expected["second"]["output_data"]
    with balsamdb.connect(dst) as db:
        assert {label: db.records.get("MyProject", label) for label in db.records.labels("MyProject")} == expected
        assert db.records.labels("MyProject", tags=["paper"]) == ["second"]
        assert [v["version"] for v in db.records.versions("MyProject", "second")] == [1]
    again = finished(db_import(store, "--path", dst, "--json", env=no_django))
    assert again["items"]["record"] == {"added": 0, "updated": 0, "unchanged": 5}


def test_import_waits_for_a_store_locked_by_a_writer(project, dst, tmp_path):
    project("init", "--main=main.py", "--executable=" + sys.executable, "MyProject")
    project("run", "--label=one", "default.param", "n=2")
    store = project.workdir / ".smt" / "records"
    locked, release = threading.Event(), threading.Event()

    def writer():  # what smt does while it saves: a write transaction on the store
        con = sqlite3.connect(store, isolation_level=None)
        con.execute("begin exclusive")
        con.execute("update django_store_record set reason = 'changed while importing'")
        locked.set()
        release.wait(60)
        con.execute("commit")
        con.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert locked.wait(30), "the writer did not take the lock"
        impatient = db_import(store, "--path", dst, env=dict(without_django(tmp_path), BALSAMDB_SUMATRA_LOCK_WAIT="1"))
        _out, err = impatient.communicate(timeout=60)  # a lock held longer than the wait: a clear error
        assert impatient.returncode == 1 and "Traceback" not in err, err
        assert "stayed locked by a writer (a running smt?) for 1 s" in err, err
        proc = db_import(store, "--path", dst, "--json", env=without_django(tmp_path))
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=2.0)  # it waits for the lock; it does not fail, nor read half a write
    finally:
        release.set()
        thread.join(60)
    report = finished(proc)
    assert report["verified"] is True
    with balsamdb.connect(dst) as db:
        assert db.records.get("MyProject", "one")["reason"] == "changed while importing"


PARAMETER_FILES = {  # parameter sets pickled in other shapes than the simple one (YAML and NT ones were
    # compared by hand with smt's encoding: one smt run costs seconds)
    "p.json": '{"n": 1, "alpha": {"b": [1, 2]}}', "p.cfg": "[sec]\nn = 1\nalpha = two\n  lines\n"}


def test_import_of_a_shelve_store(project, dst, tmp_path):
    """The pickles are read into inert stand-ins, not Sumatra's objects: the import needs neither
    sumatra nor django (both unimportable here), and gives every record as smt itself encodes it,
    for every kind of parameter set (a ConfigParser one was refused before: it pickles functools
    and re objects)."""
    shelf = tmp_path / "records.shelf"  # what smt makes when Django is absent (or asked for a .shelf)
    project("init", f"--store={shelf}", "--main=main.py", "--executable=" + sys.executable, "Shelved")
    project("run", "--label=s1", "--tag=t0", "default.param", "n=4")
    for name, text in PARAMETER_FILES.items():
        (project.workdir / name).write_text(text)
        project("run", "--label=" + name.replace(".", "_"), name)
    report = finished(db_import(shelf, "--path", dst, "--json", "--project", "Renamed", env=without_django(tmp_path)))
    assert report["format"] == "Sumatra record store (shelve)" and report["items"]["record"]["added"] == 3
    expected = smt_records(project, "Shelved")
    assert len(expected) == 3
    with balsamdb.connect(dst) as db:
        assert {label: db.records.get("Renamed", label) for label in db.records.labels("Renamed")} == expected


def test_a_file_that_is_no_store_is_refused_clearly(dst, tmp_path):
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("create table t (x)").connection.close()
    proc = db_import(other, "--path", dst)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err and err.startswith("Error:"), err
    missing = db_import(tmp_path / "nothing-here", "--path", dst)
    _out, err = missing.communicate(timeout=60)
    assert missing.returncode == 1 and "cannot read" in err and "No such file" in err, err


def test_copy_from_sumatra_django_store_on_postgresql(project, dst, pg_cluster, tmp_path):
    """The store is made by the real smt with a postgres:// URL; copied with Django unimportable."""
    from helpers import db_cli, fresh_database_url

    url = fresh_database_url(pg_cluster)
    project("init", "--store=" + url.replace("postgresql://", "postgres://"), "--main=main.py",
            "--executable=" + sys.executable, "PgProject")
    project("run", "--label=one", "default.param", "n=2")
    project("run", "--label=two", "--tag=t0", "default.param", "n=3")
    project("tag", "paper", "one")
    expected = smt_records(project, "PgProject")
    import psycopg2

    writer = psycopg2.connect(url)  # a running smt's write transaction, held during the copy
    try:
        writer.cursor().execute("UPDATE django_store_record SET reason = 'not committed'")
        copied = db_cli("copy", url, dst, "--json", timeout=IMPORT_TIMEOUT, env=without_django(tmp_path))
    finally:
        writer.rollback()
        writer.close()
    assert copied.returncode == 0, copied.stderr
    report = json.loads(copied.stdout)
    assert report["verification"]["verified"] and report["first_pass"]["record"]["added"] == 2
    assert report["verification"]["projects"]["PgProject"]["records"] == 2
    with balsamdb.connect(dst) as db:
        assert {label: db.records.get("PgProject", label) for label in db.records.labels("PgProject")} == expected
        assert db.records.labels("PgProject", tags=["paper"]) == ["one"]
    refused = db_cli("copy", dst, url)
    assert refused.returncode == 1 and "never writes it" in refused.stderr, refused.stderr
