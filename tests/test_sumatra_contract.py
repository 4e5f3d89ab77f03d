"""Sumatra's own record-store contract, checked with Sumatra's own client against `db serve`.

Sumatra tests every record store with one generic suite (``BaseTestRecordStore`` in its
test/unittests/test_recordstore.py): save, get, list and label by tag, delete, delete by tag,
most recent, sync with its shelve and Django stores, ``update`` of a field of every record, clear.
The tests below check the same seventeen things, written anew, through
``sumatra.recordstore.http_store.HttpRecordStore`` (the class `smt` uses for ``--store=http://...``)
against a real `db serve` in front of a real write server, on SQLite and PostgreSQL.  Sumatra's
suite re-saves labels with new timestamps and tags, and rewrites a field of every record: a store
must replace a record on save (and this one keeps the earlier versions).

Then the real `smt` commands that re-save records: migrate, repeat, tag, comment, and runs that
pick the same label at once.
"""

import itertools
import sys
import warnings
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest
from helpers import db_cli, kill_everything, require_smt
from served import PASSWORDS, Served

import balsamdb
from balsamdb.passwords import hash_password

SMT_TIMEOUT = 120.0
_names = itertools.count()


@pytest.fixture(scope="module", params=["sqlite3", "postgres"])
def served(request, tmp_path_factory):
    """One `db serve` (users ada and bob) in front of a running write server, per backend,
    for the whole module: each test uses a project of its own."""
    from helpers import make_db_directory

    pg_url = request.getfixturevalue("pg_cluster") if request.param == "postgres" else None
    base = tmp_path_factory.mktemp(f"contract-{request.param}")
    path = make_db_directory(request.param, base / "db", pg_url)
    started = db_cli("dbserver", "--path", path)
    request.addfinalizer(lambda: kill_everything(path))
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", path))
    assert started.returncode == 0, started.stderr
    with balsamdb.connect(path) as db:
        for name, password in PASSWORDS.items():
            db.call("user_save", name=name, password_hash=hash_password(password))
    server = Served(path, base)
    request.addfinalizer(server.stop)
    return server


@pytest.fixture
def store(served, tmp_path, monkeypatch):
    """Sumatra's HttpRecordStore for user ada (httplib2 keeps a '.cache' directory in the cwd)."""
    require_smt("httplib2")
    from sumatra.recordstore.http_store import HttpRecordStore

    monkeypatch.chdir(tmp_path)
    return HttpRecordStore(served.url("ada"))


@pytest.fixture
def project():
    return f"Contract{next(_names)}"


# -- records made with Sumatra's own classes ------------------------------------------------------------

def make_record(label, timestamp=None, tags=(), root="/data/run"):
    """A Sumatra Record as `smt run` makes one, from Sumatra's real classes (no mocks)."""
    from sumatra.datastore import FileSystemDataStore
    from sumatra.launch import PlatformInformation, SerialLaunchMode
    from sumatra.parameters import SimpleParameterSet
    from sumatra.programs import PythonExecutable
    from sumatra.records import Record
    from sumatra.versioncontrol._git import GitRepository

    record = Record(PythonExecutable("/usr/bin/python3", "3.11.7"), GitRepository("/home/ada/model"), "main.py",
                    "f4f0cc958cc8b712ce8bd61c112cd00dc3da0c42", SerialLaunchMode(), FileSystemDataStore(root),
                    SimpleParameterSet("alpha = 1.5"), [], "1 2", label, "because", "", "Ada Lovelace <ada@lab>",
                    timestamp=timestamp or datetime.now(timezone.utc))
    record.duration = 7543.2
    record.stdout_stderr = "ok: ü 漢字"
    record.tags = set(tags)
    record.platforms = [PlatformInformation(architecture_bits="64bit", architecture_linkage="ELF",
                                            machine="x86_64", network_name="node1", ip_addr="10.0.0.1",
                                            processor="x86_64", release="6.1", system_name="Linux", version="#1")]
    return record


def add_three(store, project):
    """Three records one second apart (the client sends timestamps to the second)."""
    now = datetime.now(timezone.utc)
    for back, label in ((2, "record1"), (1, "record2"), (0, "record3")):
        store.save(project, make_record(label, now - timedelta(seconds=back)))


