"""The stellar population along the Kepler sightline: initial masses, ages, metallicities, sky positions and
distances, before any selection.

* Initial mass: Kroupa (2001) IMF, dN/dm ~ m^-1.3 below 0.5 Msun and m^-2.3 above, over ``mass_range``.
* Age: a smooth star-formation history, p(age) ~ exp(age / tau) over ``age_range_gyr`` (the thin disk formed
  stars faster in the past).
* [Fe/H] ~ N(feh_mean, feh_sigma), clipped to the grid's [-1, +0.5].
* Sky: uniform within ``field_radius_deg`` of the Kepler field centre (RA 290.67, Dec +44.5; l ~ 76, b ~ +13.5).
* Distance: p(d) ~ d^2 rho(R, z) with a double-exponential thin disk, rho ~ exp(-(R - R0)/L) exp(-|z|/h(age)),
  whose scale height grows with age (disk heating): young stars crowd the plane, so at b ~ 13 deg the
  survey sees few young stars (only nearby) and mostly old ones. Each age's disk has a surface density set
  by the star-formation history, so its midplane density is Sigma / 2h. Distances are drawn by inverse CDF
  of tabulated p(d | sin b, h); the pipeline truncates it to the range where a star passes the magnitude
  limits and weighs each star by its population's share of the cone (:attr:`DistanceTable.weight`):
  importance sampling of a magnitude-limited survey.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

R0_PC = 8200.0   # Sun's Galactocentric radius
Z_SUN_PC = 20.0  # Sun's height above the plane


def sample_kroupa(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """Initial masses from the Kroupa (2001) broken power law, by inverse CDF."""
    brk = 0.5

    def seg_int(a, b, alpha, k):  # integral of k m^-alpha from a to b
        return k * (b ** (1 - alpha) - a ** (1 - alpha)) / (1 - alpha)

    k_lo, k_hi = 1.0, brk ** (2.3 - 1.3)  # continuity at 0.5 Msun
    a1, b1 = lo, min(hi, brk)
    a2, b2 = max(lo, brk), hi
    w1 = seg_int(a1, b1, 1.3, k_lo) if b1 > a1 else 0.0
    w2 = seg_int(a2, b2, 2.3, k_hi) if b2 > a2 else 0.0
    u = rng.uniform(0.0, 1.0, n)
    first = u < w1 / (w1 + w2)
    v = rng.uniform(0.0, 1.0, n)
    m = np.empty(n)
    if w1 > 0:
        m[first] = (a1 ** -0.3 + v[first] * (b1 ** -0.3 - a1 ** -0.3)) ** (1 / -0.3)
    if w2 > 0:
        m[~first] = (a2 ** -1.3 + v[~first] * (b2 ** -1.3 - a2 ** -1.3)) ** (1 / -1.3)
    return m


def sample_ages(rng: np.random.Generator, n: int, lo: float, hi: float, tau: float) -> np.ndarray:
    """Ages [Gyr] with p(age) ~ exp(age / tau) on [lo, hi]."""
    u = rng.uniform(0.0, 1.0, n)
    return tau * np.log(np.exp(lo / tau) + u * (np.exp(hi / tau) - np.exp(lo / tau)))


# ICRS -> Galactic rotation (Hipparcos definition, as in astropy's Galactic frame).
_ICRS_TO_GAL = np.array([[-0.0548755604162154, -0.8734370902348850, -0.4838350155487132],
                         [+0.4941094278755837, -0.4448296299600112, +0.7469822444972189],
                         [-0.8676661490190047, -0.1980763734312015, +0.4559837761750669]])


def sample_sky(rng: np.random.Generator, n: int, center_radec: tuple[float, float], radius_deg: float):
    """(ra, dec) uniform on the sphere within radius_deg of the centre, and galactic (l, b), all in degrees."""
    cos_r = np.cos(np.radians(radius_deg))
    rho = np.arccos(1 - rng.uniform(0.0, 1.0, n) * (1 - cos_r))
    pa = rng.uniform(0.0, 2 * np.pi, n)
    ra0, dec0 = np.radians(center_radec[0]), np.radians(center_radec[1])
    dec = np.arcsin(np.sin(dec0) * np.cos(rho) + np.cos(dec0) * np.sin(rho) * np.cos(pa))
    ra = ra0 + np.arctan2(np.sin(pa) * np.sin(rho) * np.cos(dec0), np.cos(rho) - np.sin(dec0) * np.sin(dec))
    xyz = np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])
    gx, gy, gz = _ICRS_TO_GAL @ xyz
    glon = np.degrees(np.arctan2(gy, gx)) % 360.0
    glat = np.degrees(np.arcsin(np.clip(gz, -1, 1)))
    return np.degrees(ra) % 360.0, np.degrees(dec), glon, glat


def scale_height_pc(age_gyr, young_pc: float, old_pc: float) -> np.ndarray:
    return young_pc + (old_pc - young_pc) * (np.asarray(age_gyr, float) / 12.0) ** 0.6


@dataclass(frozen=True)
class DistanceTable:
    d: np.ndarray         # (D,) pc
    sin_b: np.ndarray     # (B,)
    log_h: np.ndarray     # (H,) log10 scale height [pc]
    cdf: np.ndarray       # (B, H, D) normalised cumulative distribution of p(d)
    weight: np.ndarray    # (B, H) stars in the whole cone per unit disk surface density, / its maximum


@lru_cache(maxsize=8)
def distance_table(l_deg: float, max_distance_pc: float, scale_length_pc: float,
                   h_range: tuple[float, float]) -> DistanceTable:
    d = np.linspace(0.0, max_distance_pc, 6001)
    sin_b = np.sin(np.radians(np.linspace(5.0, 23.0, 19)))
    log_h = np.linspace(np.log10(h_range[0]) - 0.02, np.log10(h_range[1]) + 0.02, 33)
    cos_l = np.cos(np.radians(l_deg))
    cdf = np.empty((len(sin_b), len(log_h), len(d)))
    weight = np.empty((len(sin_b), len(log_h)))
    for i, sb in enumerate(sin_b):
        cb = np.sqrt(1 - sb**2)
        R = np.sqrt(R0_PC**2 + (d * cb) ** 2 - 2 * R0_PC * d * cb * cos_l)
        z = np.abs(Z_SUN_PC + d * sb)
        for j, lh in enumerate(log_h):
            # Midplane density = surface density / (2 h): a population born with the same surface density
            # but a thinner layer is denser in the plane and sparser along an inclined sightline.
            p = d**2 * np.exp(-(R - R0_PC) / scale_length_pc - z / 10**lh) / (2 * 10**lh)
            c = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(d))])
            cdf[i, j] = c / c[-1]
            weight[i, j] = c[-1]
    return DistanceTable(d=d, sin_b=sin_b, log_h=log_h, cdf=cdf, weight=weight / weight.max())


def _nearest(nodes, x):
    i = np.clip(np.searchsorted(nodes, x), 1, len(nodes) - 1)
    return np.where(np.abs(nodes[i - 1] - x) <= np.abs(nodes[i] - x), i - 1, i)


def table_rows(table: DistanceTable, sin_b, h_pc) -> np.ndarray:
    """Flat index of the tabulated distance distribution nearest to each star's (sin b, scale height)."""
    ib = _nearest(table.sin_b, np.asarray(sin_b, float))
    ih = _nearest(table.log_h, np.log10(np.asarray(h_pc, float)))
    return ib * len(table.log_h) + ih


def _grouped(rows: np.ndarray, fn, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows))
    order = np.argsort(rows, kind="stable")
    for idx in np.split(order, np.flatnonzero(np.diff(rows[order])) + 1):
        if len(idx):
            out[idx] = fn(rows[idx[0]], x[idx])
    return out


def distance_cdf(table: DistanceTable, rows: np.ndarray, d_pc) -> np.ndarray:
    """F(d): the fraction of a star's sightline population closer than d."""
    flat = table.cdf.reshape(-1, len(table.d))
    d = np.clip(np.asarray(d_pc, float), 0.0, table.d[-1])
    return _grouped(rows, lambda r, x: np.interp(x, table.d, flat[r]), d)


def distance_quantile(table: DistanceTable, rows: np.ndarray, u) -> np.ndarray:
    """F^-1(u): inverse of :func:`distance_cdf` (u in [0, 1])."""
    flat = table.cdf.reshape(-1, len(table.d))
    return _grouped(rows, lambda r, x: np.interp(x, flat[r], table.d), np.asarray(u, float))
