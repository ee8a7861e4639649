"""Registry pulls: DX's stdlib client vs curl on the same blob, 1 and 4 parts; a pull out of ~/.ollama.

    python3 tests/bench/bench_ollama_pull.py [--mib 512]

Serves a random blob of --mib MiB from the loopback fake registry
(tests/runtime/ollama_registry_server.py: 307 to a loopback "CDN") and times,
one run each, side by side:

* ``curl -L`` of the blob URL into a file (what a plain download costs here);
* ``dx.registry.ollama.download_blob`` with 1 and with 4 parts (download, then
  the SHA-256 check it always does: both times shown);
* ``dx pull`` of SmolLM2 (the real GGUF) when a fake ``~/.ollama`` already has it:
  no bytes move, the time is the hash check plus a hard link.

Prints numbers only; never asserts (benchmarks are scripts, see HACKING.md).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers in support/

from support.ollama_registry_server import FakeRegistry  # noqa: E402


def _mbps(n: int, s: float) -> str:
    return f"{n / s / 1e6:8.1f} MB/s"


def curl(t: Path, url: str, size: int, when: str) -> None:
    if not shutil.which("curl"):
        print("curl: not installed")
        return
    t0 = time.perf_counter()
    subprocess.run(["curl", "-sS", "-L", "-o", str(t / "curl.bin"), url], check=True)
    dt = time.perf_counter() - t0
    t1 = time.perf_counter()
    subprocess.run(["sha256sum", str(t / "curl.bin")], check=True, capture_output=True)
    print(f"curl -L ({when}) {dt:6.2f} s {_mbps(size, dt)}   (+ sha256sum {time.perf_counter() - t1:.2f} s)")
    (t / "curl.bin").unlink()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512, help="size of the random blob")
    args = ap.parse_args()

    from dx.models.catalog import Store
    from dx.registry import ollama as reg
    from dxbuild.models import resolve

    blob = os.urandom(args.mib << 20)
    digest = hashlib.sha256(blob).hexdigest()
    smol = resolve("smollm2").path
    fake = FakeRegistry()
    fake.add_model("library/bench", "big", blob)
    fake.add_model("library/smol", "135m", smol.read_bytes())
    fake.start()
    os.environ["DX_OLLAMA_REGISTRY"] = fake.url
    name = reg.parse_registry_name("bench:big")
    layer = reg.fetch_manifest(name).model_layer("bench")
    print(f"blob: {len(blob) / 1e6:.1f} MB, loopback registry {fake.url} -> CDN {fake.cdn_url}; "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="dx-bench-pull-") as tmp:
        t = Path(tmp)
        curl(t, reg.blob_url(name, layer), len(blob), "first")
        for parts in (1, 4, 1, 4):  # twice each: on a shared 2-core machine the order matters
            marks: dict[str, float] = {}

            def progress(status: str, done: int | None, total: int | None, marks: dict = marks) -> None:
                if status.startswith("verifying"):
                    marks.setdefault("verify", time.perf_counter())

            dest = t / f"p{parts}"
            t0 = time.perf_counter()
            got = reg.download_blob(name, layer, dest, parts=parts, progress=progress)
            end = time.perf_counter()
            dl = marks.get("verify", end) - t0
            assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
            print(f"dx, {parts} part{'s' if parts > 1 else ' '}       {dl:6.2f} s {_mbps(len(blob), dl)}   "
                  f"(+ SHA-256 check {end - t0 - dl:.2f} s; total {end - t0:.2f} s)")
            shutil.rmtree(dest)

        curl(t, reg.blob_url(name, layer), len(blob), "again, last")

        # ~/.ollama already has the model: dx pull moves no bytes.
        ollama = t / "ollama"
        raw = fake.manifests[("library/smol", "135m")]
        (ollama / "manifests/registry.ollama.ai/library/smol").mkdir(parents=True)
        (ollama / "manifests/registry.ollama.ai/library/smol/135m").write_bytes(raw)
        (ollama / "blobs").mkdir()
        import json

        for d in [json.loads(raw)["config"], *json.loads(raw)["layers"]]:
            hexd = d["digest"].split(":")[1]
            (ollama / "blobs" / f"sha256-{hexd}").write_bytes(fake.blobs[hexd])
            (ollama / "blobs" / f"sha256-{hexd}").chmod(0o644)
        os.environ["DX_OLLAMA_REGISTRY"] = "http://127.0.0.1:9"  # any network use would fail
        store = Store(t / "dxhome", ollama_dir=ollama)
        t0 = time.perf_counter()
        entry = store.pull("smol:135m")
        dt = time.perf_counter() - t0
        linked = entry.path.stat().st_ino == (ollama / "blobs" / f"sha256-{entry.sha256}").stat().st_ino
        t1 = time.perf_counter()
        subprocess.run(["sha256sum", str(entry.path)], check=True, capture_output=True)
        print(f"pull from ~/.ollama {dt:5.2f} s for {entry.size / 1e6:.1f} MB ({'hard link' if linked else 'copy'}, "
              f"0 bytes over the network; sha256sum alone {time.perf_counter() - t1:.2f} s)")
    fake.stop()


if __name__ == "__main__":
    main()