def retag_two(store, project):
    """Save record1 and record3 again with new timestamps and tags, as Sumatra's suite does."""
    now = datetime.now(timezone.utc)
    store.save(project, make_record("record1", now - timedelta(seconds=1), tags={"tag1", "tag2"}))
    store.save(project, make_record("record3", now, tags={"tag1"}))


# -- the seventeen checks of Sumatra's generic suite ---------------------------------------------------------

def test_a_store_can_be_made(store):
    assert store.server_url.endswith("/") and "ada" not in store.server_url


def test_saving_records_is_no_error(store, project):
    add_three(store, project)
    assert store.has_project(project)


def test_get_returns_the_saved_record(store, project):
    from sumatra.records import Record

    add_three(store, project)
    got = store.get(project, "record1")
    assert isinstance(got, Record) and got.label == "record1"
    assert got.duration == 7543.2 and got.stdout_stderr == "ok: ü 漢字" and got.parameters.as_dict() == {"alpha": 1.5}


def test_get_of_a_missing_label_is_a_key_error(store, project):
    add_three(store, project)
    with pytest.raises(KeyError):
        store.get(project, "foo")


def test_list_without_tags_gives_every_record(store, project):
    add_three(store, project)
    records = store.list(project)
    assert isinstance(records, list) and len(records) == 3


def test_list_by_tag_after_labels_were_saved_again(store, project):
    add_three(store, project)
    retag_two(store, project)
    assert sorted(r.label for r in store.list(project, "tag1")) == ["record1", "record3"]
    assert len(store.list(project)) == 3  # replaced, not added


def test_labels_without_tags_give_every_label(store, project):
    add_three(store, project)
    labels = store.labels(project)
    assert isinstance(labels, list) and len(labels) == 3 and isinstance(labels[0], str)


def test_labels_by_tag_after_labels_were_saved_again(store, project):
    add_three(store, project)
    retag_two(store, project)
    labels = store.labels(project, "tag1")
    assert sorted(labels) == ["record1", "record3"] and isinstance(labels[0], str)


def test_delete_removes_the_record(store, project):
    add_three(store, project)
    store.delete(project, "record1")
    with pytest.raises(KeyError):
        store.get(project, "record1")


def test_delete_by_tag(store, project):
    add_three(store, project)
    assert len(store.list(project)) == 3
    retag_two(store, project)
    assert store.get(project, "record1").tags == {"tag1", "tag2"}
    assert store.delete_by_tag(project, "tag1") == 2
    assert [r.label for r in store.list(project)] == ["record2"]
    with pytest.raises(KeyError):
        store.get(project, "record1")


def test_deleting_a_missing_label_raises(store, project):
    from sumatra.recordstore.base import RecordStoreAccessError

    add_three(store, project)
    with pytest.raises(RecordStoreAccessError, match="404"):
        store.delete(project, "notarecord")


def test_str_names_the_store(store):
    assert str(store) == f"Interface to remote record store at {store.server_url} using HTTP"


def test_most_recent_follows_deletes(store, project):
    add_three(store, project)
    assert store.most_recent(project) == "record3"
    store.delete(project, "record3")
    assert store.most_recent(project) == "record2"


def test_sync_with_a_shelve_store(store, project, tmp_path):
    from sumatra.recordstore.shelve_store import ShelveRecordStore

    add_three(store, project)
    other = ShelveRecordStore(shelf_name=str(tmp_path / "other_store"))
    assert other.list(project) == []
    store.sync(other, project)
    assert sorted(r.label for r in store.list(project)) == sorted(r.label for r in other.list(project))


@pytest.fixture(scope="module")
def django_store(tmp_path_factory):
    """Sumatra's Django store (its default for `smt init`): configured once per process."""
    require_smt("django")
    from sumatra.recordstore.django_store import DjangoRecordStore

    return DjangoRecordStore(db_file=str(tmp_path_factory.mktemp("django") / "other.db"))


