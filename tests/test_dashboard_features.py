"""The population astronomer's features (issue 15) on a tiny *trained* demo: categorical colouring with a legend,
hover and click on the rasterised maps, density contours, the UMAP switch, the cross-filter, regions (clusters)
and SAMP against an in-process hub; the headline comparison of the presets."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest


@pytest.fixture()
def ex(trained_demo):
    from app.main import Explorer
    return Explorer(trained_demo.art)


def test_the_warm_up_leaves_the_grids_and_bins_to_a_thread_that_finishes_them(ex):
    """`desa serve` answers once the kernels are compiled and the maps drawn; the hover grids and the
    cross-filter's bins (seconds at 10^7 stars) follow in a background thread, and are then ready."""
    import threading

    from app.main import BACKGROUND_WARM, _warm
    data = ex.data
    data._grids.clear()
    data._bins.clear()
    _warm(data)
    workers = [t for t in threading.enumerate() if t.name == BACKGROUND_WARM]
    assert workers
    for t in workers:
        t.join(120)
    assert set(ex.maps.shown_keys()) <= set(data._grids)
    assert set(ex.crossfilter.columns.value) <= set(data._bins)
    assert len(ex.maps.shown_keys()) == 3 and len(ex.crossfilter.columns.value) >= 1


def test_a_selection_at_the_default_view_is_drawn_from_the_pixel_index_and_a_zoomed_one_by_datashader(ex):
    """The pixel index is the fast path of the unzoomed maps only; both paths draw the selected stars."""
    from app.components.maps import FRAME_HEIGHT, FRAME_WIDTH, aggregate
    d, s = ex.data, ex.session
    d._pixels.clear()
    s.select_query("teff > 5500")
    rows = np.flatnonzero(s.selection)
    for key in ex.maps.shown_keys():
        m = d.maps[key]
        x, y = d.column(m.x), d.column(m.y)
        xr, yr = d.default_range(key)
        img = ex.maps.selected_image(key)           # density colouring: log10 of the counts
        assert (key, FRAME_WIDTH, FRAME_HEIGHT) in d._pixels
        want = aggregate(x, y, None, rows, xr, yr)   # datashader's binning of the same stars
        assert np.array_equal(np.isfinite(img), np.isfinite(want))
        np.testing.assert_allclose(10 ** img[np.isfinite(img)], want[np.isfinite(want)], rtol=1e-5)
        # zoomed on the lower-left quarter: datashader bins the frame, the index is not used for it
        zx, zy = (xr[0], (xr[0] + xr[1]) / 2), (yr[0], (yr[0] + yr[1]) / 2)
        assert not d.map_pixels(key, FRAME_WIDTH, FRAME_HEIGHT).matches(zx, zy, FRAME_WIDTH, FRAME_HEIGHT)
        zoomed = ex.maps.selected_image(key, zx, zy)
        want = aggregate(x, y, None, rows, zx, zy)
        assert np.array_equal(np.isfinite(zoomed), np.isfinite(want))


# --- categorical colouring -----------------------------------------------------------------------------

def test_categorical_colouring_counts_every_class_with_its_fixed_colour(ex):
    from app.components.maps import aggregate_categories
    s, d = ex.session, ex.data
    assert "binary_class" in s.colour_options() and "phase" in s.colour_options()
    s.color = "binary_class"
    c = s.colouring()
    assert c.kind == "categorical" and c.categories == tuple(d.schema.categories["binary_class"])
    # the legend names every class with its count, and the selected count once something is selected
    codes = d.expression_column("binary_class")
    for i, name in enumerate(c.categories):
        assert f"{name} ({int((codes == i).sum()):,})" in ex.maps.legend.object
    s.select_query("binary_class == 'single'")
    n_single = int((codes == c.categories.index("single")).sum())
    assert f"single ({n_single:,} / {n_single:,} selected)" in ex.maps.legend.object
    # each class alone is drawn in exactly its colour of the key
    key = ex.maps.shown_keys()[0]
    m = d.maps[key]
    x, y = d.column(m.x), d.column(m.y)
    (x0, x1), (y0, y1) = d.default_range(key)
    for i, colour in enumerate(c.colours):
        rows = np.flatnonzero(codes == i)
        if not len(rows):
            continue
        img = aggregate_categories(x, y, codes, c.colours, rows, (x0, x1), (y0, y1), 80, 60, spread=False)
        lit = img[(img >> 24) > 0]
        assert len(lit) > 0
        rgb = {(int(v) & 0xFF, (int(v) >> 8) & 0xFF, (int(v) >> 16) & 0xFF) for v in lit}
        want = tuple(int(colour[j:j + 2], 16) for j in (1, 3, 5))
        assert rgb == {want}, (c.categories[i], rgb)
    overlay = ex.maps.render(key)
    assert {el.group for el in overlay} >= {"BaseClasses", "SelectedClasses"}


