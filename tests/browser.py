"""Drive the Gradio demos in a real headless browser: the system Chromium through Playwright.

Playwright's own browser download is not used (it needs network access); the Debian `chromium`
package is (`apt-get install -y chromium`). Apps are started as users start them, with
`python -m ...` in a subprocess on 127.0.0.1 and a free port, and stopped by their own pid.
Screenshots go to `outputs/test_artifacts/` in the checkout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "outputs" / "test_artifacts"
CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")

__all__ = ["ARTIFACTS_DIR", "chromium_executable", "free_port", "running_app", "browser_page"]


def chromium_executable() -> str:
    """Path of the system Chromium (env `CHROMIUM_PATH` first); a test failure says how to install it."""
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        return configured
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no Chromium found for the browser tests: install the Debian package (apt-get install -y chromium) "
        "or set CHROMIUM_PATH"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"the app exited with {process.returncode} before serving:\n{log.read_text()[-4000:]}"
            )
        with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    pytest.fail(f"the app did not serve {url} within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextlib.contextmanager
def running_app(module: str, args: Sequence[str], log: Path, timeout: float = 180.0) -> Iterator[str]:
    """Run `python -m module args --host 127.0.0.1 --port P`; yield its URL; stop it afterwards."""
    port = free_port()
    command = [sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_http(url, process, log, timeout)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def browser_page(url: str) -> Iterator[object]:
    """A Playwright page of headless Chromium, opened at `url`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_executable(), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            # Gradio keeps connections open, so "network idle" may never come: wait for the app instead.
            page.goto(url, wait_until="load", timeout=60_000)
            page.locator(".gradio-container").first.wait_for(timeout=60_000)
            yield page
        finally:
            browser.close()
