"""The web pages of `db serve`, driven in headless Chromium as a person would, and over plain HTTP.

`db serve` runs as a process in front of a DB directory whose write server runs; the browser is
Debian's Chromium through Selenium (tests/browser.py).  A screenshot of each page goes to
test-screenshots/ (git-ignored); docs/img/ holds the committed ones that docs/http.md shows.
"""

import re
from urllib.parse import quote

import pytest
from browser import (browser, browser_without_js, click, log_in, screenshot, texts,  # noqa: F401  (fixtures)
                     wait_until)
from served import HTML, PASSWORDS, Served
from fixtures import pg_dbdir  # noqa: F401  (a fixture: a path for a DB directory with its own cluster)
from records import sweep_record as record

import balsamdb
from balsamdb.passwords import hash_password

sqlite_only = pytest.mark.parametrize("backend", ["sqlite3"])


@pytest.fixture
def site(served_dbdir, tmp_path, request):
    """`db serve` on a DB directory with users ada (admin) and bob, and project P of ada."""
    with balsamdb.connect(served_dbdir) as db:
        db.call("user_save", name="ada", password_hash=hash_password(PASSWORDS["ada"]), admin=True)
        db.call("user_save", name="bob", password_hash=hash_password(PASSWORDS["bob"]))
        db.call("permission_grant", project="P", user="ada")
    served = Served(served_dbdir, tmp_path, "--create-race-window", "0")
    request.addfinalizer(served.stop)
    return served


def save_records(path, docs, project="P"):
    with balsamdb.connect(path) as db:
        for doc in docs:
            db.call("record_save", project=project, record=doc)


def rows(driver):
    return driver.find_elements("css selector", "table#records tbody tr")


def labels_shown(driver):
    return [row.find_element("css selector", "td[data-column=label]").text for row in rows(driver)]


# -- records: find ---------------------------------------------------------------------------------------

@sqlite_only
def test_find_records_by_tag_search_sort_and_page_in_a_browser(site, browser):
    save_records(site.path, [record(f"run-{i:03d}", i) for i in range(120)])
    log_in(browser, "ada", PASSWORDS["ada"])
    browser.get(site.base + "P/")
    counts = browser.find_element("id", "counts").text
    assert "records 1–50 of 120" in counts and "page 1 of 3" in counts, counts
    assert labels_shown(browser)[:2] == ["run-119", "run-118"], "newest first by default"
    screenshot(browser, "records")

    # a tag is a filter: click one in the table
    browser.find_element("css selector", "table#records a.tag[href*='tags=tens']").click()
    wait_until(browser, lambda d: "tags=tens" in d.current_url, "the tag's filter")
    assert "of 12" in browser.find_element("id", "counts").text
    assert all(label.endswith("0") for label in labels_shown(browser)), labels_shown(browser)
    browser.find_element("css selector", "a.tag.active").click()  # remove the filter again
    wait_until(browser, lambda d: "of 120" in d.find_element("id", "counts").text, "all records again")

    # search
    box = browser.find_element("css selector", "input[name=search]")
    box.clear()
    box.send_keys("sweep point 11")
    box.submit()
    wait_until(browser, lambda d: "search=" in d.current_url, "the search")
    assert sorted(labels_shown(browser)) == ["run-011", "run-110", "run-111", "run-112", "run-113", "run-114",
                                             "run-115", "run-116", "run-117", "run-118", "run-119"]

    # sort by duration: ascending, then descending by a second click on the column
    browser.get(site.base + "P/")
    browser.find_element("link text", "duration").click()
    wait_until(browser, lambda d: "sort=duration" in d.current_url, "ascending duration")
    assert labels_shown(browser)[0] == "run-000"
    browser.find_element("link text", "duration").click()
    wait_until(browser, lambda d: "sort=-duration" in d.current_url, "descending duration")
    assert labels_shown(browser)[:3] == ["run-119", "run-118", "run-117"]

    # the next page keeps the sort; its link holds the key of the last record shown, not a page number
    browser.find_element("css selector", "nav.pager a[rel=next]").click()
    wait_until(browser, lambda d: "after=" in d.current_url, "page 2")
    assert "records 51–100 of 120" in browser.find_element("id", "counts").text
    assert labels_shown(browser)[0] == "run-069" and "sort=-duration" in browser.current_url


