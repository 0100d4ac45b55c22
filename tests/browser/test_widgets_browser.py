"""Notebook 05's widgets in a real browser: JupyterLab + headless Chromium, driven by Playwright.

Run with ``make test-browser`` (it sets CLIPEDU_BROWSER_TESTS=1). Needs Debian's ``chromium``
(``apt-get install chromium``; ``.ci/run`` installs it when missing) and the ``playwright`` Python
package (``pip install -e ".[browser]"``); it never downloads a browser.

The test copies the notebook into a temporary folder (the browser's autosave must not touch the
committed file), starts JupyterLab there on 127.0.0.1 with a token, opens the notebook, runs all
cells, then moves the widgets' sliders with the keyboard and checks that the readouts and the
plots change. Screenshots before and after go to ``build/browser/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

if os.environ.get("CLIPEDU_BROWSER_TESTS") != "1":
    pytest.skip("browser tests run with `make test-browser`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = "05_contrastive_loss.ipynb"
SHOTS = ROOT / "build" / "browser"
CHROMIUM = (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of the notebook; yields its URL and stops it by PID."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it with `apt-get install chromium`")
    base = tmp_path_factory.mktemp("lab")
    work = base / "work"
    work.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, work / NOTEBOOK)
    env = dict(os.environ)
    env.update(
        HOME=str(base / "home"), JUPYTER_CONFIG_DIR=str(base / "jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(base / "jupyter-runtime"), IPYTHONDIR=str(base / "ipython"),
        JUPYTERLAB_SETTINGS_DIR=str(base / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "lab-workspaces"),
        CLIPEDU_FAST="1", MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    # No "would you like news?" prompt over the notebook.
    notification = base / "lab-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port, token = _free_port(), "clipedu-browser-test"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(base / "lab.log", "w")
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (base / "lab.log").read_text()[-3000:]) from None
                time.sleep(0.5)
        yield f"{url}/lab/tree/{NOTEBOOK}?token={token}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def page(lab, tmp_path_factory):
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(lab)
        _wait_for_idle_kernel(page)
        _run_all(page)
        yield page
        browser.close()


def _kernel_status(page) -> str:
    return page.locator(".jp-StatusBar-TextItem:has-text('|')").first.inner_text(timeout=5_000)


def _wait_for_idle_kernel(page, timeout: float = 120) -> None:
    """The status bar reads "Python 3 (ipykernel) | Idle" once a kernel exists and is idle (the
    cell execution indicator reads idle even before there is a kernel, so it cannot be used)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if _kernel_status(page).strip().endswith("Idle"):
                return
        except Exception:
            pass
        time.sleep(0.5)
    raise AssertionError("the kernel never became idle")


def _run_all(page) -> None:
    page.locator(".jp-NotebookPanel").first.click()
    page.keyboard.press("Control+Shift+C")  # the command palette
    page.keyboard.type("Run All Cells")
    page.locator(".lm-CommandPalette-item:has-text('Run All Cells')").first.click()
    time.sleep(2)  # let the kernel turn busy before waiting for idle
    _wait_for_idle_kernel(page, timeout=300)


def _png(page, selector: str) -> str:
    return page.locator(f"{selector} img").first.get_attribute("src") or ""


def _text(page, selector: str) -> str:
    return page.locator(selector).first.text_content() or ""


def _press_slider(page, selector: str, key: str = "ArrowRight", times: int = 4) -> None:
    """Focus a slider's handle (ipywidgets 8: noUiSlider; 7: jQuery UI) and move it with the keyboard."""
    handle = page.locator(f"{selector} .noUi-handle, {selector} .ui-slider-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(times):
        page.keyboard.press(key)
        time.sleep(0.1)


def _wait_for_change(read, before: str, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = read()
        if now and now != before:
            return now
        time.sleep(0.3)
    raise AssertionError(f"nothing changed within {timeout:.0f} s (still {before[:80]!r})")


def test_temperature_explorer_responds_to_the_keyboard(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    widget = page.locator(".clipedu-tau").first
    widget.wait_for(state="visible", timeout=60_000)
    widget.scroll_into_view_if_needed()
    loss = _wait_for_change(lambda: _text(page, ".clipedu-loss"), "")  # the default state is drawn
    readout, plot = _text(page, ".clipedu-readout"), _png(page, ".clipedu-plot")
    assert "loss =" in loss and plot.startswith("data:image/png"), (loss, plot[:40])
    page.screenshot(path=str(SHOTS / "temperature_before.png"))

    _press_slider(page, ".clipedu-tau")
    new_loss = _wait_for_change(lambda: _text(page, ".clipedu-loss"), loss)
    assert _text(page, ".clipedu-readout") != readout
    _wait_for_change(lambda: _png(page, ".clipedu-plot"), plot)
    assert new_loss != loss
    _wait_for_idle_kernel(page)  # every queued redraw done: the screenshot shows the final state
    page.screenshot(path=str(SHOTS / "temperature_after.png"))


def test_similarity_explorer_responds_to_the_keyboard(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    slider = page.locator(".clipedu-image").first
    slider.wait_for(state="visible", timeout=60_000)
    slider.scroll_into_view_if_needed()
    ranking, image = _text(page, ".clipedu-text-ranking"), _png(page, ".clipedu-image-plot")
    ranked_images = _png(page, ".clipedu-images-plot")
    page.screenshot(path=str(SHOTS / "similarity_before.png"))

    _press_slider(page, ".clipedu-image", times=1)
    _wait_for_change(lambda: _text(page, ".clipedu-text-ranking"), ranking)
    _wait_for_change(lambda: _png(page, ".clipedu-image-plot"), image)

    dropdown = page.locator(".clipedu-caption select").first
    options = dropdown.locator("option")
    dropdown.select_option(index=min(3, options.count() - 1))
    _wait_for_change(lambda: _png(page, ".clipedu-images-plot"), ranked_images)
    _wait_for_idle_kernel(page)
    page.screenshot(path=str(SHOTS / "similarity_after.png"))
