"""Hostile and unlucky inputs for `db import .smt/records` (Sumatra's Django store read with plain
SQL) and for `db relay` (its token file, its spool on a full disk or after a crash, the
Balsamdb-Saved-At/-By headers): a clear one-line error or a clean refusal, never a traceback, a
hang, a half import or an answered save that is lost."""

import base64
import errno
import http.client
import json
import os
import random
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import db_cli, wait_for
from served import PASSWORDS
from fixtures import admin_served as served  # noqa: F401  (the fixture: a store where bob is an admin, ada is not)
from fixtures import put_as as put
from fixtures import relay_status as status
from fixtures import relay_store as store  # noqa: F401  (the fixture: a DB directory served over HTTP)
from records import sumatra_record as record

import balsamdb
from balsamdb.dbdir import DBDirectory

CLI_TIMEOUT = 60
DEAD_STORE = "http://ada:pw@127.0.0.1:9/"  # nothing listens there: the relay keeps every save in its spool


# -- db import of a crafted or damaged Sumatra Django store ----------------------------------------------

def sumatra_store(path, launch_parameters="{}", timestamp="2024-01-01 00:00:00", extra=""):
    """A minimal Sumatra Django store: one project, a good record "a" and a record "b" whose launch
    mode's parameters and timestamp are given (what a crafted or damaged store holds)."""
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE django_store_project (id TEXT PRIMARY KEY, description TEXT);
        CREATE TABLE django_store_record (db_id INTEGER PRIMARY KEY, label TEXT, project_id TEXT, timestamp,
                                          launch_mode_id INTEGER, executable_id INTEGER, parameters_id INTEGER);
        CREATE TABLE django_store_launchmode (id INTEGER PRIMARY KEY, type TEXT, parameters);
        INSERT INTO django_store_project VALUES ('P', 'a crafted store');
        INSERT INTO django_store_launchmode VALUES (1, 'SerialLaunchMode', '{}');
        INSERT INTO django_store_record VALUES (1, 'a', 'P', '2024-01-01 00:00:00', 1, NULL, NULL);
    """)
    con.execute("INSERT INTO django_store_launchmode VALUES (2, 'SerialLaunchMode', ?)", (launch_parameters,))
    con.execute("INSERT INTO django_store_record VALUES (2, 'b', 'P', ?, 2, NULL, NULL)", (timestamp,))
    con.executescript(extra)
    con.commit()
    con.close()
    return path


TAGS = """CREATE TABLE django_store_tag (id INTEGER PRIMARY KEY, name);
          CREATE TABLE django_store_taggeditem (id INTEGER PRIMARY KEY, tag_id, object_id, content_type_id);
          CREATE TABLE django_content_type (id INTEGER PRIMARY KEY, app_label, model);
          INSERT INTO django_content_type VALUES (1, 'django_store', 'record');
          INSERT INTO django_store_tag VALUES (1, NULL); INSERT INTO django_store_tag VALUES (2, 5);
          INSERT INTO django_store_taggeditem VALUES (1, 1, 2, 1); INSERT INTO django_store_taggeditem VALUES (2, 2, 2, 1);"""

CRAFTED = {  # name: (arguments of sumatra_store, what the one-line error says)
    "nested_too_deeply": ({"launch_parameters": "-" * 1_000_000 + "1"},
                          "record 'b' (db_id 2): cannot read the stored"),
    "brackets_too_deep": ({"launch_parameters": "[" * 100_000}, "record 'b' (db_id 2): cannot read the stored"),
    "a_number_for_text": ({"launch_parameters": 5}, "record 'b' (db_id 2): cannot read the stored launch mode '5'"),
    "no_time": ({"timestamp": "not a time"}, "record 'b' (db_id 2): Invalid isoformat string"),
    "a_number_for_a_time": ({"timestamp": 12345}, "record 'b' (db_id 2): the time 12345 is not a time"),
    "a_table_without_its_columns": (
        {"extra": "CREATE TABLE django_store_executable (id INTEGER PRIMARY KEY, x);"
                  "INSERT INTO django_store_executable VALUES (7, 1); UPDATE django_store_record SET executable_id = 7"},
        "record 'a' (db_id 1): a column 'path' is missing"),
    "a_link_table_without_its_columns": (
        {"extra": "CREATE TABLE django_store_record_input_data (id INTEGER PRIMARY KEY, x);"
                  "INSERT INTO django_store_record_input_data VALUES (1, 1)"},
        "as Sumatra's Django record store: a column 'record_id' is missing"),
    "tag_names_that_are_no_text": ({"extra": TAGS}, "as Sumatra's Django record store: '<' not supported"),
}


def imported(dst):
    with balsamdb.connect(dst) as db:
        return {p["name"]: db.records.labels(p["name"]) for p in db.call("project_list")}


def refused_import(source, dst):
    """`db import SOURCE --path DST` must end within CLI_TIMEOUT with one line on stderr."""
    try:
        done = db_cli("import", source, "--path", dst, timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"db import {source} still ran after {CLI_TIMEOUT} s (it hangs)")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("Error: "), lines
    return lines[0]


@pytest.fixture
def dst(tmp_path):
    path = tmp_path / "db"
    DBDirectory(path).init()
    return path


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_sumatra_store_is_one_line_and_nothing_imported(case, tmp_path, dst):
    arguments, message = CRAFTED[case]
    source = sumatra_store(tmp_path / "records", **arguments)
    line = refused_import(source, dst)
    assert f"cannot read {source}" in line and message in line and line.endswith("nothing was imported"), line
    assert imported(dst) == {}  # not even the good record "a"


def test_dangling_references_and_huge_values_are_imported_as_sumatra_reads_them(tmp_path, dst):
    """Foreign keys that point nowhere read as Sumatra's reader gives them (None), a record of a project
    missing from the project table keeps its project, and a 2 MB value is kept whole."""
    huge = "x" * 2_000_000
    source = sumatra_store(tmp_path / "records", launch_parameters=repr({"big": huge}), extra="""
        INSERT INTO django_store_record VALUES (3, 'c', 'Gone', '2024-01-02 00:00:00', 99, 98, 97);""")
    done = db_cli("import", source, "--path", dst, "--json", timeout=CLI_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert imported(dst) == {"P": ["b", "a"], "Gone": ["c"]}
    with balsamdb.connect(dst) as db:
        dangling = db.records.get("Gone", "c")
        assert dangling["launch_mode"] is None and dangling["executable"] is None and dangling["parameters"] is None
        assert db.records.get("P", "b")["launch_mode"]["parameters"] == {"big": huge}


def test_a_damaged_sqlite_file_is_named_as_such(tmp_path, dst):
    source = sumatra_store(tmp_path / "records")
    with open(source, "r+b") as handle:
        handle.truncate(100)  # the header survives: it still looks like SQLite
    line = refused_import(source, dst)
    assert "a SQLite file that SQLite cannot read (database disk image is malformed)" in line, line
    assert imported(dst) == {}


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "fifo_beside"])
def test_a_fifo_or_a_device_is_refused_without_hanging(kind, tmp_path, dst):
    source = tmp_path / "records"
    if kind == "fifo":
        os.mkfifo(source)  # no writer: an open() for reading blocks for ever
    elif kind == "dev_zero":
        source.symlink_to("/dev/zero")
    else:  # dbm.whichdb opens records.db when records is there: a FIFO beside a plain file
        source.write_text("not a store\n")
        os.mkfifo(tmp_path / "records.db")
    line = refused_import(source, dst)
    assert "is not a regular file (a FIFO, a device or a socket): nothing was imported" in line, line


@pytest.mark.parametrize("where", ["an_item", "the_end_line"])
def test_an_export_line_nested_100000_deep_is_one_line_and_nothing_imported(where, tmp_path, dst):
    """A line of `[[[...]]]` 100,000 deep in an export file: `db import` printed a RecursionError
    traceback (json's decoder recurses).  Now one line that names the line, and nothing imported."""
    source = tmp_path / "src"
    DBDirectory(source).init()
    with balsamdb.connect(source) as db:
        db.records.save("P", {"label": "r1"})
    export = tmp_path / "export.jsonl"
    assert db_cli("export", export, "--path", source).returncode == 0
    lines = export.read_text().splitlines()
    deep = "[" * 100_000 + "]" * 100_000
    lines = [lines[0], deep, *lines[1:]] if where == "an_item" else [*lines[:-1], deep]
    export.write_text("\n".join(lines) + "\n")
    line = refused_import(export, dst)
    assert "nested too deeply to read (more than 900 levels); nothing was imported" in line, line
    assert ("line 2:" in line) if where == "an_item" else ("its last line" in line), line
    assert imported(dst) == {}


class Evil:
    """Unpickled, it runs a command (what a crafted shelve store can hold)."""

    def __init__(self, call, argument):
        self.call, self.argument = call, argument

    def __reduce__(self):
        return self.call, (self.argument,)


@pytest.mark.parametrize("how", ["os_system", "builtins_exec"])
def test_a_crafted_shelve_store_does_not_run_its_code(how, tmp_path, dst):
    """Sumatra's shelve store is pickles: `db import` of a crafted one ran any command as the
    importing user (os.system in a pickle).  Only Sumatra's classes and plain types are unpickled."""
    import builtins
    import shelve

    from helpers import require_smt

    require_smt()
    ran = tmp_path / "it-ran"
    evil = Evil(os.system, f"touch {ran}") if how == "os_system" else \
        Evil(builtins.exec, f"import pathlib; pathlib.Path({str(ran)!r}).touch()")
    with shelve.open(str(tmp_path / "records")) as shelf:
        shelf["P"] = {"r1": evil}
    done = db_cli("import", tmp_path / "records", "--path", dst, timeout=CLI_TIMEOUT)
    assert not ran.exists(), "the crafted store ran its command"
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "which a Sumatra record never holds: refused (a crafted store?)" in done.stderr, done.stderr
    assert imported(dst) == {}


class Reconstructed:
    """Unpickled, it is ``cls`` rebuilt from ``state`` by its ``__setstate__``, as pickle rebuilds an
    object (what Sumatra's own records are made of)."""

    def __init__(self, cls, state):
        self.cls, self.state = cls, state

    def __reduce__(self):
        import copyreg

        return copyreg._reconstructor, (self.cls, object, None), self.state


def sumatra_payload(kind, marker, repository):
    """A Sumatra object whose constructor or ``__setstate__`` does something, and the record field
    it sits in: each leaves ``marker`` (or a git trace) when built."""
    from sumatra import datastore, parameters, programs
    from sumatra.datastore.archivingfs import ArchivingFileSystemDataStore
    from sumatra.recordstore.shelve_store import ShelveRecordStore
    from sumatra.versioncontrol._git import GitRepository

    command = f"touch {marker}"
    return {  # Executable(path) runs "<path> --version" in a shell; SimpleParameterSet evals its values
        "executable_call": ("executable", Evil(programs.Executable, f"{command};")),
        "python_executable_call": ("executable", Evil(programs.PythonExecutable, f"{command};")),
        "parameter_set_eval": ("parameters", Evil(parameters.SimpleParameterSet,
                                                  f"x = __import__('os').system({command!r})")),
        "archiving_store_call": ("datastore", Evil(ArchivingFileSystemDataStore, str(marker))),  # mkdir
        "filesystem_store_setstate": ("datastore", Reconstructed(datastore.FileSystemDataStore,
                                                                 {"root": str(marker)})),  # mkdir
        "shelve_store_setstate": ("datastore", Reconstructed(ShelveRecordStore,
                                                             {"shelf_name": str(marker)})),  # shelve.open
        "git_repository_setstate": ("repository", Reconstructed(GitRepository,
                                                                {"url": str(repository), "upstream": None})),
    }[kind]


@pytest.mark.parametrize("kind", ["executable_call", "python_executable_call", "parameter_set_eval",
                                  "archiving_store_call", "filesystem_store_setstate", "shelve_store_setstate",
                                  "git_repository_setstate"])
def test_a_shelve_store_cannot_run_code_through_sumatras_own_classes(kind, tmp_path, dst):
    """Sumatra's classes were allowed in a shelve store's pickles, and several do things when built:
    `db import` of a record whose executable was `Executable("touch X;")` ran `touch X; --version` in a
    shell (as root, `id`).  No Sumatra object is built now: the pickles are read into inert stand-ins,
    and an object made by calling a class (never what smt stores) is refused with one line."""
    import shelve

    from sumatra.records import Record

    from helpers import require_smt

    require_smt()
    marker, repository = tmp_path / "it-ran", tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repository)], check=True, timeout=CLI_TIMEOUT)
    field, payload = sumatra_payload(kind, marker, repository)
    with shelve.open(str(tmp_path / "records")) as shelf:
        shelf["P"] = {"r1": Reconstructed(Record, {"label": "r1", field: payload})}
    trace = tmp_path / "git-trace"  # any git command the import runs (GitRepository's) writes here
    done = db_cli("import", tmp_path / "records", "--path", dst, timeout=CLI_TIMEOUT,
                  env=dict(os.environ, GIT_TRACE=str(trace)))
    made = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("it-ran", "git-trace")))
    assert made == [], f"the crafted store ran Sumatra's code: it made {made}"
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: cannot read the Sumatra record store") and "nothing was imported" in lines[0]
    if kind.endswith("_call"):
        assert "which smt never stores: refused (a crafted store?)" in lines[0], lines[0]
    assert imported(dst) == {}


