#!/bin/sh
# DX's GPU check, in one go on a machine with one NVIDIA GPU (an H200 here), 16 cores,
# nvcc 13.0, CMake, ninja, Python 3 and the nvidia-cublas wheel, and no network:
#
#   python3 tests/gpu/make_source_tarball.py -o dist/gpu-check.tar.gz   # here (< 64 MiB)
#   sh tests/gpu/gpu_check.sh dist/gpu-check.tar.gz                      # there (~6-9 min)
#
# It builds the cuda13 engine for sm_90 from the trimmed, patched llama.cpp tree
# in the tarball, runs llama-bench, then serves the same model twice — llama-server
# direct, and the thin dx runtime (from source, cuBLAS found by dx.host.cuda_libs in the
# pip wheel) — and prints prefill/decode tokens/s through dx next to direct, the
# aggregate tokens/s of 4 concurrent clients against 1 (continuous batching), and
# the engine's CUDA device line. Without a GPU it stops first, with one line.
# Environment: GPU_CHECK_JOBS (16), GPU_CHECK_WORK (a temp dir), GPU_CHECK_TOKENS (128).

gpu_check() {
    set -eu
    say() { printf 'gpu_check: %s\n' "$*"; }
    die() { printf 'gpu_check: error: %s\n' "$*" >&2; exit 1; }

    # ---- a GPU, first ---------------------------------------------------------------
    if ! command -v nvidia-smi >/dev/null 2>&1 || [ ! -e /dev/nvidia0 ]; then
        printf 'gpu_check: error: no NVIDIA GPU here (%s) — run this on the GPU machine\n' \
            "$(command -v nvidia-smi >/dev/null 2>&1 && echo "no /dev/nvidia0" || echo "nvidia-smi not found")" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >/dev/null 2>&1 \
        || { printf 'gpu_check: error: nvidia-smi cannot talk to the driver\n' >&2; exit 2; }

    tarball=${1:-dist/gpu-check.tar.gz}
    [ -f "$tarball" ] || die "no tarball at $tarball — make it with: python3 tests/gpu/make_source_tarball.py"
    jobs=${GPU_CHECK_JOBS:-16}
    tokens=${GPU_CHECK_TOKENS:-128}
    work=${GPU_CHECK_WORK:-$(mktemp -d)}
    pids=""
    stop_all() { for pid in $pids; do kill "$pid" 2>/dev/null || true; done; }
    trap stop_all EXIT
    t0=$(date +%s)
    say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n 1)"

    tar -xzf "$tarball" -C "$work"
    top=$work/dx-gpu-check
    src=$top/llama.cpp
    model=$(ls "$top"/model/*.gguf)

    # ---- the toolkit, and cuBLAS from the pip wheel -------------------------------------
    nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    [ -x "$nvcc" ] || die "nvcc not found (PATH, /usr/local/cuda/bin)"
    say "nvcc: $("$nvcc" --version | grep -o 'release [0-9.]*')"
    wheel=$(python3 -c 'import glob, sys
for d in sys.path:
    hit = glob.glob(d + "/nvidia/cu13/lib/libcublas.so.13")
    if hit:
        print(hit[0].rsplit("/lib/", 1)[0]); break') || true
    [ -n "$wheel" ] || die "the nvidia-cublas wheel is not installed for python3 (pip install nvidia-cublas)"
    say "cuBLAS wheel: $wheel"
    # Link against the wheel's cuBLAS when the toolkit has none (the wheel has no unversioned names).
    shim=$work/cublas-link
    mkdir -p "$shim"
    for l in libcublas libcublasLt; do ln -sf "$wheel/lib/$l.so.13" "$shim/$l.so"; done

    # ---- build (sm_90, llama-server + llama-bench) --------------------------------------
    build=$work/build
    # The tier's flags, with one CPU variant instead of all (the GPU does the work here).
    set --
    while read -r flag; do
        case $flag in -DGGML_CPU_ALL_VARIANTS=*) flag=-DGGML_CPU_ALL_VARIANTS=OFF ;; esac
        set -- "$@" "$flag"
    done <"$top/cmake-flags.txt"
    cmake -S "$src" -B "$build" -G Ninja "$@" -DCMAKE_CUDA_COMPILER="$nvcc" \
        -DCMAKE_LIBRARY_PATH="$shim" -DCMAKE_CUDA_FLAGS="-I$wheel/include" -DCMAKE_CXX_FLAGS="-I$wheel/include" \
        >"$work/configure.log" 2>&1 || { tail -n 20 "$work/configure.log" >&2; die "cmake configure failed"; }
    cmake --build "$build" -j "$jobs" --target llama-server llama-bench >"$work/build.log" 2>&1 \
        || { tail -n 20 "$work/build.log" >&2; die "build failed (log: $work/build.log)"; }
    t1=$(date +%s)
    say "built in $((t1 - t0)) s: $(du -h "$build/bin/libggml-cuda.so" | cut -f1) libggml-cuda.so (sm_90)"
    engine=$build/bin/llama-server
    # Thin: nothing of cuBLAS beside the engine; dx must find the wheel's.
    LD_LIBRARY_PATH=$wheel/lib "$build/bin/llama-bench" -m "$model" -p 512 -n "$tokens" -r 3 -o md 2>/dev/null \
        | sed 's/^/gpu_check: bench /'

    # ---- llama-server direct, then dx (the thin runtime) -----------------------------
    port_direct=18180
    port_dx=18181
    LD_LIBRARY_PATH=$wheel/lib "$engine" -m "$model" --host 127.0.0.1 --port "$port_direct" --parallel 4 \
        --cont-batching -c 8192 --jinja >"$work/direct.log" 2>&1 &
    pids="$pids $!"
    PYTHONPATH=$top/runtime DX_ENGINE=$engine DX_HOME=$work/dx-home \
        python3 -m dx serve "$model" --port "$port_dx" --no-auth --ctx 2048 >"$work/dx.log" 2>&1 &
    pids="$pids $!"

    python3 - "$port_direct" "$port_dx" "$tokens" "$work" <<'EOF'
import json, sys, threading, time, urllib.request

direct, dx, tokens, work = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
PROMPT = "Write a long story about a lighthouse keeper who finds a map. " * 24  # ~300 tokens of prefill


def wait(port, path, limit=240):
    t = time.monotonic()
    while time.monotonic() - t < limit:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"gpu_check: error: nothing answered on port {port} (logs in {work})")


def complete(port, n=tokens):
    body = json.dumps({"prompt": PROMPT, "max_tokens": n, "temperature": 0, "ignore_eos": True,
                       "cache_prompt": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})
    t = time.monotonic()
    with urllib.request.urlopen(req, timeout=300) as r:
        doc = json.load(r)
    return doc, time.monotonic() - t


def one(port):
    runs = [complete(port) for _ in range(4)][1:]  # the first warms up
    prefill = sorted(d["timings"]["prompt_per_second"] for d, _ in runs)[1]
    decode = sorted(d["timings"]["predicted_per_second"] for d, _ in runs)[1]
    wall = sorted(d["usage"]["completion_tokens"] / s for d, s in runs)[1]
    return prefill, decode, wall


def aggregate(port, clients):
    done = []

    def go():
        d, _ = complete(port)
        done.append(d["usage"]["completion_tokens"])
    threads = [threading.Thread(target=go) for _ in range(clients)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.monotonic() - t)


wait(direct, "/health")
wait(dx, "/api/version")
complete(dx, 8)  # dx loads the engine on first use when not preloaded
rows = {}
for name, port in (("direct", direct), ("dx", dx)):
    p, d, w = one(port)
    a1 = aggregate(port, 1)
    a4 = aggregate(port, 4)
    rows[name] = (p, d, w, a1, a4)
print("gpu_check: %-8s %12s %12s %14s %12s %12s %8s" % ("", "prefill t/s", "decode t/s", "client t/s",
                                                     "1 client", "4 clients", "4 vs 1"))
for name, (p, d, w, a1, a4) in rows.items():
    print("gpu_check: %-8s %12.0f %12.0f %14.0f %12.0f %12.0f %7.2fx" % (name, p, d, w, a1, a4, a4 / a1))
dp, dd, dw, d1, d4 = rows["dx"]
pp, pd, pw, p1, p4 = rows["direct"]
print(f"gpu_check: dx / direct: prefill {dp / pp:.3f}, decode {dd / pd:.3f}, client-side {dw / pw:.3f}, "
      f"4 clients {d4 / p4:.3f}")
EOF
    grep -h -m 3 -E 'ggml_cuda_init|Device 0:|found [0-9]+ CUDA' "$work/direct.log" | sed 's/^/gpu_check: direct engine: /' || true
    grep -h -E '^dx: ' "$work/dx.log" | sed 's/^/gpu_check: /' || true
    grep -h -E 'dx: cuda: (using|\[)' "$work"/dx-home/logs/engine-*.log | sed 's/^/gpu_check: dx engine log: /' || true
    grep -h -m 2 -E 'Device 0:|found [0-9]+ CUDA' "$work"/dx-home/logs/engine-*.log \
        | sed 's/^/gpu_check: dx engine: /' || true
    say "done in $(($(date +%s) - t0)) s (work: $work)"
}

gpu_check "$@"
