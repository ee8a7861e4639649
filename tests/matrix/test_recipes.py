"""Recipes: the committed ones load; every malformed one is one clear error naming file and key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest

from dxbuild.paths import project_root
from dxbuild.release.schema_files import check_schemas, expected_schemas
from dxmatrix.recipes import get_tier, load_engine_recipe, load_tiers
from dxmatrix.typed_config import read_toml
from dxverify.errors import ConfigurationError

SHA = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

GOOD_TIER = """
[tiers.cpu]
summary = "CPU"
os = ["linux"]
arch = ["x86_64"]
toolchain = "host"
size_budget_mb = 40
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def _engine(tmp_path: Path, body: str, patches: list[str] | None = None) -> Path:
    (tmp_path / "patches").mkdir(exist_ok=True)
    for p in patches or []:
        (tmp_path / "patches" / p).write_text("--- a/x\n+++ b/x\n")
    return _write(tmp_path, "engine.toml", body)


def test_committed_recipes_load() -> None:
    recipe = load_engine_recipe()
    assert recipe.source.kind == "sdist" and recipe.source.sha256 == SHA
    assert recipe.source.subdir == "vendor/llama.cpp"
    assert [p.name for p in recipe.patch_paths()] == ["0001-load-gguf-at-file-offset.patch",
                                                         "0004-stream-opening-and-waiter-deadline.patch"]
    assert all(p.is_file() for p in recipe.patch_paths())
    for key in ("LLAMA_CURL", "LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES", "GGML_NATIVE"):
        assert recipe.cmake[key] == "OFF"
    assert recipe.cmake["BUILD_SHARED_LIBS"] == "ON" and recipe.cmake["GGML_BACKEND_DL"] == "ON"
    tiers = load_tiers()
    assert set(tiers) == {"cpu", "cuda12", "cuda13", "vulkan", "rocm", "metal"}
    assert tiers["cuda13"].runtime.min_nvidia_driver == 580
    assert tiers["cuda12"].runtime.min_nvidia_driver == 525
    assert tiers["cpu"].flags_for("linux", "x86_64") == {"GGML_CPU_ALL_VARIANTS": "ON"}
    assert tiers["cpu"].flags_for("macos", "arm64") == {}
    assert tiers["metal"].os == ("macos",)
    assert all(spec.startswith("nvidia-") and "==13.0." in spec for spec in tiers["cuda13"].toolkit_wheels)


def test_every_patch_file_is_listed() -> None:
    on_disk = sorted(p.name for p in (project_root() / "recipes" / "patches").glob("*.patch"))
    from dxmatrix.recipes import load_tiers

    tier_patches = {p for t in load_tiers().values()
                    for p in (*t.patches, *(q for ps in t.patches_by_target.values() for q in ps))}
    assert on_disk == sorted({*load_engine_recipe().patches, *tier_patches})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # unknown key, with a suggestion
        (f'[source]\nkind = "sdist"\npackage = "p"\nversion = "1"\nsha265 = "{SHA}"\n',
         r'source\.sha265: unknown key \(did you mean "sha256"\?\)'),
        # missing key that only the kind requires
        ('[source]\nkind = "sdist"\npackage = "p"\nversion = "1"\n', r"source: missing required key 'sha256'"),
        # bad hash format
        ('[source]\nkind = "sdist"\npackage = "p"\nversion = "1"\nsha256 = "abc123"\n',
         r"source\.sha256: 'abc123' is not valid .* 64 lowercase hex digits"),
        # wrong type
        (f'[source]\nkind = "sdist"\npackage = "p"\nversion = 1\nsha256 = "{SHA}"\n',
         r"source\.version: expected a string, got a number \(1\)"),
        # unknown enum value, with a suggestion
        (f'[source]\nkind = "sdsit"\nsha256 = "{SHA}"\n', r"source\.kind: 'sdsit' is not allowed \(did you mean \"sdist\"\?\)"),
        # missing table
        ("patches = []\n", r"missing required key 'source'"),
        # a git source needs a full commit
        ('[source]\nkind = "git"\nurl = "https://x/y"\ncommit = "abc"\n', r"source\.commit: 'abc' is not valid"),
        # patches must be a list
        (f'patches = "0001.patch"\n[source]\nkind = "sdist"\npackage = "p"\nversion = "1"\nsha256 = "{SHA}"\n',
         r"patches: expected a list"),
    ],
)
def test_malformed_engine_recipe(tmp_path: Path, body: str, expected: str) -> None:
    path = _engine(tmp_path, body)
    with pytest.raises(ConfigurationError, match=expected) as ei:
        load_engine_recipe(path)
    assert str(path) in str(ei.value)
    assert "\n" not in str(ei.value)