# -- the relay's token file and directory ---------------------------------------------------------------

def start_relay(directory, to=DEAD_STORE, timeout=CLI_TIMEOUT):
    try:
        return db_cli("relay", "--to", to, "--dir", directory, "--port", "0", "--json", timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"db relay --dir {directory} still starting after {timeout} s (it hangs)")


@pytest.fixture
def relay_dir(tmp_path, request):
    directory = tmp_path / "relay"
    request.addfinalizer(lambda: db_cli("relay", "--stop", "--dir", directory))
    directory.mkdir(mode=0o700)
    return directory


def refused_start(directory, message):
    started = start_relay(directory)
    assert started.returncode == 1 and "Traceback" not in started.stderr, started.stderr
    assert message in started.stderr, started.stderr
    assert not (directory / "relay.json").exists()


def test_a_token_that_is_a_symlink_is_refused(relay_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("relay:a-password-someone-else-chose\n")
    os.chmod(elsewhere, 0o600)
    (relay_dir / "token").symlink_to(elsewhere)
    refused_start(relay_dir, "the token must be a plain file, not a symlink")


def test_a_token_that_is_a_fifo_does_not_hang_the_start(relay_dir):
    os.mkfifo(relay_dir / "token", 0o600)
    refused_start(relay_dir, "is not a plain file")


@pytest.mark.parametrize("how", ["another_user", "group_writable"])
def test_a_relay_directory_that_others_may_write_is_refused(how, relay_dir):
    """Whoever may write DIR may swap the token or plant saves in DIR/spool/new, which the relay
    forwards with its own credentials for the store."""
    (relay_dir / "spool" / "new").mkdir(parents=True)
    planted = {"project": "P", "label": "planted", "document": {"label": "planted"}, "saved_at": 1.0,
               "saved_by": "someone"}
    (relay_dir / "spool" / "new" / "000000000001.json").write_text(json.dumps(planted))
    if how == "another_user":
        if os.getuid() != 0:
            pytest.skip("gives the directory to user nobody: needs root")
        os.chown(relay_dir, 65534, 65534)  # nobody
    else:
        os.chmod(relay_dir, 0o770)
    refused_start(relay_dir, "others could change the relay's token and spool")


def as_nobody(*command):
    return subprocess.run(["runuser", "-u", "nobody", "--", *map(str, command)], capture_output=True, text=True,
                          timeout=30)


def test_another_unix_user_reads_neither_the_token_nor_the_spool(request):
    import shutil
    import tempfile

    if os.getuid() != 0 or not Path("/usr/sbin/runuser").exists():
        pytest.skip("runs commands as user nobody: needs root and runuser")
    base = Path(tempfile.mkdtemp(prefix="balsamdb-attack-"))  # not under tmp_path: nobody may not enter that
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)
    relay_dir = base / "relay"
    request.addfinalizer(lambda: db_cli("relay", "--stop", "--dir", relay_dir))
    assert as_nobody("ls", base).returncode == 0  # nobody gets as far as the relay's directory
    assert start_relay(relay_dir).returncode == 0
    client = RelayClient(relay_dir)
    assert client.call("PUT", "/P/secret/", {"label": "secret", "stdout_stderr": "private output"})[0] == 201
    spooled = next((relay_dir / "spool" / "new").iterdir())
    for command in (["cat", relay_dir / "token"], ["cat", spooled], ["ls", relay_dir / "spool" / "new"],
                    ["ls", relay_dir / "cache"]):
        denied = as_nobody(*command)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (command, denied)


