"""Headless Chromium for the tests of the web pages, driven with Selenium.

Debian's ``chromium`` and ``chromium-driver`` (CI installs them: see .ci/run).  Nothing is
downloaded: Selenium is given the system's driver and runs offline.  Every browser a test
starts is quit by the fixture, whatever the test did.
"""

import base64
import os
import shutil
from pathlib import Path

import pytest
from helpers import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
#: where the test run writes a screenshot of each page it drives (git-ignored; docs/img holds the committed ones)
SCREENSHOTS = ROOT / "test-screenshots"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1000")
WAIT = 15.0  # seconds for anything a page should show


def _chromium():
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip_or_fail("the browser tests need selenium: pip install -e .[test]")
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        skip_or_fail("the browser tests need Debian's chromium and chromium-driver: "
                     "apt-get install chromium chromium-driver")
    return binary, driver


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium with a fresh profile; quit afterwards."""
    yield from _browser(tmp_path, javascript=True)


@pytest.fixture
def browser_without_js(tmp_path):
    """The same with JavaScript switched off: the pages must read and work without it."""
    yield from _browser(tmp_path, javascript=False)


def _browser(tmp_path, javascript):
    binary, driver_path = _chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never fetch a browser or a driver
    options = Options()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def log_in(driver, user, password):
    """Send HTTP Basic credentials with every request of ``driver`` (as a browser does once a person
    has answered its login dialog), fetches of the pages' script included."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def screenshot(driver, name):
    """Save what ``driver`` shows as ``test-screenshots/NAME.png`` (the page, up to 1600 pixels high)."""
    SCREENSHOTS.mkdir(exist_ok=True)
    height = driver.execute_script("return Math.min(document.documentElement.scrollHeight, 1600)")
    driver.set_window_size(1280, max(600, int(height) + 40))
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    return path


def wait_until(driver, condition, what, timeout=WAIT):
    """Wait for ``condition(driver)`` to be true; fail saying ``what`` and the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        text = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; the page shows:\n{text}") from None


def texts(driver, selector):
    """The text of every element matching the CSS ``selector``, read in one step of the page's own
    script: a section that refreshes itself may swap its elements between two WebDriver calls."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map((e) => e.textContent.trim())", selector)


def click(driver, by, value, timeout=WAIT):
    """Click the element found by ``(by, value)``, finding it again if a refresh replaced it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def attempt(d):
        try:
            d.find_element(by, value).click()
            return True
        except StaleElementReferenceException:
            return False
    return wait_until(driver, attempt, f"a clickable {value!r}", timeout)
