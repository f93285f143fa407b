"""A population astronomer's journey through the page, in Chromium, on the tiny *trained* demo (issue 15):
colour by a class, hover and click a star, switch the UMAP, draw contours, compare the two presets, brush a
cross-filter histogram, find clusters and select one, save populations, send the selection to a (fake)
TOPCAT over SAMP and receive a selection back, download a table. Every button of the page is pressed at least
once (the others in tests/test_app_browser.py); no step may show an error message or log a console error.
The README screenshot (docs/img/compare_presets.png) is taken here.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_app_browser import CHROME_ARGS, CHROMIUM, IGNORED_CONSOLE, ROOT, SHOTS, _canvas_boxes, _free_port

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.browser
README_SHOT = ROOT / "docs" / "img" / "compare_presets.png"
ERROR_TEXTS = ("that did not work", "SAMP failed", "export failed", "Traceback")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from astropy.samp import SAMPHubServer
    lock = tmp_path_factory.mktemp("samp") / "samp"
    h = SAMPHubServer(web_profile=False, lockfile=str(lock))
    h.start()
    yield h, lock
    h.stop()


@pytest.fixture(scope="module")
def topcat(hub):
    """A stand-in for TOPCAT: loads the tables it is sent and records the row selections."""
    from astropy.io.votable import parse_single_table
    from astropy.samp import SAMPIntegratedClient
    client = SAMPIntegratedClient(name="fake TOPCAT")
    client.connect(hub=hub[0])
    client.got = {}

    def load(pk, sender, msg_id, mtype, params, extra):
        client.got["table"] = parse_single_table(params["url"].removeprefix("file://")).to_table()
        client.got["tid"] = params["table-id"]
        client.reply(msg_id, {"samp.status": "samp.ok", "samp.result": {}})

    client.bind_receive_call("table.load.votable", load)
    client.bind_receive_notification("table.select.rowList",
                                     lambda pk, s, m, params, e: client.got.update(rows=params["row-list"]))
    yield client
    client.disconnect()


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_demo, hub):
    import os
    port = _free_port()
    log = open(tmp_path_factory.mktemp("log") / "serve.log", "w+")
    env = {**os.environ, "SAMP_HUB": f"std-lockurl:{Path(hub[1]).as_uri()}"}
    proc = subprocess.Popen([sys.executable, "-m", "desa_core.cli", "serve", "--artifacts", str(trained_demo.art),
                             "--port", str(port)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
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
    yield {"url": url, "art": trained_demo.art, "proc": proc, "log": log}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def page(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        pg = b.new_page(viewport={"width": 1500, "height": 1200}, accept_downloads=True)
        errors = []
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and
              not any(s in m.text for s in IGNORED_CONSOLE) else None)
        pg.on("pageerror", lambda e: errors.append(f"{e} {getattr(e, 'stack', '')}"[:1500]))
        pg.goto(server["url"] + "/", timeout=90_000)
        pg.get_by_text("Selected: none").wait_for(timeout=90_000)
        time.sleep(2)
        pg.errors = errors
        yield pg
        b.close()


def _no_errors(page):
    body = page.inner_text("body")
    assert not [t for t in ERROR_TEXTS if t in body], body[-2000:]
    assert page.errors == []


def _tab(page, name):
    page.locator(".bk-tab", has_text=name).click()
    time.sleep(0.5)


def _selected(page) -> int:
    loc = page.locator("text=/Selected: [0-9,]+ of/")
    loc.wait_for(timeout=30_000)
    return int(loc.inner_text().split("Selected:")[1].split("of")[0].replace(",", "").strip())


def _wait_count(page, pred, timeout=30.0) -> int:
    deadline = time.time() + timeout
    while True:
        try:
            n = _selected(page)
        except Exception:
            n = None
        if n is not None and pred(n):
            return n
        if time.time() > deadline:
            raise AssertionError(f"selection count {n} did not change as expected")
        time.sleep(0.3)


def _drag(page, box, fx0, fy0, fx1, fy1):
    x0, y0 = box["x"] + box["width"] * fx0, box["y"] + box["height"] * fy0
    x1, y1 = box["x"] + box["width"] * fx1, box["y"] + box["height"] * fy1
    page.mouse.move(x0, y0)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
    page.mouse.up()


def test_categorical_colour_with_legend(page):
    page.get_by_label("Colour by").select_option("binary_class")
    page.get_by_text("Legend").wait_for(timeout=30_000)
    legend = page.locator(".desa-legend").inner_text()
    assert "single" in legend and "close_sync" in legend
    _no_errors(page)


def test_hover_and_click_a_star_opens_its_detail(page):
    umap = _canvas_boxes(page)[0]
    found = None
    for fy in (0.5, 0.4, 0.6, 0.3, 0.7):
        for fx in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
            page.mouse.move(umap["x"] + umap["width"] * fx, umap["y"] + umap["height"] * fy)
            time.sleep(0.4)
            text = page.locator("small", has_text="prot_days").all_inner_texts()
            if text:
                found = (fx, fy, text[0])
                break
        if found:
            break
    assert found, "hovering the UMAP never showed a star"
    assert page.errors == [], "after the hover"
    star_id = found[2].split(" ")[0].strip()
    page.mouse.click(umap["x"] + umap["width"] * found[0], umap["y"] + umap["height"] * found[1])
    page.locator(".bk-tab.bk-active", has_text="Star detail").wait_for(timeout=30_000)
    page.locator("h3", has_text=star_id).wait_for(timeout=30_000)
    time.sleep(1)
    assert page.errors == [], "after the click: " + " || ".join(page.errors)
    page.get_by_role("button", name="Show star").click()
    time.sleep(1)
    # the model's predictions next to the catalogue's values, beside the ACF / periodogram / folded plots
    page.get_by_text("Model predictions").wait_for(timeout=30_000)
    page.locator(".tabulator-cell", has_text="P(binary) (binary head)").first.wait_for(timeout=30_000)
    _no_errors(page)


def test_upload_several_quarters_placed_on_the_umap_with_predictions(page, server, trained_demo, tmp_path):
    """Two quarters of a survey star's light curve, as Kepler FITS files under a KEPLERID the set does not
    hold: stitched, embedded by the model, searched, placed on the UMAP and summarised with its measured
    period and predicted properties."""
    import numpy as np
    from desa_core.data.store import SurveyStore
    from fits_fixtures import write_kepler_quarter
    store = SurveyStore.open(trained_demo.survey)
    cat = store.catalog
    # a detected rotator whose period three cycles of the 20-day light curve can show
    row = int(cat.index[(cat["lc_row"] >= 0) & cat["rotation_detected"] & (cat["prot_acf_days"] < 5)][0])
    t, f = store.light_curve(row)
    ok = np.isfinite(f)
    half = len(t) // 2
    paths = [write_kepler_quarter(tmp_path / f"kplr099999999-q{q}_llc.fits", 99999999, q, t[sl][ok[sl]],
                                  1e4 * f[sl][ok[sl]]) for q, sl in ((2, slice(0, half)), (3, slice(half, None)))]
    _tab(page, "Similarity search")
    page.locator("input[type=file]").first.set_input_files([str(p) for p in paths])
    time.sleep(2.0)  # the files travel over the websocket
    page.get_by_role("button", name="Embed upload and search").click()
    page.get_by_text("nearest neighbours of upload").wait_for(timeout=60_000)
    for text in ("catalogue match", "placed on", "P_rot, ACF (peak height)", "predicted: P(binary) (binary head)"):
        page.locator(".tabulator-cell", has_text=text).first.wait_for(timeout=30_000)
    assert page.locator(".tabulator-cell", has_text="umap").count() >= 1      # placed on the UMAP
    # both measured periods shown as "P d (height or power)": the ACF's and the periodogram's
    assert page.locator(".tabulator-cell", has_text=re.compile(r"^\d[\d.]* d \(\d\.\d\d\)")).count() >= 2
    assert page.locator(".tabulator-cell", has_text=re.compile(r"^2$")).count() >= 1   # two quarters stitched
    page.screenshot(path=str(SHOTS / "12_upload_placed.png"), full_page=True)
    _no_errors(page)


def test_umap_switch_and_contours(page):
    umap = _canvas_boxes(page)[0]
    for label, key in (("light curve", "umap_lc"), ("spectrum", "umap_spec"), ("DESA", "umap")):
        before = page.screenshot(clip=umap)
        page.get_by_role("button", name=label, exact=True).click()
        deadline = time.time() + 30
        def url():   # the page's own URL (replaceState is not seen by page.url)
            return page.evaluate("window.location.search") + "&"
        while time.time() < deadline and (f"map={key}&" not in url() or page.screenshot(clip=umap) == before):
            time.sleep(0.3)
        assert f"map={key}&" in url(), url()
        assert page.screenshot(clip=umap) != before, f"the {label} UMAP was not drawn"
    before = page.screenshot(clip=umap)
    # a Panel Checkbox: <input> and its label text inside the shadow root of div.bk-Checkbox
    page.locator(".bk-Checkbox", has_text="density contours").locator("input").check()
    deadline = time.time() + 30
    while time.time() < deadline and page.screenshot(clip=umap) == before:
        time.sleep(0.3)
    assert page.screenshot(clip=umap) != before, "the contours were not drawn"
    _no_errors(page)


def test_compare_presets_and_population_buttons(page):
    _tab(page, "Populations")
    page.get_by_role("button", name="Select matching stars").click()
    n = _wait_count(page, lambda n: n > 0)
    page.get_by_label("Population name").fill("my sync binaries")
    page.get_by_role("button", name="Save expression as population").click()
    page.get_by_text("population saved").first.wait_for(timeout=30_000)
    page.get_by_label("Population name").fill("my selection")
    page.get_by_role("button", name="Save current selection as population").click()
    page.get_by_role("button", name="Select population A").click()
    _wait_count(page, lambda m: m == n)
    page.get_by_role("button", name="Save A ∪ B").click()
    page.get_by_text("union saved").wait_for(timeout=30_000)
    page.get_by_role("button", name="Save A ∩ B").click()
    page.get_by_text("intersection saved").wait_for(timeout=30_000)
    page.get_by_label("Population A").select_option("synchronized binaries")
    page.get_by_label("Population B").select_option("young fast rotators")
    page.get_by_role("button", name="Compare A and B").click()
    page.get_by_text("Separation score").wait_for(timeout=120_000)
    time.sleep(2)
    _no_errors(page)
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(README_SHOT), full_page=True)
    page.screenshot(path=str(SHOTS / "10_compare_presets.png"), full_page=True)


def test_crossfilter_brush_selects_a_range(page):
    page.get_by_role("button", name="Clear selection").click()
    page.get_by_text("Selected: none").wait_for(timeout=30_000)
    _tab(page, "Cross-filter")
    deadline = time.time() + 30
    while True:   # the histograms (their titles are drawn on the canvas, not in the page's text)
        hists = [b for b in (e.bounding_box() for e in page.query_selector_all(".bk-events")) if b]
        hists = sorted([b for b in hists if 100 < b["height"] < 250], key=lambda b: (round(b["y"] / 50), b["x"]))
        if len(hists) >= 4 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert len(hists) >= 4, hists
    time.sleep(1)
    before = page.screenshot(clip=hists[1])
    _drag(page, hists[0], 0.3, 0.5, 0.6, 0.5)          # teff, the first histogram
    n = _wait_count(page, lambda n: n > 0)
    page.get_by_text("selected teff from").wait_for(timeout=30_000)
    deadline = time.time() + 30     # the other histograms now show the selection's bars
    while time.time() < deadline and page.screenshot(clip=hists[1]) == before:
        time.sleep(0.3)
    assert page.screenshot(clip=hists[1]) != before, "the logg histogram did not show the selection"
    page.get_by_role("button", name="and", exact=True).click()
    _drag(page, hists[1], 0.2, 0.5, 0.8, 0.5)          # logg, intersected
    _wait_count(page, lambda m: 0 < m <= n)
    assert "range" in page.evaluate("window.location.search")
    page.get_by_role("button", name="new", exact=True).click()
    time.sleep(3)    # the six histograms redraw
    page.screenshot(path=str(SHOTS / "11_crossfilter.png"), full_page=True)
    _no_errors(page)


def test_regions_find_select_and_save_clusters(page):
    page.get_by_role("button", name="Clear selection").click()
    page.get_by_text("Selected: none").wait_for(timeout=30_000)
    _tab(page, "Regions")
    page.get_by_role("button", name="Find clusters").click()
    page.get_by_text("Gaussian mixture on 10 principal components").wait_for(timeout=120_000)
    page.get_by_text("cluster (").first.wait_for(timeout=30_000)   # the maps' colour label
    page.get_by_role("button", name="Select cluster").click()
    n = _wait_count(page, lambda n: n > 0)
    deadline = time.time() + 30
    while "cluster" not in page.evaluate("window.location.search") and time.time() < deadline:
        time.sleep(0.3)
    assert "cluster" in page.evaluate("window.location.search")
    page.get_by_role("button", name="Save clusters as populations").click()
    page.get_by_text("saved ['cluster 1").wait_for(timeout=30_000)
    page.screenshot(path=str(SHOTS / "12_regions.png"), full_page=True)
    assert n > 0
    _no_errors(page)


def test_samp_send_and_receive(page, topcat):
    _tab(page, "Populations")          # something to send: the synchronized-binaries expression
    page.get_by_role("button", name="Select matching stars").click()
    _wait_count(page, lambda n: n > 0)
    _tab(page, "Export")
    page.get_by_role("button", name="Connect to SAMP hub").click()
    page.get_by_text("connected to the SAMP hub").wait_for(timeout=30_000)
    n = _selected(page)
    page.get_by_role("button", name="Send selection to TOPCAT/Aladin").click()
    page.locator("text=/Sent [0-9,]+ selected rows/").wait_for(timeout=60_000)
    deadline = time.time() + 20
    while "rows" not in topcat.got and time.time() < deadline:
        time.sleep(0.2)
    assert len(topcat.got["rows"]) == n
    topcat.notify_all({"samp.mtype": "table.select.rowList",
                       "samp.params": {"table-id": topcat.got["tid"], "row-list": ["0", "4", "9"]}})
    page.get_by_text("selection received over SAMP: 3 stars").wait_for(timeout=30_000)
    _wait_count(page, lambda m: m == 3)
    _no_errors(page)


def test_download_the_selection(page, tmp_path):
    _tab(page, "Export")
    with page.expect_download(timeout=60_000) as dl:
        page.get_by_role("button", name="Download").click()
    path = tmp_path / "sel.csv"
    dl.value.save_as(str(path))
    lines = path.read_text().strip().splitlines()
    assert lines[0].startswith("star_id") and len(lines) == 1 + _selected(page)
    _no_errors(page)
