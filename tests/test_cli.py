"""The `db` command line, run as real processes against real DB directories.

Commands that touch the store run on SQLite (written directly, no server) and on PostgreSQL
(through a running server: PostgreSQL has no direct mode); see the ``store`` fixture.
"""

import json
import socket
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlparse

import click
import pytest

from balsamdb.migrations import SCHEMA_VERSION

import balsamdb
from balsamdb.cli.main import main
from fixtures import cli_store as store  # noqa: F401  (the fixture: SQLite direct, PostgreSQL served)
from helpers import add_job, ok, refused

JOB_A = "abcd0001-0000-4000-8000-000000000001"
JOB_B = "abcd0002-0000-4000-8000-000000000002"

RECORD = {
    "label": "20240101-120000", "timestamp": "2024-01-01 12:00:00", "reason": "first try",
    "outcome": "converged", "duration": 12.5, "tags": ["paper"], "main_file": "sim.py",
    "version": "abc123", "user": "Ada <ada@example.org>",
    "parameters": {"content": "T = 300", "type": "SimpleParameterSet"},
}


def table_rows(stdout):
    """Rows of a printed table (after the header and the dashes), split on runs of spaces."""
    lines = stdout.strip().splitlines()
    assert set(lines[1]) <= {"-", " "}, stdout
    return [line.split() for line in lines[2:]]


# -- the command tree ----------------------------------------------------------

def _walk(command, path=("db",)):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, path + (name,))


def test_every_command_has_help_with_an_example():
    walked = list(_walk(main))
    names = {" ".join(p) for p, _ in walked}
    assert {"db init", "db which", "db ls", "db job add", "db job ls", "db job show", "db job modify",
            "db job rm", "db record add", "db record ls", "db record show", "db record tag",
            "db record rm", "db dbserver"} <= names
    lacking = [" ".join(p) for p, command in walked if "Example" not in (command.help or "")]
    assert not lacking, f"commands whose help has no Example block: {lacking}"


def test_help_version_and_console_scripts(run_db):
    out = ok(run_db("-h"))
    for name in ("init", "which", "ls", "job", "record", "dbserver"):
        assert name in out
    assert "Example:" in ok(run_db("job", "add", "-h"))
    assert "--path" in ok(run_db("record", "rm", "--help"))
    assert balsamdb.__version__ in ok(run_db("--version"))
    bindir = Path(sys.executable).parent
    for script in ("db", "balsamdb"):
        found = subprocess.run([str(bindir / script), "--version"], capture_output=True, text=True, timeout=60)
        assert found.returncode == 0 and balsamdb.__version__ in found.stdout, found.stderr


# -- db init -----------------------------------------------------------------------

def test_init_creates_a_private_db_directory(run_db, tmp_path):
    target = tmp_path / "new" / "db"
    out = ok(run_db("init", target))
    assert f"created DB directory {target}" in out
    assert "secret" in out and "schema 0 -> 1" in out
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE((target / "secret").stat().st_mode) == 0o600
    assert (target / "db.sqlite3").is_file()
    assert "sqlite3" in ok(run_db("which", "--path", target))


def test_init_json_and_default_path_from_environment(run_db, tmp_path):
    target = tmp_path / "envdb"
    report = json.loads(ok(run_db("init", "--json", env={"BALSAM_DB_PATH": target})))
    assert report["path"] == str(target)
    assert report["db_type"] == "sqlite3"
    assert any("created DB directory" in a for a in report["actions"])
    assert (target / "balsamdb.json").is_file()


def test_init_again_keeps_rows_and_says_it_is_current(run_db, store, backend):
    job = add_job(run_db, store, "keep-me")
    out = ok(run_db("init", store, "--db-type", backend))
    assert f"already a current {backend} DB directory" in out
    report = json.loads(ok(run_db("init", "--path", store, "--db-type", backend, "--json")))
    assert report["actions"] == [out.strip()]
    assert [j["id"] for j in json.loads(ok(run_db("ls", "--path", store, "--json")))] == [job["id"]]


