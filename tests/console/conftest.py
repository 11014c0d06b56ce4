"""A real `loglane run` of the shop on the embedded log and SQLite, and headless Chromium
(Debian's package, driven through its chromedriver by Selenium) to look at its console."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.processes import ROOT, Stack, child_environment

BROWSER = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
TOKEN = "console-test-token"
PATIENCE = 60.0  # seconds a page may take to show what a test waits for, on a loaded machine
SCREENSHOTS = "LOGLANE_CONSOLE_SCREENSHOTS"


@dataclass
class Server:
    """The running landscape: its URL, and where the test app's failure switch lives."""

    url: str
    broken: Path
    process: subprocess.Popen[bytes]
    output: Path

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("console")
    stack = Stack(folder)
    output = folder / "server.log"
    broken = folder / "broken"
    env = child_environment(LOGLANE_TEST_BROKEN=str(broken))
    with output.open("w") as sink:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "loglane", "run", "tests.console.app:landscape",
                "--port", "0", "--api-token", TOKEN,
                "--log", stack.log_url, "--db", stack.db_url,
            ],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        url = _served_url(process, output)
        _wait_until(lambda: _healthy(url), f"{url}/healthz answers", output)
        yield Server(url=url, broken=broken, process=process, output=output)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=60)


def _served_url(process: subprocess.Popen[bytes], output: Path) -> str:
    found: list[str] = []

    def announced() -> bool:
        assert process.poll() is None, f"loglane run exited:\n{output.read_text()[-4000:]}"
        match = re.search(r"http://127\.0\.0\.1:(\d+)", output.read_text())
        if match:
            found.append(match.group(0))
        return bool(found)

    _wait_until(announced, "loglane run says where it serves", output)
    return found[0]


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_until(condition: Callable[[], bool], what: str, output: Path) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within 120 s\n{output.read_text()}"
        time.sleep(0.05)


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from Debian's packages; scripts/chromium installs it when missing."""
    if not (Path(BROWSER).exists() and Path(DRIVER).exists()):
        subprocess.run([str(ROOT / "scripts" / "chromium")], check=True)
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def console(browser: WebDriver, server: Server) -> WebDriver:
    """The browser, logged in to the server's console (the session cookie kept)."""
    browser.get(f"{server.url}/ui")
    if "/ui/login" in browser.current_url:
        browser.find_element("id", "token").send_keys(TOKEN)
        browser.find_element("id", "login").click()
        wait(browser).until(lambda driver: "/ui/login" not in driver.current_url)
    return browser


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    return WebDriverWait(driver, PATIENCE, poll_frequency=0.1)


@pytest.fixture
def screenshot(browser: WebDriver, tmp_path: Path) -> Callable[[str], Path]:
    """Save what the browser shows as `<name>.png`: into the folder that
    LOGLANE_CONSOLE_SCREENSHOTS names (docs/console to refresh the docs), else a temp one."""
    folder = Path(os.environ.get(SCREENSHOTS) or tmp_path)

    def take(name: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.png"
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1280, max(900, min(int(height) + 140, 2400)))
        assert browser.save_screenshot(str(path)), f"no screenshot saved to {path}"
        browser.set_window_size(1280, 900)
        assert path.stat().st_size > 0
        return path

    return take
