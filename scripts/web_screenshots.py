"""Take the screenshots of the web pages that docs/http.md shows (docs/img/web-*.png).

    python scripts/web_screenshots.py [--out docs/img]

Loads a small campaign into a fresh SQLite DB directory (300 records, 3,000 jobs over the last
three hours: the data of scripts/bench_web.py), starts ``db dbserver`` and ``db serve``, and
photographs each page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through
Selenium, offline).  Everything it starts is stopped in a ``finally``.
"""

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_web  # noqa: E402  (the data loader, next to this script)

from balsamdb.dbdir import DBDirectory  # noqa: E402
from balsamdb.passwords import hash_password  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900")


def chromium(profile):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = shutil.which("chromium")
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--max-height", type=int, default=1100)
    args = parser.parse_args()
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        sys.exit("needs Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    workdir = Path(tempfile.mkdtemp(prefix="web-screenshots-"))
    path = workdir / "db"
    serve = driver = None
    try:
        DBDirectory(path).init()
        bench_web.load(path, 300, 3000)
        if bench_web.db_cli("dbserver", "--path", path).returncode:
            sys.exit("db dbserver failed")
        import balsamdb

        with balsamdb.connect(path) as db:
            db.call("user_save", name="ada", password_hash=hash_password("ada-pass"), admin=True)
            db.call("permission_grant", project="P", user="ada")
            db.call("project_save", name="P", description="the convergence study: 300 runs of the solver")
            # two versions of one record, for the versions pages: saved, then run again with a parameter changed
            doc = db.call("record_get", project="P", label="run-00007")
            db.call("record_save", project="P", record=dict(doc, outcome="diverged at step 40"))
            doc["parameters"]["content"] = doc["parameters"]["content"].replace("p3 = ", "p3 = 1", 1)
            doc.update(outcome="converged after restart", duration=doc["duration"] + 12.5)
            db.call("record_save", project="P", record=doc)
        port = bench_web.free_port()
        serve = subprocess.Popen([sys.executable, "-m", "balsamdb.cli", "serve", "--path", str(path),
                                  "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        base = f"http://127.0.0.1:{port}/"
        token = base64.b64encode(b"ada:ada-pass").decode()
        deadline = time.monotonic() + 30
        while True:
            try:
                request = urllib.request.Request(base + "_balsamdb/jobs/?format=json&state=FAILED",
                                                 headers={"Authorization": f"Basic {token}"})
                failed = json.loads(urllib.request.urlopen(request, timeout=5).read())["jobs"][0]["id"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("db serve did not answer")
                time.sleep(0.1)  # bench-ok: poll for the port with a deadline
        driver = chromium(workdir / "profile")
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
        pages = {"projects": "", "records": "P/?tags=paper,gpu&sort=-duration",
                 "compare": "P/?compare=run-00007,run-00012", "record": "P/run-00007/",
                 "versions": "P/run-00007/?versions", "versions-compare": "P/run-00007/?versions&compare=1,2",
                 "jobs": "_balsamdb/jobs/", "job": f"_balsamdb/jobs/{failed}/"}
        args.out.mkdir(parents=True, exist_ok=True)
        for name, url in pages.items():
            max_height = args.max_height + (500 if name == "jobs" else 0)  # down to its charts
            driver.set_window_size(1280, max_height)
            driver.get(base + url)
            height = driver.execute_script(
                "return Math.max(...Array.from(document.body.children).map((e) => e.getBoundingClientRect().bottom))")
            chrome = max_height - driver.execute_script("return window.innerHeight")
            driver.set_window_size(1280, min(max_height, int(height) + 30 + chrome))
            target = args.out / f"web-{name}.png"
            driver.save_screenshot(str(target))
            print(f"{target} ({target.stat().st_size // 1024} KB)")
    finally:
        if driver is not None:
            driver.quit()
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(15)
        bench_web.db_cli("dbserver", "--stop", "--path", path)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
