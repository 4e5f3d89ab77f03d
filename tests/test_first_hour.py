"""The first hour of a new user (issue 16): each mistake gets a right answer, and the commands a
scientist reaches for next (db ls --since/--sort/--by-state/--watch, the time in each state) work.

Real `db` processes against real DB directories; the job queries run on SQLite (written directly)
and on PostgreSQL (through a running server), as in test_cli.py.
"""

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import balsamdb
from balsamdb import job_queries
from balsamdb.exceptions import BadRequest, ConfigError, NotADBDirectory
from balsamdb.settings import DefaultDBWarning, source_checkout_default
from fixtures import cli_store as store  # noqa: F401  (the fixture: SQLite direct, PostgreSQL served)
from helpers import add_job, ok, refused

ROOT = Path(__file__).resolve().parent.parent


def listed(run_db, path, *args):
    """Names of the jobs `db ls --json ARGS` lists, in its order."""
    return [j["name"] for j in json.loads(ok(run_db("ls", "--path", path, "--json", *args)))]


# -- 1. a missing parent directory is not another user's --------------------------------------------------

@pytest.mark.parametrize("command", [
    ("job", "add", "sim-1"), ("job", "show", "abcd"), ("ls",), ("user", "ls"), ("dbserver",),
    ("serve", "--port", "0"),
])
def test_a_missing_parent_directory_says_it_does_not_exist(run_db, tmp_path, command):
    target = tmp_path / "x" / "campain" / "db"
    stderr = refused(run_db(*command, env={"BALSAM_DB_PATH": target}),
                     f"{target} does not exist, nor does {tmp_path / 'x'}", f"db init {target}",
                     absent=("another user",))
    assert len(stderr.strip().splitlines()) == 1, stderr


def test_copy_to_a_missing_parent_and_connect_say_it_does_not_exist(run_db, dbdir, tmp_path):
    target = tmp_path / "missing" / "parent" / "db"
    refused(run_db("copy", dbdir, target), f"{target} does not exist, nor does {tmp_path / 'missing'}",
            absent=("another user",))
    with pytest.raises(NotADBDirectory, match=re.escape(f"{target} does not exist, nor does")):
        balsamdb.connect(target)
    # Only the last component missing: as before, no "nor does".
    alone = tmp_path / "db-typo"
    with pytest.raises(NotADBDirectory) as caught:
        balsamdb.connect(alone)
    assert caught.value.message == f"{alone} does not exist; create it with: db init {alone}"


# -- 2. a forgotten export BALSAM_DB_PATH --------------------------------------------------------------------

CHECKOUT_NOTE = "Note: using default_db/ of the source checkout"


@pytest.mark.skipif(source_checkout_default() is None, reason="runs from a source checkout (its default_db/)")
def test_the_default_db_directory_is_noted_once_per_process(run_db):
    result = run_db("which", env={"BALSAM_DB_PATH": None})
    ok(result)
    assert result.stderr.count(CHECKOUT_NOTE) == 1, result.stderr
    assert f"{source_checkout_default()}; set BALSAM_DB_PATH to choose" in result.stderr
    # Named in any way: no note.
    named = run_db("which", env={"BALSAM_DB_PATH": "/tmp/some/db"})
    assert "Note:" not in named.stderr, named.stderr
    # Three times in one process (a script driving the CLI): once.
    code = ("from balsamdb.cli.main import main\n"
            "for _ in range(3):\n"
            "    main(['which'], standalone_mode=False)\n")
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    env["BALSAMDB_SETTINGS"] = "/nonexistent/settings.json"
    three = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    ok(three)
    assert three.stdout.count("chosen by:     default_db/ of the source checkout") == 3, three.stdout
    assert three.stderr.count(CHECKOUT_NOTE) == 1, three.stderr