def test_population_and_probe_class_colourings(ex):
    from app.state import POPULATION_COLOUR, PROBE_CLASS_COLOUR
    s = ex.session
    assert POPULATION_COLOUR in s.colour_options()   # the presets are saved populations
    c = s.colouring(POPULATION_COLOUR)
    a = s.population_mask("synchronized binaries")
    others = np.zeros_like(a)
    for name in list(s.populations)[1:]:
        others |= s.population_mask(name)
    assert list(s.populations)[0] == "synchronized binaries"
    assert ((c.values == 0) == (a & ~others)).all()                 # class 0: in the first population only
    n_member = sum(s.population_mask(name).astype(int) for name in s.populations)
    assert ((c.values == c.categories.index("in several")) == (n_member > 1)).all()
    assert PROBE_CLASS_COLOUR not in s.colour_options()
    with pytest.raises(Exception, match="no classification probe"):
        s.colouring(PROBE_CLASS_COLOUR)
    ex.probes.fit(target="is_binary", n_labels=20)
    assert PROBE_CLASS_COLOUR in s.colour_options()
    pc = s.colouring(PROBE_CLASS_COLOUR)
    p = s.prediction
    assert ((pc.values == 1) == (np.isfinite(p) & (p >= 0.5))).all()


# --- hover, click, contours, map switch -------------------------------------------------------------

def test_hover_finds_the_nearest_star_within_a_few_pixels_and_click_opens_its_detail(ex):
    d = ex.data
    key = ex.maps.shown_keys()[0]
    m = d.maps[key]
    x, y = d.column(m.x), d.column(m.y)
    row = int(np.flatnonzero(np.isfinite(x))[7])
    (x0, x1), _ = d.default_range(key)
    px = abs(x1 - x0) / 600          # about a pixel of the default frame
    assert ex.maps.hover_at(key, x[row] + 0.5 * px, y[row]) == row
    assert d.star_ids[row] in ex.maps.hover_info.object
    # far from every star: nothing
    assert ex.maps.hover_at(key, x0 - 1000 * abs(x1 - x0), y[row]) == -1
    assert "Hover over a star" in ex.maps.hover_info.object
    # a click (Tap) makes it the search target and opens the Star detail tab
    layout = ex.__panel__()
    ex.maps._tap_handler(key)(x=float(x[row]), y=float(y[row]))
    assert ex.session.target_row == row
    from app.main import TAB_STAR_DETAIL
    assert ex._tabs.active == TAB_STAR_DETAIL and ex.star_detail.row == row
    assert layout is not None


def test_density_contours_enclose_the_stated_fractions(ex):
    from matplotlib.path import Path as MplPath
    d = ex.data
    key = ex.maps.shown_keys()[0]
    paths = d.density_contours(key)
    assert paths
    ex.session.show_contours = True
    overlay = ex.maps.render(key)
    assert len([el for el in overlay if el.group == "Contours"][0].split()) == len(paths)
    # the outermost (95%) level: most stars lie inside one of its closed paths
    m = d.maps[key]
    pts = np.column_stack([d.column(m.x), d.column(m.y)])
    inside = np.zeros(len(pts), bool)
    for p in paths:
        inside |= MplPath(p).contains_points(pts)
    assert inside.mean() > 0.7


