"""Export: the current selection, a population or the neighbour list as CSV, Parquet or VOTable.

The same tables are available from Python (``Explorer.selected_stars()``, ``app.main.current_selection()``);
VOTables are written with astropy, so TOPCAT and Aladin open them directly.
"""
from __future__ import annotations

import asyncio
import io
import logging

import numpy as np
import pandas as pd
import panel as pn
import param

from app import samp
from app.tables import table_bytes
from app.state import CURRENT_SELECTION, Session, UserInputError

log = logging.getLogger(__name__)

FORMATS = {"CSV": "csv", "Parquet": "parquet", "VOTable": "vot"}
SOURCE_SELECTION, SOURCE_NEIGHBOURS = CURRENT_SELECTION, "neighbour list"


class Export(pn.viewable.Viewer):
    source = param.Selector(default=SOURCE_SELECTION, objects=[SOURCE_SELECTION, SOURCE_NEIGHBOURS])
    fmt = param.Selector(default="CSV", objects=list(FORMATS))
    all_columns = param.Boolean(default=True, doc="every catalogue column (else the key columns)")

    def __init__(self, session: Session, **params):
        super().__init__(**params)
        self.session = session
        self.data = session.data
        session.param.watch(self._update_sources, "populations_version")
        self._update_sources()
        self._download = pn.widgets.FileDownload(callback=self._callback, filename=self._filename(),
                                                 color="primary", label="Download", embed=False)
        self.param.watch(lambda *e: setattr(self._download, "filename", self._filename()), ["source", "fmt"])
        self.samp = samp.SampLink(self.data, on_rows=self._samp_rows)
        self._doc = pn.state.curdoc
        self.samp_status = pn.pane.Markdown(self._samp_text(), margin=(5, 10))

    # --- SAMP ---------------------------------------------------------------------------------------
    def _samp_text(self, extra: str = "") -> str:
        if not samp.ENABLED:
            return "SAMP is off on this server (served on a public address): use Download."
        state = "connected to the SAMP hub" if self.samp.connected else "not connected"
        return f"SAMP: {state}. {extra}".strip()

    def samp_connect(self, hub=None):
        try:
            self.samp.connect(hub=hub)
        except samp.SampError as e:
            raise UserInputError(str(e)) from None
        self.samp_status.object = self._samp_text()
        return self.samp.clients("table.load.votable")

    def samp_send(self) -> dict:
        """Send the current selection to the SAMP clients (TOPCAT, Aladin) as a table plus a row selection."""
        try:
            out = self.samp.send_selection(self.session.selection)
        except samp.SampError as e:
            raise UserInputError(str(e)) from None
        self.samp_status.object = self._samp_text(
            f"Sent {out['selected']:,} selected rows of a {out['table_rows']:,}-row table to "
            f"{', '.join(out['clients']) or 'no client'}.")
        return out

    def _samp_rows(self, star_ids, sender, truncated=False):
        """A row selection came back from a SAMP client (on the hub's thread): it becomes the selection."""
        def apply():
            try:
                self.session.select_ids(star_ids, mode="new")
                more = f" (the first {samp.MAX_RECEIVED_ROWS:,} rows)" if truncated else ""
                self.session.notify(f"selection received over SAMP: {len(star_ids):,} stars{more}", "info")
                self.samp_status.object = self._samp_text(f"Received {len(star_ids):,} rows.")
            except UserInputError as e:
                self.session.notify(str(e), "warning")
        if self._doc is not None and self._doc.session_context is not None:
            self._doc.add_next_tick_callback(apply)
        else:
            apply()

    async def _samp_clicked(self, fn):
        try:
            await asyncio.to_thread(fn)   # hub calls wait on other programs: not on the server's loop
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        except Exception as e:
            log.exception("SAMP failed")
            self.session.notify(f"SAMP failed: {type(e).__name__}: {e}", "danger")

    def _update_sources(self, *_):
        self.param.source.objects = [SOURCE_SELECTION, SOURCE_NEIGHBOURS] + sorted(self.session.populations)

    def _filename(self) -> str:
        stem = "".join(ch if ch.isalnum() else "_" for ch in self.source).strip("_") or "stars"
        return f"desa_{stem}.{FORMATS[self.fmt]}"

    def table(self, source: str | None = None) -> pd.DataFrame:
        """The rows to export: the selection, the neighbours (with similarity) or a population."""
        source = source or self.source
        cols = None if self.all_columns else self.data.key_columns()
        if source == SOURCE_NEIGHBOURS:
            nb = self.session.neighbours
            if nb is None or len(nb) == 0:
                raise UserInputError("no neighbour list yet: run a similarity search first")
            full = self.data.table(nb["row"].to_numpy(), cols)
            return pd.concat([nb[["rank", "similarity"]].reset_index(drop=True), full], axis=1)
        mask = self.session.population_mask(source)
        return self.data.table(np.flatnonzero(mask), cols)

    def to_bytes(self, source: str | None = None, fmt: str | None = None) -> bytes:
        return table_bytes(self.table(source), FORMATS.get(fmt or self.fmt, fmt or self.fmt))

    def _callback(self):
        try:
            data = self.to_bytes()
        except UserInputError as e:
            self.session.notify(str(e), "warning")
            data = b""
        except Exception as e:
            log.exception("export failed")
            self.session.notify(f"export failed: {type(e).__name__}: {e}", "danger")
            data = b""
        return io.BytesIO(data)

    def __panel__(self):
        b_connect = pn.widgets.Button(label="Connect to SAMP hub", disabled=not samp.ENABLED)
        # Panel awaits a callback only when it is itself a coroutine function (a lambda returning one is not)
        async def on_connect(event):
            await self._samp_clicked(self.samp_connect)

        async def on_send(event):
            await self._samp_clicked(self.samp_send)
        b_connect.on_click(on_connect)
        b_send = pn.widgets.Button(label="Send selection to TOPCAT/Aladin", disabled=not samp.ENABLED)
        b_send.on_click(on_send)
        return pn.Column(
            pn.Row(pn.widgets.Select.from_param(self.param.source, label="Export", width=220),
                   pn.widgets.RadioButtonGroup.from_param(self.param.fmt),
                   pn.widgets.Checkbox.from_param(self.param.all_columns, label="all columns")),
            self._download,
            pn.Row(b_connect, b_send), self.samp_status,
            pn.pane.Markdown("From Python: `from app.main import current_selection; df = current_selection()` "
                             "(inside the server process), or `Explorer(path).selected_stars()` in a notebook."))
