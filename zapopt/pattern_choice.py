"""Choosing the pattern per layer: one knapsack over every (pattern, threshold) option.

Why: no pattern is best everywhere. On the reference VGG-style model the sparse
diagonal pattern saves most down to the 4x4 layers and the checkerboard or tile5x5-40 in
the 2x2 ones; letting the per-layer budget pick among all of them found 31.6 % fewer MACs
at a 1.39-point drop where the best single pattern found 29.3 % (1,024 calibration
images; ``benchmarks/zap_savings.py --patterns auto``; 30.2 % on average over three
predictor seeds). On the ResNet-style model it found nothing more, so it is an option,
not the default.

How: a layer's curves, one per candidate pattern, are joined into a single curve whose
points are the options ``(pattern, tau)``: its ``taus`` are the real thresholds and its
``patterns`` name each point's pattern. The error-budget knapsack, the accuracy search and
the sensitivity probes pick curve points, so they work unchanged on the joined curves and
report each choice as a threshold and a pattern (``Selection.patterns``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.ops.patterns import get_pattern

__all__ = ["AUTO", "PAPER_PATTERNS", "parse_patterns", "merge_curves"]

#: ``--pattern auto``: the paper's four patterns.
AUTO = "auto"
PAPER_PATTERNS = ("checkerboard", "tile5x5-60", "tile5x5-40", "diag3x3-33")


def parse_patterns(spec: str) -> tuple[str, ...]:
    """``"checkerboard"``, ``"checkerboard,diag3x3-33"`` or ``"auto"`` -> pattern names."""
    if not isinstance(spec, str):
        raise TypeError(f"pattern must be a string, got {type(spec).__name__}")
    names = PAPER_PATTERNS if spec.strip() == AUTO else tuple(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise ZapoptError("--pattern is empty; give a pattern name, a comma-separated list, or 'auto'")
    if len(set(names)) != len(names):
        raise ZapoptError(f"--pattern lists a pattern twice: {spec!r}")
    for name in names:
        try:
            get_pattern(name)
        except ZapoptError as error:
            raise ZapoptError(f"{error}; or a comma-separated list of them, or '{AUTO}'") from None
    return names


def merge_curves(curves: Mapping[str, Mapping[str, LayerCurve]]) -> dict[str, LayerCurve]:
    """``curves[pattern][layer]`` -> one curve per layer over every pattern's finite
    thresholds, in ``curves``' pattern order, each point labelled with its pattern. A
    merged curve keeps the layer's MACs; its oracle is the best pattern's."""
    patterns = tuple(curves)
    merged: dict[str, LayerCurve] = {}
    for layer in curves[patterns[0]]:
        parts = [curves[p][layer] for p in patterns]
        finite = [np.isfinite(c.taus) for c in parts]

        def joined(attr: str) -> np.ndarray:
            return np.concatenate([getattr(c, attr)[k] for c, k in zip(parts, finite)])

        first = parts[0]
        merged[layer] = LayerCurve(
            name=layer, taus=joined("taus"), shape=first.shape, images=first.images, macs=first.macs,
            predictor_macs=first.predictor_macs, pattern_fraction=math.nan,
            true_zero_share=first.true_zero_share, predicted_zero=joined("predicted_zero"),
            false_zero=joined("false_zero"), false_nonzero=joined("false_nonzero"), error=joined("error"),
            macs_after=joined("macs_after"), oracle_macs_after=min(c.oracle_macs_after for c in parts),
            patterns=tuple(p for p, k in zip(patterns, finite) for _ in range(int(k.sum()))),
        )
    return merged