def test_require_explicit_db_refuses_the_fallback(run_db, tmp_path, dbdir, monkeypatch):
    message = "no DB directory is named and require_explicit_db is on"
    for command in (("which",), ("ls",), ("job", "add", "sim-1")):
        refused(run_db(*command, env={"BALSAMDB_REQUIRE_EXPLICIT_DB": "1"}), message, "set BALSAM_DB_PATH")
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"require_explicit_db": True}))
    refused(run_db("ls", env={"BALSAMDB_SETTINGS": settings}), message)
    # A named directory is fine.
    assert "No jobs yet." in ok(run_db("ls", env={"BALSAMDB_REQUIRE_EXPLICIT_DB": "1", "BALSAM_DB_PATH": dbdir}))
    # The library: a job script.
    monkeypatch.delenv("BALSAM_DB_PATH", raising=False)
    monkeypatch.setenv("BALSAMDB_SETTINGS", str(tmp_path / "none.json"))
    with pytest.raises(ConfigError, match=message):
        balsamdb.connect(require_explicit_db=True)
    monkeypatch.setenv("BALSAMDB_REQUIRE_EXPLICIT_DB", "yes")
    with pytest.raises(ConfigError, match=message):
        balsamdb.connect()
    with balsamdb.connect(dbdir) as db:
        assert db.jobs.count() == 0


def test_the_library_warns_when_it_falls_back(tmp_path, monkeypatch):
    monkeypatch.delenv("BALSAM_DB_PATH", raising=False)
    monkeypatch.setenv("BALSAMDB_SETTINGS", str(tmp_path / "none.json"))
    from balsamdb.settings import resolve_db_path

    with pytest.warns(DefaultDBWarning, match="set BALSAM_DB_PATH to choose"):
        resolve_db_path()


# -- 3. db user add with no terminal ------------------------------------------------------------------------

@pytest.mark.parametrize("stdin", ["pw\n", None])
def test_user_add_without_a_terminal_says_to_use_password_stdin(run_db, dbdir, stdin):
    def without_terminal(command, name):
        result = subprocess.run([sys.executable, "-m", "balsamdb.cli", "user", command, name, "--path", str(dbdir)],
                                input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
                                capture_output=True, text=True, timeout=60)
        stderr = refused(result, "no terminal to ask for the password", "--password-stdin",
                         f"db user {command} NAME --password-stdin", absent=("GetPassWarning", "Aborted"))
        assert result.returncode == 2, stderr

    without_terminal("add", "carol")
    assert "no users" in ok(run_db("user", "ls", "--path", dbdir))
    ok(run_db("user", "add", "carol", "--path", dbdir, "--password-stdin", input="pw\n"))
    assert "carol" in ok(run_db("user", "ls", "--path", dbdir))
    without_terminal("passwd", "carol")


# -- 6. hints that fit the error -----------------------------------------------------------------------------

def test_hints_fit_the_error(run_db, dbdir):
    stderr = refused(run_db("user", "grant", "nobodyuser", "P", "--create", "--path", dbdir),
                     "no user 'nobodyuser'; add one with: db user add nobodyuser", absent=("db ls", "db record ls"))
    assert stderr.strip() == "Error: no user 'nobodyuser'; add one with: db user add nobodyuser"
    refused(run_db("job", "show", "abcd0001-0000-4000-8000-000000000001", "--path", dbdir),
            "no job with id", "`db ls` lists the jobs", absent=("db record ls",))
    refused(run_db("record", "show", "P", "nolabel", "--path", dbdir),
            "no record 'nolabel'", "db record ls", absent=("`db ls`",))


# -- 7. the README's rec.json ----------------------------------------------------------------------------------

def test_the_readme_tour_shows_rec_json_and_it_works(run_db, dbdir, tmp_path):
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"\$ cat rec\.json\n(\{.*?\n\})\n", readme, re.S)
    assert shown, "the tour shows rec.json"
    (tmp_path / "rec.json").write_text(shown.group(1))
    record = json.loads(shown.group(1))
    assert {"label", "timestamp", "reason", "outcome", "duration", "tags"} <= set(record)
    assert "docs/http.md#the-record-document" in readme
    assert "## The record document" in (ROOT / "docs" / "http.md").read_text()
    added = ok(run_db("record", "add", "MyProject", "rec.json", "--path", dbdir))
    assert added.strip() in readme
    listing = ok(run_db("record", "ls", "MyProject", "--path", dbdir)).splitlines()
    tour = readme.split("$ db record ls MyProject\n", 1)[1].splitlines()
    assert listing[0].split() == tour[0].split() and listing[2].split() == tour[2].split(), (listing, tour[:3])


# -- 8. the test command's duration and the quick layer ------------------------------------------------------

