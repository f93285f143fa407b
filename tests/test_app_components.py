"""Dashboard components without a browser: selection -> counts, search -> neighbours, probe -> metric,
population expressions, exports, URL state, bad input."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from app_fixtures import make_artifacts


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return make_artifacts(tmp_path_factory.mktemp("art") / "set", n=1500)


def _layer(overlay, group):
    """The one layer of a map overlay with this group (Base, Selected, BaseClasses, Neighbours, ...)."""
    found = [el for el in overlay if el.group == group]
    assert len(found) == 1, [el.group for el in overlay]
    return found[0]


@pytest.fixture()
def ex(art):
    from app.main import Explorer
    return Explorer(art)


def test_box_selection_counts_and_renders_all_maps(ex):
    s, d = ex.session, ex.data
    x, y = d.column("bp_rp"), d.column("abs_g")
    x0, x1 = np.nanpercentile(x, [20, 60])
    y0, y1 = np.nanpercentile(y, [10, 90])
    ex.maps._bounds_handler("cmd")(bounds=(x0, y0, x1, y1))  # what a box drag on the CMD sends
    expected = int(((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).sum())
    assert 0 < s.selection_count == expected < d.n
    assert f"{expected:,}" in ex.maps.count.object
    for key in ("umap", "cmd", "hr"):
        overlay = ex.maps.render(key)
        base, top = _layer(overlay, "Base"), _layer(overlay, "Selected")
        # the selected layer holds only the selected stars; the dimmed layer all of them
        assert np.isfinite(top.data).sum() < np.isfinite(base.data).sum()
        assert (base.group, top.group) == ("Base", "Selected")
    # "and" with a second box on another map narrows it; the count always follows
    s.select_mode = "and"
    u0, u1 = np.nanpercentile(d.column("umap_x"), [0, 50])
    ex.maps._bounds_handler("umap")(bounds=(u0, -1e9, u1, 1e9))
    assert 0 < s.selection_count < expected
    s.clear_selection()
    assert s.selection is None and "none" in ex.maps.count.object


def test_aggregate_counts_every_star_in_range():
    from app.components.maps import aggregate
    rng = np.random.default_rng(1)
    x, y, v = (rng.normal(size=5000).astype(np.float32) for _ in range(3))
    rows = np.flatnonzero(x > 0.5)
    counts = aggregate(x, y, None, rows, (-10, 10), (-10, 10), spread=False)
    assert np.nansum(counts) == len(rows)
    means = aggregate(x, y, v, None, (-10, 10), (-10, 10), width=1, height=1, spread=False)
    assert means[0, 0] == pytest.approx(v.mean(), rel=1e-4)


def test_lasso_and_url_spec_restore(ex, art):
    from app.main import Explorer
    s, d = ex.session, ex.data
    ux, uy = d.column("umap_x"), d.column("umap_y")
    cx, cy = float(np.nanmedian(ux)), float(np.nanmedian(uy))
    r = float(np.nanstd(ux))
    poly = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]])
    ex.maps._lasso_handler("umap")(geometry=poly)
    inside = (ux >= cx - r) & (ux <= cx + r) & (uy >= cy - r) & (uy <= cy + r)
    assert s.selection_count == int(inside.sum()) > 0
    s.select_query("teff > 5500", mode="sub")
    spec = s.selection_spec
    assert json.loads(spec)[-1][:2] == ["sub", "query"]
    other = Explorer(art)  # a second visitor opening the shared URL
    other.session.restore_selection(spec)
    assert np.array_equal(other.session.selection, s.selection)
    with pytest.raises(Exception, match="restore"):
        other.session.restore_selection("{not json")


def test_population_expressions_presets_and_algebra(ex):
    s, stars = ex.session, ex.data.artifacts.stars   # the parquet table, read by pandas: the reference
    sync = ((stars.prot_days < 7) & (stars.binary_class == "close_sync")).to_numpy()
    assert s.populations["synchronized binaries"]["count"] == int(sync.sum())
    assert "young fast rotators" in s.populations
    ex.populations.save_expression("hot", "teff > 6000")
    ex.populations.save_expression("metal rich", "feh > 0.1 and binary_class in ['single', 'wide']")
    ex.populations.pop_a, ex.populations.pop_b = "hot", "metal rich"
    n_union = ex.populations.combine("union", "hot or rich")
    n_inter = ex.populations.combine("intersection", "hot and rich")
    hot = (stars.teff > 6000).to_numpy()
    rich = ((stars.feh > 0.1) & stars.binary_class.isin(["single", "wide"])).to_numpy()
    assert n_union == int((hot | rich).sum()) and n_inter == int((hot & rich).sum())
    s.select_population("hot or rich")
    assert s.selection_count == n_union
    s.select_query("prot_days < 10")
    assert ex.populations.save_selection("fast") == int((stars.prot_days < 10).sum())


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "teff.__class__", "teff > @x",
                                  "nope > 3", "teff >", "[c for c in teff]", "lambda: 1"])
def test_unsafe_or_bad_expressions_are_refused(ex, expr):
    from app.state import UserInputError
    with pytest.raises(UserInputError):
        ex.session.select_query(expr)
    assert ex.session.selection is None


def test_compare_populations_scores_and_histograms(ex):
    res = ex.populations.compare("synchronized binaries", "(all stars)")
    assert res["n_a"] > 0 and res["n_b"] == ex.data.n
    names = [r["embedding"] for r in res["scores"]]
    assert names == ["desa", "light_curve", "spectrum"]
    ex.populations.save_expression("cool", "teff < 5000")
    ex.populations.save_expression("warm", "teff > 6000")
    res = ex.populations.compare("cool", "warm")
    desa = res["scores"][0]
    assert desa["n_per_class"] >= 5 and 0.8 < desa["balanced_accuracy"] <= 1.0  # Teff is in the embedding


def test_search_by_id_position_and_click(ex):
    d, s = ex.data, ex.session
    sid = d.star_ids[3]
    ex.search.k = 7
    table = ex.search.search_star(sid)
    assert len(table) == 7 and sid not in set(table.star_id)
    assert table.similarity.is_monotonic_decreasing and (table.similarity <= 1.0001).all()
    assert s.target == sid and s.neighbours is table
    overlay = ex.maps.render("umap")
    assert len(_layer(overlay, "Neighbours")) == 7 and len(_layer(overlay, "Target")) == 1  # on the map
    # restrict to a selection: every neighbour lies in it
    s.select_query("teff > 5800")
    ex.search.restrict = "(current selection)"
    table = ex.search.search_star(sid)
    assert (d.artifacts.stars.teff.iloc[table.row] > 5800).all()
    ex.search.restrict = "all stars"
    # sky position in degrees and sexagesimal
    ra, dec = float(d.column("ra")[11]), float(d.column("dec")[11])
    ex.search.search_position(f"{ra:.6f} {dec:.6f}", radius_arcsec=1.0)
    assert s.target == d.star_ids[11]
    from astropy.coordinates import SkyCoord
    txt = SkyCoord(ra, dec, unit="deg").to_string("hmsdms", sep=":", precision=3)
    ex.search.search_position(txt, radius_arcsec=1.0)
    assert s.target == d.star_ids[11]
    # click on a map picks the nearest star as the target
    x, y = float(d.column("umap_x")[20]), float(d.column("umap_y")[20])
    ex.maps._tap_handler("umap")(x=x, y=y)
    assert s.target_row == ex.maps.nearest_star("umap", x, y) >= 0


def test_search_light_curve_and_spectrum_indexes(ex):
    d = ex.data
    ex.search.index_name = "spectrum"
    has = d.has_embedding("spectrum")
    table = ex.search.search_row(int(np.flatnonzero(has)[0]))
    assert has[table.row].all()
    from app.state import UserInputError
    with pytest.raises(UserInputError, match="no a spectrum|has no"):
        ex.search.search_row(int(np.flatnonzero(~has)[0]))


@pytest.mark.parametrize("bad,match", [("KIC 0", "unknown star"), ("", "enter a star id")])
def test_search_bad_star_id(ex, bad, match):
    from app.state import UserInputError
    with pytest.raises(UserInputError, match=match):
        ex.search.search_star(bad)


@pytest.mark.parametrize("text", ["not a position", "12 hours", "999 999"])
def test_search_bad_positions(ex, text):
    from app.state import UserInputError
    with pytest.raises(UserInputError):
        ex.search.search_position(text, radius_arcsec=2.0)


def test_uploads_broken_too_big_and_no_model(ex, monkeypatch):
    from app.components import search as search_mod
    from app.state import UserInputError
    with pytest.raises(UserInputError, match="not a FITS|not a readable"):
        ex.search.search_upload(light_curve=(b"SIMPLE = garbage" * 400, "broken.fits"))
    with pytest.raises(UserInputError, match="empty"):
        ex.search.search_upload(spectrum=(b"", "empty.fits"))
    monkeypatch.setattr(search_mod, "MAX_UPLOAD_BYTES", 1000)
    with pytest.raises(UserInputError, match="upload limit"):
        search_mod.save_upload(b"x" * 2000, "big.fits", limit=search_mod.MAX_UPLOAD_BYTES)
    with pytest.raises(UserInputError, match="choose"):
        ex.search.search_upload()


def test_upload_embedded_live_with_a_model(ex, tmp_path, monkeypatch):
    """A valid Kepler FITS goes through the reader and the model's embed_single into the index search."""
    from astropy.io import fits
    t = np.linspace(130, 220, 3000)
    cols = [fits.Column(name="TIME", format="D", array=t),
            fits.Column(name="PDCSAP_FLUX", format="E", array=1e4 * (1 + 0.01 * np.sin(t))),
            fits.Column(name="PDCSAP_FLUX_ERR", format="E", array=np.full_like(t, 10.0)),
            fits.Column(name="SAP_QUALITY", format="J", array=np.zeros(len(t), int))]
    h0 = fits.PrimaryHDU()
    h0.header["KEPLERID"] = 10000001
    h0.header["TELESCOP"] = "Kepler"
    h0.header["QUARTER"] = 2
    hdu = fits.BinTableHDU.from_columns(cols, name="LIGHTCURVE")
    buf = io.BytesIO()
    fits.HDUList([h0, hdu]).writeto(buf)
    seen = {}
    target = np.asarray(ex.data.embedding("desa")[5], np.float32)

    class FakeEmbedder:  # stands in for the trained model; the app side is what is tested here
        def embed_single(self, light_curve=None, spectrum=None, rv_kms=0.0, abs_g=None):
            seen["lc"], seen["abs_g"] = light_curve, abs_g
            return {"desa": target, "light_curve": None, "spectrum": None}

        def predict(self, out):
            return {"p_binary": 0.25, "age_pred_gyr": 3.0, "age_pred_lo_gyr": 1.0, "age_pred_hi_gyr": 6.0}

    monkeypatch.setattr(ex.data, "embedder", lambda: FakeEmbedder())
    table = ex.search.search_upload(light_curve=(buf.getvalue(), "kplr010000001_llc.fits"))
    assert table.row.iloc[0] == 5 and table.similarity.iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert abs(np.nanmedian(seen["lc"][1]) - 1) < 1e-6  # normalised flux reached the model
    assert ex.session.target.startswith("upload")
    # Placed on the UMAP through its neighbours (it is star 5's twin, so at star 5), marked there, not on the
    # CMD / HR diagram (no catalogue match: KIC 10000001 is not in this set).
    pos = ex.session.target_positions
    assert set(pos) == {"umap"} and ex.session.upload["matched_row"] == -1 and seen["abs_g"] is None
    assert pos["umap"] == pytest.approx((ex.data.column("umap_x")[5], ex.data.column("umap_y")[5]), abs=1e-3)
    marked = _layer(ex.maps.render("umap"), "Target")
    assert len(marked.data) == 1 and marked.data.iloc[0, 0] == pytest.approx(pos["umap"][0])
    assert len(_layer(ex.maps.render("cmd"), "Target").data) == 0
    summary = dict(ex.search.upload_summary().to_numpy())
    assert summary["catalogue match"].startswith("none")
    assert summary["predicted: P(binary) (binary head)"] == "0.25"
    assert "[1, 6]" in summary["predicted: age, median (age head) [Gyr]"]
    assert summary["P_rot, ACF (peak height)"].startswith("6.2")      # sin(t): P = 2 pi d
    # A catalogue star's id on the upload: matched, its observed M_G read, its CMD position used.
    monkeypatch.setattr(ex.data, "match_upload", lambda kepler_id=None, obsid=None: (7, "KEPLERID 10000001"))
    ex.search.search_upload(light_curve=(buf.getvalue(), "kplr010000001_llc.fits"))
    assert set(ex.session.target_positions) >= {"umap", "cmd"}
    assert ex.session.target_positions["cmd"] == pytest.approx(
        (ex.data.column(ex.data.maps["cmd"].x)[7], ex.data.column(ex.data.maps["cmd"].y)[7]))