def test_the_relays_files_are_private_even_in_a_directory_others_may_read(served, request):
    """The relay refuses a directory that others may write, but one they may read (755) was fine,
    and relay.log, relay.out and the saves the store refused (spool/failed/N.json, whole documents)
    were 644 under umask 022: another user read them.  Every file the relay makes is 600 now."""
    import shutil
    import tempfile

    if os.getuid() != 0 or not Path("/usr/sbin/runuser").exists():
        pytest.skip("runs commands as user nobody: needs root and runuser")
    base = Path(tempfile.mkdtemp(prefix="balsamdb-attack-"))
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    os.chmod(base, 0o755)
    relay_dir = base / "relay"
    relay_dir.mkdir(mode=0o755)
    os.chmod(relay_dir, 0o755)
    request.addfinalizer(lambda: db_cli("relay", "--stop", "--dir", relay_dir))
    wrong = served.url("ada").replace(PASSWORDS["ada"], "not-the-password")  # every save is refused: 401
    old_umask = os.umask(0o022)
    try:
        started = start_relay(relay_dir, to=wrong)
    finally:
        os.umask(old_umask)
    assert started.returncode == 0, started.stderr
    client = RelayClient(relay_dir)
    assert client.call("PUT", "/P/private/", {"label": "private", "stdout_stderr": "private output"})[0] == 201
    failed = relay_dir / "spool" / "failed"
    wait_for(lambda: failed.is_dir() and list(failed.iterdir()), 60, "the refused save kept in spool/failed")
    made = {str(p.relative_to(relay_dir)): stat.S_IMODE(p.lstat().st_mode) for p in relay_dir.rglob("*")}
    assert {"relay.log", "relay.out", "relay.json", "token"} <= set(made), made
    assert {name: f"{mode:o}" for name, mode in made.items() if mode & 0o077} == {}, made
    for name in ("relay.log", "relay.out", "relay.json", "spool/failed/000000000001.json"):
        denied = as_nobody("cat", relay_dir / name)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, (name, denied)