def test_init_refuses_a_file(run_db, tmp_path):
    target = tmp_path / "a-file"
    target.write_text("hello")
    refused(run_db("init", target), "is a file", "choose a directory path")
    assert target.read_text() == "hello"


def test_init_refuses_a_non_empty_directory_that_is_not_a_db_directory(run_db, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    refused(run_db("init", target), "non-empty directory", "choose an empty or new path")
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_init_refuses_an_unknown_db_type(run_db, tmp_path):
    refused(run_db("init", tmp_path / "x", "--db-type", "mysql"), "--db-type", "sqlite3", "postgres", code=2)
    assert not (tmp_path / "x").exists()


def test_init_refuses_a_different_db_type_for_an_existing_directory(run_db, dbdir):
    refused(run_db("init", dbdir, "--db-type", "postgres"), "already a sqlite3 DB directory")


# -- db init --db-type postgres --url (an existing PostgreSQL server) ------------------------

def _fresh_database(pg_cluster):
    """The URL of a new, empty database on the session's cluster (with its password)."""
    from helpers import fresh_database_url

    return fresh_database_url(pg_cluster)


def test_init_postgres_url_uses_the_server_and_keeps_the_password_private(run_db, tmp_path, pg_cluster):
    url = _fresh_database(pg_cluster)
    password = urlparse(url).password
    target = tmp_path / "labdb"
    result = run_db("init", target, "--db-type", "postgres", "--url", url)
    out = ok(result)
    redacted = url.replace(f":{password}@", ":***@")
    assert f"created DB directory {target} (postgres" in out
    assert f"uses the PostgreSQL server {redacted}" in out
    assert "schema 0 -> 1" in out
    assert password not in result.stdout + result.stderr
    assert stat.S_IMODE((target / "postgres_url").stat().st_mode) == 0o600
    assert (target / "postgres_url").read_text().strip() == url
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert not (target / "db.sqlite3").exists() and not (target / "pgdata").exists()

    report = json.loads(ok(run_db("which", "--path", target, "--json")))
    assert report["is_db_directory"] and report["db_type"] == "postgres"
    again = run_db("init", target, "--db-type", "postgres", "--json")
    assert json.loads(ok(again))["actions"] == [
        f"{target} is already a current postgres DB directory (schema {SCHEMA_VERSION})"]
    refused(run_db("init", target), "already a postgres DB directory")
    for shown in (run_db("which", "--path", target), again):
        assert password not in shown.stdout + shown.stderr


def test_init_postgres_url_with_a_wrong_password(run_db, tmp_path, pg_cluster):
    port = urlparse(pg_cluster).port
    target = tmp_path / "pg"
    result = run_db("init", target, "--db-type", "postgres", "--url",
                    f"postgresql://balsamdb:WRONG@127.0.0.1:{port}/x")
    err = refused(result, "password authentication failed", code=1)
    assert f"postgresql://balsamdb:***@127.0.0.1:{port}/x" in err and "WRONG" not in err
    assert not target.exists()


def test_init_postgres_url_of_an_unreachable_server(run_db, tmp_path):
    target = tmp_path / "pg"
    refused(run_db("init", target, "--db-type", "postgres", "--url", "postgresql://u:p@127.0.0.1:1/x"),
            "cannot connect to postgresql://u:***@127.0.0.1:1/x", code=1)
    assert not target.exists()


def test_init_postgres_url_that_is_not_a_url(run_db, tmp_path):
    target = tmp_path / "pg"
    refused(run_db("init", target, "--db-type", "postgres", "--url", "foo"),
            "foo is not a PostgreSQL URL", "postgresql://user:password@host:port/dbname", code=1)
    assert not target.exists()


def test_init_refuses_a_url_with_sqlite3(run_db, tmp_path, pg_cluster):
    target = tmp_path / "db"
    for args in (["--url", _fresh_database(pg_cluster)], ["--db-type", "sqlite3", "--url", "postgresql://u@h/x"]):
        result = run_db("init", target, *args)
        refused(result, "--url names a PostgreSQL server", "--db-type postgres")
        assert urlparse(pg_cluster).password not in result.stderr
    assert not target.exists()


# -- db which ------------------------------------------------------------------------

def test_which_precedence_path_over_environment_over_settings_file(run_db, tmp_path):
    from_settings, from_env, from_option = tmp_path / "s", tmp_path / "e", tmp_path / "o"
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"default_db_path": str(from_settings)}))
    env = {"BALSAMDB_SETTINGS": settings}

    report = json.loads(ok(run_db("which", "--json", env=env)))
    assert report["path"] == str(from_settings)
    assert report["source"] == f"default_db_path in {settings}"

    env["BALSAM_DB_PATH"] = from_env
    report = json.loads(ok(run_db("which", "--json", env=env)))
    assert (report["path"], report["source"]) == (str(from_env), "the BALSAM_DB_PATH environment variable")

    out = ok(run_db("which", "--path", from_option, env=env))
    assert out.splitlines()[0] == str(from_option)
    assert "chosen by:     the --path option" in out