def test_umap_switch_shows_each_layout_and_keeps_the_selection(ex):
    d = ex.data
    assert {"umap", "umap_lc", "umap_spec"} <= set(d.maps)
    s = ex.session
    s.select_query("teff > 5800")
    n = s.selection_count
    for key in ("umap_lc", "umap_spec", "umap"):
        s.umap_view = key
        assert ex.maps.shown_keys()[0] == key and ex.maps.row.objects[0] is ex.maps.panes[key]
        assert s.selection_count == n
        img = ex.maps.selected_image(key)
        assert np.isfinite(img).sum() > 0
    # a box on the light-curve map is a selection step on that map, restored from the URL
    m = d.maps["umap_lc"]
    x, y = d.column(m.x), d.column(m.y)
    lo, hi = np.nanpercentile(x, [10, 60]), np.nanpercentile(y, [10, 60])
    ex.maps._bounds_handler("umap_lc")(bounds=(lo[0], hi[0], lo[1], hi[1]))
    spec = s.selection_spec
    assert json.loads(spec)[0][2] == "umap_lc"
    from app.main import Explorer
    other = Explorer(d)
    other.restore_view({"selection": spec, "map": "umap_spec"})
    assert other.session.selection_count == s.selection_count and other.session.umap_view == "umap_spec"
    assert other.restore_view({"map": "umap_bogus"}) and other.session.umap_view == "umap_spec"


# --- cross-filter --------------------------------------------------------------------------------------

def test_crossfilter_histograms_count_all_stars_and_the_selection(ex):
    d, s, cf = ex.data, ex.session, ex.crossfilter
    cf.set_visible(True)
    s.select_query("binary_class == 'close_sync'")
    for col in cf.columns.value:
        h = cf.histograms(col)
        v = d.column(col)
        edges = h["edges"]
        for mask, counts in ((np.ones(d.n, bool), h["all"]), (s.selection, h["selected"])):
            vv = v[mask]
            want, _ = np.histogram(vv[np.isfinite(vv)], edges)
            assert np.array_equal(counts, want), col
    assert cf.histograms("prot_days")["log"] and not cf.histograms("feh")["log"]
    fig = cf.figure("teff")
    assert len(fig) == 2   # all + selected


def test_crossfilter_brush_is_a_selection_step_with_the_page_modes(ex):
    d, s, cf = ex.data, ex.session, ex.crossfilter
    teff, prot = d.column("teff"), d.column("prot_days")
    cf._brush_handler("teff")(boundsx=(5000.0, 6000.0))    # what an x-box drag on the histogram sends
    a = (teff >= 5000) & (teff <= 6000)
    assert s.selection_count == int(a.sum()) > 0
    s.select_mode = "and"
    cf._brush_handler("prot_days")(boundsx=(1.0, 10.0))
    b = a & (prot >= 1) & (prot <= 10)
    assert s.selection_count == int(b.sum()) > 0
    assert [st[1] for st in s.selection_steps] == ["range", "range"]
    assert cf.brushed("prot_days") == [(1.0, 10.0)]
    assert len(cf.figure("prot_days")) == 3    # all, selected, the brushed span
    from app.main import Explorer
    other = Explorer(d)
    other.restore_view({"selection": s.selection_spec})
    assert np.array_equal(other.session.selection, b)
    with pytest.raises(Exception, match="unknown column"):
        s.restore_selection('[["new","range","no_such",1,2]]')


# --- regions ---------------------------------------------------------------------------------------

def test_regions_cluster_summarise_select_and_save(ex):
    from app.state import CLUSTER_COLOUR
    d, s, rg = ex.data, ex.session, ex.regions
    table = rg.find_clusters("desa", 4)
    labels = d.clusters("desa", 4)
    assert d.clusters("desa", 4) is labels          # fitted once per process
    has = d.has_embedding("desa")
    assert (labels[has] >= 0).all() and (labels[~has] == -1).all()
    sizes = np.bincount(labels[has], minlength=4)
    assert list(table["stars"]) == list(sizes) and (np.diff(sizes) <= 0).all()
    teff = d.column("teff")
    for i in range(4):
        assert table.loc[i, "median teff"] == pytest.approx(float(np.median(teff[labels == i])), abs=1e-2)
    assert s.color == CLUSTER_COLOUR and s.colouring().kind == "categorical"
    assert rg.select_cluster(2) == int(sizes[1])
    from app.main import Explorer
    other = Explorer(d)   # the cluster step is reproducible from the URL
    other.restore_view({"selection": s.selection_spec})
    assert np.array_equal(other.session.selection, labels == 1)
    names = rg.save_clusters()
    assert sum(s.populations[n]["count"] for n in names) == int(has.sum())
    for bad in ('[["new","cluster","desa",1,0]]', '[["new","cluster","desa",4,4]]',
                '[["new","cluster","nope",4,0]]', '[["new","cluster","desa",true,0]]'):
        with pytest.raises(Exception):
            s.restore_selection(bad)


