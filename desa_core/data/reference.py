"""Real published reference data shipped inside installed PyPI packages, read offline, each with its citation.

Used by :mod:`desa_core.data.validate` to check the simulated survey against real Kepler-field and open-cluster
distributions. The packages are the optional ``validation`` extra (``pip install 'desa-explorer[validation]'``):

- ``star-privateer``: Santos et al. (2019, ApJS 244, 21; 2021, ApJS 255, 17) Kepler rotation catalogues (VizieR
  copies J/ApJS/244/21 and J/ApJS/255/17), their list of stars without a detected period, and three real
  4-year Kepler long-cadence light curves (KADACS-calibrated, García et al. 2011).
- ``gyrointerp``: open-cluster rotation sequences compiled by Bouma, Palumbo & Hillenbrand (2023, ApJL 947, L3)
  and the Bouma et al. (2023) slow-sequence model Prot(Teff, age).
- ``meanstars``: the Pecaut & Mamajek (2013) mean dwarf colour / Teff sequence (Mamajek's table, 2022.04.16).

Every loader raises :class:`ReferenceUnavailable` (with the reason and the install command) when its package is
absent, so a caller can skip one comparison instead of failing the whole report. Package folders are located with
``importlib.util.find_spec`` and read directly: importing ``star_privateer`` pulls heavy optional dependencies, and
importing ``gyrointerp`` creates ``~/.gyrointerp_cache`` (see :func:`bouma_slow_sequence` for how that is kept
working on a read-only or missing home folder).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'desa-explorer[validation]'"

CITATIONS = {
    "santos2019": "Santos, A. R. G., García, R. A., Mathur, S., et al. 2019, ApJS, 244, 21 (VizieR J/ApJS/244/21)",
    "santos2021": "Santos, A. R. G., Breton, S. N., Mathur, S., & García, R. A. 2021, ApJS, 255, 17 "
                  "(VizieR J/ApJS/255/17)",
    "kadacs": "García, R. A., Hekker, S., Stello, D., et al. 2011, MNRAS, 414, L6 (KADACS light curves), "
              "as shipped by star-privateer (Breton et al. 2021, A&A, 647, A125)",
    "bouma2023": "Bouma, L. G., Palumbo, E. K., & Hillenbrand, L. A. 2023, ApJL, 947, L3 (gyro-interp)",
    "mamajek": "Pecaut, M. J., & Mamajek, E. E. 2013, ApJS, 208, 9; E. Mamajek, 'A Modern Mean Dwarf Stellar "
               "Color and Effective Temperature Sequence', version 2022.04.16 (meanstars package)",
    "cranmer_saar2011": "Cranmer, S. R., & Saar, S. H. 2011, ApJ, 741, 54 (convective turnover time, eq. 36)",
    "mcquillan2014": "McQuillan, A., Mazeh, T., & Aigrain, S. 2014, ApJS, 211, 24 (PDC-MAP light curves, ACF)",
    "simonian2019": "Simonian, G. V. A., Pinsonneault, M. H., & Terndrup, D. M. 2019, ApJ, 871, 174",
    "kepler_noise": "Jenkins, J. M., et al. 2010, ApJL, 713, L120; Kepler Instrument Handbook (Van Cleve & "
                    "Caldwell 2016): shot-noise-limited precision per 29.4-min cadence",
}


class ReferenceUnavailable(RuntimeError):
    """A reference data set cannot be loaded here (package absent, file missing); the message says why."""


@dataclass(frozen=True)
class Reference:
    """One real reference table with where it came from."""

    name: str
    table: pd.DataFrame
    citation: str
    source: str
    notes: dict = field(default_factory=dict)


def package_dir(module: str, dist: str | None = None) -> Path:
    """Folder of an installed package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceUnavailable(f"package '{dist or module}' is not installed ({INSTALL_HINT})")
    return Path(list(spec.submodule_search_locations)[0])


def _need(path: Path) -> Path:
    if not path.is_file():
        raise ReferenceUnavailable(f"{path}: expected data file is missing from the installed package")
    return path


def _fits_table(path: Path) -> pd.DataFrame:
    from astropy.io import fits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VizieR ASCII-table units ('[cm/s2]', 'ppm') are not FITS units
        with fits.open(path, memmap=False) as hdul:
            data = hdul[1].data
            out = {}
            for name in data.names:
                col = np.asarray(data[name])
                out[name] = col.astype(float) if col.dtype.kind in "iuf" else col.astype(str)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------------------------- Santos catalogues