def test_probes_numeric_categorical_and_selection(ex):
    p = ex.probes
    r = p.fit("teff", n_labels=60)
    assert r.metric == "R^2" and r.n_train == 60 and r.n_test > 100
    assert set(r.scores) == {"desa", "light_curve", "spectrum"}
    assert r.scores["desa"] > 0.5  # Teff is linearly readable from the synthetic embedding
    assert ex.session.color == "probe prediction" and ex.session.prediction.shape == (ex.data.n,)
    overlay = ex.maps.render("hr")
    assert _layer(overlay, "Selected").vdims[0].label.startswith("probe")
    r = p.fit("binary_class", n_labels=80, positive_class="close_sync")
    assert r.metric == "AUC" and 0 <= r.scores["desa"] <= 1
    ex.session.select_query("teff > 6000")
    r = p.fit("(current selection)", n_labels=20)
    assert r.n_train == 40 and r.scores["desa"] > 0.8
    from app.state import UserInputError
    with pytest.raises(UserInputError):
        p.fit("teff", n_labels=10_000)


@pytest.mark.parametrize("fmt", ["CSV", "Parquet", "VOTable"])
def test_exports_round_trip(ex, fmt):
    ex.session.select_query("teff > 6200")
    n = ex.session.selection_count
    data = ex.export.to_bytes("(current selection)", fmt)
    if fmt == "CSV":
        back = pd.read_csv(io.BytesIO(data))
    elif fmt == "Parquet":
        back = pd.read_parquet(io.BytesIO(data))
    else:
        from astropy.io.votable import parse_single_table
        back = parse_single_table(io.BytesIO(data)).to_table().to_pandas()
    assert len(back) == n and set(back.star_id.astype(str)) == set(ex.selected_stars().star_id)
    ex.search.search_star(ex.data.star_ids[0])
    nb = ex.export.table("neighbour list")
    assert list(nb.columns[:3]) == ["rank", "similarity", "star_id"] and len(nb) == ex.search.k
    assert len(ex.export.to_bytes("synchronized binaries", fmt)) > 0


