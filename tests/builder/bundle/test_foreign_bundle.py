"""The qemu route for another arch's runtime: when it is open, and what its cache keys hold."""

from __future__ import annotations

import shutil

import pytest

from dxbuild.bundle import foreign as fb


def test_unknown_arch_is_named() -> None:
    assert fb.foreign_problem("riscv64") == "no foreign-root recipe for riscv64 (known: arm64)"


def test_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fb.os, "geteuid", lambda: 1000)
    problem = fb.foreign_problem("arm64")
    assert problem is not None and "needs root" in problem


def test_missing_tools_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fb.os, "geteuid", lambda: 0)
    real = shutil.which
    monkeypatch.setattr(fb.shutil, "which", lambda name: None if name == "debootstrap" else real(name))
    assert fb.foreign_problem("arm64") == "debootstrap not found: apt-get install -y debootstrap"


def test_missing_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(fb.shutil, "which", lambda name: None if "qemu" in name else f"/usr/bin/{name}")
    assert fb.foreign_problem("arm64") == "qemu-aarch64-static not found: apt-get install -y qemu-user-static"


def test_root_key_follows_the_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new click or Nuitka on the host means a new root: the arm64 bundle is built from the same releases."""
    before = fb.root_key("arm64")
    assert before == fb.root_key("arm64")
    pins = fb._pins()
    assert pins[-1].startswith("nuitka==") and any(p.startswith("click==") for p in pins)
    monkeypatch.setattr(fb, "_pins", lambda: [*pins[:-1], "nuitka==0.0.1"])
    assert fb.root_key("arm64") != before


def test_foreign_key_adds_the_root_to_the_bundle_inputs(tmp_path) -> None:
    """Same engine and sources, another arch's root or its Python: another cache entry."""
    eng = tmp_path / "engine"
    for rel in ("bin/llama-server", "bin/ggml-rpc-server", "engine.json"):
        (eng / rel).parent.mkdir(parents=True, exist_ok=True)
        (eng / rel).write_bytes(b"x")
    a = fb.foreign_key(eng, "cpu", "k" * 64, "arm64", "3.11.2")
    assert a == fb.foreign_key(eng, "cpu", "k" * 64, "arm64", "3.11.2")
    assert a != fb.foreign_key(eng, "cpu", "k" * 64, "arm64", "3.11.9")
    assert a != fb.foreign_key(eng, "cpu", "j" * 64, "arm64", "3.11.2")
