#!/usr/bin/env bash
# The whole test suite from a fresh machine: the system tools the tests drive
# (ccache, dash, busybox, openssl, curl, npm for llama.cpp's web UI, chromium to drive it, tmux for dx top,
# docker-registry (the CNCF distribution registry) for dx push/pull against a real registry,
# gcc and patch for the engine), DX with its test extras, then ruff, the import layers
# (lint-imports) and pytest (unit, integration with the real engine, Nuitka and clients).
set -euo pipefail
cd "$(dirname "$0")"

need=()
for tool in ccache dash busybox openssl curl npm chromium tmux gcc patch docker-registry; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
command -v dpkg >/dev/null && for pkg in qemu-user-static glslc libvulkan-dev spirv-headers mesa-vulkan-drivers gcc-aarch64-linux-gnu g++-aarch64-linux-gnu; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done  # the vulkan (lavapipe) and aarch64 (qemu) tiers
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "+ apt-get install ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    need=()
  else
    echo "note: missing ${need[*]}; the tests that need them will be skipped" >&2
  fi
fi
# Every tool above is in place: from here a test that finds one missing fails instead of
# skipping (tests/support/tools.py).
if [ ${#need[@]} -eq 0 ] && command -v dpkg >/dev/null; then export DX_TEST_TOOLS=all; fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
python3 -m ruff check .
# The layers (pyproject.toml [tool.importlinter]): every import counted, those inside functions too.
python3 -c 'import sys; from importlinter.cli import lint_imports_command; sys.argv[0] = "lint-imports"; lint_imports_command()' --no-cache
python3 -m pytest "$@"