def test_which_reports_a_missing_directory_and_how_to_make_it(run_db, tmp_path):
    target = tmp_path / "nowhere"
    out = ok(run_db("which", "--path", target))
    assert "does not exist" in out and f"db init {target}" in out
    report = json.loads(ok(run_db("which", "--path", target, "--json")))
    assert (report["exists"], report["is_db_directory"], report["server"]) == (False, False, None)


def test_which_reports_db_type_and_server_state(run_db, dbdir):
    report = json.loads(ok(run_db("which", "--path", dbdir, "--json")))
    assert report["is_db_directory"] and report["db_type"] == "sqlite3"
    assert (report["server"]["state"], report["server"]["health"]) == ("stopped", "down")
    assert "server:        stopped" in ok(run_db("which", "--path", dbdir))


def test_which_sees_through_an_address_file_of_a_dead_server(run_db, dbdir):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=60)
    (dbdir / "dbwriter_address").write_text(json.dumps({
        "state": "running", "address": "tcp://127.0.0.1:1", "host": socket.gethostname(),
        "server": {"pid": int(gone.stdout), "started": 0.0}, "db_type": "sqlite3",
    }))
    out = ok(run_db("which", "--path", dbdir))
    assert "server:        stale: the address file names tcp://127.0.0.1:1, but that server is gone" in out
    assert json.loads(ok(run_db("which", "--path", dbdir, "--json")))["server"]["health"] == "down"


def test_a_bad_settings_file_is_a_clear_error(run_db, tmp_path):
    settings = tmp_path / "settings.json"
    settings.write_text('{"default_db_pth": "/x"}')
    refused(run_db("which", env={"BALSAMDB_SETTINGS": settings}), "unknown keys", "default_db_path")


# -- db job add / ls / show / modify / rm -------------------------------------------------

def test_job_add_prints_id_and_working_directory(run_db, store):
    out = ok(run_db("job", "add", "sim-1", "--path", store, "--workflow", "sweep"))
    first, second = out.splitlines()
    job_id = first.strip()
    assert str(uuid.UUID(job_id)) == job_id
    workdir = Path(second.split("working directory: ")[1])
    assert workdir == store / "data" / "sweep" / f"sim-1_{job_id[:8]}"
    assert workdir.is_dir()