def test_the_readme_gives_the_test_duration_and_a_quick_layer_that_leaves_out_slow_tests():
    readme = (ROOT / "README.md").read_text()
    assert "about 22 minutes" in readme and 'scripts/dev.py test -m "not slow"' in readme
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--collect-only", "-q",
                           "-m", "not slow", str(ROOT / "tests")], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_first_hour.py::test_hints_fit_the_error" in i for i in ids), ids[:5]
    assert any("test_cli.py::" in i and "sqlite3" in i for i in ids)
    slow = [i for i in ids if re.search(r"\[[^\]]*postgres", i) or "test_faults.py" in i or "test_packaging.py" in i]
    assert not slow, slow


# -- 9. plurals, and db serve on SIGTERM -------------------------------------------------------------------

def test_one_spooled_write_is_one_write(run_db, dbdir):
    env = {"BALSAMDB_REQUIRE_SERVER": "1"}
    assert "spooled" in ok(run_db("job", "add", "sim-1", "--path", dbdir, env=env))
    out = ok(run_db("spool", "--path", dbdir))
    assert f"1 write waits in {dbdir / 'spool' / 'new'}" in out, out
    ok(run_db("job", "add", "sim-2", "--path", dbdir, env=env))
    assert "2 writes wait in" in ok(run_db("spool", "--path", dbdir))


def test_serve_exits_at_once_on_sigterm(dbdir, tmp_path):
    from served import Served

    served = Served(dbdir, tmp_path)
    try:
        assert served.request("GET", "").status in (200, 401)
        pid = served.proc.pid
        # SIGTERM and SIGINT go to the main thread: every other thread blocks them (a worker that got one
        # left it waiting up to a second for the main loop's select).
        masks = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            masks[int(tid)] = int(re.search(r"^SigBlk:\s*([0-9a-f]+)", status, re.M).group(1), 16)
        blocked = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        others = {tid: mask for tid, mask in masks.items() if tid != pid}
        assert others and all(mask & blocked == blocked for mask in others.values()), masks
        assert masks[pid] & blocked == 0, masks
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        served.proc.wait(15)
        took = time.monotonic() - started
        assert served.proc.returncode == 0, served.output()
        assert took < 1.0, f"db serve took {took:.2f} s to exit on SIGTERM"
    finally:
        served.stop()


# -- db ls: --since/--until/--changed, --sort, --by-state ----------------------------------------------------

def test_ls_since_until_and_changed(run_db, store):
    a = add_job(run_db, store, "sim-a", "-w", "sweep")
    b = add_job(run_db, store, "sim-b", "-w", "sweep")
    assert b["created_at"] > a["created_at"]
    assert listed(run_db, store, "--since", "1h") == ["sim-a", "sim-b"]
    assert listed(run_db, store, "--since", str(b["created_at"])) == ["sim-b"]
    assert listed(run_db, store, "--until", str(b["created_at"])) == ["sim-a"]
    assert listed(run_db, store, "--until", "1h") == []
    assert listed(run_db, store, "--since", "2000-01-01", "--until", "2000-01-02 12:00") == []
    assert "No jobs match." in ok(run_db("ls", "--path", store, "--until", "1d"))
    ok(run_db("job", "modify", a["id"], "--path", store, "--state", "RUNNING"))
    changed = json.loads(ok(run_db("job", "show", a["id"], "--path", store, "--json")))["updated_at"]
    assert listed(run_db, store, "--since", str(changed), "--changed") == ["sim-a"]
    assert listed(run_db, store, "--since", str(changed)) == []
    refused(run_db("ls", "--path", store, "--since", "yesterday"), "'yesterday' is not understood", "1h", "2024-05-01")
    refused(run_db("ls", "--path", store, "--changed"), "--changed goes with --since or --until")
    refused(run_db("ls", "--path", store, "--since", "1h", "--until", "2h"), "is not before until")


def test_ls_sort(run_db, store):
    a = add_job(run_db, store, "b-job", "-w", "w2")
    add_job(run_db, store, "c-job", "-w", "w1", "--state", "READY")
    add_job(run_db, store, "a-job", "-w", "w3")
    ok(run_db("job", "modify", a["id"], "--path", store, "--state", "RUNNING"))
    assert listed(run_db, store) == ["b-job", "c-job", "a-job"]
    assert listed(run_db, store, "--sort", "-created") == ["a-job", "c-job", "b-job"]
    assert listed(run_db, store, "--sort", "-updated", "--limit", "1") == ["b-job"]
    assert listed(run_db, store, "--sort", "name") == ["a-job", "b-job", "c-job"]
    assert listed(run_db, store, "--sort", "workflow") == ["c-job", "b-job", "a-job"]
    assert listed(run_db, store, "--sort", "state") == ["a-job", "c-job", "b-job"]  # CREATED, READY, RUNNING
    assert listed(run_db, store, "--sort", "-state") == ["b-job", "c-job", "a-job"]
    refused(run_db("ls", "--path", store, "--sort", "size"), "'size' is not one of", "updated")
    with balsamdb.connect(store) as db:
        assert [j.name for j in db.jobs.filter(sort="-updated", since="1h")][0] == "b-job"
        with pytest.raises(BadRequest, match="cannot sort by 'size'"):
            db.jobs.filter(sort="size")


