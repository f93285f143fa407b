"""The DESA Explorer dashboard: linked maps, populations, similarity search, few-shot probes, star detail and
export over one artifact set.

Run it::

    desa serve --artifacts artifacts/default --port 5006            # one process
    panel serve app/main.py --args --artifacts artifacts/default     # the same page through `panel serve`

or in a notebook / Python::

    from app.main import Explorer
    ex = Explorer("artifacts/default")     # ex.servable() / display(ex)
    ex.session.select_query("prot_days < 7")
    ex.selected_stars()                     # -> pandas DataFrame

Inside a running server, :func:`current_selection` returns the selection of the most recently active
session (or of a given session id) as a DataFrame; :func:`sessions` lists the live sessions.

The page URL carries the colour column, the selection (as the steps it was made from) and the search target,
so a copied URL restores the view.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
import weakref
from pathlib import Path

import holoviews as hv
import panel as pn

from app.components.crossfilter import CrossFilter
from app.components.export import Export
from app.components.maps import Maps
from app.components.populations import Populations
from app.components.probes import Probes
from app.components.regions import Regions
from app.components.search import Search
from app.components.star_detail import StarDetail
from app.state import AppData, Session, UserInputError, load_app_data
from app.text import esc, message_html

log = logging.getLogger(__name__)

_SESSIONS: "weakref.WeakValueDictionary[str, Explorer]" = weakref.WeakValueDictionary()
_SESSIONS_LOCK = threading.Lock()
_EXTENSION_LOADED = False
TAB_NAMES = ("Similarity search", "Populations", "Cross-filter", "Regions", "Few-shot probes", "Star detail",
             "Export")
TAB_STAR_DETAIL, TAB_CROSSFILTER = TAB_NAMES.index("Star detail"), TAB_NAMES.index("Cross-filter")


def _ensure_extension():
    global _EXTENSION_LOADED
    if not _EXTENSION_LOADED:
        hv.extension("bokeh", logo=False)
        pn.extension("tabulator", "filedropper", notifications=False, sizing_mode="fixed")
        _EXTENSION_LOADED = True


class Explorer(pn.viewable.Viewer):
    """One visitor's dashboard: a :class:`Session` and the components wired to it."""

    def __init__(self, artifacts: str | Path | AppData, sync_url: bool = False, **params):
        super().__init__(**params)
        _ensure_extension()
        self.data = artifacts if isinstance(artifacts, AppData) else load_app_data(artifacts)
        self.session = Session(self.data)
        self.maps = Maps(self.session)
        self.populations = Populations(self.session)
        self.search = Search(self.session)
        self.crossfilter = CrossFilter(self.session)
        self.regions = Regions(self.session)
        self.probes = Probes(self.session)
        self.star_detail = StarDetail(self.session)
        self.export = Export(self.session)
        self.maps.on_star_clicked = self._star_clicked
        self.last_active = time.time()
        self.session.param.watch(self._touch, ["selection_version", "neighbours_version", "color"])
        # Messages often repeat what a visitor typed or a URL carried: shown as text (app/text.py), never HTML.
        self._alert = pn.pane.HTML("", visible=False, margin=(5, 10), sizing_mode="stretch_width")
        self.session.param.watch(self._show_message, ["message", "message_level"])
        self._layout = None
        self._tabs = None
        if sync_url:
            self._sync_url()
        key = pn.state.curdoc.session_context.id if (pn.state.curdoc and pn.state.curdoc.session_context) \
            else f"local-{id(self)}"
        self.session_id = key
        with _SESSIONS_LOCK:
            _SESSIONS[key] = self
        if pn.state.curdoc and pn.state.curdoc.session_context:
            pn.state.curdoc.on_session_destroyed(lambda ctx: self.export.samp.disconnect())

    # --- Python API ---------------------------------------------------------------------------------
    def selected_stars(self, columns=None):
        """The current selection as a DataFrame (all catalogue columns unless ``columns`` is given)."""
        return self.session.selected_stars(columns)

    def neighbours(self):
        """The last similarity search's neighbours (rank, similarity, key columns), or None."""
        return self.session.neighbours

    # --- wiring -------------------------------------------------------------------------------------
    def _touch(self, *_):
        self.last_active = time.time()

    def _star_clicked(self, row: int):
        """A click on a star: it becomes the similarity-search target and its star detail opens."""
        try:
            self.search.search_row(row)
        except UserInputError as e:
            self.session.notify(str(e), "warning")
        if self._tabs is not None:
            # After the search's own updates have reached the browser: a dynamic tab's content leaves the page
            # when another tab opens, and patching it in the same message fails in the browser.
            doc = pn.state.curdoc
            if doc is not None and doc.session_context is not None:
                doc.add_next_tick_callback(lambda: setattr(self._tabs, "active", TAB_STAR_DETAIL))
            else:
                self._tabs.active = TAB_STAR_DETAIL

    def _show_message(self, *_):
        s = self.session
        self._alert.object = message_html(s.message, s.message_level) if s.message else ""
        self._alert.visible = bool(s.message)

    def _sync_url(self):
        """Mirror colour, selection and target in the URL; restore them from it when the page opens."""
        loc = pn.state.location
        if loc is None:
            return
        # The request's arguments are there when the page is built; Location.query_params only later.
        query = {k: (v[0].decode() if isinstance(v[0], bytes) else str(v[0]))
                 for k, v in (pn.state.session_args or {}).items() if v}
        query = {**dict(loc.query_params or {}), **query}

        def restore():
            self.restore_view(query)
            loc.sync(self.session, {"umap_view": "map", "color": "color", "selection_spec": "selection",
                                    "target": "target"})
        # After the page is on screen: the page is built on the server's event loop, and whatever a URL asks for
        # (a selection, a search) must not delay it, nor the /liveness answers that share that loop.
        pn.state.onload(restore, threaded=bool(pn.config.nthreads))

    def restore_view(self, query: dict) -> list[str]:
        """Apply ``color``, ``selection`` and ``target`` from a URL's query. Each is checked on its own: a bad or
        hostile value gives a message naming it, and the page opens with the rest. Returns the problems."""
        problems = []
        steps = (("map", self.maps.restore_umap_view), ("color", self.maps.restore_colour),
                 ("selection", self.session.restore_selection), ("target", self.search.restore_target))
        for key, apply in steps:
            value = query.get(key)
            if not value:
                continue
            try:
                apply(str(value))
            except UserInputError as e:
                problems.append(f"{key}: {e}")
            except Exception as e:  # never let a URL break the page
                log.warning("restoring %s from the URL failed", key, exc_info=True)
                problems.append(f"{key}: {type(e).__name__}")
        if problems:
            self.session.notify("could not restore the view from the URL: " + "; ".join(problems), "warning")
        return problems

    def header(self):
        d = self.data.describe()
        notices = []
        if self.data.is_synthetic_benchmark:
            notices.append(pn.pane.Alert(
                "<b>SYNTHETIC BENCHMARK DATA.</b> These stars and embeddings were generated to measure speed at "
                "survey scale. They are not real stars and not a trained model's output: do not draw "
                "scientific conclusions from this page.", alert_type="danger", margin=(5, 10)))
        elif self.data.is_simulated:
            notices.append(pn.pane.Alert(
                "<b>Simulated survey.</b> The stars on this page come from the project's simulated Kepler x "
                "LAMOST survey: credible physics, not real stars.", alert_type="warning", margin=(5, 10)))
        objective = f", DESA objective {esc(d['model_objective'])}" if d.get("model_objective") else ""
        model = (f"model run <code>{esc(d['run'])}</code> (config {esc(d['model_config'])}{objective}, fingerprint "
                 f"{esc(str(d['model_fingerprint'])[:12])})" if d["run"] else "no model run (uploads cannot be embedded)")
        info = pn.pane.HTML(f"<small>Artifact set <code>{esc(d['artifacts'])}</code> ({esc(d['kind'])}, "
                            f"{d['n_stars']:,} stars); {model}; embeddings: {esc(', '.join(d['embeddings']))}</small>",
                            margin=(0, 10))
        return pn.Column(*notices, info)

    def __panel__(self):
        if self._layout is None:
            parts = {"Similarity search": self.search, "Populations": self.populations,
                     "Cross-filter": self.crossfilter, "Regions": self.regions, "Few-shot probes": self.probes,
                     "Star detail": self.star_detail, "Export": self.export}
            tabs = pn.Tabs(*[(name, parts[name]) for name in TAB_NAMES], dynamic=False)
            # The star detail and the cross-filter draw only while their tab is open (a selection stays fast).
            self.star_detail.visible = False
            self.crossfilter.visible = False

            def opened(e):
                def show():
                    self.star_detail.set_visible(e.new == TAB_STAR_DETAIL)
                    self.crossfilter.set_visible(e.new == TAB_CROSSFILTER)
                # A dynamic tab's content reaches the browser with this change; filling it in the same message
                # would patch views the browser has not built yet: the next tick.
                doc = pn.state.curdoc
                if doc is not None and doc.session_context is not None:
                    doc.add_next_tick_callback(show)
                else:
                    show()
            tabs.param.watch(opened, "active")
            self._tabs = tabs
            self._layout = pn.Column(pn.pane.Markdown("## DESA Explorer", margin=(0, 10)), self.header(),
                                     self._alert, self.maps, tabs)
        return self._layout