def test_job_add_json_has_every_field(run_db, store):
    job = add_job(run_db, store, "sim-2", "--workflow", "sweep", "--application", "python sim.py",
                  "--args", "--temperature 300", "--description", "a test", "--nodes", "2",
                  "--ranks-per-node", "4", "--threads-per-rank", "2", "--wall-time", "30",
                  "--env", "OMP_NUM_THREADS=2", "--env", "MODE=a=b", "--tag", "gpu", "--tag", "T300",
                  "--data", '{"T": 300, "grid": [1, 2]}', "--state", "ready")
    assert job["name"] == "sim-2" and job["workflow"] == "sweep"
    assert (job["application"], job["args"], job["description"]) == ("python sim.py", "--temperature 300", "a test")
    assert (job["num_nodes"], job["ranks_per_node"], job["threads_per_rank"]) == (2, 4, 2)
    assert job["wall_time_minutes"] == 30
    assert job["environ"] == {"OMP_NUM_THREADS": "2", "MODE": "a=b"}
    assert job["tags"] == ["gpu", "T300"]
    assert job["data"] == {"T": 300, "grid": [1, 2]}
    assert job["state"] == "READY"
    assert Path(job["working_directory"]).is_dir()


def test_job_add_with_parent_prefix_awaits_parents(run_db, store):
    parent = add_job(run_db, store, "parent")
    child = add_job(run_db, store, "child", "--parent", parent["id"][:6])
    assert child["parents"] == [parent["id"]]
    assert child["state"] == "AWAITING_PARENTS"


def test_ls_table_filters_and_json(run_db, store):
    assert "No jobs yet." in ok(run_db("ls", "--path", store))
    a = add_job(run_db, store, "sim-a", "-w", "sweep", "-a", "python sim.py", "--tag", "gpu")
    b = add_job(run_db, store, "sim-b", "-w", "sweep", "--state", "READY")
    c = add_job(run_db, store, "other", "-w", "analysis", "--tag", "gpu")

    out = ok(run_db("ls", "--path", store))
    assert out.splitlines()[0].split() == ["id", "name", "workflow", "application", "state", "created"]
    rows = table_rows(out)
    assert [r[0] for r in rows] == [a["id"][:8], b["id"][:8], c["id"][:8]]
    assert rows[0][1:6] == ["sim-a", "sweep", "python", "sim.py", "CREATED"]
    assert rows[1][1:4] == ["sim-b", "sweep", "READY"]

    def ids(*args):
        return [j["id"] for j in json.loads(ok(run_db("ls", "--path", store, "--json", *args)))]

    assert ids() == [a["id"], b["id"], c["id"]]
    assert ids("--workflow", "sweep") == [a["id"], b["id"]]
    assert ids("--state", "READY") == [b["id"]]
    assert ids("--state", "ready", "--state", "CREATED") == [a["id"], b["id"], c["id"]]
    assert ids("--name", "sim-*") == [a["id"], b["id"]]
    assert ids("--tag", "gpu") == [a["id"], c["id"]]
    assert ids("--tag", "gpu", "--workflow", "analysis") == [c["id"]]
    assert ids("--limit", "1") == [a["id"]]
    assert "No jobs match." in ok(run_db("ls", "--path", store, "--state", "RUNNING"))
    assert ok(run_db("job", "ls", "--path", store, "-w", "sweep")) == ok(run_db("ls", "--path", store, "-w", "sweep"))


def test_ls_uses_balsam_db_path(run_db, store):
    job = add_job(run_db, store, "from-env")
    assert job["id"][:8] in ok(run_db("ls", env={"BALSAM_DB_PATH": store}))


def test_job_show_by_prefix_with_history(run_db, store):
    job = add_job(run_db, store, "sim-1", "-w", "sweep", "-a", "python sim.py", "--tag", "gpu",
                  "--data", '{"T": 300}')
    ok(run_db("job", "modify", job["id"][:4], "--path", store, "--state", "RUNNING", "-m", "started on nid12"))
    out = ok(run_db("job", "show", job["id"][:4], "--path", store))
    assert f"id:                {job['id']}" in out
    assert "state:             RUNNING (started on nid12)" in out
    assert "application:       python sim.py" in out
    assert 'data:              {"T": 300}' in out
    assert f"working directory: {job['working_directory']}" in out
    history = out.split("history (time in each state):\n")[1].splitlines()
    assert "  CREATED " in history[0] and history[0].endswith(" s  created")
    assert "  RUNNING " in history[1] and history[1].endswith(" s so far  started on nid12")

    shown = json.loads(ok(run_db("job", "show", job["id"].upper(), "--path", store, "--json")))
    assert shown["id"] == job["id"] and shown["state"] == "RUNNING"
    assert [(h["from_state"], h["to_state"], h["message"]) for h in shown["history"]] == [
        (None, "CREATED", "created"), ("CREATED", "RUNNING", "started on nid12")]