def test_ls_by_state(run_db, store):
    assert "No jobs yet." in ok(run_db("ls", "--path", store, "--by-state"))
    for name in ("s1", "s2", "s3"):
        add_job(run_db, store, name, "-w", "sweep")
    add_job(run_db, store, "a1", "-w", "analysis", "--state", "READY")
    first = listed(run_db, store, "--name", "s1")
    assert first == ["s1"]
    s1 = json.loads(ok(run_db("ls", "--path", store, "--json", "--name", "s1")))[0]["id"]
    for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
        ok(run_db("job", "modify", s1, "--path", store, "--state", state))
    s2 = json.loads(ok(run_db("ls", "--path", store, "--json", "--name", "s2")))[0]["id"]
    ok(run_db("job", "modify", s2, "--path", store, "--state", "RUNNING"))
    out = ok(run_db("ls", "--path", store, "--by-state")).splitlines()
    assert out[0].split() == ["workflow", "total", "CREATED", "READY", "RUNNING", "JOB_FINISHED"]
    assert out[2].split() == ["analysis", "1", "0", "1", "0", "0"]
    assert out[3].split() == ["sweep", "3", "1", "0", "1", "1"]
    counts = json.loads(ok(run_db("ls", "--path", store, "--by-state", "--json", "-w", "sweep")))
    assert counts == [{"workflow": "sweep", "state": "CREATED", "count": 1},  # states in pipeline order
                      {"workflow": "sweep", "state": "RUNNING", "count": 1},
                      {"workflow": "sweep", "state": "JOB_FINISHED", "count": 1}]
    assert "No jobs match." in ok(run_db("ls", "--path", store, "--by-state", "-w", "nothing"))


def _lines(proc):
    """A queue of the lines ``proc`` prints, read by a thread (so every wait has a deadline)."""
    lines = queue.Queue()

    def read():
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _wait_line(lines, pattern, deadline, seen):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=max(0.0, end - time.monotonic()))
        except queue.Empty:
            break
        seen.append(line)
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r} within {deadline} s; saw:\n{''.join(seen[-30:])}")


def test_ls_watch_refreshes_with_a_progress_bar_until_ctrl_c(run_db, store):
    ids = [add_job(run_db, store, name, "-w", "sweep")["id"] for name in ("s1", "s2")]
    add_job(run_db, store, "x1", "-w", "other")
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    proc = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "ls", "--path", str(store), "--watch",
                             "--interval", "0.2", "--by-state", "-w", "sweep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        lines = _lines(proc)
        _wait_line(lines, r"^sweep +0%\|.*\| 0/2 finished$", 30, seen)
        with balsamdb.connect(store) as db:
            for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
                db.jobs.update_state(ids[0], state)
            db.jobs.update_state(ids[1], "FAILED")
        bar = _wait_line(lines, r"^sweep +50%\|", 30, seen)
        assert bar.rstrip().endswith("| 1/2 finished, 1 failed"), bar
        assert not any(line.startswith("other") for line in seen), seen
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0, proc.stderr.read()
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr and "Aborted" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    refused(run_db("ls", "--path", store, "--watch", "--json"), "--watch is for people")


# -- db job show: the time in each state -------------------------------------------------------------------

