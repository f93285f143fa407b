"""Precompute: embed every star with a trained DESA run, build FAISS indexes and UMAP maps, and write the
artifact set the dashboard serves (format and loader: :mod:`desa_core.artifacts`).

Entry points: ``desa precompute ...`` / ``python -m precompute ...`` -> :func:`precompute.pipeline.run_precompute`.
"""
