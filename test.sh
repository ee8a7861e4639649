#!/usr/bin/env bash
# The whole test suite from a fresh machine: install DX with its test extras,
# then run pytest (lint, unit, integration with the real engine, Nuitka and clients).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install -q -e '.[test]'
python3 -m ruff check .
python3 -m pytest "$@"