def sessions() -> dict[str, Explorer]:
    """Live sessions of this server process (id -> Explorer)."""
    with _SESSIONS_LOCK:
        return dict(_SESSIONS)


def current_selection(session_id: str | None = None, columns=None):
    """The selected stars (DataFrame) of one session: the given id, else the most recently active one."""
    live = sessions()
    if not live:
        raise LookupError("no live dashboard session in this process")
    ex = live[session_id] if session_id else max(live.values(), key=lambda e: e.last_active)
    return ex.selected_stars(columns)


def create_app(artifacts: str | Path) -> pn.viewable.Viewable:
    """A page for one new session (used by :func:`serve` and ``panel serve``)."""
    _ensure_extension()
    return Explorer(artifacts, sync_url=True)


LOCAL_ADDRESSES = ("127.0.0.1", "localhost", "::1")
# Uploads arrive in UPLOAD_CHUNK_BYTES chunks; no other message a page sends comes near this.
WEBSOCKET_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class ServeError(ValueError):
    """Bad `desa serve` options (the message says which)."""


def websocket_origins(address: str, port: int, allowed=None) -> list[str]:
    """Origins whose pages may open the websocket. Local addresses: localhost only. A public address: the
    ``allowed`` HOST[:PORT] list (``--allow-websocket-origin``), else this machine's own names; never ``*``."""
    if allowed:
        out = []
        for o in allowed:
            o = str(o).strip()
            if not o or o == "*" or "/" in o or any(c.isspace() for c in o):
                raise ServeError(f"--allow-websocket-origin {o!r}: give HOST or HOST:PORT (no '*', no scheme)")
            out.append(o if ":" in o.rsplit("]", 1)[-1] else f"{o}:{port}")
        return out
    local = [f"127.0.0.1:{port}", f"localhost:{port}"]
    if address in LOCAL_ADDRESSES:
        return local
    import socket
    names = {socket.gethostname(), socket.getfqdn()}
    if address not in ("0.0.0.0", "", "::"):
        names.add(address)
    return local + [f"{n}:{port}" for n in sorted(names) if n]


