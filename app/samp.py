"""SAMP (astropy.samp): send the selection to TOPCAT / Aladin and receive their row selections back.

"Send selection" writes the star table (key columns; every star when the survey has at most
``MAX_TABLE_ROWS``, else the selection alone) as a VOTable, asks every client subscribed to
``table.load.votable`` to load it (a call, answered before the next message), then sends
``table.select.rowList`` with the rows of the current selection. A ``table.select.rowList`` coming back for a
table this session sent becomes the selection (an ``ids`` step, as if typed).

The hub is found the standard way (``$SAMP_HUB`` or ``~/.samp`` of the user running the server), so SAMP
links the dashboard with TOPCAT or Aladin **running on the server's machine**: a dashboard served from a lab
server and viewed in a browser elsewhere cannot reach a TOPCAT on the visitor's laptop (use Export there).
``desa serve`` enables SAMP when it listens on localhost (or with ``--samp``).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from app.tables import table_bytes

log = logging.getLogger(__name__)

ENABLED = True            # desa serve turns this off on a public address unless asked (--samp)
MAX_TABLE_ROWS = 200_000  # above this only the selection is sent
MAX_RECEIVED_ROWS = 10_000
LOAD_TIMEOUT_S = 20


class SampError(Exception):
    """A SAMP step failed; the message says what to do."""


class SampLink:
    """One session's connection to a SAMP hub.

    ``on_rows(star_ids, sender)`` is called (on the hub's thread) with the star ids of a row selection a SAMP
    client sent back for a table this link sent."""

    def __init__(self, data, on_rows=None, name: str = "DESA Explorer"):
        self.data = data
        self.on_rows = on_rows
        self.name = name
        self.client = None
        self._tables: dict[str, np.ndarray] = {}   # table-id -> AppData rows of its rows
        self._urls: dict[str, str] = {}
        self._dir: Path | None = None
        self._count = 0
        self._lock = threading.Lock()
        self.received: list[tuple[str, int]] = []   # (sender, rows) of what came back, for the page

    # --- connection ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    def connect(self, hub=None, hub_params=None):
        """Register with the hub (``hub``: an in-process SAMPHubServer; default: the standard profile)."""
        if not ENABLED:
            raise SampError("SAMP is off on this server (it is served on a public address; see docs/dashboard.md)")
        from astropy.samp import SAMPIntegratedClient
        if self.connected:
            return
        client = SAMPIntegratedClient(name=self.name, description="DESA Explorer dashboard",
                                      metadata={"samp.name": self.name, "desa.version": "1"})
        try:
            client.connect(hub=hub, hub_params=hub_params)
        except Exception as e:
            raise SampError(f"no SAMP hub found on the server's machine ({type(e).__name__}); start TOPCAT or "
                            f"Aladin there first") from None
        for mtype in ("table.select.rowList",):
            client.bind_receive_notification(mtype, self._receive_notification)
            client.bind_receive_call(mtype, self._receive_call)
        self.client = client
        self._dir = Path(tempfile.mkdtemp(prefix="desa-samp-"))
        log.info("connected to the SAMP hub as %s", self.name)

    def disconnect(self):
        if self.client is not None:
            try:
                if self.client.is_connected:
                    self.client.disconnect()
            except Exception:
                log.debug("SAMP disconnect failed", exc_info=True)
        self.client = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._tables.clear()
        self._urls.clear()

    def clients(self, mtype: str) -> dict[str, str]:
        """The clients subscribed to ``mtype``: id -> name."""
        self._need()
        out = {}
        for cid in self.client.get_subscribed_clients(mtype):
            try:
                meta = self.client.get_metadata(cid)
            except Exception:
                meta = {}
            out[cid] = str(meta.get("samp.name", cid))
        return out

    def _need(self):
        if not self.connected:
            raise SampError("not connected to a SAMP hub: press 'Connect to SAMP hub' first")

    # --- sending ------------------------------------------------------------------------------------
    def send_table(self, rows: np.ndarray, name: str) -> str:
        """Write ``rows`` of the star table as a VOTable and have every subscribed client load it; returns
        the table id."""
        self._need()
        loaders = self.clients("table.load.votable")
        if not loaders:
            raise SampError("no SAMP client that loads tables (TOPCAT, Aladin) is connected to the hub")
        with self._lock:
            self._count += 1
            tid = f"desa-{os.getpid()}-{id(self):x}-{self._count}"
        df = self.data.table(rows, self.data.key_columns())
        path = self._dir / f"{tid}.vot"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(table_bytes(df, "vot"))
        tmp.replace(path)
        url = path.as_uri()
        with self._lock:
            self._tables[tid] = np.asarray(rows, dtype=np.int64)
            self._urls[tid] = url
        params = {"url": url, "table-id": tid, "name": name}
        for cid in loaders:
            try:  # a call, so the table is loaded before the row selection arrives
                self.client.ecall_and_wait(cid, "table.load.votable", str(LOAD_TIMEOUT_S), **params)
            except Exception as e:
                log.warning("SAMP client %s did not load the table: %s", cid, e)
        return tid

    def send_selection(self, selection: np.ndarray | None, name: str = "DESA selection") -> dict:
        """Send the table (once) and the selection as a row selection of it. Returns what was sent."""
        self._need()
        if selection is None or not selection.any():
            raise SampError("nothing is selected")
        sel_rows = np.flatnonzero(selection)
        full = self.data.n <= MAX_TABLE_ROWS
        tid = self._full_table_id() if full else None
        if tid is None:
            rows = np.arange(self.data.n) if full else sel_rows[:MAX_TABLE_ROWS]
            tid = self.send_table(rows, "DESA survey" if full else name)
        table_rows = self._tables[tid]
        pos = np.searchsorted(table_rows, sel_rows)
        ok = (pos < len(table_rows)) & (table_rows[np.minimum(pos, len(table_rows) - 1)] == sel_rows)
        row_list = [str(int(i)) for i in pos[ok]]
        targets = self.clients("table.select.rowList")
        self.client.notify_all({"samp.mtype": "table.select.rowList",
                                "samp.params": {"table-id": tid, "url": self._urls[tid], "row-list": row_list}})
        return {"table_id": tid, "table_rows": int(len(table_rows)), "selected": len(row_list),
                "clients": sorted(targets.values())}

    def _full_table_id(self) -> str | None:
        with self._lock:
            for tid, rows in self._tables.items():
                if len(rows) == self.data.n:
                    return tid
        return None

    # --- receiving ----------------------------------------------------------------------------------
    def _rows_received(self, sender_id, params):
        tid = str(params.get("table-id", ""))
        with self._lock:
            table_rows = self._tables.get(tid)
        if table_rows is None:   # a table this link did not send: not ours to interpret
            log.info("SAMP row selection for unknown table %r from %s ignored", tid[:60], sender_id)
            return
        raw = params.get("row-list") or []
        if not isinstance(raw, list):
            return
        idx = []
        for x in raw[:MAX_RECEIVED_ROWS]:
            try:
                i = int(x)
            except (TypeError, ValueError):
                continue
            if 0 <= i < len(table_rows):
                idx.append(i)
        ids = self.data.star_ids[table_rows[np.asarray(idx, dtype=np.int64)]] if idx else np.array([], dtype=str)
        self.received.append((str(sender_id), len(ids)))
        if self.on_rows is not None:
            self.on_rows(list(ids), str(sender_id), truncated=len(raw) > MAX_RECEIVED_ROWS)

    def _receive_notification(self, private_key, sender_id, mtype, params, extra):
        try:
            self._rows_received(sender_id, params)
        except Exception:
            log.exception("SAMP row selection failed")

    def _receive_call(self, private_key, sender_id, msg_id, mtype, params, extra):
        try:
            self._rows_received(sender_id, params)
            self.client.reply(msg_id, {"samp.status": "samp.ok", "samp.result": {}})
        except Exception as e:
            log.exception("SAMP row selection failed")
            self.client.reply(msg_id, {"samp.status": "samp.error",
                                       "samp.error": {"samp.errortxt": type(e).__name__}})
