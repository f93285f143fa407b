"""Star tables as bytes: CSV, Parquet or VOTable (astropy, so TOPCAT and Aladin open them directly).
Used by the Export tab's download and by the SAMP link."""
from __future__ import annotations

import io

import pandas as pd

from app.state import UserInputError


def table_bytes(df: pd.DataFrame, fmt: str) -> bytes:
    """Serialise a table as CSV, Parquet or VOTable (``fmt``: 'csv', 'parquet', 'vot')."""
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "vot":
        from astropy.io.votable import from_table
        from astropy.table import Table
        clean = df.copy()
        for c in clean.columns:  # VOTable has no pandas string/category dtypes: plain str / numbers
            if not (pd.api.types.is_numeric_dtype(clean[c]) or pd.api.types.is_bool_dtype(clean[c])):
                clean[c] = clean[c].astype(str).to_numpy(dtype=object).astype(str)
        vot = from_table(Table.from_pandas(clean))
        buf = io.BytesIO()
        vot.to_xml(buf)
        return buf.getvalue()
    raise UserInputError(f"unknown export format {fmt!r}; choose csv, parquet or vot")
