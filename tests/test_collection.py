"""The suite runs every test file it has: each ``tests/**/test_*.py`` yields at least one collected item.

pytest's default ``norecursedirs`` skips folders named ``dist`` and ``build``; for a while
``tests/dist/`` (install.sh under three shells, the runtime pack, the engine wheel) was never
collected and nobody noticed. This guard runs pytest's own collection, as ``./test.sh`` would,
and compares it with the files on disk — so a new folder pattern, a module-level skip or a
collection error that hides a file fails here, by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def uncollected(root: Path, tests: Path, config: Path) -> list[str]:
    """``test_*.py`` files under ``tests`` that ``pytest --collect-only`` (with ``config``) yields no item from."""
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-c", str(config),
         "--rootdir", str(root), str(tests)],
        cwd=root, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
    )
    assert res.returncode == 0, f"pytest --collect-only failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}"
    collected = {line.split("::", 1)[0] for line in res.stdout.splitlines() if "::" in line}
    on_disk = {p.relative_to(root).as_posix() for p in tests.rglob("test_*.py")}
    return sorted(on_disk - collected)


def test_every_test_file_is_collected() -> None:
    missing = uncollected(ROOT, ROOT / "tests", ROOT / "pyproject.toml")
    assert missing == [], f"test files pytest does not collect (see norecursedirs in pyproject.toml): {missing}"


def test_the_guard_sees_a_folder_pytest_skips(tmp_path: Path) -> None:
    """With pytest's defaults, ``dist/`` and ``build/`` go unseen; with the project's ``norecursedirs`` they run."""
    tests = tmp_path / "tests"
    for folder in ("dist", "build", "runtime", "nested/dist"):
        (tests / folder).mkdir(parents=True)
        (tests / folder / f"test_{folder.replace('/', '_')}.py").write_text("def test_one():\n    pass\n")
    defaults = tmp_path / "defaults.toml"
    defaults.write_text("[tool.pytest.ini_options]\n")
    assert uncollected(tmp_path, tests, defaults) == ["tests/build/test_build.py", "tests/dist/test_dist.py",
                                                      "tests/nested/dist/test_nested_dist.py"]

    ours = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["norecursedirs"]
    project = tmp_path / "project.toml"
    project.write_text(f"[tool.pytest.ini_options]\nnorecursedirs = {ours!r}\n".replace("'", '"'))
    assert uncollected(tmp_path, tests, project) == []
