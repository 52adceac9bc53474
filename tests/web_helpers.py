"""What the web page's end-to-end tests share: a daemon with the web page on, and headless Chromium.

Chromium is Debian's (`apt-get install chromium`, which tests/run does as root);
Playwright drives it through `executable_path`, since Playwright's own browser
download cannot work offline.  Without either, the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("BGAGENTS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_config(port: int, extra: str = "") -> str:
    return f'[http]\nlisten = "127.0.0.1:{port}"\n' + extra


def start_web_daemon(bgd, port: int | None = None, extra: str = "", env: dict | None = None) -> str:
    """Start `bgd` with the web page on a fixed port (a restart keeps it); returns the base URL."""
    port = port or free_port()
    bgd.write_config(web_config(port, extra), web=True)
    bgd.start(extra_env=env)
    # The socket accepts before the daemon serves it; its first answer comes once the listener is up.
    http = bgd.rpc("daemon.status")["http"]
    assert http["listening"], http
    return f"http://127.0.0.1:{port}"


def login_url(bgd) -> str:
    result = bgd.ctl("web")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def chromium_or_skip() -> str:
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; tests/run does it as root)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    try:
        subprocess.run([CHROMIUM, "--version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"Chromium at {CHROMIUM} does not start: {exc}")
    return CHROMIUM


class Browser:
    """One headless Chromium with a page that records dialogs and console errors."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900):
        from playwright.sync_api import sync_playwright
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        self.context = self.browser.new_context(viewport={"width": width, "height": height})
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page = self.new_page()

    def new_page(self):
        page = self.context.new_page()
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def close(self) -> None:
        try:
            self.browser.close()
        finally:
            self._pw.stop()
