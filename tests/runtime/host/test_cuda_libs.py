"""The thin CUDA engine's search for cuBLAS/cudart (dx.host.cuda_libs), with stand-in library directories.

The stand-ins are real ELF shared objects compiled here with the SONAME the
loader asks for (``gcc -shared -Wl,-soname,libcublas.so.13``): no GPU or
CUDA is needed, and the checks that read SONAMEs and ELF headers run on
real files. A fake NVIDIA driver is a fake ``/proc/driver/nvidia/version``
under a stand-in root, named as such.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from support.tools import need

from dx.host import cuda_libs

NAMES13 = ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13")


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """SONAME -> a tiny shared object carrying that SONAME (majors 13 and 12)."""
    need("gcc")  # makes the stand-in shared objects
    out = tmp_path_factory.mktemp("stand-ins")
    src = out / "empty.c"
    src.write_text("int dx_stand_in(void) { return 0; }\n")
    libs = {}
    for soname in (*NAMES13, "libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12"):
        dest = out / soname
        subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(dest), str(src)], check=True)
        libs[soname] = dest
    return libs


def lib_dir(path: Path, stand_ins: dict[str, Path], names: tuple[str, ...] = NAMES13,
            as_name: dict[str, str] | None = None) -> Path:
    """A directory holding copies of ``names`` (each stand-in may be copied under another file name)."""
    path.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.copy(stand_ins[n], path / (as_name or {}).get(n, n))
    return path


def fake_driver(root: Path, version: str = "580.95.05") -> None:
    """A fake /proc/driver/nvidia/version under ``root`` (no GPU here)."""
    proc = root / "proc" / "driver" / "nvidia"
    proc.mkdir(parents=True)
    (proc / "version").write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release\n"
                                  "GCC version:  gcc version 12.2.0\n")


@pytest.fixture
def layout(tmp_path: Path, stand_ins: dict[str, Path]) -> dict:
    """Three good places (runtime pack, pip wheel site-packages, system CUDA 13) under a stand-in root."""
    root = tmp_path / "root"
    home = tmp_path / "home"
    pack = lib_dir(home / ".local/share/dx/runtime/cuda13-13.0.2.14/lib", stand_ins)
    site = tmp_path / "venv/lib/python3.11/site-packages"
    pip = lib_dir(site / "nvidia/cu13/lib", stand_ins)
    system = lib_dir(root / "usr/local/cuda-13.0/lib64", stand_ins)
    return {"root": root, "env": {"HOME": str(home)}, "sys_path": [str(site)],
            "pack": pack, "pip": pip, "system": system}


def run_search(layout: dict, **env: str) -> cuda_libs.CudaSearch:
    return cuda_libs.search({**layout["env"], **env}, root=layout["root"], sys_path=layout["sys_path"],
                            use_ldconfig=False, machine="x86_64")


def test_order_pack_then_pip_then_system(layout: dict) -> None:
    found = run_search(layout)
    assert found.chosen == layout["pack"]
    assert [c.source for c in found.candidates] == ["pack"], "the search stops at the first usable place"
    shutil.rmtree(layout["pack"].parent)
    found = run_search(layout)
    assert found.chosen == layout["pip"]
    shutil.rmtree(layout["pip"])
    found = run_search(layout)
    assert found.chosen == layout["system"]
    assert [c.source for c in found.candidates] == ["system"]
    shutil.rmtree(layout["system"])
    found = run_search(layout)
    assert found.chosen is None and found.env({}) == {}
    assert "no usable CUDA 13 runtime" in found.log_lines()[-1]


def test_wrong_major_is_refused_and_logged(layout: dict, stand_ins: dict[str, Path]) -> None:
    """A pack holding CUDA 12's libraries is passed over for the pip wheel, and the log says why."""
    shutil.rmtree(layout["pack"])
    lib_dir(layout["pack"], stand_ins, ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12"))
    found = run_search(layout)
    assert found.chosen == layout["pip"]
    refused = found.candidates[0]
    assert (refused.source, refused.path, refused.accepted) == ("pack", layout["pack"], False)
    assert "wrong CUDA major" in refused.reason and "libcublas.so.12" in refused.reason
    log = "\n".join(found.log_lines())
    assert f"[pack] {layout['pack']}: refused — wrong CUDA major" in log
    assert f"[pip] {layout['pip']}: accepted" in log
    assert f"using {layout['pip']}" in log


def test_right_name_wrong_soname_is_refused(layout: dict, stand_ins: dict[str, Path]) -> None:
    """A CUDA 12 cuBLAS renamed to .so.13 is caught by its SONAME, not trusted by its file name."""
    (layout["pack"] / "libcublas.so.13").unlink()
    shutil.copy(stand_ins["libcublas.so.12"], layout["pack"] / "libcublas.so.13")
    found = run_search(layout)
    assert found.chosen == layout["pip"]
    assert "SONAME libcublas.so.12" in found.candidates[0].reason


def test_partial_and_non_elf_dirs_are_refused(layout: dict) -> None:
    (layout["pack"] / "libcublasLt.so.13").unlink()
    (layout["pip"] / "libcudart.so.13").write_bytes(b"not an ELF file")
    found = run_search(layout)
    assert found.chosen == layout["system"]
    assert [c.accepted for c in found.candidates] == [False, False, True]
    assert found.candidates[0].reason == "lacks libcublasLt.so.13"
    assert found.candidates[1].reason == "libcudart.so.13 is not an ELF shared object"


def test_wrong_machine_is_refused(layout: dict) -> None:
    found = cuda_libs.search(layout["env"], root=layout["root"], sys_path=layout["sys_path"],
                             use_ldconfig=False, machine="aarch64")
    assert found.chosen is None
    assert all("built for another machine" in c.reason for c in found.candidates)


def test_highest_pack_version_first_and_env_override_wins(layout: dict, stand_ins: dict[str, Path],
                                                          tmp_path: Path) -> None:
    home = Path(layout["env"]["HOME"])
    newer = lib_dir(home / ".local/share/dx/runtime/cuda13-13.0.10/lib", stand_ins)
    assert run_search(layout).chosen == newer, "13.0.10 sorts above 13.0.2.14 as numbers"
    chosen = lib_dir(tmp_path / "mine" / "lib", stand_ins)
    found = run_search(layout, DX_CUDA_RUNTIME=str(tmp_path / "mine"))  # a pack dir: its lib/ is used
    assert (found.chosen, found.candidates[0].source) == (chosen, "env")
    # XDG_DATA_HOME moves the user's pack folder, as install.sh does
    data = tmp_path / "data"
    moved = lib_dir(data / "dx/runtime/cuda13-13.0.2.14/lib", stand_ins)
    assert run_search(layout, XDG_DATA_HOME=str(data)).chosen == moved


def test_root_pack_under_opt(layout: dict, stand_ins: dict[str, Path]) -> None:
    shutil.rmtree(layout["pack"].parent)
    opt = lib_dir(layout["root"] / "opt/dx/runtime/cuda13-13.0.2.14/lib", stand_ins)
    assert run_search(layout).chosen == opt


def test_env_prepends_to_ld_library_path(layout: dict) -> None:
    found = run_search(layout)
    assert found.env({}) == {"LD_LIBRARY_PATH": str(layout["pack"])}
    assert found.env({"LD_LIBRARY_PATH": "/x"}) == {"LD_LIBRARY_PATH": f"{layout['pack']}:/x"}


def test_notice_names_what_to_install(layout: dict) -> None:
    found = run_search(layout)  # libraries, but no driver under the stand-in root
    assert found.driver is None and not found.usable
    assert "no NVIDIA driver" in found.notice() and "runs on the CPU" in found.notice()
    fake_driver(layout["root"])
    found = run_search(layout)
    assert found.driver == "580.95.05" and found.usable and found.notice() is None
    for d in ("pack", "pip", "system"):
        shutil.rmtree(layout[d])
    notice = run_search(layout).notice()
    assert notice is not None and "\n" not in notice
    assert "no CUDA 13 runtime" in notice and "install.sh" in notice
    assert "pip install nvidia-cublas nvidia-cuda-runtime" in notice


def test_thin_engine_detection(tmp_path: Path, stand_ins: dict[str, Path]) -> None:
    engine = tmp_path / "engine"
    (engine / "bin").mkdir(parents=True)
    (engine / "lib").mkdir()
    server = engine / "bin" / "llama-server"
    server.write_text("")
    assert not cuda_libs.is_thin_cuda_engine(server), "a cpu engine needs no search"
    (engine / "bin" / "libggml-cuda.so").write_text("")
    assert cuda_libs.is_thin_cuda_engine(server)
    lib_dir(engine / "lib", stand_ins)
    assert not cuda_libs.is_thin_cuda_engine(server), "a fat engine carries its own"
    assert cuda_libs.for_engine(server, {}).env == {}


@pytest.mark.cuda
def test_real_cuda13_wheel_layout_is_accepted(tmp_path: Path) -> None:
    """The nvidia wheels' own files (nvidia/cu13/lib, unpacked into the DX toolchain cache) pass.

    The toolkit is assembled from the pinned wheels when the cache lacks it (GBs of downloads:
    opt-in with the cuda tier, DX_TEST_CUDA=1), not looked for and skipped when absent.
    """
    from dxbuild.paths import cache_dir
    from dxbuild.toolchains.cuda13_pypi import assemble
    from dxbuild.toolchains.host import HOST_ARCH
    from dxmatrix.recipes import get_tier

    lib = assemble(get_tier("cuda13").toolkit_wheels, HOST_ARCH, cache_dir(), tmp_path / "assemble.log") / "lib"
    assert cuda_libs.check_dir(lib) is None
    assert cuda_libs.elf_soname(lib / "libcublasLt.so.13")[1] == "libcublasLt.so.13"


def test_doctor_shows_the_search(layout: dict, stand_ins: dict[str, Path]) -> None:
    """`dx doctor` prints every place looked at and the verdict, and the install line when none fits."""
    from dx.cli.doctor import report_json, report_text
    from dx.host.hardware import detect
    from dx.host.tiers import pick_tier

    shutil.rmtree(layout["pack"])
    lib_dir(layout["pack"], stand_ins, ("libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12"))
    found = run_search(layout)
    hw = detect()
    text = report_text(hw, pick_tier(hw), None, found)
    assert f"cuda-libs [pack] {layout['pack']}: refused — wrong CUDA major" in text
    assert f"cuda-libs using {layout['pip']}" in text
    assert "advice    no NVIDIA driver" in text, "no driver under the stand-in root"
    doc = report_json(hw, pick_tier(hw), None, found)["cuda_libs"]
    assert doc["chosen"] == str(layout["pip"]) and [c["accepted"] for c in doc["candidates"]] == [False, True]
    assert "cuda-libs" not in report_text(hw, pick_tier(hw), None), "a cpu engine: no cuda section"


# ---- with the real engine: a thin CUDA engine stand-in on the real cpu engine -----------------------
def _thin_engine(tmp_path: Path, cpu_engine: Path, stand_ins: dict[str, Path]) -> Path:
    """The real cpu engine plus a stand-in ``libggml-cuda.so`` that, like the real one, needs libcublas.so.13.

    ggml dlopens every backend module beside llama-server (GGML_BACKEND_DL): this one fails to
    load when no libcublas.so.13 is on the search path, and ggml goes on with its CPU variants —
    silently: a release ggml (NDEBUG) logs nothing about a backend it could not load
    (``ggml_backend_load_all_from_path``), which is why dx says it in one line.
    """
    engine = tmp_path / "engine"
    shutil.copytree(cpu_engine, engine, symlinks=True)
    src = tmp_path / "cuda.c"
    src.write_text("int cublasCreate_v2(void *);\nint dx_stand_in_cuda(void) { return cublasCreate_v2(0); }\n")
    link = tmp_path / "link"
    link.mkdir()
    shutil.copy(stand_ins["libcublas.so.13"], link / "libcublas.so")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(engine / "bin" / "libggml-cuda.so"), str(src),
                    f"-L{link}", "-Wl,--allow-shlib-undefined", "-lcublas"], check=True)
    return engine / "bin" / "llama-server"