def test_sync_with_a_django_store(store, project, django_store):
    add_three(store, project)
    assert django_store.list(project) == []
    store.sync(django_store, project)
    assert sorted(r.label for r in store.list(project)) == sorted(r.label for r in django_store.list(project))
    # and back: a record only the Django store has reaches this one
    django_store.save(project, make_record("from-django"))
    store.sync(django_store, project)
    assert store.get(project, "from-django").label == "from-django"


def test_update_rewrites_a_field_of_every_record_and_keeps_the_old_versions(store, project, served):
    add_three(store, project)
    store.update(project, "datastore.root", "/new/path/to/store")  # what `smt migrate` does
    assert {r.datastore.root for r in store.list(project)} == {"/new/path/to/store"}
    with balsamdb.connect(served.path) as db:
        for label in ("record1", "record2", "record3"):
            versions = db.records.versions(project, label)
            assert [v["version"] for v in versions] == [1, 2] and versions[1]["changed"] == ["datastore"]
            assert {v["saved_by"] for v in versions} == {"ada"}
            old = db.records.get(project, label, version=1)
            assert old["datastore"]["parameters"] == {"root": "/data/run"}


def test_clear_is_refused_with_a_warning(store, project):
    add_three(store, project)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        store.clear()
    assert any("Cannot clear a remote record store" in str(w.message) for w in seen)
    assert len(store.list(project)) == 3


# -- versions, tags and write-once over the HTTP API -------------------------------------------------------

def test_versions_over_http(store, project, served):
    record = make_record("v")
    store.save(project, record)
    store.save(project, record)  # identical: no new version
    record.tags = {"_finished_"}
    record.duration = 2.5
    store.save(project, record)
    url = f"{quote(project)}/v/"
    listing = served.request("GET", url + "?versions", user="ada")
    assert listing.status == 200, listing
    versions = listing.json()["versions"]
    assert [(v["version"], v["saved_by"], v["changed"]) for v in versions][1:] == [(2, "ada", ["duration", "tags"])]
    assert versions[0]["version"] == 1 and versions[0]["saved_at"] <= versions[1]["saved_at"]
    first = served.request("GET", url + "?version=1", user="ada")
    assert first.status == 200 and first.json()["tags"] == [] and first.json()["duration"] == 7543.2
    assert served.request("GET", url + "?version=2", user="ada").json() == \
        served.request("GET", url, user="ada").json()
    assert served.request("GET", url + "?version=3", user="ada").status == 404
    assert served.request("GET", url + "?version=x", user="ada").status == 400
    page = served.request("GET", url + "?versions", user="ada", headers={"Accept": "text/html"})
    assert page.status == 200 and "<td>ada</td>" in page.text and "duration, tags" in page.text
    assert served.request("GET", url + "?versions", user="bob").status == 404
    # balsamdb's own HTTP client (the operation endpoint): who saved is the logged-in user, whatever it sends
    with balsamdb.connect(served.url("ada"), client_deadline=30) as remote:
        assert remote.records.tag(project, "v", add=["remote"]) == ["_finished_", "remote"]
        assert remote.records.versions(project, "v")[-1]["saved_by"] == "ada"
        assert remote.records.get(project, "v", version=1)["duration"] == 7543.2
    # deleting the record deletes its versions
    store.delete(project, "v")
    store.save(project, make_record("v"))
    assert [v["version"] for v in served.request("GET", url + "?versions", user="ada").json()["versions"]] == [1]


def test_tags_on_the_sumatra_api_match_any(store, project, served):
    now = datetime.now(timezone.utc)
    store.save(project, make_record("a", now - timedelta(seconds=2), tags={"x"}))
    store.save(project, make_record("b", now - timedelta(seconds=1), tags={"y", "x"}))
    store.save(project, make_record("c", now, tags={"z"}))
    urls = served.request("GET", f"{quote(project)}/?tags=x,z", user="ada").json()["records"]
    assert [u.rstrip("/").rsplit("/", 1)[1] for u in urls] == ["c", "b", "a"]
    assert sorted(store.labels(project, ["y", "z"])) == ["b", "c"]
    with balsamdb.connect(served.path) as db:
        assert db.records.labels(project, tags=["x", "y"]) == ["b"]
        assert db.records.labels(project, tags=["x", "z"], match="any") == ["c", "b", "a"]
        with pytest.raises(balsamdb.BadRequest, match="match must be one of all, any"):
            db.records.labels(project, tags=["x"], match="some")
    # "tags": "" (the Sumatra Server README's example) and null mean no tags
    doc = served.request("GET", f"{quote(project)}/a/", user="ada").json()
    for empty in ("", None):
        saved = served.request("PUT", f"{quote(project)}/a/", dict(doc, tags=empty), user="ada")
        assert saved.status == 200, saved
        assert "a" not in store.labels(project, "x")
        assert served.request("GET", f"{quote(project)}/a/", user="ada").json()["tags"] == empty