def test_missing_patch_file(tmp_path: Path) -> None:
    path = _engine(tmp_path, f'patches = ["0009-nope.patch"]\n[source]\nkind = "sdist"\npackage = "p"\n'
                             f'version = "1"\nsha256 = "{SHA}"\n')
    with pytest.raises(ConfigurationError, match=r"patches\[0\]: .*0009-nope\.patch does not exist"):
        load_engine_recipe(path)


def test_toml_syntax_error_names_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "engine.toml", "[source\nkind = 1\n")
    with pytest.raises(ConfigurationError, match=r"engine\.toml: not valid TOML: .*line 1"):
        read_toml(path)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("size_budget_mbb = 3\n", r'tiers\.cpu\.size_budget_mbb: unknown key \(did you mean "size_budget_mb"\?\)'),
        ('size_budget_mb = "40"\n', None),  # replaced below: wrong type
        ('[tiers.cpu.cmake_by_arch.x86]\nA = "ON"\n', r"tiers\.cpu: cmake_by_arch\.x86: unknown arch \(did you mean \"x86_64\"\?\)"),
        ('[tiers.cpu.cmake]\nGGML_CUDA = true\n', r"tiers\.cpu\.cmake\.GGML_CUDA: expected a string, got a boolean"),
        ('[tiers.cpu.runtime]\nmin_nvidia_driver = 0\n', r"tiers\.cpu\.runtime\.min_nvidia_driver: 0 is below the minimum 1"),
        ('[tiers.cpu.toolkit_wheels]\n"nvidia-cuda-nvcc" = []\n', r"toolkit_wheels: 'nvidia-cuda-nvcc' is not a pinned requirement"),
    ],
)
def test_malformed_tier(tmp_path: Path, extra: str, expected: str | None) -> None:
    text = GOOD_TIER + extra
    if expected is None:
        text = GOOD_TIER.replace("size_budget_mb = 40", 'size_budget_mb = "40"')
        expected = r'tiers\.cpu\.size_budget_mb: expected an integer, got a string'
    path = _write(tmp_path, "tiers.toml", text)
    with pytest.raises(ConfigurationError, match=expected) as ei:
        load_tiers(path)
    assert str(path) in str(ei.value)


def test_unknown_tier_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "tiers.toml", GOOD_TIER.replace("[tiers.cpu]", "[tiers.cuda14]"))
    with pytest.raises(ConfigurationError, match=r"tiers\.cuda14.*'cuda14' is not allowed \(did you mean \"cuda1[23]\"\?\)"):
        load_tiers(path)


def test_missing_tier_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "tiers.toml", GOOD_TIER.replace('toolchain = "host"\n', ""))
    with pytest.raises(ConfigurationError, match=r"tiers\.cpu: missing required key 'toolchain' — add toolchain = <one of"):
        load_tiers(path)


def test_cuda_tier_needs_archs(tmp_path: Path) -> None:
    path = _write(tmp_path, "tiers.toml", GOOD_TIER.replace('"host"', '"cuda13-pypi"'))
    with pytest.raises(ConfigurationError, match="cuda_archs is required"):
        load_tiers(path)


def test_get_tier_suggests() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown tier 'cpux' \(did you mean \"cpu\"\?\)"):
        get_tier("cpux")


def test_committed_schemas_equal_generated() -> None:
    stale = check_schemas()
    assert not stale, f"JSON schemas out of date: {stale}; regenerate with `dxbuild schema --write` and commit"


def test_schemas_accept_committed_files_and_reject_typos() -> None:
    root = project_root()
    pairs = {
        "engine.schema.json": root / "recipes" / "engine.toml",
        "tiers.schema.json": root / "recipes" / "tiers.toml",
        "matrix.schema.json": root / "matrix" / "matrix.toml",
    }
    schemas = {p.name: json.loads(text) for p, text in expected_schemas().items()}
    for name, toml_path in pairs.items():
        data = read_toml(toml_path)
        jsonschema.validate(data, schemas[name])
    bad = read_toml(root / "recipes" / "tiers.toml")
    bad["tiers"]["cpu"]["size_budget_mbb"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["tiers.schema.json"])