def _engine_log(server) -> str:  # type: ignore[no-untyped-def]
    return "\n".join(p.read_text(errors="replace") for p in (server.home / "logs").glob("engine-*.log"))


@pytest.mark.integration
def test_thin_engine_without_cublas_runs_on_the_cpu_and_says_one_line(
        tmp_path: Path, cpu_engine: Path, smollm2_gguf: Path, stand_ins: dict[str, Path]) -> None:
    import httpx
    from support.serve_harness import start_dx

    binary = _thin_engine(tmp_path, cpu_engine, stand_ins)
    env = {"XDG_DATA_HOME": str(tmp_path / "empty"), "VIRTUAL_ENV": "", "CONDA_PREFIX": ""}
    server = start_dx(tmp_path, "--ctx", "512", engine=binary, model=str(smollm2_gguf), env=env, timeout=120)
    try:
        r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, timeout=120,
                       json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        said = [line for line in server.stderr().splitlines() if "CPU" in line]
        log = _engine_log(server)
        environ = Path(f"/proc/{server.children()[0]}/environ").read_bytes().split(b"\0")
    finally:
        server.stop()
    assert len(said) == 1 and "the engine runs on the CPU" in said[0], said
    assert "pip install nvidia-cublas nvidia-cuda-runtime" in said[0]
    assert "dx: cuda: thin engine; looking for" in log and "dx: cuda: no usable CUDA 13 runtime" in log
    assert not any(e.startswith(b"LD_LIBRARY_PATH=") for e in environ)
    devices = subprocess.run([str(binary), "--list-devices"], capture_output=True, text=True, timeout=60).stdout
    assert "(none)" in devices, "ggml skipped the CUDA module it could not load: CPU only"