def test_job_id_prefix_errors(run_db, store):
    with balsamdb.connect(store) as db:
        db.jobs.create("a", id=JOB_A)
        db.jobs.create("b", id=JOB_B)
    refused(run_db("job", "show", "abcd", "--path", store), "ambiguous", "2 jobs", "give more characters")
    assert json.loads(ok(run_db("job", "show", "abcd0002", "--path", store, "--json")))["id"] == JOB_B
    refused(run_db("job", "show", "ffff", "--path", store), "no job id starts with 'ffff'", "db ls")
    refused(run_db("job", "show", "abc", "--path", store), "not a job id", "4+ hex characters", code=2)
    refused(run_db("job", "show", "sim-1", "--path", store), "not a job id", code=2)
    missing = "00000000-0000-4000-8000-000000000000"
    refused(run_db("job", "show", missing, "--path", store), f"no job with id {missing}", "db ls")
    refused(run_db("job", "modify", missing, "--path", store, "--state", "READY"), "no job with id")


def test_job_modify_state_and_fields(run_db, store):
    job = add_job(run_db, store, "sim-1", "--tag", "old", "--nodes", "1")
    out = ok(run_db("job", "modify", job["id"], "--path", store, "--state", "READY", "--message", "inputs staged"))
    assert out.strip() == f"job {job['id'][:8]} (sim-1): CREATED -> READY"

    changed = json.loads(ok(run_db(
        "job", "modify", job["id"][:8], "--path", store, "--json", "--args", "--t 350", "--description", "rerun",
        "--tag", "new", "--tag", "hot", "--data", '{"T": 350}', "--nodes", "4", "--wall-time", "90",
        "--env", "A=1")))
    assert changed["state"] == "READY" and changed["state_message"] == "inputs staged"
    assert (changed["args"], changed["description"]) == ("--t 350", "rerun")
    assert changed["tags"] == ["new", "hot"]
    assert changed["data"] == {"T": 350}
    assert (changed["num_nodes"], changed["wall_time_minutes"], changed["environ"]) == (4, 90, {"A": "1"})
    tagged = json.loads(ok(run_db("ls", "--path", store, "--json", "--tag", "old")))
    assert tagged == []

    out = ok(run_db("job", "modify", job["id"], "--path", store, "--state", "RUNNING", "--args", "x"))
    assert "READY -> RUNNING" in out and "changed args" in out


def test_job_modify_refusals(run_db, store):
    job = add_job(run_db, store, "sim-1")
    refused(run_db("job", "modify", job["id"], "--path", store, "--state", "JOB_FINISHED"),
            "a job in state CREATED cannot move to JOB_FINISHED", "allowed:", "READY")
    refused(run_db("job", "modify", job["id"], "--path", store), "nothing to change", code=2)
    refused(run_db("job", "modify", job["id"], "--path", store, "-m", "why"), "--message goes with --state", code=2)
    refused(run_db("job", "modify", job["id"], "--path", store, "--state", "DONE"), "'DONE' is not one of", code=2)
    refused(run_db("job", "modify", job["id"], "--path", store, "--data", "{T: 1}"),
            "--data", "not valid JSON", "JSON object such as", code=2)
    refused(run_db("job", "modify", job["id"], "--path", store, "--nodes", "0"), "--nodes", code=2)
    refused(run_db("job", "modify", job["id"], "--path", store, "--env", "NOEQUALS"), "KEY=VALUE", code=2)
    after = json.loads(ok(run_db("job", "show", job["id"], "--path", store, "--json")))
    assert after["state"] == "CREATED" and len(after["history"]) == 1