def test_over_represented_names_enriched_classes_only():
    from app.components.regions import over_represented
    codes = np.array([0] * 80 + [1] * 20 + [0] * 10 + [1] * 90, dtype=np.int16)
    in_cluster = np.zeros(200, bool)
    in_cluster[100:200] = True      # this cluster is 90% class 1; overall class 1 is 55%
    out = over_represented(codes, ["a", "b"], in_cluster, np.ones(200, bool))
    assert out == ["b (90%, 1.6x)"]
    assert over_represented(codes, ["a", "b"], np.ones(200, bool), np.ones(200, bool)) == []


# --- SAMP ------------------------------------------------------------------------------------------

@pytest.fixture()
def hub(tmp_path):
    from astropy.samp import SAMPHubServer
    h = SAMPHubServer(web_profile=False, lockfile=str(tmp_path / "samp"))
    h.start()
    yield h
    h.stop()


def _wait(cond, timeout=10.0):
    t0 = time.time()
    while not cond() and time.time() - t0 < timeout:
        time.sleep(0.05)
    return cond()


def test_samp_sends_the_selection_to_a_table_client_and_receives_rows_back(ex, hub):
    from astropy.io.votable import parse_single_table
    from astropy.samp import SAMPIntegratedClient
    got = {}
    topcat = SAMPIntegratedClient(name="fake TOPCAT")
    topcat.connect(hub=hub)

    def load(pk, sender, msg_id, mtype, params, extra):
        got["table"] = parse_single_table(params["url"].removeprefix("file://")).to_table()
        got["tid"] = params["table-id"]
        topcat.reply(msg_id, {"samp.status": "samp.ok", "samp.result": {}})

    topcat.bind_receive_call("table.load.votable", load)
    topcat.bind_receive_notification("table.select.rowList", lambda pk, s, m, params, e: got.update(rows=params))
    try:
        assert ex.export.samp_connect(hub=hub)
        s = ex.session
        s.select_query("teff > 6000")
        sent = ex.export.samp_send()
        assert sent["clients"] == ["fake TOPCAT"] and sent["selected"] == s.selection_count
        assert _wait(lambda: "rows" in got)
        table_ids = np.asarray(got["table"]["star_id"]).astype(str)
        assert len(table_ids) == ex.data.n
        picked = set(table_ids[[int(r) for r in got["rows"]["row-list"]]])
        assert picked == set(s.selected_stars(["star_id"]).star_id)
        # TOPCAT selects rows 3, 5, 8 of that table: the dashboard selects those stars
        topcat.notify_all({"samp.mtype": "table.select.rowList",
                           "samp.params": {"table-id": got["tid"], "row-list": ["3", "5", "8", "x", "99999999"]}})
        assert _wait(lambda: s.selection_count == 3)
        assert set(s.selected_stars(["star_id"]).star_id) == set(table_ids[[3, 5, 8]])
        # a row selection of a table this session never sent is ignored
        topcat.notify_all({"samp.mtype": "table.select.rowList",
                           "samp.params": {"table-id": "other", "row-list": ["1"]}})
        time.sleep(0.5)
        assert s.selection_count == 3
    finally:
        ex.export.samp.disconnect()
        topcat.disconnect()


def test_samp_without_a_hub_or_on_a_public_server_says_so(ex, monkeypatch, tmp_path):
    from app import samp
    from app.state import UserInputError
    monkeypatch.setenv("SAMP_HUB", f"std-lockurl:{(tmp_path / 'none').as_uri()}")
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserInputError, match="no SAMP hub"):
        ex.export.samp_connect()
    with pytest.raises(UserInputError, match="not connected"):
        ex.export.samp_send()
    monkeypatch.setattr(samp, "ENABLED", False)
    with pytest.raises(UserInputError, match="SAMP is off"):
        ex.export.samp_connect()


# --- the headline comparison -----------------------------------------------------------------------------

def test_presets_compare_on_the_trained_demo(ex):
    p = ex.populations
    out = p.compare("synchronized binaries", "young fast rotators")
    assert out["n_a"] > 0 and out["n_b"] > 0
    assert {sc["embedding"] for sc in out["scores"]} == set(ex.data.embedding_names)
    assert len(p._compare.objects) == 5


