"""Spatial sampling patterns: which output activations a ZAP layer computes up front.

A pattern is a small binary tile repeated over the output feature map; ``1`` marks an
activation computed before prediction (it feeds the predictor), ``0`` one the predictor
decides about. The tile, not the full mask, is stored in the model (``pattern`` and
``pattern_shape`` attributes of ``ai.zapopt::ZapConv``), so one tile serves every
feature-map size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from zapopt.errors import ZapoptError

Tile = tuple[tuple[int, ...], ...]


@dataclass(frozen=True)
class Pattern:
    """A named base tile; ``mask(h, w)[i, j] = tile[i % tH][j % tW]``."""

    name: str
    tile: Tile

    def __post_init__(self) -> None:
        tile = self.tile
        if not isinstance(tile, tuple) or not tile or not all(isinstance(r, tuple) for r in tile):
            raise ZapoptError(
                f"pattern {self.name!r}: tile must be a non-empty tuple of tuples of 0/1, got {tile!r}"
            )
        widths = {len(row) for row in tile}
        if len(widths) != 1 or 0 in widths:
            raise ZapoptError(
                f"pattern {self.name!r}: every tile row needs the same non-zero length, got {tile!r}"
            )
        if any(v not in (0, 1) or isinstance(v, bool) for row in tile for v in row):
            raise ZapoptError(f"pattern {self.name!r}: tile entries must be the ints 0 or 1, got {tile!r}")
        if not any(v for row in tile for v in row):
            raise ZapoptError(
                f"pattern {self.name!r}: at least one tile position must be computed (1), "
                "otherwise the predictor sees nothing"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """``(tH, tW)``, the tile size."""
        return len(self.tile), len(self.tile[0])

    @property
    def computed_fraction(self) -> float:
        """Share of activations computed up front (of a map whose sides are tile multiples)."""
        th, tw = self.shape
        return sum(map(sum, self.tile)) / (th * tw)

    def tile_array(self) -> np.ndarray:
        """The tile as a ``bool`` array of shape ``(tH, tW)``."""
        return np.array(self.tile, dtype=bool)

    def mask(self, h: int, w: int) -> np.ndarray:
        """The ``h x w`` boolean mask ``S`` (True = computed up front)."""
        if int(h) < 1 or int(w) < 1:
            raise ZapoptError(f"pattern mask needs positive sizes, got h={h}, w={w}")
        th, tw = self.shape
        reps = (-(-int(h) // th), -(-int(w) // tw))
        return np.tile(self.tile_array(), reps)[: int(h), : int(w)]

    def inverse(self, name: str) -> Pattern:
        """The complementary pattern (predicted and computed positions swapped)."""
        return Pattern(name, tuple(tuple(1 - v for v in row) for row in self.tile))

    def to_attrs(self) -> dict[str, Any]:
        """The ``ZapConv`` attributes that store this pattern."""
        th, tw = self.shape
        return {
            "pattern": [v for row in self.tile for v in row],
            "pattern_shape": [th, tw],
            "pattern_name": self.name,
        }

    @classmethod
    def from_attrs(
        cls, pattern: Sequence[int], pattern_shape: Sequence[int], pattern_name: str | bytes = ""
    ) -> Pattern:
        """Rebuild a pattern from ``ZapConv`` attributes (the inverse of :meth:`to_attrs`).

        An empty or unknown name keeps the tile; a registered name with the same tile gets
        the registry's name, so ``pattern_name`` stays informational only.
        """
        if isinstance(pattern_name, bytes):
            pattern_name = pattern_name.decode("utf-8")
        values = [int(v) for v in pattern]
        shape = [int(v) for v in pattern_shape]
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise ZapoptError(f"pattern_shape must be two positive ints [tH, tW], got {shape}")
        if len(values) != shape[0] * shape[1]:
            raise ZapoptError(
                f"pattern has {len(values)} entries but pattern_shape {shape} needs {shape[0] * shape[1]}"
            )
        tile = tuple(tuple(values[r * shape[1] : (r + 1) * shape[1]]) for r in range(shape[0]))
        if not pattern_name:
            known = [p for p in PATTERNS.values() if p.tile == tile]
            pattern_name = known[0].name if known else "custom"
        return cls(pattern_name, tile)


# 10 of 25 computed, two per row and per column. Repeated over the plane, every predicted
# position has exactly 4 computed positions in its 3x3 window (the inverse tile: 6), so the
# predictor's 5x5 receptive field always sees real values around the position it decides.
_TILE5X5_40: Tile = (
    (1, 1, 0, 0, 0),
    (0, 0, 1, 1, 0),
    (1, 0, 0, 0, 1),
    (0, 1, 1, 0, 0),
    (0, 0, 0, 1, 1),
)


def _registry(*patterns: Pattern) -> dict[str, Pattern]:
    return {p.name: p for p in patterns}


PATTERNS: Mapping[str, Pattern] = _registry(
    # The paper's four.
    Pattern("checkerboard", ((1, 0), (0, 1))),
    Pattern("tile5x5-60", tuple(tuple(1 - v for v in row) for row in _TILE5X5_40)),
    Pattern("tile5x5-40", _TILE5X5_40),
    Pattern("diag3x3-33", ((1, 0, 0), (0, 1, 0), (0, 0, 1))),
    # Row/column structured: contiguous computed runs suit a CPU kernel (to be measured).
    Pattern("rows-50", ((1,), (0,))),
    Pattern("cols-50", ((1, 0),)),
    # Everything computed: the op is exact whatever the threshold (tests, baselines).
    Pattern("all", ((1,),)),
)


def get_pattern(name: str) -> Pattern:
    """The registered pattern called ``name``."""
    try:
        return PATTERNS[name]
    except KeyError:
        raise ZapoptError(
            f"unknown pattern {name!r}; choose one of: {', '.join(sorted(PATTERNS))}"
        ) from None