@pytest.mark.integration
def test_thin_engine_gets_the_chosen_dir_on_its_library_path(
        tmp_path: Path, cpu_engine: Path, smollm2_gguf: Path, stand_ins: dict[str, Path]) -> None:
    """DX_CUDA_RUNTIME's stand-ins are found, logged, and the engine child loads libcublas.so.13 from there."""
    import httpx
    from support.serve_harness import start_dx

    binary = _thin_engine(tmp_path, cpu_engine, stand_ins)
    runtime = lib_dir(tmp_path / "pack" / "lib", stand_ins)
    server = start_dx(tmp_path, "--ctx", "512", engine=binary, model=str(smollm2_gguf),
                      env={"DX_CUDA_RUNTIME": str(runtime)}, timeout=120)
    try:
        r = httpx.post(f"{server.url}/v1/completions", headers=server.headers, timeout=120,
                       json={"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200, r.text
        log = _engine_log(server)
        pid = server.children()[0]
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        maps = Path(f"/proc/{pid}/maps").read_text()
        own = Path(f"/proc/{server.proc.pid}/environ").read_bytes()
    finally:
        server.stop()
    assert f"dx: cuda: [env] {runtime}: accepted" in log and f"dx: cuda: using {runtime}" in log
    assert f"LD_LIBRARY_PATH={runtime}".encode() in environ, "the chosen folder goes to the engine child"
    assert str(runtime / "libcublas.so.13") not in maps, "ggml unloaded the module it could not use"
    assert str(runtime).encode() not in own.replace(f"DX_CUDA_RUNTIME={runtime}".encode(), b""), \
        "dx's own environment is left alone: only the engine child gets the folder"
