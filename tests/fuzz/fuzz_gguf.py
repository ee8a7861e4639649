#!/usr/bin/env python3
"""Coverage-guided fuzzing of the GGUF reader with atheris (libFuzzer).

    python3 tests/fuzz/fuzz_gguf.py -runs=1000000 CORPUS_DIR     # fuzz
    python3 tests/fuzz/fuzz_gguf.py --make-corpus CORPUS_DIR      # write seed files first

Any input may be rejected with a GGUFError; any other exception is a bug:
atheris prints "Uncaught Python exception", saves the input as crash-<sha1> and
exits non-zero. A clean run exits 0 after libFuzzer's "Done N runs".
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_corpus(dest: Path) -> int:
    """Seeds: a small complete model, the same with other alignments, and each test-gguf kind."""
    sys.path.insert(0, str(HERE.parent))  # tests/: support.gguf_handcraft
    sys.path.insert(0, str(HERE.parent / "verify"))  # test_gguf_testgguf_kinds
    from support.gguf_handcraft import tiny_model
    from test_gguf_testgguf_kinds import ACCEPTED, REJECTED, craft

    dest.mkdir(parents=True, exist_ok=True)
    seeds = {"tiny": tiny_model().build().data, "tiny-a1": tiny_model(alignment=1).build().data,
             "tiny-a64": tiny_model(n_vocab=3, alignment=64).build().data}  # fmt: skip
    for kind in [*ACCEPTED, *REJECTED]:
        seeds[kind.lower()] = craft(kind, 0)
    for name, data in seeds.items():
        if len(data) <= 1 << 16:
            (dest / name).write_bytes(data)
    return len(seeds)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--make-corpus":
        print(f"fuzz_gguf: wrote {make_corpus(Path(sys.argv[2]))} seeds to {sys.argv[2]}")
        return

    import atheris

    with atheris.instrument_imports(include=["dxverify"]):
        from dxverify.gguf import GGUFError, read_gguf_buffer

    def test_one_input(data: bytes) -> None:
        try:
            gf = read_gguf_buffer(data)
        except GGUFError as e:
            if not (e.field and 0 <= e.offset <= len(data)):
                raise AssertionError(
                    f"rejection without a field or with an offset outside the input: {e}"
                ) from e
            return
        # An accepted input must also survive everything callers do with it.
        gf.summary().to_dict()
        gf.metadata()

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