# -- the relay's spool ---------------------------------------------------------------------------------

class RelayClient:
    def __init__(self, directory):
        self.directory = Path(directory)
        user, _, password = (self.directory / "token").read_text().strip().partition(":")
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def url(self):
        return json.loads((self.directory / "relay.json").read_text())["url"]

    def call(self, method, path, doc=None, timeout=30):
        where = urlsplit(self.url())
        conn = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
        try:
            conn.request(method, path, None if doc is None else json.dumps(doc), {"Authorization": self.auth})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()


def relay_pid(directory):
    return json.loads((Path(directory) / "relay.json").read_text())["pid"]


def kill9(pid):
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
             30, f"the killed relay {pid} to go away")


def test_a_save_cut_short_by_a_crash_does_not_block_the_next_start(relay_dir):
    """SIGKILL during a save's fsync leaves DIR/spool/tmp/N.json; after the restart the next save
    gets the same number N and must still be answered (it was a 500 FileExistsError)."""
    assert start_relay(relay_dir).returncode == 0
    client = RelayClient(relay_dir)
    assert client.call("PUT", "/P/first/", {"label": "first"})[0] == 201
    kill9(relay_pid(relay_dir))
    (relay_dir / "relay.json").unlink()
    # what the killed relay left of save 2, never answered
    (relay_dir / "spool" / "tmp" / "000000000002.json").write_text('{"project": "P", "lab')
    assert start_relay(relay_dir).returncode == 0
    code, body = client.call("PUT", "/P/second/", {"label": "second"})
    assert code == 201, body
    assert sorted(p.name for p in (relay_dir / "spool" / "new").iterdir()) == ["000000000001.json",
                                                                               "000000000002.json"]
    user, _, password = (relay_dir / "token").read_text().strip().partition(":")
    assert status(client.url(), user, password)["waiting"] == 2


