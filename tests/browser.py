"""Helpers for the browser end-to-end test: a real Streamlit server and headless Chromium.

- `require_browser()`: the Playwright module and Debian's Chromium, or a clean skip (a failure when
  `BYOL_REQUIRE_BROWSER=1`, as CI sets it).
- `StreamlitServer`: `streamlit run app.py` on a free port, bound to loopback (or to whatever the
  project's `.streamlit/config.toml` says), with its own runs and cache folders, waited on through `/_stcore/health`, and always ended with its whole process group
  (the training threads live inside it).
- `launch_chromium()`: headless Chromium with the flags this machine needs (no sandbox, no GPU, no
  background network).
- Streamlit-in-a-browser pieces: `set_number()`, `wait_idle()`, `progress_text()`.

Nothing here downloads a browser: Playwright only drives the Chromium that Debian installed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("BYOL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HEALTH_TIMEOUT = 60  # seconds for the server to answer /_stcore/health


def require_browser() -> None:
    """Skip the calling test when Playwright or Chromium is missing; fail instead under BYOL_REQUIRE_BROWSER=1."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package (pip install -r requirements.txt)")
    if not CHROMIUM.is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if not missing:
        return
    reason = "browser end-to-end test needs " + " and ".join(missing)
    if os.environ.get("BYOL_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + "; BYOL_REQUIRE_BROWSER=1 makes this a failure instead of a skip.", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StreamlitServer:
    """`streamlit run app.py` in a subprocess of its own process group; use as a context manager."""

    def __init__(
        self,
        runs_dir: Path,
        cache_dir: Path,
        log_path: Path,
        extra_env: dict[str, str] | None = None,
        address: str | None = "127.0.0.1",
    ):
        """`address` None leaves the listening address to the project's `.streamlit/config.toml`."""
        self.port = free_port()
        self.address = address
        self.url = f"http://127.0.0.1:{self.port}"
        self.runs_dir, self.cache_dir, self.log_path = Path(runs_dir), Path(cache_dir), Path(log_path)
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self._log: Any = None

    def env(self) -> dict[str, str]:
        """The environment the app runs in: its runs and cache folders, then `extra_env`. A command-line
        run started with it trains into the app's runs folder, so the app shows it."""
        return {**os.environ, "BYOL_RUNS_DIR": str(self.runs_dir), "BYOL_CACHE_DIR": str(self.cache_dir), **self.extra_env}

    def start(self) -> "StreamlitServer":
        env = self.env()
        env.setdefault("PYTHONUNBUFFERED", "1")
        command = [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.headless",
            "true",
            "--server.port",
            str(self.port),
            *(["--server.address", self.address] if self.address is not None else []),
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
            "--server.runOnSave",
            "false",
        ]
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop() ends it and anything it started
        )
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with code {self.process.returncode} before it was healthy:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as response:
                    if response.read().decode().strip() == "ok":
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"streamlit did not answer {self.url}/_stcore/health within {HEALTH_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """End the server's process group: SIGTERM, then SIGKILL after 10 s. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    def __enter__(self) -> "StreamlitServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def browser_page(server: StreamlitServer, viewport: dict[str, int], timeout_ms: int, failure_shot: Path) -> Iterator[Any]:
    """A headless Chromium page whose waits (and `expect`'s) last `timeout_ms`. When the body fails, a
    screenshot goes to `failure_shot` and the server log's tail is printed before the error goes on."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport=viewport)
            page.set_default_timeout(timeout_ms)
            expect.set_options(timeout=timeout_ms)
            try:
                yield page
            except BaseException:
                try:
                    page.screenshot(path=str(failure_shot), full_page=True)
                finally:
                    print(f"--- streamlit log (tail) ---\n{server.log_tail()}")
                raise
        finally:
            browser.close()


# --- Streamlit in a browser ----------------------------------------------------------------------
def wait_idle(page: Any, timeout_ms: int = 60_000) -> None:
    """Wait until the app has finished its current script run (the 'Running...' status is gone)."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            if (!app) return false;
            const running = document.querySelector('[data-testid="stStatusWidget"]');
            return !running || running.offsetParent === null;
        }""",
        timeout=timeout_ms,
    )


def set_number(page: Any, key: str, value: float, timeout_ms: int = 60_000) -> None:
    """Type `value` into the st.number_input with key `key` and commit it (Enter), then wait for the rerun."""
    box = page.locator(f".st-key-{key} input")
    box.wait_for(state="visible", timeout=timeout_ms)
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function(
        "([selector, wanted]) => { const e = document.querySelector(selector); return e && Number(e.value) === wanted; }",
        arg=[f".st-key-{key} input", float(value)],
        timeout=timeout_ms,
    )
    wait_idle(page, timeout_ms)


def select_option(page: Any, key: str, option: str, attempts: int = 5) -> None:
    """Pick `option` in the st.selectbox with key `key`: open its combobox, click the option.

    A rerun that lands while the list is open redraws the widget and closes the list, so this
    tries again until the box shows the option.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    combobox = page.locator(f".st-key-{key}").get_by_role("combobox")
    for _ in range(attempts):
        wait_idle(page)
        combobox.click()
        try:
            page.get_by_role("option", name=option, exact=True).click(timeout=10_000)
            page.wait_for_function(
                "([selector, wanted]) => { const e = document.querySelector(selector); return e && e.value === wanted; }",
                arg=[f".st-key-{key} input[role=combobox]", option],
                timeout=10_000,
            )
        except PlaywrightTimeout:  # the list closed under us
            page.keyboard.press("Escape")
            continue
        wait_idle(page)
        return
    raise AssertionError(f"could not pick {option!r} in the selectbox {key!r} after {attempts} tries")


def keyed_button(page: Any, key: str) -> Any:
    """The st.button with key `key`.

    Not `.st-key-<key> button`: Streamlit 1.67 draws each button twice (one copy without an
    accessible name, for layout), so that selector matches two elements; the role keeps the real one.
    """
    return page.locator(f".st-key-{key}").get_by_role("button")


def progress_text(page: Any) -> str:
    """The text of the page's first progress bar ('' when there is none)."""
    return page.evaluate(
        "() => { const e = document.querySelector('[data-testid=\"stProgress\"]'); return e ? e.innerText : ''; }"
    )


def screenshot(page: Any, folder: Path, name: str) -> Path:
    path = Path(folder) / f"{name}.png"
    page.mouse.move(0, 0)  # no hover tooltip over the picture
    page.screenshot(path=str(path), full_page=True)
    return path