def read_login(path) -> str:
    """What Panel's basic-auth provider takes from a ``--login`` file: the file itself when it is a JSON
    object of user -> password, else its first line as one shared password (any user name)."""
    import json
    p = Path(path)
    if not p.is_file():
        raise ServeError(f"--login {p}: no such file")
    text = p.read_text(encoding="utf-8")
    try:
        users = json.loads(text)
    except ValueError:
        users = None
    if isinstance(users, dict):
        if not users or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in users.items()):
            raise ServeError(f"--login {p}: a JSON login file maps user names to non-empty passwords")
        return str(p.resolve())
    secret = text.splitlines()[0].strip() if text.strip() else ""
    if len(secret) < 8:
        raise ServeError(f"--login {p}: the shared password must have at least 8 characters")
    return secret


def serve(artifacts, port: int = 5006, address: str = "127.0.0.1", num_threads: int = 0, show: bool = False,
          admin: bool = False, allow_websocket_origin=None, login=None, samp: bool | None = None):
    """Serve the dashboard over an artifact folder until interrupted: one process, data shared by all sessions.
    ``num_threads`` > 0 hands widget callbacks to that many Panel worker threads (off by default: Panel then
    runs a session's events in parallel threads, not in the order they were sent, so a typed value and the
    click after it can race). The artifact set is loaded (and the renderers warmed) before the
    first visitor arrives; ``/liveness`` answers once the server is up; ``admin`` adds Panel's /admin page.

    ``allow_websocket_origin``: HOST[:PORT] names a public server is reached under (see
    :func:`websocket_origins`); ``login``: a file with a shared password or a JSON user -> password map
    (Panel's basic-auth login page; see docs/dashboard.md, "Running on a lab server"). ``samp``: offer SAMP
    (app/samp.py: a hub on this machine); default on for a localhost server, off on a public address."""
    _ensure_extension()
    from app import samp as samp_module
    samp_module.ENABLED = (address in LOCAL_ADDRESSES) if samp is None else bool(samp)
    origins = websocket_origins(address, port, allow_websocket_origin)
    auth = {}
    if login:
        import secrets
        auth = {"basic_auth": read_login(login),
                "cookie_secret": os.environ.get("DESA_COOKIE_SECRET") or secrets.token_urlsafe(32)}
    # Panel's worker threads come from its config: pn.serve has no num_threads argument (it ignored one).
    if num_threads:
        pn.config.nthreads = int(num_threads)
    data = load_app_data(artifacts)
    _warm(data)
    settle_heap()
    url_host = address if address not in ("0.0.0.0", "", "::") else "localhost"
    if address not in LOCAL_ADDRESSES and not login:
        log.warning("serving on %s without a login: anyone who can reach port %d can use the page "
                    "(see docs/dashboard.md, 'Running on a lab server')", address, port)
    log.info("serving %s at http://%s:%d/ (websocket origins: %s%s)", artifacts, url_host, port,
             ", ".join(origins), "; login required" if login else "")
    return pn.serve({"/": lambda: create_app(artifacts)}, port=port, address=address, show=show,
                    title="DESA Explorer", liveness=True, admin=admin,
                    websocket_origin=origins, websocket_max_message_size=WEBSOCKET_MAX_MESSAGE_BYTES, **auth)


