"""A new user's first hour, the CLI part of issue 24 (items 11, 13, 14): each a real `db` process."""

import os
import shutil
import subprocess
import uuid

import pytest
from helpers import kill_everything, passable_dir, processes_for, skip_or_fail

import balsamdb
from balsamdb.exceptions import BadRequest, NotFound


def test_out_of_range_ports_are_refused_by_every_command(run_db, dbdir, tmp_path, request):
    """`db dbserver --port 80000` printed and published port 80000 and listened on 14464."""
    request.addfinalizer(lambda: kill_everything(dbdir))
    for args in (("dbserver", "--path", dbdir, "--port", "80000"),
                 ("serve", "--path", dbdir, "--port", "65536"),
                 ("relay", "--to", "http://a:b@127.0.0.1:9/", "--dir", tmp_path / "relay", "--port", "-1")):
        refused = run_db(*args, timeout=60)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert "is not in the range 0<=x<=65535" in refused.stderr and "--port" in refused.stderr, refused.stderr
    assert not processes_for(dbdir), "a server was started for a refused port"
    from balsamdb.dbdir import DBDirectory
    from balsamdb.exceptions import ConfigError
    from balsamdb.server.supervisor import control

    with pytest.raises(ConfigError, match="not a TCP port"):
        control.start(DBDirectory(dbdir), port=80000)


def test_grant_refuses_a_project_that_does_not_exist_and_so_does_the_record_listing(run_db, dbdir):
    """`db user grant ada Cmap` (a typo) made an empty project; `db.records.list("NoProj")` was []
    where `db record ls NoProj` said the project does not exist."""
    assert run_db("user", "add", "ada", "--password-stdin", "--path", dbdir, input="pw-of-ada\n").returncode == 0
    typo = run_db("user", "grant", "ada", "Cmap", "--path", dbdir)
    assert typo.returncode == 1 and "project 'Cmap' does not exist" in typo.stderr and "--create" in typo.stderr, \
        typo.stderr
    db = balsamdb.connect(dbdir)
    assert db.projects.list() == []
    made = run_db("user", "grant", "ada", "Cmap", "--create", "--path", dbdir)
    assert made.returncode == 0 and "may now use project Cmap" in made.stdout, made.stderr
    assert [p["name"] for p in db.projects.list()] == ["Cmap"]
    # one behaviour for a project that does not exist: NotFound in Python, one line in the CLI
    for call in (lambda: db.records.list("NoProj"), lambda: db.records.labels("NoProj")):
        with pytest.raises(NotFound, match="no project 'NoProj'"):
            call()
    assert db.records.list("Cmap") == []  # a project without records is an empty list
    listed = run_db("record", "ls", "NoProj", "--path", dbdir)
    assert listed.returncode == 1 and "project 'NoProj' does not exist" in listed.stderr


def test_messages_name_every_filter_quote_paths_and_point_to_record_add(run_db, dbdir, tmp_path):
    db = balsamdb.connect(dbdir)
    for call, keywords in ((lambda: db.jobs.filter(bogus=1), ("sort", "limit", "offset")),
                           (lambda: db.jobs.count(bogus=1), ()), (lambda: db.jobs.state_counts(bogus=1), ())):
        with pytest.raises(BadRequest) as refused:
            call()
        message = refused.value.message
        for name in ("workflow", "state", "tags", "since", "until", "changed") + keywords:
            assert name in message, (name, message)
    # a path with a trailing space: the command suggested can be pasted as shown
    spaced = tmp_path / "runs" / "db "
    spaced.parent.mkdir()
    answer = run_db("ls", "--path", spaced)
    assert f"create it with: db init '{spaced}'" in answer.stderr, answer.stderr
    # one record is not an export: db import says which command takes it
    record = tmp_path / "rec.json"
    record.write_text('{\n  "label": "r1",\n  "tags": []\n}\n')
    imported = run_db("import", record, "--path", dbdir)
    assert imported.returncode == 1 and f"add it with db record add PROJECT {record}" in imported.stderr, \
        imported.stderr


def _as_user(uid, gid, args):
    """(exit code, output) of `db ARGS` run in a forked child that became ``uid``: the interpreter
    is already loaded (root's Python may live where the user cannot read)."""
    from click.testing import CliRunner

    from balsamdb.cli.main import main

    CliRunner().invoke(main, args)  # load every module the command needs while still root
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            os.environ.update(HOME="/nonexistent", BALSAMDB_SETTINGS="/nonexistent/settings.json",
                              XDG_DATA_HOME="/nonexistent", XDG_CONFIG_HOME="/nonexistent")
            result = CliRunner().invoke(main, args)
            os.write(write_end, result.output.encode())
            code = result.exit_code
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        output = reader.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make and be a second user (CI runs as root)")
def test_a_second_user_gets_the_librarys_line_not_clicks(request):
    """`db ls --path P` of another user's DB directory said click's "Path ... is not readable"."""
    from balsamdb.dbdir import DBDirectory

    if shutil.which("useradd") is None:
        skip_or_fail("useradd is missing (package passwd)")
    base = passable_dir("bdb-second-")  # pytest's tmp_path is 700 all the way up
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    dbdir = base / "db"
    DBDirectory(dbdir).init()
    name = f"bdbt{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group", name],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    try:
        import pwd

        entry = pwd.getpwnam(name)
        code, output = _as_user(entry.pw_uid, entry.pw_gid, ["ls", "--path", str(dbdir)])
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
    assert code == 1 and "belongs to another user" in output and "is not readable" not in output, output
