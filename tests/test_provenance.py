"""Provenance captured by the run itself (issue 27): `db record run` (a command) and
`balsamdb.capture` (a Python main) write Sumatra records linked to their job, with the server
restarted during a run and stopped (the record spooled); the links in the CLI; the PROV-JSON
and RO-Crate exports read back by the `prov` and `rocrate` libraries."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import db_cli, kill_everything, wait_for

import balsamdb

SIM = textwrap.dedent("""\
    import os, sys, time
    import yaml  # a dependency that the record names with its version
    open("started", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists("go"):          # the test restarts the server meanwhile
        if time.monotonic() > deadline:
            sys.exit("no go file within 60 s")
        time.sleep(0.02)  # wait-ok: the run waits for the test's signal, with a deadline
    data = open(sys.argv[1]).read()
    os.makedirs("results", exist_ok=True)
    open("results/out.txt", "w").write(data.upper())
    print("simulated", len(data), "bytes")
    print("a warning", file=sys.stderr)
""")

MAIN = textwrap.dedent("""\
    import sys
    import balsamdb

    @balsamdb.capture(project="sweep", inputs=["in.csv"], reason="second run")
    def main():
        open("summary.txt", "w").write("done")
        print("python main ran")
        sys.exit(2)

    main()
""")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def git(cwd, *args):
    subprocess.run(["git", "-c", "user.email=ada@example.org", "-c", "user.name=ada", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def work(tmp_path):
    """A git working tree with a committed script, then changed (a dirty tree), and an input."""
    wd = tmp_path / "work"
    wd.mkdir()
    (wd / "sim.py").write_text(SIM)
    (wd / "main.py").write_text(MAIN)
    (wd / "params.yaml").write_text("steps: 12\n")
    git(wd, "init", "-q", ".")
    git(wd, "add", "sim.py", "main.py", "params.yaml")
    git(wd, "commit", "-qm", "the model")
    (wd / "sim.py").write_text(SIM + "# tuned after the commit\n")
    (wd / "in.csv").write_text("a,b\n1,2\n")
    return wd


def test_capture_links_and_exports_with_real_processes(dbdir, work, tmp_path, request):
    pytest.importorskip("prov")
    pytest.importorskip("rocrate")
    pytest.importorskip("yaml")
    request.addfinalizer(lambda: kill_everything(dbdir))
    request.addfinalizer(lambda: db_cli("dbserver", "--stop", "--path", dbdir))
    db_cli("dbserver", "--path", dbdir, check=True)
    env = dict(os.environ, BALSAM_DB_PATH=str(dbdir), BALSAMDB_REQUIRE_SERVER="1")
    with balsamdb.connect(dbdir) as db:
        job = db.jobs.create("sim-1", workflow="sweep")
        db.jobs.update_state(job.id, "RUNNING")

    # 1. a command, while the server is restarted under it: its record is saved live at the end
    run = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "record", "run", "sweep", "--job", job.id[:8],
                            "--parameters", "params.yaml", "--", sys.executable, "sim.py", "in.csv"],
                           cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    request.addfinalizer(lambda: run.poll() is None and run.kill())
    wait_for(lambda: (work / "started").exists() or run.poll() is not None, 60, "the command to start")
    db_cli("dbserver", "--stop", "--path", dbdir, check=True)
    db_cli("dbserver", "--path", dbdir, check=True)
    (work / "go").write_text("")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert "simulated 8 bytes" in out and "a warning" in err  # passed through as it came

    with balsamdb.connect(dbdir) as db:
        (first,) = db.records.of_job(job.id)
        record = db.records.get("sweep", first["label"])
    assert first["run"] == 1 and first["exit_status"] == 0
    assert record["label"].endswith(f"_{job.id[:8]}_r1")
    assert record["balsamdb"]["job"] == {"id": job.id, "workflow": "sweep", "name": "sim-1", "run": 1}
    assert record["repository"]["type"] == "GitRepository" and record["repository"]["url"] == str(work)
    assert len(record["version"]) == 40 and "+# tuned after the commit" in record["diff"]
    assert record["main_file"] == "sim.py" and record["script_arguments"] == "in.csv"
    assert record["executable"]["name"] == "Python" and record["executable"]["version"]
    assert record["parameters"] == {"content": "steps: 12\n", "type": "YAMLParameterSet"}
    assert any(d["name"] == "yaml" and d["version"] not in ("", "unknown") for d in record["dependencies"])
    inputs = {k["path"]: k for k in record["input_data"]}
    assert inputs["in.csv"]["metadata"]["sha256"] == sha256(work / "in.csv")
    assert inputs["in.csv"]["digest"] == hashlib.sha1((work / "in.csv").read_bytes()).hexdigest()  # Sumatra's own
    outputs = {k["path"]: k for k in record["output_data"]}
    assert set(outputs) == {"results/out.txt", "go", "started"}
    assert outputs["results/out.txt"]["metadata"]["sha256"] == sha256(work / "results/out.txt")
    # both streams, in the order the command wrote them (a line of one may be cut by the other)
    assert all(part in record["stdout_stderr"] for part in ("simulated", "8 bytes", "a warning"))
    platform = record["platforms"][0]
    assert platform["cpu_count"] >= 1 and platform["memory_bytes"] > 0 and platform["python_version"]
    assert record["duration"] > 0 and record["outcome"] == ""
    from sumatra.recordstore.serialization import build_record  # Sumatra's own reader takes it as its own
    assert build_record(record).label == record["label"]

    # 2. a Python main after a restart of the job, with no server: the record is spooled, then applied
    with balsamdb.connect(dbdir) as db:
        db.jobs.update_state(job.id, "RUN_ERROR")
        db.jobs.update_state(job.id, "RESTART_READY")
        db.jobs.update_state(job.id, "RUNNING")
    db_cli("dbserver", "--stop", "--path", dbdir, check=True)
    main = subprocess.run([sys.executable, "main.py", "--fast"], cwd=work, capture_output=True, text=True,
                          env=dict(env, BALSAMDB_JOB_ID=job.id, BALSAMDB_JOB_NAME="sim-1",
                                   BALSAMDB_JOB_WORKFLOW="sweep"), timeout=120)
    assert main.returncode == 2, main.stderr
    spooled = list((Path(dbdir) / "spool" / "new").iterdir())
    assert len(spooled) == 1, spooled
    db_cli("dbserver", "--path", dbdir, check=True)
    with balsamdb.connect(dbdir) as db:
        runs = wait_for(lambda: len(db.records.of_job(job.id)) == 2 and db.records.of_job(job.id), 30,
                        "the spooled record of the second run")
        second = db.records.get("sweep", runs[1]["label"])
    assert runs[0]["label"] != runs[1]["label"]  # a restarted job's records have distinct labels
    # with no server the job process read the store itself (a local read-only connection): the run
    # number is known, and the label says it
    assert second["balsamdb"]["job"]["run"] == 2 and second["label"].endswith(f"_{job.id[:8]}_r2")
    assert second["outcome"] == "failed: exit status 2" and second["balsamdb"]["exit_status"] == 2
    assert second["script_arguments"] == "--fast" and second["main_file"] == "main.py"
    assert "python main ran" in second["stdout_stderr"]
    assert [k["path"] for k in second["output_data"]] == ["summary.txt"]
    assert any(d["name"] == "balsamdb" for d in second["dependencies"])

    # 3. the links, both ways, in the CLI
    env_cli = dict(os.environ, BALSAM_DB_PATH=str(dbdir))
    listed = json.loads(db_cli("record", "ls", "--job", job.id[:8], "--json", env=env_cli, check=True).stdout)
    assert [r["label"] for r in listed] == [r["label"] for r in runs]
    shown = db_cli("job", "show", job.id[:8], env=env_cli, check=True).stdout
    assert "records (2):" in shown and f"sweep/{runs[0]['label']}" in shown
    used = json.loads(db_cli("record", "find", "--sha256", sha256(work / "in.csv"), "--role", "input", "--json",
                             env=env_cli, check=True).stdout)
    assert sorted(u["label"] for u in used) == sorted(r["label"] for r in runs) and {u["job"] for u in used} == {job.id}
    made = json.loads(db_cli("record", "find", "--file", "results/out.txt", "--role", "output", "--json",
                             env=env_cli, check=True).stdout)
    assert [m["label"] for m in made] == [runs[0]["label"]]
    bad = db_cli("record", "find", "--sha256", "xyz", env=env_cli)
    assert bad.returncode == 1 and "64 hexadecimal digits" in bad.stderr

    # 4. exports, read back by the standards' own libraries
    from prov.model import ProvDocument
    from rocrate.rocrate import ROCrate

    prov_file = tmp_path / "job.prov.json"
    db_cli("export", prov_file, "--format", "prov-json", "--job", job.id, env=env_cli, check=True)
    prov_doc = ProvDocument.deserialize(content=prov_file.read_text(), format="json")
    kinds = {}
    for item in prov_doc.get_records():
        kinds.setdefault(type(item).__name__, []).append(item)
    assert len(kinds["ProvActivity"]) == 2
    entity_ids = {str(e.identifier) for e in kinds["ProvEntity"]}
    assert f"sha256:{sha256(work / 'in.csv')}" in entity_ids and f"job:{job.id}" in entity_ids
    assert {"ProvUsage", "ProvGeneration", "ProvAssociation", "ProvDerivation"} <= set(kinds)
    crate_dir = tmp_path / "crate"
    db_cli("export", crate_dir, "--format", "ro-crate", "--workflow", "sweep", "--with-files", env=env_cli, check=True)
    crate = ROCrate(crate_dir)
    actions = [e for e in crate.get_entities() if e.type == "CreateAction"]
    assert len(actions) == 2 and {a["actionStatus"] for a in actions} == {
        "http://schema.org/CompletedActionStatus", "http://schema.org/FailedActionStatus"}
    assert crate.root_dataset["conformsTo"].id == "https://w3id.org/ro/wfrun/process/0.5"
    copied = crate_dir / "files" / "sweep" / runs[0]["label"] / "results" / "out.txt"
    assert copied.read_text() == "A,B\n1,2\n"
    referenced = tmp_path / "crate-ref"
    db_cli("export", referenced, "--format", "ro-crate", "--record", f"sweep/{runs[0]['label']}", env=env_cli,
           check=True)
    ids = {e.id for e in ROCrate(referenced).get_entities()}
    assert (work / "in.csv").as_uri() in ids and not (referenced / "files").exists()


def test_a_big_record_is_cut_to_fit_with_markers():
    from balsamdb.provenance import record_doc

    doc = {"label": "x", "stdout_stderr": "o" * 50000, "diff": "d" * 200000, "dependencies": [],
           "input_data": [], "output_data": [{"path": f"f{i}", "digest": "0" * 40, "metadata": {}}
                                             for i in range(2000)]}
    record_doc.fit(doc, 64 * 1024, caps={"stdout_stderr": 10000, "diff": None})
    size = len(json.dumps(doc, separators=(",", ":")))
    assert size <= 64 * 1024 - record_doc.ENVELOPE_ROOM
    assert doc["stdout_stderr"].startswith("[balsamdb: 40000 of 50000 characters of the stdout_stderr cut")
    assert doc["stdout_stderr"].endswith("o" * 100)  # the tail is what is kept of the output
    assert "characters of the diff cut (to fit max_request_bytes)" in doc["diff"]
    assert any(c.startswith("diff:") for c in doc["balsamdb"]["cut"])


def test_schema_7_links_records_on_both_backends_and_upgrades_an_older_store(served_dbdir):
    """Saves, replaces and deletes keep the link rows in step (through the write server, SQLite and
    PostgreSQL); an upgrade to schema 7 makes the links of records saved before it, idempotently."""
    from balsamdb import migrations, models
    from balsamdb.dbdir import DBDirectory
    from balsamdb.settings import load_settings

    job_id = "0f0e0d0c-0b0a-4009-8807-060504030201"
    record = {"label": "old", "timestamp": "2026-01-01 00:00:00", "balsamdb": {"job": {"id": job_id, "run": 3}},
              "input_data": [{"path": "a.csv", "digest": "x", "metadata": {"sha256": "AB" * 32, "size": 4}},
                             {"path": "p" * 2000, "digest": "x", "metadata": {}}],  # too long to index: not linked
              "output_data": [{"path": "b.h5", "digest": "y", "metadata": {"size": 9}}]}
    with balsamdb.connect(served_dbdir) as db:
        db.records.save("p", dict(record, label="gone"))
        db.records.save("p", record)
        db.records.save("p", dict(record, output_data=[]))  # a replace relinks
        db.records.delete("p", "gone")
        assert [(r["label"], r["run"]) for r in db.records.of_job(job_id)] == [("old", 3)]
        assert [(f["label"], f["role"], f["size"]) for f in db.records.find_files(sha256="ab" * 32)] == [
            ("old", "input", 4)]
        assert db.records.find_files(path="b.h5") == []
        assert db.records.find_files(sha256="ab" * 32, role="output") == []  # an input only
        assert [f["role"] for f in db.records.find_files(path="a.csv", role="input")] == ["input"]
        with pytest.raises(balsamdb.BadRequest, match="give sha256 or path"):
            db.records.find_files()
    database = DBDirectory(served_dbdir).open_database(load_settings(), busy_timeout=30)
    database.connect()
    try:
        with database.bind_ctx(models.MODELS):
            models.RecordJob.delete().execute()
            models.RecordFile.delete().execute()
            models.SchemaVersion.update(version=6).execute()
        done = migrations.upgrade(database)
        assert any("schema 6 -> 7" in line for line in done)
        with database.bind_ctx(models.MODELS):
            assert [(r.job_id, r.run) for r in models.RecordJob.select()] == [(job_id, 3)]
            assert [(f.role, f.path, f.sha256) for f in models.RecordFile.select()] == [("input", "a.csv", "ab" * 32)]
        assert migrations.upgrade(database) == []  # idempotent
    finally:
        database.close()


def test_capture_never_lists_the_db_directory_as_an_output(tmp_path, monkeypatch):
    """A Python main that writes to the store while it runs, in a working directory that holds the
    DB directory: the record's outputs are the files the run made, not the database's (its SQLite
    file and WAL change with every write) (broken: the DB directory not skipped by the walk)."""
    from balsamdb.dbdir import DBDirectory

    DBDirectory(tmp_path / "db").init()
    monkeypatch.chdir(tmp_path)

    @balsamdb.capture(project="p", path=tmp_path / "db")
    def main():
        with balsamdb.connect(tmp_path / "db") as db:  # no server: SQLite directly, under the working directory
            db.jobs.create("made-during-the-run", workflow="w")
        (tmp_path / "summary.txt").write_text("ok")

    main()
    with balsamdb.connect(tmp_path / "db") as db:
        (record,) = db.records.list("p")
    assert [k["path"] for k in record["output_data"]] == ["summary.txt"], record["output_data"]


def test_db_run_record_links_the_job_and_its_restart(dbdir, tmp_path):
    """`db run --record` (no server: SQLite directly) records each run of a job under its own label,
    names the record in the job's data, and `db job show` lists both runs."""
    env = dict(os.environ, BALSAM_DB_PATH=str(dbdir))
    with balsamdb.connect(dbdir) as db:
        job = db.jobs.create("solver", workflow="wf", state="READY")
    script = "import sys; open('out.dat', 'w').write('x' * 10); print('step'); sys.exit(int(sys.argv[1]))"
    failed = db_cli("run", job.id, "--record", "proj", "--", sys.executable, "-c", script, "3", env=env)
    assert failed.returncode == 3, failed.stderr
    with balsamdb.connect(dbdir) as db:
        db.jobs.update_state(job.id, "RESTART_READY")
    done = db_cli("run", job.id[:8], "--record", "proj", "--max-digest-bytes", "4", "--", sys.executable, "-c",
                  script, "0", env=env)
    assert done.returncode == 0, done.stderr
    with balsamdb.connect(dbdir) as db:
        runs = db.records.of_job(job.id)
        data = db.jobs.get(job.id).data
        last = db.records.get("proj", runs[1]["label"])
    assert [(r["run"], r["exit_status"]) for r in runs] == [(1, 3), (2, 0)]
    assert [r["label"][-3:] for r in runs] == ["_r1", "_r2"]
    assert data["run"]["record"] == {"project": "proj", "label": runs[1]["label"]}
    (out,) = last["output_data"]
    assert out["path"] == "out.dat" and out["metadata"]["size"] == 10 and "sha256" not in out["metadata"]
    assert out["metadata"]["digest_skipped"] == "larger than 4 bytes" and "step" in last["stdout_stderr"]
    shown = db_cli("job", "show", job.id, env=env, check=True).stdout
    assert "records (2):" in shown and "exit 3" in shown


def test_the_pages_show_files_digests_and_the_job_both_ways(dbdir):
    """The record page lists inputs and outputs with SHA-256 and links its job; the job page lists
    its records; the jobs page counts finished jobs with a record; no literal "None"; the list's
    compare button sits in the column of the tick boxes."""
    import base64

    from balsamdb.passwords import hash_password
    from balsamdb.server.http import create_app

    with balsamdb.connect(dbdir) as db:
        db.users.save("ada", password_hash=hash_password("pw"), admin=True)
        db.users.grant("ada", "P")
        job = db.jobs.create("sim-1", workflow="sweep", state="READY")
        for state in ("RUNNING", "RUN_DONE"):
            db.jobs.update_state(job.id, state)
        db.jobs.create("sim-2", workflow="sweep")
        db.records.save("P", {"label": "r1", "timestamp": "2026-01-02 03:04:05", "repository": None,
                              "script_arguments": None, "balsamdb": {"job": {"id": job.id, "name": "sim-1",
                                                                             "workflow": "sweep", "run": 1}},
                              "input_data": [{"path": "in.csv", "digest": "x",
                                              "metadata": {"sha256": "ab" * 32, "size": 7}}],
                              "output_data": [{"path": "out.h5", "digest": "y",
                                               "metadata": {"sha256": "cd" * 32, "size": 9}}]})
        db.records.save("P", {"label": "r0", "timestamp": "2026-01-01 00:00:00"})
    client = create_app(dbdir).test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(b"ada:pw").decode()}
    page = client.get("/P/r1/?format=html", headers=auth).get_data(as_text=True)
    assert f"_balsamdb/jobs/{job.id}/\"" in page and "run 1" in page
    assert "ab" * 32 in page and "cd" * 32 in page and "<td>in.csv</td>" in page
    assert ">None<" not in page
    job_page = client.get(f"/_balsamdb/jobs/{job.id}/?format=html", headers=auth).get_data(as_text=True)
    assert '/P/r1/"' in job_page and 'id="job-records"' in job_page
    listing = client.get("/_balsamdb/jobs/?format=json", headers=auth).get_json()
    assert (listing["finished"], listing["finished_with_record"]) == (1, 1)
    records = client.get("/P/?format=html", headers=auth).get_data(as_text=True)
    assert records.index('class="compare"') < records.index('name="compare"')
