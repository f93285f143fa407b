"""The dashboard in a real browser: headless Debian Chromium driven by Playwright against a `desa serve` started
here on a free port (one server for the module), over what `make demo` builds in miniature: a simulated survey
store, a model trained on it and the artifact set precompute writes (tests/trained_fixtures.py).

Checks: the page loads without console errors; a box dragged on the UMAP canvas updates the selection count
and re-renders the other maps; a star-id search fills the neighbour table; a probe shows its metric; a broken
upload shows an error and the page keeps working; hostile links and typed input run no script and do not
stall the server. Screenshots go to test-output/screenshots/.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
# Chromium's own chatter, not the page's: GPU stalls from software WebGL, favicon fetches.
IGNORED_CONSOLE = ("GL Driver Message", "GPU stall", "favicon", "WebGL")

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps) to run the browser tests",
                allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_demo):
    art = trained_demo.art
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "desa_core.cli", "serve", "--artifacts", str(art),
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(url + "/liveness", timeout=2).status == 200:
                break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            proc.kill()
            pytest.fail(f"dashboard server did not come up:\n{log.read()[-3000:]}")
        time.sleep(0.5)
    yield {"url": url, "art": art, "proc": proc}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(server, browser):
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and
          not any(s in m.text for s in IGNORED_CONSOLE) else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server["url"] + "/", timeout=90_000)
    pg.wait_for_selector(".bk-events", state="attached", timeout=90_000)
    pg.get_by_text("Selected: none").wait_for(timeout=60_000)
    time.sleep(2)  # let the three map images arrive
    pg.errors = errors
    yield pg
    pg.close()


def _canvas_boxes(page):
    """Bounding boxes of the three map plot areas (the Bokeh event layers), left to right."""
    boxes = [b for b in (e.bounding_box() for e in page.query_selector_all(".bk-events")) if b]
    boxes = [b for b in boxes if b["width"] > 250 and b["height"] > 250]
    return sorted(boxes, key=lambda b: (round(b["y"] / 50), b["x"]))[:3]


def test_page_loads_without_console_errors(page):
    page.screenshot(path=str(SHOTS / "01_loaded.png"), full_page=True)
    assert page.get_by_text("Simulated survey.").count() == 1
    assert len(_canvas_boxes(page)) == 3
    assert page.errors == []


def test_box_drag_on_umap_selects_in_all_views(page, browser):
    boxes = _canvas_boxes(page)
    cmd = boxes[1]
    before = page.screenshot(clip=cmd)
    umap = boxes[0]
    x0, y0 = umap["x"] + umap["width"] * 0.3, umap["y"] + umap["height"] * 0.3
    x1, y1 = umap["x"] + umap["width"] * 0.7, umap["y"] + umap["height"] * 0.7
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
    page.mouse.up()
    count = page.locator("text=/Selected: [0-9,]+ of/")
    count.wait_for(timeout=30_000)
    n = int(count.inner_text().split("Selected:")[1].split("of")[0].replace(",", "").strip())
    assert 0 < n < 400
    deadline = time.time() + 20
    while time.time() < deadline and page.screenshot(clip=cmd) == before:
        time.sleep(0.5)
    assert page.screenshot(clip=cmd) != before, "the colour-magnitude diagram did not re-render"
    page.screenshot(path=str(SHOTS / "02_box_selection.png"), full_page=True)
    assert page.errors == []
    # the URL now carries the selection: a second visitor opening it sees the same stars selected
    assert "selection=" in page.url
    other = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        other.goto(page.url, timeout=90_000)
        other.locator(f"text=/Selected: {n:,} of/").wait_for(timeout=60_000)
    finally:
        other.close()


def test_star_id_search_fills_neighbour_table(page, server):
    import pandas as pd
    sid = str(pd.read_parquet(Path(server["art"]) / "stars.parquet", columns=["star_id"]).star_id.iloc[7])
    page.locator(".bk-tab", has_text="Similarity search").click()
    box = page.get_by_placeholder(re.compile(r"^e\.g\. "))
    box.fill(sid)
    box.press("Enter")
    page.get_by_role("button", name="Search by id").click()
    page.get_by_text("nearest neighbours of " + sid).wait_for(timeout=30_000)
    rows = page.locator(".tabulator-row")
    deadline = time.time() + 15
    while rows.count() < 5 and time.time() < deadline:  # Tabulator renders rows in batches
        time.sleep(0.3)
    assert rows.count() >= 5  # a virtual DOM: only the rows in view exist
    assert page.locator(".tabulator-col", has_text="similarity").count() == 1
    page.screenshot(path=str(SHOTS / "03_similarity_search.png"), full_page=True)
    assert page.errors == []


def test_probe_shows_metric(page):
    page.locator(".bk-tab", has_text="Few-shot probes").click()
    page.get_by_role("button", name="Fit probe").click()
    page.get_by_text("held-out stars").wait_for(timeout=60_000)
    assert page.locator("text=/R\\^2|AUC/").count() > 0
    page.screenshot(path=str(SHOTS / "04_probe.png"), full_page=True)
    assert page.errors == []


def test_broken_upload_shows_error_and_page_still_works(page, tmp_path, server):
    bad = tmp_path / "broken.fits"
    bad.write_bytes(b"this is not a FITS file at all\n" * 200)
    page.locator(".bk-tab", has_text="Similarity search").click()
    page.locator("input[type=file]").first.set_input_files(str(bad))
    time.sleep(1.5)  # the file travels over the websocket
    page.get_by_role("button", name="Embed upload and search").click()
    page.locator("text=/broken.fits: not a/").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "05_broken_upload.png"), full_page=True)
    # still serving this session and new ones
    box = page.get_by_placeholder(re.compile(r"^e\.g\. "))
    box.fill("no such star")
    box.press("Enter")
    page.get_by_role("button", name="Search by id").click()
    page.get_by_text("unknown star id").wait_for(timeout=30_000)
    assert urllib.request.urlopen(server["url"] + "/liveness", timeout=5).status == 200
    assert server["proc"].poll() is None
    assert page.errors == []


# ------------------------------------------------------------------------------------------ hostile input
XSS = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=1</script>",
       '"><svg onload="window.__xss=1">']


def _open(browser, url):
    pg = browser.new_page(viewport={"width": 1500, "height": 1100})
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url, timeout=90_000)
    pg.wait_for_selector(".bk-events", state="attached", timeout=90_000)
    pg.errors = errors
    return pg


def _liveness_during(server, action, seconds: float = 3.0) -> list[float]:
    """Run ``action`` while another thread polls /liveness; returns the latencies seen (s)."""
    import threading
    lat, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                urllib.request.urlopen(server["url"] + "/liveness", timeout=5).read()
                lat.append(time.perf_counter() - t0)
            except OSError:
                lat.append(float("inf"))
            time.sleep(0.05)
    t = threading.Thread(target=poll)
    t.start()
    try:
        action()
        time.sleep(seconds)
    finally:
        stop.set()
        t.join()
    return lat


@pytest.mark.parametrize("param", ["target", "selection", "color"])
def test_hostile_links_run_no_script(server, browser, param):
    from urllib.parse import quote
    for payload in XSS:
        value = json.dumps([["new", "query", payload]]) if param == "selection" else payload
        pg = _open(browser, f"{server['url']}/?{param}={quote(value)}")
        try:
            pg.locator("text=could not restore the view").wait_for(timeout=60_000)
            # the message shows the payload's characters as text, and nothing in it ran
            assert payload[:12] in pg.locator("[role=alert]").first.inner_text() or param == "selection"
            assert pg.evaluate("window.__xss") is None
            assert pg.locator("img[src=x], svg[onload]").count() == 0
        finally:
            pg.close()


def test_hostile_typed_input_runs_no_script(page, server):
    payload = XSS[0]
    page.locator(".bk-tab", has_text="Similarity search").click()
    box = page.get_by_placeholder(re.compile(r"^e\.g\. "))
    box.fill(payload)
    page.get_by_role("button", name="Search by id").click()
    page.get_by_text("unknown star id").wait_for(timeout=30_000)
    pos = page.get_by_placeholder(re.compile(r"291\.04"))
    pos.fill(payload)
    page.get_by_role("button", name="Search by position").click()
    page.get_by_text("cannot parse sky position").wait_for(timeout=30_000)
    page.locator(".bk-tab", has_text="Populations").click()
    page.get_by_label("Population name").fill(payload)
    page.get_by_label("Expression over catalogue columns").fill("teff > 5500")
    page.get_by_role("button", name="Save expression as population").click()
    page.get_by_text("population saved").wait_for(timeout=30_000)
    page.get_by_label("Expression over catalogue columns").fill(payload)
    page.get_by_role("button", name="Select matching stars").click()
    page.get_by_text("cannot parse the expression").wait_for(timeout=30_000)
    assert page.locator(".tabulator-cell", has_text="<img src=x").count() >= 1   # the name, shown as text
    page.screenshot(path=str(SHOTS / "06_hostile_input.png"), full_page=True)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src=x]").count() == 0
    assert page.errors == []


def test_expression_bombs_do_not_stall_the_server(server, browser, page):
    from urllib.parse import quote
    bomb = json.dumps([["new", "query", "prot_days < 9**9**9**9"]])
    holder = {}

    holder["pg"] = _open(browser, f"{server['url']}/?selection={quote(bomb)}")   # the page is built first

    def by_link():   # then the link's selection is restored: the attack
        holder["pg"].locator("text=could not restore the view").wait_for(timeout=60_000)
    lat = _liveness_during(server, by_link)
    holder["pg"].close()
    assert lat and max(lat) < 1.0, lat

    def typed():
        page.locator(".bk-tab", has_text="Populations").click()
        page.get_by_label("Expression over catalogue columns").fill("prot_days < 9**9**9**9 or teff ** 1e9 > 1")
        page.get_by_role("button", name="Select matching stars").click()
        page.get_by_text("power's exponent").wait_for(timeout=30_000)
    lat = _liveness_during(server, typed)
    assert lat and max(lat) < 1.0, lat
    assert server["proc"].poll() is None


def test_oversized_upload_is_refused_before_it_is_sent(page, tmp_path):
    big = tmp_path / "big.fits"
    big.write_bytes(b"\0" * (21 * 1024 * 1024))
    page.locator(".bk-tab", has_text="Similarity search").click()
    page.locator("input[type=file]").first.set_input_files(str(big))
    page.get_by_text(re.compile("File is too large", re.I)).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "07_oversized_upload.png"), full_page=True)
    assert page.errors == []