def test_job_add_refusals(run_db, store):
    refused(run_db("job", "add", "x", "--path", store, "--data", "[1, 2]"), "JSON object", "not a list", code=2)
    refused(run_db("job", "add", "x", "--path", store, "--data", "{bad"), "not valid JSON", code=2)
    refused(run_db("job", "add", "x", "--path", store, "--state", "RUNNING"), "--state", code=2)
    refused(run_db("job", "add", "x", "--path", store, "--parent", "nope"), "not a job id", code=2)
    assert json.loads(ok(run_db("ls", "--path", store, "--json"))) == []


def test_job_rm_by_id_and_by_filter(run_db, store):
    a = add_job(run_db, store, "a", "-w", "sweep")
    b = add_job(run_db, store, "b", "-w", "sweep", "--state", "READY")
    c = add_job(run_db, store, "c", "-w", "sweep")
    d = add_job(run_db, store, "d", "-w", "keep")

    assert ok(run_db("job", "rm", a["id"][:6], "--path", store)).strip() == "removed 1 job"
    refused(run_db("job", "rm", "--path", store, "--workflow", "sweep"), "would remove 2 jobs", "--yes")
    assert len(json.loads(ok(run_db("ls", "--path", store, "--json")))) == 3
    assert json.loads(ok(run_db("job", "rm", "--path", store, "-w", "sweep", "-s", "READY", "--yes", "--json"))) == {
        "deleted": 1}
    assert ok(run_db("job", "rm", "--path", store, "-w", "sweep", "--yes")).strip() == "removed 1 job"
    assert [j["id"] for j in json.loads(ok(run_db("ls", "--path", store, "--json")))] == [d["id"]]
    assert not {b["id"], c["id"]} & {j["id"] for j in json.loads(ok(run_db("ls", "--path", store, "--json")))}
    refused(run_db("job", "rm", "--path", store), "give job ids", code=2)
    refused(run_db("job", "rm", d["id"], "--path", store, "-w", "keep"), "not both", code=2)


# -- db record -------------------------------------------------------------------------

def _save_records(run_db, dbdir, tmp_path):
    first = tmp_path / "first.json"
    first.write_text(json.dumps(RECORD))
    second = dict(RECORD, label="20240102-090000", timestamp="2024-01-02 09:00:00", tags=["draft"],
                  outcome="diverged", duration=3)
    assert ok(run_db("record", "add", "proj", first, "--path", dbdir)).strip() == (
        "saved new record 20240101-120000 in project proj")
    saved = json.loads(ok(run_db("record", "add", "proj", "-", "--path", dbdir, "--json",
                                 input=json.dumps(second))))
    assert saved == {"project": "proj", "label": "20240102-090000", "created": True}
    return second


def test_record_add_ls_show(run_db, store, tmp_path):
    second = _save_records(run_db, store, tmp_path)
    out = ok(run_db("record", "ls", "proj", "--path", store))
    assert out.splitlines()[0].split() == ["label", "timestamp", "tags", "outcome", "duration"]
    rows = table_rows(out)
    assert [r[0] for r in rows] == ["20240102-090000", "20240101-120000"]  # newest first
    assert rows[1] == ["20240101-120000", "2024-01-01", "12:00:00", "paper", "converged", "12.5", "s"]

    listed = json.loads(ok(run_db("record", "ls", "proj", "--path", store, "--json")))
    assert listed == [second, RECORD]
    assert [d["label"] for d in json.loads(ok(run_db("record", "ls", "proj", "-t", "paper", "--path", store,
                                                     "--json")))] == [RECORD["label"]]
    refused(run_db("record", "ls", "other", "--path", store), "project 'other' does not exist")  # not "No records"

    shown = ok(run_db("record", "show", "proj", RECORD["label"], "--path", store))
    assert json.loads(shown) == RECORD
    assert '\n  "label": "20240101-120000",' in shown  # pretty-printed, in the saved order
    assert json.loads(ok(run_db("record", "show", "proj", RECORD["label"], "--path", store, "--json"))) == RECORD

    again = json.loads(ok(run_db("record", "add", "proj", "-", "--path", store, "--json",
                                 input=json.dumps(dict(RECORD, outcome="re-analysed")))))
    assert again["created"] is False