def test_comparison_histograms_each_have_their_own_y_range(ex):
    """Teff densities (1/K) are 10^4 times smaller than RUWE's: a shared y axis drew them as empty panels."""
    import holoviews as hv
    from app.components.populations import compare_histograms
    d = ex.data
    teff = d.column("teff")
    layout = compare_histograms(d, teff < 5500, teff > 6000, "cool", "warm")
    fig = hv.renderer("bokeh").get_plot(layout)
    tops = {}
    for sub in fig.subplots.values():
        plot = sub.subplots["main"]
        col = plot.current_frame.get(0).kdims[0].name
        tops[col] = plot.handles["y_range"].end
        heights = [np.nanmax(el.dimension_values(1)) for el in plot.current_frame]
        assert tops[col] >= max(heights) * 0.99 and tops[col] <= max(heights) * 1.5, (col, tops[col], heights)
    assert len(tops) >= 4 and len({round(t, 8) for t in tops.values()}) == len(tops)


def test_class_to_class_recolour_pushed_to_bokeh_matches_a_full_redraw(ex):
    """binary_class -> phase changes only the class rasters, pushed straight into the Bokeh sources: what a
    full HoloViews redraw then draws is the same; a change to a numeric colour redraws the maps."""
    from bokeh.document import Document
    ex.__panel__().get_root(Document())
    s = ex.session
    s.select_query("teff > 5500")
    s.color = "binary_class"
    s.color = "phase"
    for key in ex.maps.shown_keys():
        plot = list(ex.maps.panes[key]._plots.values())[0][0]
        srcs = {g: plot.subplots[(g, "I")].handles["source"] for g in ("BaseClasses", "SelectedClasses")}
        fast = {g: np.array(src.data["image"][0]) for g, src in srcs.items()}
        assert (fast["SelectedClasses"] != 0).sum() < (fast["BaseClasses"] != 0).sum()
        ex.maps.redraw(key)
        for g, src in srcs.items():
            assert np.array_equal(fast[g], np.asarray(src.data["image"][0])), (key, g)
    # the phase colouring shows in the pixels: the giants' colour is there
    c = s.colouring()
    giant = c.colours[c.categories.index("giant")]
    want = sum(int(giant[j:j + 2], 16) << (8 * i) for i, j in enumerate((1, 3, 5)))
    key = ex.maps.shown_keys()[0]
    plot = list(ex.maps.panes[key]._plots.values())[0][0]
    base = np.asarray(plot.subplots[("BaseClasses", "I")].handles["source"].data["image"][0])
    assert ((base & 0xFFFFFF) == want).any()
    s.color = "teff"
    sel = plot.subplots[("Selected", "I")].handles["source"]
    assert np.isfinite(np.asarray(sel.data["image"][0], dtype=float)).any()


def test_header_names_the_model_and_its_objective(ex):
    """The page says which model built the embeddings it calls DESA, and how that DualFormer was aligned."""
    info = ex.header().objects[-1].object
    assert ex.data.manifest["run"]["objective"] == "desa_paper"
    assert "DESA objective desa_paper" in info and "fingerprint" in info
    assert "Simulated survey" in ex.header().objects[0].object


def test_sessions_share_the_all_stars_layers_but_not_their_own_colourings(ex):
    from app.main import Explorer
    other = Explorer(ex.data)
    for e in (ex, other):
        e.maps.render("umap")
    xr, yr = ex.data.default_range("umap")
    ckey = ("umap", ex.session.colouring().key, tuple(xr), tuple(yr))
    shared = ex.data._rasters.get(ckey)
    assert shared is not None and not shared.flags.writeable
    # the second session drew the very same layer, not a copy it computed again
    assert other.maps._cache["umap"]["base"] is shared is ex.maps._cache["umap"]["base"]
    # a probe's prediction is this session's own: never in the shared cache, never seen by the other session
    n_before = len(ex.data._rasters)
    ex.probes.fit(target="teff", n_labels=60)
    ex.session.color = "probe prediction"
    ex.maps.render("umap")
    assert all(k[1][0] != "probe prediction" for k in ex.data._rasters) and len(ex.data._rasters) == n_before
    assert other.session.color == "density"
