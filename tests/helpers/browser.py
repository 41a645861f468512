"""
A real browser for the browse page's tests: Debian's ``chromium`` driven
headless by Selenium through Debian's ``chromedriver`` (never a downloaded
driver), plus where each test's screenshot goes.

- L{require_chromium} skips when chromium or chromedriver is missing, and
  fails instead under CI (``CI`` set), where they must be installed.
- L{start_chromium} starts one headless browser with its own profile
  directory and without background networking (no updates, sync or
  telemetry: the tests work offline).
- L{artifact_path}: screenshots land in ``test-artifacts/browser/`` at the
  repository root (listed in .gitignore; CI keeps the folder as an artifact
  of the run), or under ``$IZREG_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import os
import re

import pytest

from tests.helpers.server import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-background-timer-throttling",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-extensions",
    "--disable-sync",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--no-first-run",
    "--no-pings",
    "--password-store=basic",
    "--window-size=1280,900",
]


def require_chromium() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if not missing:
        pytest.importorskip("selenium")
        return
    message = f"{', '.join(missing)} missing (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def start_chromium(profile_dir):
    """A headless Chromium (a selenium C{webdriver.Chrome}); the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile_dir}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    return driver


def artifact_path(name: str) -> str:
    """Where a test's screenshot C{name}.png goes (the folder is created)."""
    folder = os.environ.get("IZREG_TEST_ARTIFACTS") or os.path.join(REPO_ROOT, "test-artifacts")
    folder = os.path.join(folder, "browser")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".png")