@functools.lru_cache(maxsize=1)
def santos_rotation() -> Reference:
    """Santos et al. 2019 (M/K dwarfs) + 2021 (F/G/K, subgiants) Kepler stars with a detected rotation period.

    Columns: kic, kepmag, teff, logg, mass, prot_days, sph_ppm (photometric activity proxy S_ph: standard
    deviation of the light curve over 5 Prot segments, photon-noise corrected), cpcb_candidate (1 = possible
    classical pulsator / close binary), koi, catalogue ('S19', 'S21'). ~55k stars, no star in both.
    """
    d = package_dir("star_privateer", "star-privateer") / "catalogs"
    s19 = _fits_table(_need(d / "santos_2019_catalog.fit"))
    s21 = _fits_table(_need(d / "santos_2021_catalog.fit"))
    keep = {"KIC": "kic", "Kpmag": "kepmag", "Teff": "teff", "logg": "logg", "Mass": "mass", "Prot": "prot_days",
            "Sph": "sph_ppm"}
    a = s19.rename(columns={**keep, "Fl1": "cpcb_candidate", "Fl4": "koi"})
    b = s21.rename(columns={**keep, "flag1": "cpcb_candidate", "flag4": "koi"})
    a["catalogue"], b["catalogue"] = "S19", "S21"
    cols = list(keep.values()) + ["cpcb_candidate", "koi", "catalogue"]
    t = pd.concat([a[cols], b[cols]], ignore_index=True)
    t["kic"] = t["kic"].astype(np.int64)
    t = t[np.isfinite(t["prot_days"]) & (t["prot_days"] > 0)].reset_index(drop=True)
    return Reference("santos_rotation", t, f"{CITATIONS['santos2019']}; {CITATIONS['santos2021']}", str(d))


@functools.lru_cache(maxsize=1)
def santos_no_rotation() -> Reference:
    """KIC ids of the ~101k stars Santos et al. 2021 analysed without detecting a rotation period."""
    d = package_dir("star_privateer", "star-privateer") / "catalogs"
    t = _fits_table(_need(d / "santos_2021_norot.fit")).rename(columns={"KIC": "kic"})
    t["kic"] = t["kic"].astype(np.int64)
    return Reference("santos_no_rotation", t, CITATIONS["santos2021"], str(d))


def santos_detection_fraction() -> float:
    """Fraction of the stars Santos et al. analysed whose rotation period was detected (~0.35)."""
    n_rot, n_norot = len(santos_rotation().table), len(santos_no_rotation().table)
    return n_rot / (n_rot + n_norot)


def pdc_recovery() -> Reference:
    """Per bin of the Santos et al. period (KEPSEISMIC light curves, long periods kept): how many of Santos's
    stars McQuillan et al. 2014 also found a period for from PDC-MAP light curves, and within 10 %. Counts
    derived once from both published tables and shipped with the package (desa_core/data/
    pdc_recovery_mcquillan2014.csv, which says how); the real PDCSAP long-period suppression."""
    path = Path(__file__).with_name("pdc_recovery_mcquillan2014.csv")
    table = pd.read_csv(_need(path), comment="#")
    return Reference("pdc_recovery", table, CITATIONS["mcquillan2014"] + "; " + CITATIONS["santos2019"] + "; "
                     + CITATIONS["santos2021"], str(path))


@dataclass(frozen=True)
class KeplerLightCurve:
    kic: int
    time: np.ndarray        # days from the first cadence
    flux_ppm: np.ndarray    # relative flux in ppm about zero (KADACS)
    observed: np.ndarray    # False where KADACS in-painted a gap
    kepmag: float
    teff: float
    logg: float