def test_record_tag_and_rm(run_db, store, tmp_path):
    _save_records(run_db, store, tmp_path)
    out = ok(run_db("record", "tag", "proj", RECORD["label"], "--add", "final", "--add", "v2",
                    "--remove", "paper", "--path", store))
    assert out.strip() == "20240101-120000: final, v2"
    tags = json.loads(ok(run_db("record", "tag", "proj", RECORD["label"], "-r", "v2", "--json", "--path", store)))
    assert tags["tags"] == ["final"]
    assert [d["label"] for d in json.loads(ok(run_db("record", "ls", "proj", "--tag", "final", "--json",
                                                     "--path", store)))] == [RECORD["label"]]
    refused(run_db("record", "tag", "proj", RECORD["label"], "--path", store), "--add", code=2)

    refused(run_db("record", "rm", "proj", "--tag", "draft", "--path", store), "would remove 1 record", "--yes")
    assert ok(run_db("record", "rm", "proj", "--tag", "draft", "--yes", "--path", store)).strip() == "removed 1 record"
    refused(run_db("record", "rm", "proj", "nope", RECORD["label"], "--path", store),
            "no record 'nope'", "nothing was removed", "db record ls proj")
    assert ok(run_db("record", "rm", "proj", RECORD["label"], "--path", store)).strip() == "removed 1 record"
    assert json.loads(ok(run_db("record", "ls", "proj", "--json", "--path", store))) == []


def test_record_errors(run_db, store, tmp_path):
    refused(run_db("record", "show", "proj", "nope", "--path", store),
            "no record 'nope' in project 'proj'", "db record ls PROJECT")
    refused(run_db("record", "tag", "proj", "nope", "--add", "x", "--path", store), "no record 'nope'")
    refused(run_db("record", "add", "proj", "-", "--path", store, input="{not json"), "not valid JSON", code=2)
    refused(run_db("record", "add", "proj", "-", "--path", store, input="[1]"), "JSON object", code=2)
    refused(run_db("record", "add", "proj", tmp_path / "missing.json", "--path", store), "No such file", code=2)
    refused(run_db("record", "add", "proj", "-", "--path", store, input='{"timestamp": "x"}'),
            "record label must be a non-empty string")
    _save_records(run_db, store, tmp_path)
    ok(run_db("project", "set", "proj", "--write-once", "--path", store))
    refused(run_db("record", "add", "proj", "-", "--path", store, input=json.dumps(dict(RECORD, version="zzz"))),
            "write-once", "use another label")


# -- errors that apply to every command -------------------------------------------------

@pytest.mark.parametrize("command", [["ls"], ["job", "add", "x"], ["record", "ls", "p"], ["job", "show", "abcd"]])
def test_a_path_that_is_not_a_db_directory_says_to_run_init(run_db, tmp_path, command):
    target = tmp_path / "not-made"
    refused(run_db(*command, "--path", target), f"db init {target}")
    assert not target.exists()



@pytest.mark.parametrize("url", ["postgresql://u:p@127.0.0.1:notaport/x", "postgresql://u:p@127.0.0.1:99999/x",
                                 "postgresql://u:p@[::1/x"])
def test_init_refuses_malformed_urls_without_a_traceback(run_db, tmp_path, url):
    target = tmp_path / "pg"
    result = run_db("init", target, "--db-type", "postgres", "--url", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "PostgreSQL URL" in result.stderr or "unreadable URL" in result.stderr, result.stderr
    assert ":p@" not in result.stderr and not target.exists()
