"""Shot groups of long-tailed evaluation, by training images per class: many > 100, medium 20..100,
few < 20 (Liu et al. 2019). Plain Python: the report uses it without importing torch."""

from __future__ import annotations

from typing import Sequence

MANY_ABOVE, FEW_BELOW = 100, 20
SHOTS = ("many", "medium", "few")
RULE = f"> {MANY_ABOVE}, {FEW_BELOW}-{MANY_ABOVE}, < {FEW_BELOW} training images"  # for captions, in SHOTS order


def shot_groups(class_counts: Sequence[int]) -> dict[str, list[int]]:
    """The classes (indices) of each group; a group may be empty."""
    return {
        "many": [c for c, n in enumerate(class_counts) if n > MANY_ABOVE],
        "medium": [c for c, n in enumerate(class_counts) if FEW_BELOW <= n <= MANY_ABOVE],
        "few": [c for c, n in enumerate(class_counts) if n < FEW_BELOW],
    }
