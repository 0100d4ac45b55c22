"""The built course site (``make site``) in headless Chromium: every notebook page renders with its
figures, every link inside the site resolves, and the search finds a page.

Run with ``make test-site`` (it sets CLIPEDU_BROWSER_TESTS=1) after ``make site``. Needs Debian's
``chromium`` and the ``playwright`` package, as tests/browser/test_widgets_browser.py does. The
site is served from ``build/site/`` on 127.0.0.1; every request that leaves it (a CDN, the Colab
badge) is refused, so the pages must stand on their own. Screenshots go to ``build/site-shots/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

if os.environ.get("CLIPEDU_BROWSER_TESTS") != "1":
    pytest.skip("browser tests run with `make test-site`", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "build" / "site"
SOURCES = ROOT / "build" / "site-src" / "notebooks"
SHOTS = ROOT / "build" / "site-shots"
CHROMIUM = (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = sorted(SOURCES.glob("[0-9][0-9]_*.ipynb"))


def _figures_in(path: Path) -> int:
    """How many PNG outputs the page of notebook ``path`` must show."""
    nb = json.loads(path.read_text())
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] if cell["cell_type"] == "code"
               for out in cell.get("outputs", []))


@pytest.fixture(scope="module")
def site():
    if not (SITE / "index.html").exists() or not NOTEBOOKS:
        pytest.fail(f"no site in {SITE}: run `make site` first")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}; install it with `apt-get install chromium`")
    # stdout carries the one "Serving HTTP on ..." line; the request log (stderr) goes nowhere, since
    # nothing reads it: a full pipe would block the server mid-test.
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                               "--directory", str(SITE)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, start_new_session=True)
    try:
        line = server.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        port = int(line.split(" port ")[1].split()[0])
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def page(site, tmp_path_factory):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1300, "height": 900})
        # nothing outside the site: a page that needs a CDN to show its figures fails here
        browser.route("**/*", lambda route: route.continue_() if route.request.url.startswith(site)
                      else route.abort())
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(30_000)
        yield page
        browser.close()


def _local_images(page) -> list[dict]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('article.bd-article img'))
        .filter(img => img.src.startsWith(location.origin))
        .map(img => ({src: img.src, natural: img.naturalWidth, width: img.getBoundingClientRect().width,
                      height: img.getBoundingClientRect().height}))""")


def _links(page) -> list[str]:
    return page.evaluate("""() => Array.from(document.querySelectorAll('a[href]'))
        .map(a => a.href).filter(h => h.startsWith(location.origin))""")


def _resolves(page, href: str, cache: dict) -> str | None:
    """None when ``href`` (same origin) is served and its #fragment names an element there."""
    address, _, fragment = href.partition("#")
    if address not in cache:
        response = page.request.get(address)
        cache[address] = response.text() if response.ok else None
    body = cache[address]
    if body is None:
        return "not served"
    fragment = urllib.parse.unquote(fragment)
    if fragment and f'id="{fragment}"' not in body:
        return f"no element with id {fragment!r}"
    return None


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_page_shows_its_figures_and_its_links_resolve(page, site, notebook):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(f"{site}notebooks/{notebook.stem}.html", wait_until="load")
    heading = page.locator("main h1").first.inner_text()
    assert heading.startswith(notebook.name[:2]), heading
    text = page.locator("article.bd-article").inner_text()
    assert "VBox(children" not in text and "Traceback" not in text  # widgets show their figure; no cell failed
    images = _local_images(page)
    broken = [img["src"] for img in images if img["natural"] == 0 or img["width"] == 0 or img["height"] == 0]
    assert not broken, f"figures that did not load or have no size: {broken}"
    expected = _figures_in(notebook)
    assert len(images) >= expected, f"{len(images)} figures on the page, {expected} PNG outputs in the notebook"
    page.screenshot(path=str(SHOTS / f"{notebook.stem}.png"))
    if images:
        page.evaluate("() => document.querySelector('article.bd-article .cell_output img')?.scrollIntoView()")
        page.screenshot(path=str(SHOTS / f"{notebook.stem}-figure.png"))
    cache: dict = {}
    bad = {href: why for href in sorted(set(_links(page))) if (why := _resolves(page, href, cache))}
    assert not bad, f"links inside the site that do not resolve: {bad}"


def test_home_page_lists_every_notebook_and_the_reference_pages(page, site):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.goto(site, wait_until="load")
    links = set(_links(page))
    for notebook in NOTEBOOKS:
        assert f"{site}notebooks/{notebook.stem}.html" in links, notebook.stem
    for reference in ("map", "syllabus", "notebooks/GLOSSARY"):
        assert f"{site}{reference}.html" in links, reference
    cache: dict = {}
    bad = {href: why for href in sorted(links) if (why := _resolves(page, href, cache))}
    assert not bad, f"links inside the site that do not resolve: {bad}"
    page.screenshot(path=str(SHOTS / "index.png"))


def test_search_finds_a_notebook(page, site):
    page.goto(f"{site}search.html?q=temperature", wait_until="load")
    results = page.locator("#search-results li")
    results.first.wait_for(state="attached", timeout=30_000)
    hrefs = [results.nth(i).locator("a").first.get_attribute("href") or "" for i in range(results.count())]
    assert any("05_contrastive_loss" in h for h in hrefs), hrefs
    page.screenshot(path=str(SHOTS / "search.png"))
