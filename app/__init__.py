"""DESA Explorer dashboard (Panel). Entry points: ``desa serve`` -> :func:`app.main.serve`,
``panel serve app/main.py --args --artifacts DIR``, and :class:`app.main.Explorer` in a notebook."""