def test_job_show_gives_the_time_in_each_state(run_db, store):
    job = add_job(run_db, store, "sim-1")
    ok(run_db("job", "modify", job["id"], "--path", store, "--state", "RUNNING", "-m", "on nid12"))
    out = ok(run_db("job", "show", job["id"][:6], "--path", store))
    history = out.split("history (time in each state):\n")[1].splitlines()
    assert re.match(r"^  \S+ \S+  CREATED +\d+\.\d s  created$", history[0]), history
    assert re.match(r"^  \S+ \S+  RUNNING +\d+\.\d s so far  on nid12$", history[1]), history
    assert re.match(r"^  total +\d+\.\d s so far$", history[2]), history
    shown = json.loads(ok(run_db("job", "show", job["id"], "--path", store, "--json")))
    created, running = shown["timeline"]
    assert created["state"] == "CREATED" and running["state"] == "RUNNING" and running["current"]
    assert created["seconds"] == pytest.approx(running["since"] - created["since"])
    assert created["until"] == running["since"] and running["until"] is None and running["seconds"] >= 0
    for state in ("RUN_DONE", "JOB_FINISHED"):
        ok(run_db("job", "modify", job["id"], "--path", store, "--state", state))
    out = ok(run_db("job", "show", job["id"], "--path", store))
    assert re.search(r"  JOB_FINISHED +\(final\)$", out, re.M), out
    assert "so far" not in out
    with balsamdb.connect(store) as db:
        timeline = db.jobs.timeline(job["id"])
    assert [e["state"] for e in timeline] == ["CREATED", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    assert timeline[-1]["seconds"] is None


# -- the library functions the CLI and the web pages share ----------------------------------------------

def test_timeline_parse_time_and_progress():
    history = [{"time": 100.0, "from_state": None, "to_state": "CREATED", "message": "created"},
               {"time": 160.0, "from_state": "CREATED", "to_state": "RUNNING", "message": "go"}]
    timeline = job_queries.timeline(history, now=400.0)
    assert [(e["state"], e["seconds"], e["current"]) for e in timeline] == [("CREATED", 60.0, False),
                                                                             ("RUNNING", 240.0, True)]
    assert job_queries.timeline([], now=1.0) == []
    now = 1_000_000.0
    assert job_queries.parse_time("90s", now) == now - 90
    assert job_queries.parse_time("30m", now) == now - 1800
    assert job_queries.parse_time("1h", now) == now - 3600
    assert job_queries.parse_time("2d ago", now) == now - 2 * 86400
    assert job_queries.parse_time("1W", now) == now - 7 * 86400
    assert job_queries.parse_time("1700000000.5") == 1700000000.5
    assert job_queries.parse_time("2024-05-01 14:30") == pytest.approx(
        time.mktime((2024, 5, 1, 14, 30, 0, 0, 0, -1)))
    for bad in ("yesterday", "1 fortnight", "-1h", ""):
        with pytest.raises(BadRequest, match="is not understood"):
            job_queries.parse_time(bad, now)
    progress = job_queries.progress([
        {"workflow": "w", "state": "RUNNING", "count": 2}, {"workflow": "w", "state": "JOB_FINISHED", "count": 3},
        {"workflow": "w", "state": "FAILED", "count": 1}, {"workflow": "a", "state": "CREATED", "count": 4}])
    assert list(progress) == ["a", "w"]
    assert {k: progress["w"][k] for k in ("total", "finished", "ended", "failed")} == \
        {"total": 6, "finished": 3, "ended": 4, "failed": 1}


def test_shell_completion_is_documented_and_works():
    readme = (ROOT / "README.md").read_text()
    assert '_DB_COMPLETE=bash_source db' in readme
    env = dict(os.environ, _DB_COMPLETE="bash_complete", COMP_WORDS="db ls --so", COMP_CWORD="2")
    proc = subprocess.run([str(Path(sys.executable).parent / "db")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "plain,--sort" in proc.stdout.splitlines(), proc.stdout + proc.stderr


def test_ls_watch_on_a_terminal_redraws_in_place(run_db, dbdir):
    import pty
    import select

    add_job(run_db, dbdir, "s1", "-w", "sweep")
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "BALSAM_DB_PATH" and not k.startswith("BALSAMDB_")}
    env.update(TERM="xterm", COLUMNS="72", LINES="24", PYTHONIOENCODING="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "ls", "--path", str(dbdir), "--watch",
                             "--interval", "0.2"], stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    screen = b""
    try:
        end = time.monotonic() + 30
        while screen.count(b"0/1 finished") < 2 and time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
        assert screen.count(b"0/1 finished") >= 2, screen.decode(errors="replace")
        assert screen.count(b"\x1b[2J") >= 2, screen  # each frame clears the screen first
        assert b"Traceback" not in screen, screen.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