@sqlite_only
def test_json_stays_what_smt_reads_unless_find_parameters_are_given(site):
    save_records(site.path, [record(f"run-{i:03d}", i) for i in range(60)])
    plain = site.request("GET", "P/", user="ada").json()
    assert len(plain["records"]) == 60 and "page" not in plain and "count" not in plain
    assert plain["records"][0].endswith("/P/run-059/"), "newest first, whole list, as smt reads it"
    paged = site.request("GET", "P/?page=2", user="ada").json()
    assert (paged["count"], paged["page"], paged["pages"], len(paged["records"])) == (60, 2, 2, 10)
    found = site.request("GET", "P/?search=point%205&sort=-duration", user="ada").json()
    assert [u.rsplit("/", 2)[1] for u in found["records"]] == ["run-059", "run-058", "run-057", "run-056",
                                                               "run-055", "run-054", "run-053", "run-052",
                                                               "run-051", "run-050", "run-005"]
    assert "page" not in found, "no paging unless ?page= is given"
    bad = site.request("GET", "P/?sort=document", user="ada")
    assert bad.status == 400 and "sort by one of" in bad.json()["error"]
    assert site.request("GET", "P/?page=0", user="ada").status == 400
    assert site.request("GET", "P/?search=x", user="bob").status == 404, "the project's permissions hold"
    assert site.request("GET", "P/?search=x").status == 401


# -- records: compare ------------------------------------------------------------------------------------

@sqlite_only
def test_tick_two_records_and_compare_them_in_a_browser(site, browser):
    save_records(site.path, [record(f"run-{i:03d}", i) for i in range(5)])
    log_in(browser, "ada", PASSWORDS["ada"])
    browser.get(site.base + "P/")
    button = browser.find_element("css selector", "button.compare")
    assert not button.is_enabled(), "compare needs two ticked records"
    for label in ("run-001", "run-003"):
        browser.find_element("css selector", f"input[name=compare][value='{label}']").click()
    assert button.is_enabled()
    button.click()
    wait_until(browser, lambda d: "compare=" in d.current_url, "the comparison")
    heads = [th.text for th in browser.find_elements("css selector", "table.compare thead th")]
    assert heads == ["field", "run-003", "run-001"], "in the list's order, newest first"

    def row(section, name):
        return browser.find_element("css selector", f"tbody[data-section={section}] tr[data-name='{name}']")

    alpha = row("parameters", "alpha")
    assert "differs" in alpha.get_attribute("class") and alpha.text.split()[-2:] == ["3", "1"]
    assert "changed" in alpha.find_elements("css selector", "td")[1].get_attribute("class")
    assert "differs" not in (row("parameters", "beta").get_attribute("class") or "")
    assert "differs" in row("outputs", "out-1.dat").get_attribute("class")
    assert "differs" not in (row("dependencies", "numpy").get_attribute("class") or "")
    screenshot(browser, "compare")


@sqlite_only
def test_compare_answers_the_differences_as_data(site):
    save_records(site.path, [record("a", 1), record("b", 1, version="0badc0de", script_arguments="other.txt",
                                                    dependencies=[{"name": "numpy", "version": "2.0.0"}])])
    answer = site.request("GET", "P/?compare=a,b", user="ada").json()
    assert answer["labels"] == ["a", "b"]
    differences = {(d["section"], d["name"]): d["values"] for d in answer["differences"]}
    assert differences == {("code", "version"): ["f4f0cc958cc8", "0badc0de"],
                           ("code", "arguments"): ["params.txt", "other.txt"],
                           ("dependencies", "numpy"): ["1.26.4", "2.0.0"]}
    # the form of a browser without JavaScript sends one parameter per ticked box
    assert site.request("GET", "P/?compare=a&compare=b", user="ada").json()["differences"] == answer["differences"]
    assert site.request("GET", "P/?compare=a", user="ada").status == 400
    missing = site.request("GET", "P/?compare=a,zz", user="ada")
    assert missing.status == 404 and "'zz'" in missing.json()["error"]


# -- escaping --------------------------------------------------------------------------------------------

