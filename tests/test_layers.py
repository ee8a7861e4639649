"""The house rules, checked as a compiler would: no import circle among DX's modules, no import up a layer.

Every ``import`` statement counts, wherever it stands: at module level, inside a function, under
``if TYPE_CHECKING``. Moving an import into a function hides a circle from Python's loader; it does
not hide it from this test. The layers themselves are import-linter contracts in ``pyproject.toml``
(``[tool.importlinter]``), which ``./test.sh`` runs as ``lint-imports`` and this file runs too.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _package_dirs(root: Path) -> dict[str, Path]:
    """Import name -> folder, read from pyproject.toml's ``package-dir`` (the one source of truth)."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = cfg["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items() if "." not in name and name}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Every Python module of the packages, by dotted name (a package is its ``__init__``)."""
    mods: dict[str, Path] = {}
    for pkg, folder in packages.items():
        for f in sorted(folder.rglob("*.py")):
            rel = f.relative_to(folder).with_suffix("")
            if any(not part.isidentifier() for part in rel.parts):
                continue
            parts = [pkg, *(p for p in rel.parts if p != "__init__")]
            if f.name != "__init__.py" and not all(
                    (folder.joinpath(*rel.parts[:i]) / "__init__.py").exists() for i in range(1, len(rel.parts))):
                continue  # a script in a plain folder (e.g. package data), not an importable module
            mods[".".join(parts)] = f
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports, counting every import statement anywhere in the file."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    here = here[: len(here) - (node.level - 1)]
                    base = ".".join([*here, base] if base else here)
                # `from pkg import sub` imports the submodule; `from mod import func` the module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for t in targets:
                r = resolve(t)
                if r and r != name:
                    edges.add(r)
        graph[name] = edges
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            advanced = False
            for nxt in it:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _describe(graph: dict[str, set[str]], comp: list[str]) -> str:
    inside = set(comp)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & inside))}" for m in comp)


def test_no_import_circle_among_dx_modules() -> None:
    graph = import_graph(module_files(_package_dirs(ROOT)))
    assert len(graph) > 100, f"only {len(graph)} modules found: the package map in pyproject.toml changed?"
    found = circles(graph)
    assert not found, "import circles (every import counted, function-local ones too):\n" + "\n".join(
        _describe(graph, c) for c in found)


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return module_files({"pk": root / "pk"})


def test_a_circle_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    mods = _write(tmp_path, {
        "pk/__init__.py": "",
        "pk/a.py": "def later():\n    from pk.b import thing\n    return thing\n",
        "pk/b.py": "from pk import a\nthing = 1\n",
        "pk/sub/__init__.py": "",
        "pk/sub/c.py": "from . import d\n",
        "pk/sub/d.py": "def f():\n    from ..sub import c\n",
        "pk/ok.py": "import pk.a\n",
    })
    found = circles(import_graph(mods))
    assert found == [["pk.a", "pk.b"], ["pk.sub.c", "pk.sub.d"]]


def test_no_circle_in_a_clean_tree(tmp_path: Path) -> None:
    mods = _write(tmp_path, {"pk/__init__.py": "", "pk/a.py": "from pk import b\n", "pk/b.py": "import json\n"})
    assert circles(import_graph(mods)) == []


def test_layer_contracts_hold() -> None:
    """import-linter's layers and independence contracts (pyproject.toml), every import counted."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' installs import-linter")
    run = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