def test_write_once_is_a_project_option(store, project, served):
    when = datetime.now(timezone.utc)  # one timestamp: a provenance field, which write-once keeps
    store.save(project, make_record("w", when, root="/one"))
    store.save(project, make_record("w", when, root="/two"))  # default: replaced
    assert store.get(project, "w").datastore.root == "/two"
    settings = served.request("PUT", f"{quote(project)}/", {"write_once": True}, user="ada")
    assert settings.status == 200 and settings.json()["write_once"] is True
    assert served.request("GET", f"{quote(project)}/", user="ada").json()["write_once"] is True
    refused = served.request("PUT", f"{quote(project)}/w/", dict(
        served.request("GET", f"{quote(project)}/w/", user="ada").json(), main_file="other.py"), user="ada")
    assert refused.status == 409 and "write-once" in refused.json()["error"]
    result = make_record("w", when, root="/two")
    result.tags, result.outcome = {"_finished_"}, "converged"  # run results may still change
    store.save(project, result)
    assert store.get(project, "w").outcome == "converged"
    assert served.request("PUT", f"{quote(project)}/", {"write_once": "yes"}, user="ada").status == 400
    assert served.request("PUT", f"{quote(project)}/", {"write_once": False}, user="ada").json()["write_once"] is False
    store.save(project, make_record("w", when, root="/three"))
    assert store.get(project, "w").datastore.root == "/three"


# -- the real smt client -------------------------------------------------------------------------------

# The smt commands run on SQLite only (the protocol checks above run on both backends).
on_sqlite = pytest.mark.parametrize("served", ["sqlite3"], indirect=True)


@pytest.fixture
def smt_session(tmp_path, served):
    require_smt("httplib2")
    from smt_client import SmtSession

    return SmtSession(tmp_path / "work")


def _label(run):
    return run.stdout.split("Record label for this run: '", 1)[1].split("'", 1)[0]


@on_sqlite
def test_smt_tag_comment_repeat_and_migrate_with_the_real_client(smt_session, served, project):
    smt = smt_session
    smt("init", f"--store={served.url('ada')}", "--main=main.py", "--executable=" + sys.executable, project)
    first = _label(smt("run", "--label=first", "1"))
    smt("run", "--label=second", "2")
    smt("tag", "paper", first)
    smt("comment", first, "looks right")
    assert smt("list", "paper").stdout.split() == [first]

    repeated = smt("repeat", first)
    assert "The new record exactly matches the original" in repeated.stdout, repeated.stdout

    smt("migrate", "--datapath=/archive/Data")
    with balsamdb.connect(served.path) as db:
        docs = db.records.list(project)
        assert {d["datastore"]["parameters"]["root"] for d in docs} == {"/archive/Data"}
        original = db.records.get(project, first)
        assert original["outcome"] == "looks right" and "paper" in original["tags"]
        repeat = [d for d in docs if d["repeats"] == first]  # smt repeat's record names the original
        assert len(repeat) == 1 and "exactly matches" in repeat[0]["outcome"]
        versions = db.records.versions(project, first)
        assert versions[-1]["changed"] == ["datastore"] and versions[-1]["saved_by"] == "ada"
        before = db.records.get(project, first, version=versions[-2]["version"])
        assert before["datastore"]["parameters"]["root"].endswith("Data")
        assert before["datastore"]["parameters"]["root"] != "/archive/Data"
    history = db_cli("record", "history", project, first, "--path", served.path, check=True).stdout
    assert "ada" in history and "datastore" in history


