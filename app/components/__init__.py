"""Dashboard components: each a ``pn.viewable.Viewer`` over a shared per-session :class:`app.state.Session`,
usable and testable without a browser (maps, populations, search, probes, star_detail, export)."""