def test_refused_saves_kept_aside_are_not_overwritten_after_a_restart(tmp_path):
    """The forwarder keeps a save the store refused in DIR/spool/failed/N.json; a restarted relay
    numbers from 1 again once its spool is empty, and its next refusal overwrote an earlier one."""
    from balsamdb.server.relay.spool import RelaySpool as Spool

    failed = tmp_path / "spool" / "failed"
    failed.mkdir(parents=True)
    (failed / "000000000001.json").write_text('{"label": "refused before"}')
    (failed / "000000000002.json").write_text('{"label": "refused before too"}')
    assert Spool(tmp_path / "spool").put("P", "next", {"label": "next"}) == 3


def test_a_damaged_spool_file_does_not_stop_the_relay_from_starting(relay_dir):
    """An empty save file (a damaged disk) or a stray file in DIR/spool/new stopped every start of
    the relay with a traceback, and the good saves behind it were never forwarded."""
    new = relay_dir / "spool" / "new"
    new.mkdir(parents=True)
    good = {"project": "P", "label": "good", "document": {"label": "good"}, "saved_at": time.time(), "saved_by": ""}
    (new / "000000000001.json").write_text(json.dumps(good))
    (new / "000000000002.json").write_text("")
    (new / "notes.txt").write_text("a file someone left here\n")
    started = start_relay(relay_dir)
    assert started.returncode == 0, started.stderr
    client = RelayClient(relay_dir)
    user, _, password = (relay_dir / "token").read_text().strip().partition(":")
    assert status(client.url(), user, password)["waiting"] == 1
    assert sorted(p.name for p in (relay_dir / "spool" / "damaged").iterdir()) == ["000000000002.json", "notes.txt"]
    assert json.loads(client.call("GET", "/P/good/")[1]) == {"label": "good"}  # from the spool
    assert client.call("PUT", "/P/next/", {"label": "next"})[0] == 201  # numbered after the good one
    assert sorted(p.name for p in new.iterdir()) == ["000000000001.json", "000000000003.json"]