@sqlite_only
def test_pages_escape_what_records_and_jobs_hold(site):
    evil = "<script>alert(1)</script>"
    save_records(site.path, [record(evil, 1, reason="<img src=x onerror=alert(2)>", tags=["<b>t</b>"]),
                             record("plain", 2)])
    with balsamdb.connect(site.path) as db:
        job = db.jobs.create(evil, workflow="<i>wf</i>", tags=["<u>x</u>"], description="<svg onload=alert(3)>")
    pages = [site.request("GET", "P/", user="ada", headers=HTML),
             site.request("GET", "P/?search=%3Cscript", user="ada", headers=HTML),
             site.request("GET", f"P/?compare={quote(evil)},plain", user="ada", headers=HTML),
             site.request("GET", "_balsamdb/jobs/", user="ada", headers=HTML),
             site.request("GET", f"_balsamdb/jobs/{job.id}/", user="ada", headers=HTML)]
    for page in pages:
        assert page.status == 200, page
        for raw in ("<script>", "<img", "<b>t", "<i>wf", "<u>x", "<svg onload"):
            assert raw not in page.text, (raw, page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[0].text and "&lt;b&gt;t&lt;/b&gt;" in pages[0].text
    assert "&lt;img src=x onerror=alert(2)&gt;" in pages[2].text
    assert "&lt;i&gt;wf&lt;/i&gt;" in pages[3].text and "&lt;svg onload=alert(3)&gt;" in pages[4].text


# -- jobs ------------------------------------------------------------------------------------------------

def test_jobs_page_shows_a_job_change_state_without_reloading(site, browser):
    with balsamdb.connect(site.path) as db:
        jobs = [db.jobs.create(f"sim-{i}", workflow="sweep", tags=["gpu"] if i % 2 else []) for i in range(6)]
        db.jobs.create("prep", workflow="setup")
        for job in jobs[:3]:
            for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
                db.jobs.update_state(job.id, state)
        watched = jobs[4]
    log_in(browser, "ada", PASSWORDS["ada"])
    browser.get(site.base + "_balsamdb/jobs/")

    def state_of(driver, job_id):
        found = texts(driver, f"tr[data-job='{job_id}'] td.state")
        return found[0] if found else None

    assert state_of(browser, watched.id) == "CREATED"
    assert texts(browser, "table.counts tbody th") == ["setup", "sweep"]
    browser.execute_script("window.notReloaded = true")
    with balsamdb.connect(site.path) as db:
        db.jobs.update_state(watched.id, "RUNNING", "started on node 7")
    wait_until(browser, lambda d: state_of(d, watched.id) == "RUNNING", "the job's new state, shown by polling")
    assert browser.execute_script("return window.notReloaded === true"), "the page was reloaded"
    assert texts(browser, "table.counts tr[data-workflow=sweep] td[data-state=RUNNING]") == ["1"]
    assert texts(browser, "figure.plot svg rect title"), "jobs finished per minute"
    wait_until(browser, lambda d: texts(d, "figure.plot polygon.held title") == ["CREATED: 3", "RUNNING: 1",
                                                                                "JOB_FINISHED: 3"],
               "the chart of the jobs in each state over time, with the new start")
    screenshot(browser, "jobs")

    # the filters of `db ls`: workflow, state, name glob, tag, since
    browser.find_element("css selector", "input[name=name]").send_keys("sim-*")
    browser.find_element("css selector", "input[name=tag]").send_keys("gpu")
    browser.find_element("css selector", "input[name=since]").send_keys("1h")
    browser.find_element("css selector", "form.filters button").click()
    wait_until(browser, lambda d: "tag=gpu" in d.current_url, "the filtered list")
    assert sorted(texts(browser, "table.jobs tbody tr td:first-child")) == ["sim-1", "sim-3", "sim-5"]

    # the job's page: its fields and its timeline, kept current too
    click(browser, "link text", "sim-1")
    wait_until(browser, lambda d: texts(d, "table.history tbody td.state"), "the job page")
    assert texts(browser, "table.history tbody td.state") == ["CREATED", "RUNNING", "RUN_DONE", "JOB_FINISHED"]
    screenshot(browser, "job")


@sqlite_only
def test_jobs_pages_are_for_admins_only(site):
    with balsamdb.connect(site.path) as db:
        job = db.jobs.create("one", workflow="w")
    anonymous = site.request("GET", "_balsamdb/jobs/", headers=HTML)
    assert anonymous.status == 401 and "WWW-Authenticate" in anonymous.headers
    assert site.request("GET", "_balsamdb/jobs/", user="bob").status == 403
    assert site.request("GET", f"_balsamdb/jobs/{job.id}/", user="bob").status == 403
    data = site.request("GET", "_balsamdb/jobs/?state=created", user="ada").json()
    assert data["counts"] == {"w": {"CREATED": 1}} and [j["name"] for j in data["jobs"]] == ["one"]
    timeline = site.request("GET", f"_balsamdb/jobs/{job.id}/", user="ada").json()["timeline"]
    assert [(t["state"], t["current"]) for t in timeline] == [("CREATED", True)]
    assert site.request("GET", "_balsamdb/jobs/00000000-0000-0000-0000-000000000000/", user="ada").status == 404
    bad = site.request("GET", "_balsamdb/jobs/?since=yesterday", user="ada")
    assert bad.status == 400 and "is not understood" in bad.json()["error"]
    assert site.request("GET", "_balsamdb/jobs/?state=NOPE", user="ada").status == 400
    with balsamdb.connect(site.path) as db:
        db.call("permission_grant", project="Q", user="bob")
    assert '_balsamdb/jobs/">all jobs</a>' in site.request("GET", "P/", user="ada", headers=HTML).text
    assert "all jobs" not in site.request("GET", "Q/", user="bob", headers=HTML).text


def test_pages_do_not_read_through_the_write_server(site):
    """The pages read on read-only connections, and so do the log-in's and the project's permission
    checks (see test_web_auth.py): the write server sees none of it (a jobs page reads the counts,
    the list and the charts' history; a record list two queries, a comparison one)."""
    save_records(site.path, [record("a", 1), record("b", 2)])
    with balsamdb.connect(site.path) as db:
        job = db.jobs.create("one", workflow="w")

    def server_requests():
        with balsamdb.connect(site.path) as db:
            return db.call("status")["requests"]

    before = server_requests()
    for _ in range(10):
        assert site.request("GET", "_balsamdb/jobs/?format=json", user="ada").status == 200
        assert site.request("GET", f"_balsamdb/jobs/{job.id}/?format=json", user="ada").status == 200
    jobs_pages = server_requests() - before - 1  # less the status request itself
    assert jobs_pages == 0, f"20 jobs pages sent {jobs_pages} requests to the write server"
    before = server_requests()
    for _ in range(10):
        assert site.request("GET", "P/?page=1", user="ada").status == 200
        assert site.request("GET", "P/?compare=a,b", user="ada").status == 200
    record_pages = server_requests() - before - 1
    assert record_pages == 0, f"20 record pages sent {record_pages} requests to the write server"


def test_read_only_connection_refuses_writes(any_dbdir):
    from balsamdb.server.http.reads import page_reader

    reader = page_reader(any_dbdir)
    assert reader.query(lambda db: db.execute_sql("select count(*) from job").fetchone()[0]) == 0
    # the database's own refusal (the message names the DB directory, whose test name says read_only)
    with pytest.raises(Exception, match=re.compile("readonly database|read-only transaction", re.I)):
        reader.query(lambda db: db.execute_sql("insert into project (name, description, public, created_at) "
                                             "values ('x', '', false, 0)"))


@sqlite_only
def test_the_column_chooser_remembers_its_choice(site, browser):
    save_records(site.path, [record("only", 1)])
    log_in(browser, "ada", PASSWORDS["ada"])
    browser.get(site.base + "P/")

    def reason_shown(driver):
        return driver.find_element("css selector", "td[data-column=reason]").is_displayed()

    assert reason_shown(browser) and not browser.find_element("css selector", "td[data-column=user]").is_displayed()
    browser.find_element("css selector", ".columns input[value=reason]").click()
    assert not reason_shown(browser)
    browser.refresh()
    wait_until(browser, lambda d: not d.find_element("css selector", ".columns").get_attribute("hidden"),
               "the column chooser")
    assert not reason_shown(browser), "the choice was forgotten on reload"
    assert not browser.find_element("css selector", ".columns input[value=reason]").is_selected()


def test_job_filters_read_what_db_ls_takes():
    from balsamdb.exceptions import BadRequest
    from balsamdb.server.http.job_pages import job_views

    assert job_views.job_filters("w", ["running"], "sim-*", ["gpu"], "2h", None, False, now=10_000.0) == {
        "workflow": "w", "state": ["RUNNING"], "name_like": "sim-*", "tags": ["gpu"], "created_after": 2800.0}
    assert job_views.job_filters(since="30m", until="10m", changed=True, now=10_000.0) == {
        "updated_after": 8200.0, "updated_before": 9400.0}
    assert job_views.job_filters(since="", until="") == {}
    with pytest.raises(BadRequest, match="not understood"):
        job_views.job_filters(since="yesterday")


def test_parameters_compare_line_by_line():
    from balsamdb.server.http.record_pages import compare, parameter_lines

    assert parameter_lines({"content": "a = 1\n# note\n[solver]\ntol: 1e-6\nfree text"}) == {
        "a": "1", "solver.tol": "1e-6", "line 5": "free text"}
    assert parameter_lines({"content": '{"a": 1, "b": {"c": [1, 2]}}'}) == {"a": "1", "b.c": "[1, 2]"}
    rows = compare([{"parameters": {"content": "a = 1\nb = 2"}}, {"parameters": {"content": "a = 1\nc = 3"}}])
    keyed = {r["name"]: (r["values"], r["differs"]) for r in rows if r["section"] == "parameters"}
    assert keyed == {"a": (["1", "1"], False), "b": (["2", None], True), "c": ([None, "3"], True)}


@sqlite_only
def test_pages_under_a_prefix_link_their_own_files(served_dbdir, tmp_path, request):
    with balsamdb.connect(served_dbdir) as db:
        db.call("user_save", name="ada", password_hash=hash_password(PASSWORDS["ada"]), admin=True)
    served = Served(served_dbdir, tmp_path, "--prefix", "/lab/")
    request.addfinalizer(served.stop)
    page = served.request("GET", "_balsamdb/jobs/", user="ada", headers=HTML)
    assert page.status == 200 and 'src="http://127.0.0.1:%d/lab/_balsamdb/static/balsamdb.js"' % served.port in page.text
    script = served.request("GET", "_balsamdb/static/balsamdb.js")
    assert script.status == 200 and "startRefresh" in script.text
    style = served.request("GET", "_balsamdb/static/balsamdb.css")
    assert style.status == 200 and style.headers["Content-Type"].startswith("text/css")


@sqlite_only
def test_long_program_output_is_folded_with_its_size(site):
    long_output = "".join(f"step {i}: <ok>\n" for i in range(100))
    save_records(site.path, [record("long", 1, stdout_stderr=long_output), record("short", 2)])
    page = site.request("GET", "P/long/", user="ada", headers=HTML).text
    assert f"<summary>101 lines, {len(long_output)} characters (show)</summary>" in page
    assert "step 99: &lt;ok&gt;" in page, "folded, not cut"
    assert "<details" not in site.request("GET", "P/short/", user="ada", headers=HTML).text


@sqlite_only
def test_the_pages_work_without_javascript(site, browser_without_js):
    browser = browser_without_js
    save_records(site.path, [record(f"run-{i:03d}", i) for i in range(3)])
    with balsamdb.connect(site.path) as db:
        db.jobs.create("sim-0", workflow="sweep")
    log_in(browser, "ada", PASSWORDS["ada"])
    browser.get(site.base + "P/")
    assert not browser.find_element("css selector", ".columns").is_displayed(), "the script did not run"
    assert browser.find_element("css selector", "button.compare").is_enabled()
    for label in ("run-000", "run-002"):
        browser.find_element("css selector", f"input[name=compare][value='{label}']").click()
    browser.find_element("css selector", "button.compare").click()
    wait_until(browser, lambda d: "compare=run-002&compare=run-000" in d.current_url, "the comparison")
    heads = [e.text for e in browser.find_elements("css selector", "table.compare thead th a")]
    assert heads == ["run-002", "run-000"]
    browser.get(site.base + "_balsamdb/jobs/")
    assert [e.text for e in browser.find_elements("css selector", "table.jobs tbody td:first-child")] == ["sim-0"]
    assert browser.find_element("css selector", "tr[data-workflow=sweep] td[data-state=CREATED]").text == "1"


def test_pages_read_on_after_their_postgres_cluster_restarts(pg_dbdir):
    """A DB directory with its own PostgreSQL cluster: postgres killed, restarted by the watchdog
    (perhaps on another port); the pages' read-only connection is opened again, once."""
    import os
    import signal

    from helpers import address, db_cli, wait_for

    from balsamdb.server.http.reads import page_reader

    db_cli("init", pg_dbdir, "--db-type", "postgres", check=True)
    db_cli("dbserver", "--path", pg_dbdir, check=True)
    with balsamdb.connect(pg_dbdir) as db:
        db.jobs.create("one", workflow="w")
    reader = page_reader(pg_dbdir)

    def jobs(database):
        return database.execute_sql("select count(*) from job").fetchone()[0]

    assert reader.query(jobs) == 1
    pid = address(pg_dbdir)["postgres"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (address(pg_dbdir).get("postgres") or {}).get("pid") not in (None, pid), 60,
             "postgres restarted by the watchdog")
    assert reader.query(jobs) == 1, "read on a connection opened again"
    with balsamdb.connect(pg_dbdir) as db:
        db.jobs.create("two", workflow="w")
    wait_for(lambda: reader.query(jobs) == 2, 60, "the job written after the restart, read")


@sqlite_only
def test_claims_dependencies_and_lost_runs_are_shown(site):
    """Issue 26 on the pages: the job page says who holds a job and until when, what a waiting job
    waits for (a FAILED parent blocks it) and its lost runs; the dashboard lists the holder and
    counts lost runs; the projects page links to the dashboard (for admins) and counts records;
    the finished-per-minute chart's axis fits a short campaign, with labels along it."""
    with balsamdb.connect(site.path) as db:
        parent = db.jobs.create("parent", workflow="w", state="READY")
        child = db.jobs.create("child", workflow="w", parents=[parent.id])
        db.jobs.update_state(parent.id, "FAILED", "node lost")
        held = db.jobs.create("held", workflow="w", state="READY")
        db.jobs.acquire(1, owner="launcher-7", lease=600, ids=[held.id])
        done = db.jobs.create("done", workflow="w", state="READY")
        for state in ("RUNNING", "RUN_DONE", "JOB_FINISHED"):
            db.jobs.update_state(done.id, state)
        db.records.save("P", record("r1", 1))
        db.records.save("P", record("r2", 2))
    page = site.request("GET", f"_balsamdb/jobs/{child.id}/", user="ada").json()
    assert page["owner"] is None and page["lost_runs"] == 0
    assert [(w["id"], w["blocked"]) for w in page["waiting_on"]] == [(parent.id, True)]
    html = site.request("GET", f"_balsamdb/jobs/{child.id}/", user="ada", headers=HTML).text
    assert "waiting on" in html and "blocked until it is restarted" in html
    page = site.request("GET", f"_balsamdb/jobs/{held.id}/", user="ada").json()
    assert page["owner"] == "launcher-7" and page["lease_expires"] > page["renewed_at"]
    dashboard = site.request("GET", "_balsamdb/jobs/", user="ada").json()
    assert dashboard["lost_runs"] == 0
    assert {j["name"]: j["owner"] for j in dashboard["jobs"]}["held"] == "launcher-7"
    html = site.request("GET", "_balsamdb/jobs/", user="ada", headers=HTML).text
    assert "launcher-7 (until" in html and "0 lost runs found" in html
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', html)
    assert len(ticks) >= 3, ticks  # a campaign of a minute: the axis spans 3 minutes, a label a minute
    projects = site.request("GET", "", user="ada", headers=HTML).text
    assert '_balsamdb/jobs/">Jobs dashboard</a>' in projects
    assert re.search(r'>P</a></td>\s*<td>[^<]*</td><td>[^<]*</td><td class="num">2</td>', projects), projects
    assert "Jobs dashboard" not in site.request("GET", "", user="bob", headers=HTML).text
