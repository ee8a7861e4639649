#!/usr/bin/env python3
"""Make the one file ``tests/gpu/gpu_check.sh`` needs on a GPU machine with no network.

The machine lends at most 64 MiB of carried files, so this is not the 77 MB
sdist: it is DX's pinned llama.cpp tree with DX's patches already applied
(``dxbuild.engine.source.prepare_source``, the same tree every engine is built from),
trimmed to what a cuda13 ``llama-server`` + ``llama-bench`` build reads —
no models, docs, tests, examples, benches, the web UI's sources or other
backends' kernels (ggml adds a backend's folder only when its GGML_<X> is ON)
— plus:

* ``runtime/``: the dx runtime's source (``dx``, ``dxverify``) and ``click``,
  its one dependency, so ``python3 -m dx serve`` runs there with no install;
* ``model/smollm2-6l.gguf``: SmolLM2-135M Q4_1 (the test model) cut to its
  first 6 of 30 blocks with the gguf library — real weights and vocabulary in
  ~44 MB instead of 98 MB (the embeddings are most of it); the figures compare dx with llama-server on the same
  file, so a shorter model only makes dx's share of each token larger;
* ``cmake-flags.txt``: the cuda13 tier's CMake values for sm_90, from the recipe.

Usage: ``python3 tests/gpu/make_source_tarball.py [-o dist/gpu-check.tar.gz] [--layers 8]``.
Written with fixed mtimes and owners, members sorted (gzip: every machine has it).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

LIMIT = 64 * 1024 * 1024
TOP = "dx-gpu-check"
# Top-level folders of the llama.cpp tree the cuda13 build never reads.
DROP_TOP = {"models", "docs", "tests", "benches", "examples", "media", "gguf-py", "conversion", "scripts",
            "pocs", "skills", "grammars", "requirements", ".github", ".devops"}
# ggml backends kept: the CPU variants (the fallback), CUDA, RPC (DX builds with GGML_RPC=ON).
KEEP_BACKENDS = {"ggml-cpu", "ggml-cuda", "ggml-rpc"}
# tools/ui: only the CMake files are read when LLAMA_BUILD_UI=OFF.
UI_KEEP = {"CMakeLists.txt", "sources.cmake", "ui.cpp.in", "ui.h.in"}
EPOCH = 315532800  # 1980-01-01, DX's build epoch


def keep(rel: Path) -> bool:
    """Whether one path of the llama.cpp tree goes into the tarball."""
    parts = rel.parts
    if not parts or parts[0] in DROP_TOP or any(p in (".git", "__pycache__") for p in parts):
        return False
    if parts[:2] == ("ggml", "src") and len(parts) >= 3 and parts[2].startswith("ggml-") \
            and (rel.parent != Path("ggml/src")) and parts[2] not in KEEP_BACKENDS:
        return False
    if parts[:2] == ("tools", "ui") and len(parts) >= 3 and parts[2] not in UI_KEEP:
        return False
    return rel.suffix not in (".gguf", ".png", ".jpg", ".mp4", ".wav", ".pdf")


def source_tree() -> Path:
    """DX's patched llama.cpp tree for the cuda13 tier (cached by dxbuild; unpacked here if not)."""
    from dxbuild.engine.source import prepare_source
    from dxbuild.paths import cache_dir
    from dxmatrix.recipes import get_tier, load_engine_recipe

    recipe = load_engine_recipe().with_patches(get_tier("cuda13").patches)
    log = cache_dir() / "logs" / "gpu-check-source.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return prepare_source(recipe, log=log, echo=None).path


def cmake_flags() -> str:
    """The cuda13 tier's CMake values for sm_90, one ``-DK=V`` per line (what dxbuild would pass)."""
    from dxbuild.toolchains.plan import host_cell
    from dxmatrix.recipes import get_tier, load_engine_recipe

    cell = host_cell(get_tier("cuda13"), load_engine_recipe(), cuda_archs=("90",))
    return "".join(f"-D{k}={v}\n" for k, v in cell.cmake)


def truncated_model(blocks: int) -> bytes:
    """SmolLM2-135M Q4_1 with only its first ``blocks`` transformer blocks (block_count rewritten)."""
    import gguf

    from dxbuild.models import resolve

    src = resolve("smollm2").path
    reader = gguf.GGUFReader(src)
    arch = reader.fields["general.architecture"].contents()
    count_key = f"{arch}.block_count"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "m.gguf"
        writer = gguf.GGUFWriter(out, arch=arch, endianess=reader.endianess)
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue
            vtype = field.types[0]
            sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            value = blocks if field.name == count_key else field.contents()
            writer.add_key_value(field.name, value, vtype, sub_type=sub)
        kept = [t for t in reader.tensors
                if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < blocks]
        for t in kept:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
        writer.close()
        return out.read_bytes()


def runtime_files() -> dict[str, Path]:
    """``runtime/dx/…``, ``runtime/dxverify/…``, ``runtime/click/…``: dx runs from source there."""
    import click

    import dx
    import dxverify

    out = {}
    for pkg in (dx, dxverify, click):
        root = Path(pkg.__file__).parent
        for p in sorted(root.rglob("*.py")):
            if "__pycache__" not in p.parts:
                out[f"runtime/{pkg.__name__}/{p.relative_to(root).as_posix()}"] = p
    return out


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(f"{TOP}/{name}")
    info.size, info.mtime, info.mode = len(data), EPOCH, mode
    tar.addfile(info, io.BytesIO(data))


def make_tarball(dest: Path, *, blocks: int = 6, tree: Path | None = None, model: bool = True) -> dict[str, int]:
    """Write the tarball (temp name, then renamed); returns byte counts per part, for the report."""
    tree = tree or source_tree()
    files = sorted(p for p in tree.rglob("*") if p.is_file() and not p.is_symlink() and keep(p.relative_to(tree)))
    sizes = {"llama.cpp": 0, "runtime": 0, "model": 0}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=EPOCH) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for p in files:
                data = p.read_bytes()
                sizes["llama.cpp"] += len(data)
                _add(tar, f"llama.cpp/{p.relative_to(tree).as_posix()}", data, 0o755 if os.access(p, os.X_OK) else 0o644)
            for name, p in sorted(runtime_files().items()):
                data = p.read_bytes()
                sizes["runtime"] += len(data)
                _add(tar, name, data)
            _add(tar, "cmake-flags.txt", cmake_flags().encode())
            here = Path(__file__).parent
            _add(tar, "gpu_check.sh", (here / "gpu_check.sh").read_bytes(), 0o755)
            if model:
                data = truncated_model(blocks)
                sizes["model"] = len(data)
                _add(tar, f"model/smollm2-{blocks}l.gguf", data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    sizes["tarball"] = dest.stat().st_size
    return sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, default=Path("dist/gpu-check.tar.gz"))
    ap.add_argument("--layers", type=int, default=6, help="transformer blocks of SmolLM2 to keep (of 30)")
    args = ap.parse_args()
    sizes = make_tarball(args.output, blocks=args.layers)
    print(f"{args.output}: {sizes['tarball'] / 2**20:.1f} MiB (llama.cpp {sizes['llama.cpp'] / 1e6:.1f} MB, "
          f"runtime {sizes['runtime'] / 1e6:.1f} MB, model {sizes['model'] / 1e6:.1f} MB, unpacked)")
    if sizes["tarball"] >= LIMIT:
        print("error: over the 64 MiB a GPU machine can be sent", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
