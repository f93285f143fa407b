"""The layers stay honest: no import circles between the project's modules, and no upward imports
(desa_core never imports app or precompute, except the CLI's entry points; app never imports precompute).
Every import counts, including the lazy ones inside functions."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("desa_core", "precompute", "app")
# The CLI reaches outside desa_core on purpose: `desa precompute` and `desa serve` (imported lazily there).
ALLOWED_UPWARD = {("desa_core.cli", "precompute.pipeline"), ("desa_core.cli", "precompute.add"),
                  ("desa_core.cli", "app.main")}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = p
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        return name or None

    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # "from package import submodule" depends on the submodule, not on the package's __init__
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    targets.append(sub if sub in mods else base)
            for t in targets:
                r = resolve(t)
                if r and r != m:
                    graph[m].add(r)
    return graph


def _cycles(graph) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(_graph()) == []


def test_no_upward_imports():
    bad = []
    for m, deps in _graph().items():
        for d in deps:
            top_m, top_d = m.split(".")[0], d.split(".")[0]
            upward = (top_m == "desa_core" and top_d in ("app", "precompute")) or \
                     (top_m == "app" and top_d == "precompute")
            if upward and (m, d) not in ALLOWED_UPWARD:
                bad.append(f"{m} -> {d}")
    assert bad == []


def test_the_run_folder_is_read_in_one_place():
    """Only desa_core/rundir.py names the run folder's files in code (docstrings may mention them)."""
    names = ("run_manifest.json", "features.npz", "heads.pt", "dualformer.pt", "light_curve_encoder.pt")
    offenders = []
    for m, p in _modules().items():
        if m == "desa_core.rundir":
            continue
        tree = ast.parse(p.read_text())
        docs = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
                offenders += [f"{m}:{node.lineno}: {n}" for n in names if node.value.strip() == n
                              or node.value.endswith("/" + n) or node.value.startswith(n)]
    assert offenders == []