@functools.lru_cache(maxsize=1)
def kepler_light_curves() -> tuple[KeplerLightCurve, ...]:
    """The three real 4-year Kepler long-cadence light curves shipped by star-privateer."""
    from astropy.io import fits
    d = package_dir("star_privateer", "star-privateer") / "timeseries"
    out = []
    for name in ("003733735", "008006161", "010644253"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(_need(d / f"{name}.fits"), memmap=False) as h:
                arr = np.asarray(h[0].data, dtype=np.float64)
                hdr = h[0].header
                # Extension 1 is KADACS's in-painting mask: 1 = measured cadence, 2 = filled-in gap.
                mask = np.asarray(h[1].data) == 1 if len(h) > 1 and h[1].data is not None else np.ones(len(arr), bool)
        t = arr[:, 0] - arr[0, 0]
        out.append(KeplerLightCurve(int(hdr.get("KEPLERID", int(name))), t, arr[:, 1], mask,
                                    float(hdr.get("KEPMAG", np.nan)), float(hdr.get("TEFF", np.nan)),
                                    float(hdr.get("LOGG", np.nan))))
    return tuple(out)


# ------------------------------------------------------------------------------------------------ open clusters

# name -> (age [Myr], file under gyrointerp/data/interim, citation of the rotation periods)
CLUSTERS = {
    "Pleiades": (120.0, "pleiades/Rebull_2016_X_GDR3_supplemented.csv",
                 "Rebull, L. M., et al. 2016, AJ, 152, 113"),
    "Praesepe": (670.0, "praesepe_rampalli2021/Rampalli_2021_X_DR3_supplemented.csv",
                 "Rampalli, R., et al. 2021, ApJ, 921, 167; Douglas, S. T., et al. 2017, 2019"),
    "NGC-6811": (1000.0, "ngc6811/Curtis_2019_X_GDR3_supplemented.csv",
                 "Curtis, J. L., et al. 2019, ApJ, 879, 49"),
    "Ruprecht-147": (2700.0, "ruprecht147/Curtis_2020_rup147_X_GDR3_supplemented.csv",
                     "Curtis, J. L., et al. 2020, ApJ, 904, 140"),
    "M67": (4000.0, "M67/M67_supplemented.csv",
            "Barnes, S. A., et al. 2016, ApJ, 823, 16; Dungee, R., et al. 2022, ApJ, 938, 118; "
            "Gruner, D., Barnes, S. A., & Weingrill, J. 2023, A&A, 672, A159"),
}


@functools.lru_cache(maxsize=None)
def cluster_rotation(name: str) -> Reference:
    """Rotation periods of one benchmark open cluster as compiled by Bouma et al. (2023).

    Columns: prot_days, teff (Curtis et al. 2020 Gaia BP-RP scale), bp_rp (Gaia DR3, NaN for M67), benchmark
    (the likely-single, good-period members BPH23 used to fit the slow sequence), cluster, age_myr.
    """
    if name not in CLUSTERS:
        raise ValueError(f"unknown cluster {name!r}; known: {sorted(CLUSTERS)}")
    age, rel, cite = CLUSTERS[name]
    path = _need(package_dir("gyrointerp") / "data" / "interim" / rel)
    raw = pd.read_csv(path, low_memory=False)
    t = pd.DataFrame({
        "prot_days": pd.to_numeric(raw["Prot"], errors="coerce"),
        "teff": pd.to_numeric(raw["Teff_Curtis20"], errors="coerce"),
        "bp_rp": pd.to_numeric(raw["bp_rp"], errors="coerce") if "bp_rp" in raw else np.nan,
        "benchmark": raw["flag_benchmark_period"].astype(bool) if "flag_benchmark_period" in raw else True,
    })
    t = t[np.isfinite(t["prot_days"]) & np.isfinite(t["teff"]) & (t["prot_days"] > 0)].reset_index(drop=True)
    t["cluster"], t["age_myr"] = name, age
    return Reference(f"cluster_{name}", t, f"{cite}; compiled in {CITATIONS['bouma2023']}", str(path),
                     {"age_myr": age})


def gyrointerp_models():
    """Import gyrointerp.models, which at import time creates ~/.gyrointerp_cache.

    That folder is only used for batch age posteriors, never by the slow-sequence model. When the home folder is
    missing or read-only (containers, CI), HOME is pointed at a private temporary folder for the import only.
    """
    if "gyrointerp.models" in sys.modules:
        return sys.modules["gyrointerp.models"]
    package_dir("gyrointerp")
    home = Path(os.path.expanduser("~"))
    cache = home / ".gyrointerp_cache"
    redirect = not cache.is_dir() and not (home.is_dir() and os.access(home, os.W_OK))
    old = os.environ.get("HOME")
    if redirect:
        fake = Path(tempfile.gettempdir()) / f"desa-gyrointerp-home-{os.getuid() if hasattr(os, 'getuid') else 0}"
        fake.mkdir(parents=True, exist_ok=True)
        os.environ["HOME"] = str(fake)
        log.info("home folder %s is not writable: gyrointerp's cache goes to %s", home, fake)
    # gyrointerp calls logging.basicConfig at import; a placeholder handler keeps it from configuring the
    # caller's root logger (basicConfig does nothing when the root already has a handler).
    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None
    if placeholder:
        root.addHandler(placeholder)
    try:
        import gyrointerp.models as models
    except ImportError as e:
        raise ReferenceUnavailable(f"gyrointerp could not be imported ({e}; {INSTALL_HINT})") from e
    except OSError as e:
        raise ReferenceUnavailable(f"gyrointerp could not create its cache folder ({e})") from e
    finally:
        if placeholder:
            root.removeHandler(placeholder)
        if redirect:
            if old is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = old
    return models


def bouma_slow_sequence(teff, age_myr: float) -> np.ndarray:
    """Bouma et al. (2023) slow-sequence rotation period [d] at Teff (3800-6200 K, NaN outside), age 80-4000 Myr.

    Beyond 4 Gyr the model is held at its 4-Gyr value (gyrointerp's '4gyrlimit'), so it is only compared there.
    """
    models = gyrointerp_models()
    teff = np.atleast_1d(np.asarray(teff, dtype=float))
    out = np.full(teff.shape, np.nan)
    ok = np.isfinite(teff) & (teff >= 3800) & (teff <= 6200)
    if ok.any():
        out[ok] = np.asarray(models.slow_sequence(teff[ok], float(age_myr), verbose=False), dtype=float)
    return out


def bouma_slow_sequence_at_ages(teff, age_myr) -> np.ndarray:
    """:func:`bouma_slow_sequence` for stars of different ages (ages grouped on a 0.01-dex grid, one call each)."""
    teff = np.atleast_1d(np.asarray(teff, dtype=float))
    age = np.broadcast_to(np.asarray(age_myr, dtype=float), teff.shape)
    out = np.full(teff.shape, np.nan)
    ok = np.isfinite(age) & (age > 0)
    key = np.round(np.log10(np.where(ok, age, 1.0)), 2)
    for k in np.unique(key[ok]):
        m = ok & (key == k)
        out[m] = bouma_slow_sequence(teff[m], 10 ** k)
    return out


# ---------------------------------------------------------------------------------------- dwarf colour sequence

@functools.lru_cache(maxsize=1)
def mamajek_dwarf_sequence() -> Reference:
    """Mean dwarf sequence (spectral type, Teff, Gaia BP-RP, M_G, mass) from Mamajek's table in ``meanstars``."""
    path = _need(package_dir("MeanStars", "meanstars") / "EEM_dwarf_UBVIJHK_colors_Teff.txt")
    rows, header = [], None
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if header is None:
            if parts[0] in ("SpT", "#SpT") and "Bp-Rp" in parts:
                header = parts
            continue
        if line.startswith("#"):
            break  # the table ends at the second header line; notes follow
        rows.append(parts[:len(header)])
    if header is None or not rows:
        raise ReferenceUnavailable(f"{path}: no table header '#SpT ... Bp-Rp ...' found")

    def num(col):
        i = header.index(col)
        return pd.to_numeric(pd.Series([r[i] if i < len(r) else "..." for r in rows]), errors="coerce")

    t = pd.DataFrame({"spt": [r[0] for r in rows], "teff": num("Teff"), "bp_rp": num("Bp-Rp"), "abs_g": num("M_G"),
                      "mass": num("Msun"), "log_lum": num("logL")})
    t = t[np.isfinite(t["bp_rp"]) & np.isfinite(t["abs_g"])].reset_index(drop=True)
    return Reference("mamajek_dwarfs", t, CITATIONS["mamajek"], str(path))


def main_sequence_abs_g(bp_rp) -> np.ndarray:
    """Single-star dwarf M_G at a given BP-RP, interpolated along Mamajek's sequence (NaN outside it)."""
    t = mamajek_dwarf_sequence().table.sort_values("bp_rp")
    x = np.asarray(bp_rp, dtype=float)
    return np.interp(x, t["bp_rp"], t["abs_g"], left=np.nan, right=np.nan)


# ------------------------------------------------------------------------------------------ published relations

def convective_turnover_days(teff) -> np.ndarray:
    """Convective turnover time tau_c [d] from Teff, Cranmer & Saar (2011) eq. 36 (valid ~3300-7000 K)."""
    t = np.asarray(teff, dtype=float)
    return 314.24 * np.exp(-(t / 1952.5) - (t / 6250.0) ** 18) + 0.002


def rossby_number(prot_days, teff) -> np.ndarray:
    return np.asarray(prot_days, dtype=float) / convective_turnover_days(teff)


def kepler_white_noise_ppm(kepmag) -> np.ndarray:
    """Shot-noise-limited white noise per 29.4-min Kepler long cadence [ppm] at Kepler magnitude Kp.

    A Kp = 12 star yields ~4.5e9 e- per 6.5 h (Jenkins et al. 2010), i.e. 1.92e5 e-/s; a long cadence integrates
    270 x 6.02 s = 1625 s. That gives ~57 ppm at Kp 12 and ~225 ppm at Kp 15: a lower bound (no read noise,
    background or systematics floor).
    """
    kp = np.asarray(kepmag, dtype=float)
    electrons = 4.5e9 / (6.5 * 3600.0) * 1625.3 * 10 ** (-0.4 * (kp - 12.0))
    return 1e6 / np.sqrt(electrons)