def test_python_api_current_selection(ex):
    from app.main import current_selection
    ex.session.select_query("feh < 0")
    ex.session.selection_version += 0
    ex._touch()
    got = current_selection(columns=["star_id", "feh"])
    assert (got.feh < 0).all() and len(got) == ex.session.selection_count


def test_star_detail_and_notices(ex):
    ex.star_detail.show(ex.data.star_ids[2])
    props = ex.star_detail._props.value
    assert "prot_days" in set(props.property)
    assert ex.data.is_synthetic_benchmark
    header = ex.header()
    assert "SYNTHETIC BENCHMARK" in header.objects[0].object


def _plot(ex, key):
    return list(ex.maps.panes[key]._plots.values())[0][0]


def test_selection_pushed_to_bokeh_matches_a_full_redraw(ex):
    """The fast path (new 'Selected' raster straight into the Bokeh source) draws what HoloViews would, for a
    density, a numeric and a class colouring; likewise the neighbour, target and hover markers."""
    from bokeh.document import Document
    ex.__panel__().get_root(Document())
    shown = ex.maps.shown_keys()
    for colour, group in (("density", "Selected"), ("teff", "Selected"), ("binary_class", "SelectedClasses")):
        ex.session.color = colour
        ex.session.select_query("teff > 5800")
        sources = {k: _plot(ex, k).subplots[(group, "I")].handles["source"] for k in shown}
        fast = {k: np.array(s.data["image"][0]) for k, s in sources.items()}
        for k, s in sources.items():
            ex.maps.redraw(k)  # full HoloViews redraw
            full = np.asarray(s.data["image"][0])
            assert fast[k].shape == full.shape and fast[k].dtype == full.dtype, (colour, k)
            assert np.array_equal(np.nan_to_num(fast[k], nan=-9), np.nan_to_num(full, nan=-9)), (colour, k)
        base_group = "Base" if group == "Selected" else "BaseClasses"
        base = _plot(ex, "cmd").subplots[(base_group, "I")].handles["source"]
        lit = (lambda a: np.isfinite(a)) if group == "Selected" else (lambda a: a != 0)
        assert 0 < lit(fast["cmd"]).sum() < lit(np.asarray(base.data["image"][0])).sum()
    # the same for the neighbour and target markers of a similarity search, and the hover marker
    ex.search.search_row(4)
    m = ex.data.maps[shown[0]]
    ex.maps.hover_at(shown[0], float(ex.data.column(m.x)[4]), float(ex.data.column(m.y)[4]))
    for k in shown:
        plot = _plot(ex, k)
        fast = {g: {c: np.array(v) for c, v in plot.subplots[(g, "I")].handles["source"].data.items()}
                for g in ("Neighbours", "Target", "Hover")}
        ex.maps.redraw(k)
        for g in fast:
            full = plot.subplots[(g, "I")].handles["source"].data
            assert all(np.array_equal(fast[g][c], np.asarray(full[c])) for c in full), (k, g)
        assert len(fast["Neighbours"]["star_id"]) == ex.search.k and len(fast["Target"]) == 2
        hovered = len(next(iter(fast["Hover"].values())))
        assert hovered == (1 if k == shown[0] else 0), (k, hovered)
    assert ex.maps.hover == (shown[0], 4)
