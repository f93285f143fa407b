"""Hover and click find the star under the cursor through a grid of the map (app.state.MapGrid): the same star
brute force finds, at every zoom, beyond the map's default range and with stars that have no position."""
import numpy as np
import pytest

from app.state import MapGrid


def _brute(x, y, qx, qy, sx, sy, max_px):
    px = np.hypot((x - qx) / sx, (y - qy) / sy)
    px[~np.isfinite(px)] = np.inf
    k = int(np.argmin(px))
    return k if px[k] <= max_px else -1, px


@pytest.mark.parametrize("zoom", [1.0, 0.02, 8.0])
def test_the_grid_finds_the_star_brute_force_finds(zoom):
    rng = np.random.default_rng(0)
    n = 20_000
    x = np.concatenate([rng.normal(0, 1, n // 2), rng.normal(4, 0.1, n // 2)]).astype(np.float32)
    y = np.concatenate([rng.normal(0, 1, n // 2), rng.normal(-2, 0.1, n // 2)]).astype(np.float32)
    x[::50] = np.nan                                          # stars without this map
    x[:5], y[:5] = 30.0, 30.0                                 # far beyond the default range
    grid = MapGrid(x, y, (-4, 6), (-4, 4), g=64)
    width, height = 400, 300
    xr = np.array([-4, 6]) * zoom
    yr = np.array([-4, 4]) * zoom
    sx, sy = (xr[1] - xr[0]) / width, (yr[1] - yr[0]) / height
    queries = np.column_stack([rng.uniform(xr[0] * 1.2, xr[1] * 1.2, 300), rng.uniform(yr[0] * 1.2, yr[1] * 1.2, 300)])
    near = rng.choice(np.flatnonzero(np.isfinite(x)), 150)    # the cursor a few pixels off a star
    queries = np.vstack([queries, np.column_stack([x[near] + 3 * sx * rng.normal(size=150),
                                                   y[near] + 3 * sy * rng.normal(size=150)]),
                         [[30.0, 30.0], [29.0, 31.0], [4.0, -2.0]]])
    found = 0
    for qx, qy in queries:
        want, px = _brute(x.astype(np.float64), y.astype(np.float64), qx, qy, sx, sy, 8)
        got = grid.nearest(qx, qy, sx, sy, 8)
        if want < 0:
            assert got == -1
        else:
            found += 1
            assert got >= 0 and px[got] == pytest.approx(px[want])   # the nearest (ties: either star)
    assert found > 100


def test_the_grid_holds_every_positioned_star_once():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=5000).astype(np.float32), rng.normal(size=5000).astype(np.float32)
    y[::7] = np.nan
    g = MapGrid(x, y, (-3, 3), (-3, 3), g=32)
    held = g.rows[:g.starts[-1]]
    assert sorted(held) == sorted(np.flatnonzero(np.isfinite(x) & np.isfinite(y)))