@on_sqlite
def test_concurrent_runs_with_one_label_end_as_one_record_with_every_save(smt_session, served, project):
    """Sumatra's default labels have one-second resolution: runs started together may pick one
    label.  Each run still succeeds, and the record's versions hold every save of every run."""
    smt = smt_session
    smt("init", f"--store={served.url('ada')}", "--main=main.py", "--executable=" + sys.executable, project)
    runs = 6
    procs = [smt.popen("run", "--label=same", str(i)) for i in range(runs)]
    for proc in procs:
        out, _ = proc.communicate(timeout=SMT_TIMEOUT * 2)
        assert proc.returncode == 0, out
    with balsamdb.connect(served.path) as db:
        assert db.records.labels(project) == ["same"]
        versions = db.records.versions(project, "same")
        assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
        documents = [db.records.get(project, "same", version=v["version"]) for v in versions]
    # five saves a run (initialized, pre_run, running, finished..., finished), none lost
    assert len(versions) == 5 * runs
    finished = sorted(d["script_arguments"] for d in documents if "_finished_" in d["tags"])
    assert finished == sorted(str(i) for i in range(runs))


def test_cli_projects_and_records(served, project, store):
    now = datetime.now(timezone.utc)
    store.save(project, make_record("r1", now - timedelta(seconds=1), tags={"a", "b"}))
    store.save(project, make_record("r2", now, tags={"b"}))
    path = ["--path", served.path]
    listing = db_cli("project", "ls", *path, check=True).stdout
    row = next(line for line in listing.splitlines() if line.startswith(project + " "))
    assert row.split()[1:4] == ["2", "members", "no"]
    assert db_cli("project", "set", project, "--public", "--write-once", "--description", "the sweep", *path,
                  check=True).stdout.splitlines()[1:5] == [
        "description:  the sweep", "records:      2", "access:       public", "write-once:   yes"]
    assert served.request("GET", f"{quote(project)}/").json()["write_once"] is True  # anonymous: public now
    missing = db_cli("project", "set", "NoSuchProject", "--public", *path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    nothing = db_cli("record", "ls", "NoSuchProject", *path)
    assert nothing.returncode == 1 and "project 'NoSuchProject' does not exist" in nothing.stderr

    def labels(*args):
        return [line.split()[0] for line in db_cli("record", "ls", project, *args, *path,
                                                   check=True).stdout.splitlines()[2:]]
    assert labels("--tag", "a", "--tag", "b") == ["r1"]
    assert labels("--tag", "a", "--tag", "b", "--any-tag") == ["r2", "r1"]
    store.save(project, make_record("r1", now - timedelta(seconds=1), tags={"c"}))
    shown = db_cli("record", "show", project, "r1", "--version", "1", *path, check=True).stdout
    assert '"a"' in shown and '"c"' not in shown
    absent = db_cli("record", "show", project, "r1", "--version", "9", *path)
    assert absent.returncode == 1 and "has no version 9" in absent.stderr
    history = db_cli("record", "history", project, "r1", *path, check=True).stdout.splitlines()
    assert [line.split()[0] for line in history[2:]] == ["1", "2"] and history[3].endswith("tags")


@on_sqlite
def test_smt_lists_a_record_captured_by_balsamdb_as_its_own(smt_session, served, project):
    """A record that `db record run` captured (no smt in the run) is listed by the real `smt`
    client, in its long form too (each field read back by Sumatra's own classes)."""
    from balsamdb.provenance import run_command

    smt = smt_session
    smt("init", f"--store={served.url('ada')}", "--main=main.py", "--executable=" + sys.executable, project)
    status, captured = run_command([sys.executable, "main.py", "1"], project, path=served.path,
                                   working_directory=str(smt.workdir), reason="captured, not smt run")
    assert status == 0 and captured.saved is True
    with balsamdb.connect(served.path) as db:
        db.users.grant("ada", project)  # the project was made by the capture, not over HTTP
    label = captured.run.label
    assert smt("list").stdout.split() == [label]
    long = smt("list", "--long").stdout
    assert "captured, not smt run" in long and captured.document["version"] in long, long
