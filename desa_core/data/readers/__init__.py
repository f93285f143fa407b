"""Readers for real survey files: one module per mission, and :func:`read_fits`, which sniffs the headers.

    >>> from desa_core.data.readers import read_fits
    >>> rec = read_fits("kplr010000001-2009166043257_llc.fits")   # -> KeplerLightCurve
    >>> rec = read_fits("spec-55859-F5902_sp01-001.fits")          # -> LamostSpectrum (either layout)

Every reader raises :class:`FitsReadError` (a ``ValueError`` whose message names the file and the reason)
for a file it cannot use.
"""
from __future__ import annotations

import os

from desa_core.data.readers.catalogue import Catalogue, read_catalogue
from desa_core.data.readers.common import FitsReadError, open_fits
from desa_core.data.readers.kepler import (KeplerLightCurve, is_kepler_light_curve, light_curve_from_hdul,
                                           read_kepler_light_curve, stitch_quarters)
from desa_core.data.readers.lamost import (LamostSpectrum, is_lamost_spectrum, read_lamost_spectrum,
                                           spectrum_from_hdul)

__all__ = ["read_fits", "FitsReadError", "KeplerLightCurve", "LamostSpectrum", "Catalogue",
           "read_kepler_light_curve", "read_lamost_spectrum", "read_catalogue", "stitch_quarters"]


def read_fits(path: str | os.PathLike, **kwargs) -> KeplerLightCurve | LamostSpectrum:
    """Read a Kepler light curve or a LAMOST spectrum, whichever the file's headers say it is.

    Keyword arguments go to the Kepler reader (``bitmask``, ``flux_column``) when the file is a light curve.
    """
    with open_fits(path) as hdul:
        if is_kepler_light_curve(hdul):
            return light_curve_from_hdul(path, hdul, **kwargs)
        if is_lamost_spectrum(hdul):
            return spectrum_from_hdul(path, hdul)
        h0 = hdul[0].header
        raise FitsReadError(path, f"neither a Kepler light curve nor a LAMOST spectrum (TELESCOP="
                                  f"{h0.get('TELESCOP', 'absent')!r}, no KEPLERID/LIGHTCURVE or OBSID)")
