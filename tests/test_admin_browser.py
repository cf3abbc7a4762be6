"""The live counters page in a real browser, against real demo processes on a real Redis.

Headless Chromium from Debian's ``chromium`` and ``chromium-driver`` packages,
driven by selenium with the driver's path given (selenium-manager never
downloads anything). Skipped, with the reason, only when those are not
installed: ``bash .ci/run`` installs them.

Set ``DRATELIMIT_SCREENSHOT=docs/admin_live.png`` to refresh the screenshot in
the docs; otherwise it goes to the test's temporary directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import ROOT, DemoServer, RedisServer, load, wait_for
from tests.helpers import wait_for_window

pytestmark = pytest.mark.cluster

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
USERNAME, PASSWORD = "operator", "a-test-only-password"
HITS = 24
# Hourly: a minute boundary during the test would start a new window.
RATE = "20/h"
CLIENT_IP = "127.0.0.1"
LIVE_PATH = "/admin/django_dratelimit/livecounters/"

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", **env},
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(autouse=True)
def one_window() -> None:
    """Never the last minute of an hour: every hit of the test counts in one window."""
    wait_for_window(3600, needed=60)


@pytest.fixture
def site(redis_db: RedisServer, tmp_path: Path) -> Iterator[list[DemoServer]]:
    """Two demo processes (uvicorn and gunicorn) on one Redis and one database, with a
    staff user who may reset."""
    env = {
        "REDIS_URL": redis_db.url,
        "DEMO_DATABASE": str(tmp_path / "db.sqlite3"),
        "DEMO_API_RATE": RATE,
        "DEMO_CLUSTER_RATE": "100/h",
        "DJANGO_DEBUG": "1",  # the admin's static files, and the page's script
        "DRATELIMIT_SYNC_INTERVAL": "0.05",
        "DRATELIMIT_ANTI_ENTROPY": "1.0",
        "DRATELIMIT_BUDGETS": "0",  # every hit counted: the page shows known totals
    }
    manage(env, "migrate", "--noinput")
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import Permission, User; "
        f"u = User.objects.create_user({USERNAME!r}, password={PASSWORD!r}, is_staff=True); "
        "u.user_permissions.add(Permission.objects.get(codename='reset_counters'))",
    )
    servers = [DemoServer("uvicorn", env), DemoServer("gunicorn", env)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="dratelimit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float = 30) -> Any:
    # Stale: the refresh replaced the table between finding a cell and reading it.
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )
    return wait.until(condition)


def row_of(driver: WebDriver, group: str, key: str) -> list[Any]:
    # The key as stored: decorators and rules count per limit ("k [20/3600s]", see scopes).
    rows = f'.dratelimit-group[data-group="{group}"] tr'
    selector = f'{rows}[data-key="{key}"], {rows}[data-key^="{key} ["]'
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def row_state(driver: WebDriver, group: str, key: str) -> tuple[list[str], str] | None:
    """The row's cell texts and its classes, read at once (a refresh may swap the table)."""
    rows = row_of(driver, group, key)
    if not rows:
        return None
    cells = [str(cell.text) for cell in rows[0].find_elements(By.CSS_SELECTOR, "th, td")]
    return cells, str(rows[0].get_attribute("class") or "")


def count_of(driver: WebDriver, group: str, key: str) -> str | None:
    rows = row_of(driver, group, key)
    return str(rows[0].find_element(By.CLASS_NAME, "dratelimit-count").text) if rows else None


def click_reset(driver: WebDriver, group: str, key: str) -> bool:
    rows = row_of(driver, group, key)
    if rows:
        rows[0].find_element(By.CLASS_NAME, "dratelimit-reset-key").click()
    return bool(rows)


def api_count(server: DemoServer) -> int:
    return int(server.state(group="api", key=CLIENT_IP, rate=RATE)["count"])


def test_staff_see_a_hot_bucket_live_and_reset_it_everywhere(
    site: list[DemoServer], browser: WebDriver, tmp_path: Path
) -> None:
    page, other = site
    # The demo's "api" rule (key "ip") and its /cluster/ view (a callable rate: no
    # known limit), counted on both processes.
    result = load(site, HITS, path="/api/hello/")
    assert (result["admitted"] + result["limited"], result["errors"]) == (HITS, 0)
    assert load(site, 10)["errors"] == 0
    wait_for(lambda: [api_count(s) for s in site] == [HITS, HITS], 15, "both to count 24")

    browser.get(f"http://127.0.0.1:{page.port}/admin/login/?next={LIVE_PATH}")
    browser.find_element(By.ID, "id_username").send_keys(USERNAME)
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    until(browser, lambda d: row_of(d, "api", CLIENT_IP) and row_of(d, "cluster", "shared"))

    cells, classes = until(browser, lambda d: row_state(d, "api", CLIENT_IP))
    assert cells[0].split(" [")[0] == CLIENT_IP  # shown with its limit; reset as a client
    assert cells[1:4] == [str(HITS), "20", "1h"]
    assert cells[4] == "0"  # synced: the processes agree
    assert cells[6] == "\u2014"  # budget mode: not built yet
    assert "dratelimit-over" in classes
    assert until(browser, lambda d: count_of(d, "cluster", "shared")) == "10"
    # Both processes, if not on the first look then on a refresh (a busy machine).
    until(
        browser, lambda d: "2 processes answered" in d.find_element(By.ID, "dratelimit-live").text
    )

    # The page refreshes itself from the JSON endpoint: new hits show up unreloaded.
    search = browser.find_element(By.ID, "dratelimit-search")
    load([other], 6, path="/api/hello/")
    until(browser, lambda d: count_of(d, "api", CLIENT_IP) == str(HITS + 6))
    assert search.is_displayed()  # the same document: not a reload
    screenshot = Path(os.environ.get("DRATELIMIT_SCREENSHOT") or tmp_path / "admin_live.png")
    assert browser.save_screenshot(str(screenshot))

    until(browser, lambda d: click_reset(d, "api", CLIENT_IP))
    until(browser, lambda d: d.find_elements(By.ID, "dratelimit-confirm"))
    confirm = browser.find_element(By.ID, "dratelimit-confirm").text
    assert confirm == f"Reset key {CLIENT_IP} in group api on every process?"
    browser.find_element(By.ID, "dratelimit-confirm-reset").click()

    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist .success"))
    message = browser.find_element(By.CSS_SELECTOR, ".messagelist .success").text
    assert f"Reset key '{CLIENT_IP}' in group 'api': 2 processes confirmed" in message
    assert row_of(browser, "api", CLIENT_IP) == []
    assert count_of(browser, "cluster", "shared") == "10"  # only that key
    assert [api_count(s) for s in site] == [0, 0]
