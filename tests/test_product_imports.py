"""Product code imports only what a plain ``pip install .`` installs.

Every import in dx, dxbuild, dxverify and dxmatrix — at module level or inside a
function — must be the standard library, DX itself, or a package named in
``[project.dependencies]``; an import of anything else must sit in a
``try: … except ImportError`` that handles its absence. The test extras are
installed wherever the suite runs, so without this check a product import of a
test-only package (httpx once) passes every test and fails the first user.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Is ``node`` inside a ``try`` whose handlers catch ImportError (or ModuleNotFoundError)?"""
    cur = node
    while cur in parents:
        parent = parents[cur]
        if isinstance(parent, ast.Try) and cur in parent.body:
            for h in parent.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names):
                    return True
        cur = parent
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return True
    return False


def product_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, top-level module, guarded) for every absolute import in product code."""
    dirs = _project()["tool"]["setuptools"]["package-dir"].values()
    found = []
    for d in dirs:
        for f in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(f.read_text(encoding="utf-8"))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    tops = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    tops = [node.module.split(".")[0]]
                else:
                    continue
                for top in tops:
                    found.append((str(f.relative_to(ROOT)), node.lineno, top, _guarded(node, parents)))
    return found


def test_product_imports_only_declared_dependencies() -> None:
    proj = _project()["project"]
    declared = {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in proj["dependencies"]}
    first_party = set(_project()["tool"]["setuptools"]["package-dir"])
    dists = metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    problems = []
    for file, line, top, guarded in product_imports():
        if top in stdlib or top in first_party or top == "__future__" or guarded:
            continue
        owners = {_norm(d) for d in dists.get(top, [])} or {_norm(top)}  # not installed: its own name
        if not owners & declared:
            why = f"from {', '.join(sorted(owners))}" if owners else "installed by nothing here"
            problems.append(f"{file}:{line} imports {top} ({why}), which is not in [project.dependencies]")
    assert not problems, "\n".join(problems)


def test_the_check_sees_function_level_imports(tmp_path: Path) -> None:
    """The walker finds an import inside a function and tells a guarded one from a bare one."""
    src = "def f():\n    import httpx\n\ntry:\n    import yaml\nexcept ImportError:\n    yaml = None\n"
    tree = ast.parse(src)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    imports = [(n.names[0].name, _guarded(n, parents)) for n in ast.walk(tree) if isinstance(n, ast.Import)]
    assert sorted(imports) == [("httpx", False), ("yaml", True)]


def test_the_runtime_imports_nothing_its_bundle_leaves_out() -> None:
    """A module the Nuitka bundle does not compile in (``NOFOLLOW``) is missing from every minted
    executable: imported bare at a runtime module's top, it passes every pip-installed test and kills the
    executable at start (``statistics`` in dx.engine.spec_auto once). At module level such an import must
    handle ImportError; inside a function it is a feature's own import, and its callers catch ImportError
    (``dx.models.pull._hub_or_none``, ``dx.swarm.head``'s openssl fallback)."""
    from dxbuild.bundle.nuitka import NOFOLLOW, RUNTIME_PACKAGES

    def left_out(name: str) -> bool:
        return any(name == n or name.startswith(n + ".") for n in NOFOLLOW)

    dirs = _project()["tool"]["setuptools"]["package-dir"]
    problems = []
    for pkg in RUNTIME_PACKAGES:
        root = ROOT / dirs[pkg]
        for f in sorted(root.rglob("*.py")):
            module = ".".join((pkg, *f.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
            if left_out(module):
                continue  # itself left out: what it imports never runs in an executable
            tree = ast.parse(f.read_text(encoding="utf-8"))
            parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                else:
                    continue
                bad = [n for n in names if left_out(n)]
                if bad and not _guarded(node, parents) and not _in_function(node, parents):
                    problems.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {bad[0]}, which the bundle "
                                    "leaves out (dxbuild.bundle.nuitka.NOFOLLOW)")
    assert not problems, "\n".join(problems)
