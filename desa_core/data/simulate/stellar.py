"""Stellar parameters from the MIST v2.5 isochrone grid (shipped by ``lachesis-grids``), interpolated in
(initial mass, age, [Fe/H]).

The grid is a set of isochrones on a regular (log10 age, [Fe/H]) lattice, each tabulated by equivalent
evolutionary phase (EEP, MIST's phase-aligned point index: 202 ZAMS, 454 TAMS, 605 RGB tip, 631 zero-age core
He burning, 707 end of core He burning). Interpolating at fixed initial mass between two isochrones would
blend a main-sequence star with a red giant near the turn-off; interpolating at fixed EEP does not, because a
given EEP is the same evolutionary moment in every isochrone. So, for a star of initial mass m, age t and
metallicity z:

1. the four isochrones at the corners of the (log t, z) cell get bilinear weights w_k;
2. the interpolated isochrone at each EEP is sum_k w_k * iso_k(EEP) (initial mass, log Teff, log L, log R,
   current mass), and initial mass increases monotonically along it;
3. the star's fractional EEP is where that interpolated mass curve reaches m; its parameters are read there.

Stars past EEP 707 (AGB, white dwarfs) are flagged invalid: the simulated survey draws a replacement.
Cite MIST (Choi et al. 2016; Dotter 2016) when using these parameters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MIST_FILE = "mist_v2.5_vvcrit0.4.h5"
EEP_MIN, EEP_TAMS, EEP_MAX = 150, 454, 707
# Columns of the lachesis MIST table that we use.
_COL = {"eep": 0, "initial_mass": 2, "star_mass": 3, "log_teff": 4, "log_l": 6, "log_r": 7}
_PROPS = ("initial_mass", "star_mass", "log_teff", "log_l", "log_r")
COOL_DWARF_TEFF_CORRECTION = 0.035  # fractional Teff decrease of M/K dwarfs at fixed L (see interpolate_stars)


@dataclass(frozen=True)
class IsochroneGrid:
    """Dense isochrone lattice: ``table[feh_i, age_i, eep - EEP_MIN, prop]``, NaN outside an isochrone."""

    log_ages: np.ndarray  # (A,) log10(age/yr)
    fehs: np.ndarray      # (F,)
    table: np.ndarray     # (F, A, E, len(_PROPS)) float64
    first: np.ndarray     # (F, A) first EEP index defined in each isochrone
    end: np.ndarray       # (F, A) one past the last defined EEP index
    path: str


def mist_path() -> Path:
    try:
        from lachesis_grids import grid_path
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise ImportError("the simulated survey needs the `lachesis-grids` package (MIST isochrones): "
                          "pip install lachesis-grids") from e
    return grid_path(MIST_FILE)


@lru_cache(maxsize=4)
def load_grid(feh_range=(-1.0, 0.5), log_age_range=(7.9, 10.2)) -> IsochroneGrid:
    """Read the part of the MIST grid the survey needs (a few tens of MB) into a dense array."""
    import h5py

    path = mist_path()
    with h5py.File(path, "r") as f:
        if f.attrs.get("storage") != "sparse_v1":
            raise ValueError(f"{path}: unknown isochrone storage {f.attrs.get('storage')!r}; "
                             f"expected lachesis 'sparse_v1'")
        cols = [str(c) for c in f.attrs["columns"]]
        for name, i in _COL.items():
            want = {"log_teff": "log_Teff", "log_l": "log_L", "log_r": "log_R"}.get(name, name)
            if cols[i] != want:
                raise ValueError(f"{path}: column {i} is {cols[i]!r}, expected {want!r}")
        ages = f["age_values"][:]
        fehs = f["feh_values"][:]
        lengths = f["lengths"][:]
        eep0 = f["offsets"][:]  # first EEP of each isochrone
        starts = np.concatenate([[0], np.cumsum(lengths)])
        fi_sel = np.flatnonzero((fehs >= feh_range[0] - 1e-9) & (fehs <= feh_range[1] + 1e-9))
        ai_sel = np.flatnonzero((ages >= log_age_range[0] - 1e-9) & (ages <= log_age_range[1] + 1e-9))
        n_e = EEP_MAX - EEP_MIN + 1
        table = np.full((len(fi_sel), len(ai_sel), n_e, len(_PROPS)), np.nan)
        values = f["values"]
        for a, fi in enumerate(fi_sel):
            k0, k1 = fi * len(ages) + ai_sel[0], fi * len(ages) + ai_sel[-1]
            block = values[starts[k0]:starts[k1 + 1]]  # contiguous ages of one metallicity: one read
            for b, ai in enumerate(ai_sel):
                k = fi * len(ages) + ai
                rows = block[starts[k] - starts[k0]:starts[k + 1] - starts[k0]]
                if rows[0, 0] != eep0[k]:
                    raise ValueError(f"{path}: isochrone {k} starts at EEP {rows[0, 0]}, index says {eep0[k]}")
                # A few EEPs are stored as all-NaN rows; they are filled below from their neighbours.
                rows = rows[np.all(np.isfinite(rows[:, [_COL[p] for p in ("eep",) + _PROPS]]), axis=1)]
                eep = rows[:, 0].astype(int)
                keep = (eep >= EEP_MIN) & (eep <= EEP_MAX)
                table[a, b, eep[keep] - EEP_MIN] = rows[keep][:, [_COL[p] for p in _PROPS]]
                _fill_gaps(table[a, b])
    log.info("loaded MIST v2.5 grid: %d [Fe/H] x %d ages x %d EEPs from %s", len(fi_sel), len(ai_sel), n_e, path)
    ok = np.isfinite(table[..., 0])
    first = np.where(ok.any(axis=2), np.argmax(ok, axis=2), n_e)
    end = np.where(ok.any(axis=2), n_e - np.argmax(ok[..., ::-1], axis=2), 0)
    return IsochroneGrid(log_ages=ages[ai_sel], fehs=fehs[fi_sel], table=table, first=first, end=end,
                         path=str(path))


def _fill_gaps(iso: np.ndarray) -> None:
    """Linearly interpolate missing EEPs inside an isochrone (in place); the ends stay NaN."""
    ok = np.isfinite(iso[:, 0])
    if ok.sum() < 2:
        return
    lo, hi = np.argmax(ok), len(ok) - np.argmax(ok[::-1])
    gap = ~ok[lo:hi]
    if gap.any():
        e = np.arange(lo, hi)
        for p in range(iso.shape[1]):
            iso[lo:hi, p][gap] = np.interp(e[gap], e[~gap], iso[lo:hi, p][~gap])


def _cell(x: np.ndarray, nodes: np.ndarray):
    i = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, len(nodes) - 2)
    t = np.clip((x - nodes[i]) / (nodes[i + 1] - nodes[i]), 0.0, 1.0)
    return i, t


def interpolate_stars(mass, age_gyr, feh, grid: IsochroneGrid | None = None) -> dict[str, np.ndarray]:
    """Stellar parameters for stars of initial ``mass`` [Msun], ``age_gyr`` and ``feh``.

    Returns arrays: teff [K], logg [cgs], log_lum [Lsun], radius [Rsun], mass [Msun, current], eep,
    valid (False for stars beyond core He burning or outside the grid's mass range).

    Stars are grouped by (age, [Fe/H]) cell; within a cell, each star's interpolated isochrone mass curve is one
    row of a matrix product, so the work is a few array operations per cell.
    """
    grid = grid or load_grid()
    mass = np.asarray(mass, float)
    n = len(mass)
    log_age = np.log10(np.asarray(age_gyr, float)) + 9.0
    feh = np.asarray(feh, float)
    ia, ta = _cell(log_age, grid.log_ages)
    iz, tz = _cell(feh, grid.fehs)
    out = {k: np.full(n, np.nan) for k in ("eep", "star_mass", "log_teff", "log_l", "log_r")}
    valid = np.zeros(n, bool)
    cell_id = iz * len(grid.log_ages) + ia
    order = np.argsort(cell_id, kind="stable")
    bounds = np.flatnonzero(np.diff(cell_id[order])) + 1
    for idx in np.split(order, bounds):
        if len(idx) == 0:
            continue
        z, a = iz[idx[0]], ia[idx[0]]
        e_lo = grid.first[[z, z, z + 1, z + 1], [a, a + 1, a, a + 1]].max()
        e_hi = grid.end[[z, z, z + 1, z + 1], [a, a + 1, a, a + 1]].min()  # common EEP range of the corners
        if e_hi - e_lo < 2:
            continue
        corners = grid.table[[z, z, z + 1, z + 1], [a, a + 1, a, a + 1], e_lo:e_hi]  # (4, E, P)
        w = np.stack([(1 - tz[idx]) * (1 - ta[idx]), (1 - tz[idx]) * ta[idx],
                      tz[idx] * (1 - ta[idx]), tz[idx] * ta[idx]], axis=1)  # (n_c, 4)
        m_curve = w @ corners[:, :, 0]  # (n_c, E): initial mass along each star's own isochrone
        m = mass[idx]
        j = np.sum(m_curve < m[:, None], axis=1)  # first EEP index with mass >= m
        inside = (j > 0) & (j < m_curve.shape[1])
        # Stars lighter than the lowest EEP in range sit on the lower main sequence: clamp to it.
        low = j == 0
        j = np.clip(j, 1, m_curve.shape[1] - 1)
        rows = np.arange(len(idx))
        m0, m1 = m_curve[rows, j - 1], m_curve[rows, j]
        frac = np.where(m1 > m0, (m - m0) / np.where(m1 > m0, m1 - m0, 1.0), 1.0)
        frac = np.where(low, 0.0, np.clip(frac, 0.0, 1.0))
        j0 = np.where(low, 0, j - 1)
        j1 = np.where(low, 0, j)
        p0 = np.einsum("nk,knp->np", w, corners[:, j0])
        p1 = np.einsum("nk,knp->np", w, corners[:, j1])
        p = p0 + frac[:, None] * (p1 - p0)
        out["eep"][idx] = EEP_MIN + e_lo + j0 + frac
        for k, name in enumerate(_PROPS[1:], start=1):
            out[name][idx] = p[:, k]
        valid[idx] = inside | low
    # Cool dwarfs: models are ~2-4% too hot (and too small) at a given luminosity compared with interferometric
    # and empirical scales (Boyajian et al. 2012; Mann et al. 2015), which put simulated K/M dwarfs 0.3-0.4 mag
    # below Mamajek's dwarf sequence at their Teff. Cool them at fixed L (the radius grows to keep L = 4 pi R^2
    # sigma T^4): -3.5% below 4300 K, fading out by 5300 K.
    dwarf = np.nan_to_num(out["eep"], nan=EEP_MAX) < EEP_TAMS
    dlog_t = np.where(dwarf, np.log10(1.0 - COOL_DWARF_TEFF_CORRECTION
                                      * np.clip((5300.0 - 10 ** out["log_teff"]) / 1000.0, 0.0, 1.0)), 0.0)
    out["log_teff"] = out["log_teff"] + dlog_t
    out["log_r"] = out["log_r"] - 2 * dlog_t
    teff = 10 ** out["log_teff"]
    radius = 10 ** out["log_r"]
    logg = 4.438 + np.log10(out["star_mass"]) - 2 * out["log_r"]
    valid &= np.isfinite(teff)
    return {"teff": teff, "logg": logg, "log_lum": out["log_l"], "radius": radius, "mass": out["star_mass"],
            "eep": np.where(valid, out["eep"], np.nan), "valid": valid}


def evolutionary_phase(eep: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """'MS' before the terminal-age main sequence, 'subgiant' after it while logg >= 3.5, else 'giant'.

    Core-helium-burning stars (EEP >= 631, the red clump) are giants whatever their logg.
    """
    eep = np.asarray(eep)
    logg = np.asarray(logg)
    return np.where(eep < EEP_TAMS, "MS", np.where((logg >= 3.5) & (eep < 605), "subgiant", "giant"))