def settle_heap() -> int:
    """Move what is alive now (modules, the artifact set, the warmed renderers) out of the garbage collector's
    reach (:func:`gc.freeze`). Panel runs a full ``gc.collect()`` on the server's event loop whenever a page
    closes; over the ~6x10^5 objects a loaded server holds that took 0.3 s on an idle 2-core machine and over
    1 s on a busy one, during which no other visitor got an answer. Objects made afterwards (the sessions)
    are still collected. Returns the number of objects frozen."""
    import gc
    gc.collect()
    gc.freeze()
    n = gc.get_freeze_count()
    log.info("%d long-lived objects kept out of the garbage collector's full passes", n)
    return n


BACKGROUND_WARM = "desa-background-warm"   # the thread that finishes the warm-up after the server answers


def _warm(data: AppData):
    """Compile the map kernels and draw every map once so the first visitor does not wait for numba; what the
    page does not need to open continues in a background thread (:data:`BACKGROUND_WARM`)."""
    t0 = time.perf_counter()
    from app.components.maps import warm_kernels, warm_more_kernels
    warm_kernels()
    for name in data.embedding_names:  # opens the indexes and learns which stars have each modality
        data.has_embedding(name)
    ex = Explorer(data)
    for key in data.maps:
        ex.maps.render(key)
    for col in data.colour_columns[:1]:
        ex.session.color = col
        ex.maps.render("umap")
    keys = list(ex.maps.shown_keys())
    bins = list(ex.crossfilter.columns.value)
    t1 = time.perf_counter()

    def in_background():
        # What the page does not need to open (the kernels of zoomed maps and class colourings ~6 s; at 10^7
        # stars the hover grids ~1 s each, the cross-filter's bins 1.9 s, a first selection over every star) is
        # done after the server answers; a visitor who zooms, hovers, filters or selects first waits only for
        # that one piece, computed once either way.
        try:
            warm_more_kernels()
            for k in keys:
                data._map_grid(k)
            for col in bins:
                data.histogram_bins(col)
            if data.colour_columns:
                ex.session.select_query(f"{data.colour_columns[0]} == {data.colour_columns[0]}")
                ex.maps.render("umap")
            log.info("background warm-up done in %.1f s", time.perf_counter() - t1)
        except Exception:  # noqa: BLE001 -- a warm-up; the visitor's own request meets and reports the same
            log.warning("background warm-up failed", exc_info=True)
    threading.Thread(target=in_background, name=BACKGROUND_WARM, daemon=True).start()
    log.info("renderers warmed in %.1f s", t1 - t0)


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="panel serve app/main.py --args")
    p.add_argument("--artifacts", required=True)
    return p.parse_args(argv)


if __name__.startswith("bokeh"):  # `panel serve app/main.py --args --artifacts DIR`
    create_app(_parse_args(sys.argv[1:]).artifacts).servable(title="DESA Explorer")
elif __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    a = argparse.ArgumentParser(prog="python -m app.main")
    a.add_argument("--artifacts", required=True)
    a.add_argument("--port", type=int, default=5006)
    a.add_argument("--address", default="127.0.0.1")
    a.add_argument("--num-threads", type=int, default=0)
    a.add_argument("--show", action="store_true")
    args = a.parse_args()
    serve(args.artifacts, port=args.port, address=args.address, num_threads=args.num_threads, show=args.show)
