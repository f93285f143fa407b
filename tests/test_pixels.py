"""The maps' rasters at their default view come from each star's pixel number (app.pixels.PixelIndex), zoomed
ones from datashader: both must draw the same pixels. Checked against datashader itself on stars that sit on the
frame's edges, beyond it, without a position, with NaN values and without a class, at every spread width."""
import datashader as ds
import datashader.transfer_functions as tf
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from app.components.maps import _spread_add, _spread_px, aggregate, aggregate_categories
from app.pixels import PixelIndex, in_box

XR, YR = (-2.5, 2.5), (-2.0, 3.0)   # exact in float32: the edge stars land exactly on the frame
W, H = 100, 80


def _stars(n=60_000, seed=3):
    rng = np.random.default_rng(seed)
    x, y, v = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    x[:40] = np.float32(XR[1])      # on the right edge: datashader keeps them in the last column
    y[40:80] = np.float32(YR[1])    # on the top edge
    x[80:120] = np.float32(XR[0])   # on the left edge
    x[120:160], y[160:200] = np.nan, np.inf   # no position
    x[200:240] = 9.0                # beyond the frame
    v[::7] = np.nan                 # no value: left out of the mean, as datashader's count("v") does
    codes = rng.integers(-1, 4, n).astype(np.int16)   # -1: no class
    return x, y, v, codes


def _datashader(x, y, values, rows, spread_px):
    """What the maps drew before the pixel index: datashader's count / mean, spread with tf.spread."""
    if rows is not None:
        x, y, values = x[rows], y[rows], (values[rows] if values is not None else None)
    cols = {"x": x, "y": y} | ({"v": values} if values is not None else {})
    cv = ds.Canvas(plot_width=W, plot_height=H, x_range=XR, y_range=YR)
    if values is None:
        count = cv.points(pd.DataFrame(cols), "x", "y", agg=ds.count())
        if spread_px:
            count = tf.spread(count, px=spread_px, how="add")
        out = count.values.astype(np.float32)
        out[out == 0] = np.nan
        return out
    agg = cv.points(pd.DataFrame(cols), "x", "y", agg=ds.summary(n=ds.count("v"), s=ds.sum("v")))
    n, s = agg["n"], agg["s"]
    if spread_px:
        n, s = tf.spread(n, px=spread_px, how="add"), tf.spread(s, px=spread_px, how="add")
    n = n.values.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (s.values / n).astype(np.float32)
    out[n == 0] = np.nan
    return out


# row subsets that light many pixels or few: every spread width (0-3) of the maps' dynspread is taken
SUBSETS = ["all", "half", "300", "60", "4"]


def _rows(subset, n):
    rng = np.random.default_rng(1)
    if subset == "all":
        return None
    if subset == "half":
        return np.flatnonzero(rng.random(n) < 0.5)
    # a few random stars and one of each edge / off-frame kind
    return np.sort(np.concatenate([np.arange(0, 240, 40), rng.choice(np.arange(240, n), int(subset), replace=False)]))


@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("mean", [False, True])
def test_pixel_rasters_equal_datashaders(subset, mean):
    x, y, v, _ = _stars()
    rows = _rows(subset, len(x))
    values = v if mean else None
    index = PixelIndex(x, y, XR, YR, W, H)
    fast = aggregate(x, y, values, rows, XR, YR, W, H, pixels=index)
    slow = aggregate(x, y, values, rows, XR, YR, W, H)   # datashader bins (a zoomed view takes this path)
    lit = np.nan_to_num(_datashader(x, y, None, rows, 0))
    ref = _datashader(x, y, values, rows, _spread_px(lit))
    for got in (fast, slow):
        assert np.array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got[np.isfinite(ref)], ref[np.isfinite(ref)], rtol=1e-6)
    if not mean:   # counts are exact, and the edge stars are in the frame's last column and row
        assert np.array_equal(np.nan_to_num(fast), np.nan_to_num(ref))