@pytest.fixture
def full_disk(tmp_path, request):
    """A 2 MB tmpfs for the relay's directory, and a way to fill it and free it."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")

    def unmount():
        try:  # the relay this test started, by its pid, should --stop fail on the full disk
            pid = relay_pid(mount / "relay")
        except (OSError, ValueError):
            pid = None
        db_cli("relay", "--stop", "--dir", mount / "relay")
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["umount", "-l", str(mount)], timeout=30)
    request.addfinalizer(unmount)
    filler = mount / "filler"

    def fill():
        with open(filler, "ab") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
        for size in (4096, 512, 1):  # the last crumbs too
            try:
                with open(filler, "ab") as out:
                    while True:
                        out.write(b"\0" * size)
                        out.flush()
            except OSError:
                pass

    def free():
        filler.unlink()
    return mount / "relay", fill, free


def test_a_full_disk_refuses_the_save_clearly(full_disk):
    directory, fill, free = full_disk
    assert start_relay(directory).returncode == 0
    client = RelayClient(directory)
    fill()
    doc = {"label": "big", "stdout_stderr": "y" * 20000}
    code, body = client.call("PUT", "/P/big/", doc)
    assert code == 507 and b"could not keep the save in its spool (No space left on device)" in body, (code, body)
    assert list((directory / "spool" / "tmp").iterdir()) == [] and list((directory / "spool" / "new").iterdir()) == []
    code, body = client.call("GET", "/P/big/")
    assert code == 503, (code, body)  # not answered from anywhere: it was never kept
    free()
    assert client.call("PUT", "/P/big/", doc)[0] == 201


def test_a_full_disk_does_not_stop_the_forwarder(full_disk, store):
    """The store is up again, but the relay's disk is full: the copy it keeps of a forwarded save
    cannot be written. The forwarder thread died of that (OSError), and no save was forwarded again."""
    directory, fill, free = full_disk
    server, restart = store
    server.proc.kill()
    server.proc.wait(30)
    assert start_relay(directory, to=server.url("ada")).returncode == 0
    client = RelayClient(directory)
    docs = [{"label": f"r{i}", "stdout_stderr": "z" * 50000} for i in range(3)]
    for doc in docs:
        assert client.call("PUT", f"/P/{doc['label']}/", doc)[0] == 201
    fill()
    restart()
    user, _, password = (directory / "token").read_text().strip().partition(":")
    wait_for(lambda: status(client.url(), user, password)["waiting"] == 0, 60, "the spool forwarded on a full disk")
    free()
    assert client.call("PUT", "/P/after/", {"label": "after"})[0] == 201
    wait_for(lambda: status(client.url(), user, password)["waiting"] == 0, 60, "the next save forwarded")
    with balsamdb.connect(server.path) as db:
        assert sorted(db.records.labels("P")) == ["after", "r0", "r1", "r2"]



# -- the Balsamdb-Saved-At / -By headers from a writer who is no admin -----------------------------------

def test_a_writer_cannot_date_a_version_before_the_one_it_follows(served):
    """ada (no admin) sends Balsamdb-Saved-At a year back for a second save: the version would
    have come before the first in time (versions out of order); it is dated as the first now."""
    assert put(served, "ada", record("r"), {})[0] == 201
    assert put(served, "ada", record("r", reason="again"), {"Balsamdb-Saved-At": repr(time.time() - 365 * 86400)})[0] \
        == 200
    with balsamdb.connect(served.path) as db:
        first, second = db.records.versions("P", "r")
    assert second["saved_at"] >= first["saved_at"], (first, second)


def test_huge_or_garbage_saved_headers_are_a_400_or_cut(served):
    for value in ("nan", "-0", "1" * 5000, "0x10", "inf"):  # 1 * 5000 digits is inf as a float
        code, body = put(served, "ada", record("g"), {"Balsamdb-Saved-At": value})
        assert code == 400 and "Balsamdb-Saved-At must be a time in UNIX seconds" in body, (value, code, body)
    code, body = put(served, "ada", record("g"), {"Balsamdb-Saved-By": "b" * 200_000})
    assert code == 201, (code, body[:300])
    with balsamdb.connect(served.path) as db:
        (version,) = db.records.versions("P", "g")
    assert version["saved_by"] == "ada for " + "b" * 100  # the claim cut to 100 characters, after ada's name


# -- SIGKILL of the relay at random moments during 16 concurrent saves -----------------------------------

CLIENTS = 16
SAVE_WINDOW = float(os.environ.get("BALSAMDB_ATTACK_WINDOW", "15"))  # seconds of saving and killing


@pytest.mark.slow
def test_sigkill_at_random_moments_during_16_concurrent_saves(store, relay_dir):
    """Each of 16 clients saves its record again and again (save n carries reason "save n"),
    retrying a save until it is answered; meanwhile the relay is SIGKILLed at random moments and
    started again.  Afterwards every answered save is a version in the store, exactly once, in
    the order answered: the versions of each record are saves 1..N, N its last answered save."""
    server, _restart = store
    seed = int(os.environ.get("BALSAMDB_ATTACK_SEED", str(random.randrange(10**6))))
    chance = random.Random(seed)
    assert start_relay(relay_dir, to=server.url("ada")).returncode == 0
    client = RelayClient(relay_dir)
    user, _, password = (relay_dir / "token").read_text().strip().partition(":")
    end = time.monotonic() + SAVE_WINDOW
    answered = {f"c{i:02d}": [] for i in range(CLIENTS)}
    odd, failures = [], {"unanswered": 0}

    def saves(label):
        """Save n, n+1, ... until the window ends; a save not answered is sent again until it is
        (past the window too: it may be in the spool, and only its answer tells)."""
        n, deadline = 1, end + 60
        while time.monotonic() < end:
            doc = {"label": label, "reason": f"save {n}", "tags": [f"n{n}"], "stdout_stderr": "x" * (n % 7 * 100)}
            while True:
                assert time.monotonic() < deadline, f"{label}: save {n} not answered within 60 s after the window"
                try:
                    code, body = client.call("PUT", f"/Stress/{label}/", doc, timeout=10)
                except (OSError, http.client.HTTPException, ValueError):  # killed mid-request; relay.json not there
                    failures["unanswered"] += 1
                    time.sleep(0.05)  # wait-ok: a client's retry interval while the relay restarts
                    continue
                if code in (200, 201):
                    answered[label].append(n)
                    n += 1
                    break
                odd.append((label, n, code, body[:200]))
                time.sleep(0.05)  # wait-ok: a client's retry interval

    threads = [threading.Thread(target=saves, args=(label,), daemon=True) for label in answered]
    for thread in threads:
        thread.start()
    kills = 0
    while time.monotonic() < end - 1:
        time.sleep(chance.uniform(0.2, 1.5))  # wait-ok: a random moment for the next SIGKILL
        kill9(relay_pid(relay_dir))
        kills += 1
        started = start_relay(relay_dir, to=server.url("ada"))
        assert started.returncode == 0, started.stderr
    for thread in threads:
        thread.join(120)
        assert not thread.is_alive(), "a client still saves 120 s after the window"
    drain = time.monotonic()
    wait_for(lambda: status(client.url(), user, password)["waiting"] == 0, 120, "the relay to forward its spool")
    drain = time.monotonic() - drain
    total = sum(len(v) for v in answered.values())
    with balsamdb.connect(server.path) as db:
        stored = 0
        for label, numbers in answered.items():
            versions = db.records.versions("Stress", label)
            reasons = [db.records.get("Stress", label, version=v["version"])["reason"] for v in versions]
            stored += len(versions)
            # saves 1..N each once and in order (an unanswered save retried is the same save, not a new version)
            assert reasons == [f"save {k}" for k in range(1, len(numbers) + 1)], (seed, label, numbers, reasons)
            assert numbers == list(range(1, len(numbers) + 1)), (seed, label, numbers)
            assert [v["saved_at"] for v in versions] == sorted(v["saved_at"] for v in versions), (seed, label)
    print(f"\nseed {seed}: {kills} SIGKILLs in {SAVE_WINDOW:g} s; {total} saves answered by the relay, {stored} "
          f"versions in the store; {failures['unanswered']} requests cut off and retried; other answers: {odd[:5]}; "
          f"the spool drained {drain:.1f} s after the window")
    assert stored == total and not odd, (seed, odd[:5])
