"""The ggml tensor types of the pinned llama.cpp and how many bytes a row of each takes.

Copied by value from ``type_traits`` in ``ggml/src/ggml.c`` of llama.cpp commit
0c1e57098bba43ac29e6e3b677cdceebdd22334f (the one vendored by llama-cpp-python
0.3.36), and cross-checked by printing ``ggml_blck_size``/``ggml_type_size`` from
that build's libggml-base. Removed ids stay in the table (block size 0) so a file
using one gets "removed type" rather than "unknown type".
"""

from __future__ import annotations

from dataclasses import dataclass

# GGML_TYPE_COUNT of the pinned commit: ids at or above it are unknown.
GGML_TYPE_COUNT = 43


@dataclass(frozen=True)
class GGMLType:
    """One ggml tensor type: ``block_size`` elements are stored in ``type_size`` bytes."""

    id: int
    name: str
    block_size: int
    type_size: int

    @property
    def removed(self) -> bool:
        return self.block_size == 0


_TABLE: tuple[tuple[int, str, int, int], ...] = (
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (4, "Q4_2 (removed)", 0, 0),
    (5, "Q4_3 (removed)", 0, 0),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (31, "Q4_0_4_4 (removed)", 0, 0),
    (32, "Q4_0_4_8 (removed)", 0, 0),
    (33, "Q4_0_8_8 (removed)", 0, 0),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (36, "IQ4_NL_4_4 (removed)", 0, 0),
    (37, "IQ4_NL_4_8 (removed)", 0, 0),
    (38, "IQ4_NL_8_8 (removed)", 0, 0),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
)

GGML_TYPES: dict[int, GGMLType] = {row[0]: GGMLType(*row) for row in _TABLE}
assert len(GGML_TYPES) == GGML_TYPE_COUNT and sorted(GGML_TYPES) == list(range(GGML_TYPE_COUNT))

# What gguf.cpp calls the largest size_t: sizes beyond it cannot be loaded on a 64-bit host.
SIZE_MAX = (1 << 64) - 1
INT64_MAX = (1 << 63) - 1


def ggml_type(type_id: int) -> GGMLType | None:
    """The type for ``type_id``, or None when the pinned llama.cpp does not know it."""
    return GGML_TYPES.get(type_id)