def test_the_widths_the_subsets_take():
    x, y, _, _ = _stars()
    index = PixelIndex(x, y, XR, YR, W, H)
    widths = {_spread_px(index.counts(_rows(subset, len(x)))) for subset in SUBSETS}
    assert widths == {0, 1, 2, 3}


@pytest.mark.parametrize("rows", [None, "some"])
def test_class_rasters_equal_datashaders(rows):
    x, y, _, codes = _stars()
    rows = None if rows is None else np.sort(np.random.default_rng(2).choice(len(x), 500, replace=False))
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    index = PixelIndex(x, y, XR, YR, W, H)
    fast = aggregate_categories(x, y, codes, colours, rows, XR, YR, W, H, pixels=index)
    slow = aggregate_categories(x, y, codes, colours, rows, XR, YR, W, H)
    assert fast.any() and np.array_equal(fast, slow)
    # and the counts behind them are datashader's count_cat
    sel = np.arange(len(x)) if rows is None else rows
    keep = sel[codes[sel] >= 0]
    df = pd.DataFrame({"x": x[keep], "y": y[keep],
                       "c": pd.Categorical.from_codes(codes[keep], categories=list("0123"))})
    want = ds.Canvas(plot_width=W, plot_height=H, x_range=XR, y_range=YR).points(df, "x", "y",
                                                                              agg=ds.count_cat("c")).values
    assert np.array_equal(index.category_counts(codes, 4, rows), want)


def test_another_frame_is_not_binned_by_the_index():
    x, y, _, _ = _stars()
    index = PixelIndex(x, y, XR, YR, W, H)
    zoom = ((-1.0, 1.0), (-1.0, 1.0))
    assert not index.matches(*zoom, W, H) and not index.matches(XR, YR, W + 1, H) and index.matches(XR, YR, W, H)
    got = aggregate(x, y, None, None, *zoom, W, H, pixels=index)   # falls back to datashader
    ref = aggregate(x, y, None, None, *zoom, W, H)
    assert np.array_equal(np.isnan(got), np.isnan(ref)) and np.nansum(got) == np.nansum(ref)


@pytest.mark.parametrize("px", [1, 2, 3])
@pytest.mark.parametrize("kind", ["count", "sum"])
def test_spread_adds_as_datashader_spreads(px, kind):
    rng = np.random.default_rng(px)
    a = np.where(rng.random((H, W)) < 0.02, rng.integers(1, 50, (H, W)), 0).astype(np.uint32)
    a[0, 0] = a[-1, -1] = a[0, -1] = 7   # corners: the circle is cut by the frame's edges
    if kind == "sum":
        a = np.where(a > 0, rng.normal(size=(H, W)), np.nan)   # datashader's sum: NaN where no star
    ref = tf.spread(xr.DataArray(a, dims=("y", "x")), px=px, how="add").values
    got = _spread_add(a, px)
    np.testing.assert_allclose(got, np.nan_to_num(ref), rtol=1e-12, atol=1e-12)


def test_in_box_is_the_closed_box_and_leaves_out_stars_without_a_position():
    rng = np.random.default_rng(0)
    x, y = (rng.uniform(-1, 1, 50_000).astype(np.float32) for _ in range(2))
    x[:10], y[10:20], x[20:30] = np.nan, np.nan, np.float32(0.25)   # no position / exactly on the edge
    want = ((x.astype(np.float64) >= -0.5) & (x.astype(np.float64) <= 0.25)
            & (y.astype(np.float64) >= -0.3) & (y.astype(np.float64) <= 0.7))
    got = in_box(x, y, -0.5, 0.25, -0.3, 0.7, chunk=4096)   # chunked, as over a memory-mapped column
    assert np.array_equal(got, want) and got[20:30][(y[20:30] >= -0.3) & (y[20:30] <= 0.7)].all()
    assert not got[:20].any()
