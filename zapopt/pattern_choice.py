"""Choosing the pattern per layer: one knapsack over every (pattern, threshold) option.

Why: no pattern is best everywhere. On the reference VGG-style model the sparse
diagonal pattern saves most down to the 4x4 layers and the checkerboard or tile5x5-40 in
the 2x2 ones; letting the per-layer budget pick among all of them found 31.6 % fewer MACs
at a 1.39-point drop where the best single pattern found 29.3 % (1,024 calibration
images; ``benchmarks/zap_savings.py --patterns auto``; 30.2 % on average over three
predictor seeds). On the ResNet-style model it found nothing more, so it is an option,
not the default.

How: a layer's curves, one per candidate pattern, are merged into a single curve whose
thresholds are *option codes*: pattern ``k``'s threshold ``tau`` becomes
``tau + k * CODE_STRIDE``. The error-budget knapsack, the accuracy search and the
sensitivity probes then work unchanged on the merged curves (they only need one
increasing list of options per layer), and :meth:`MergedCurves.decode` turns each chosen code
back into ``(pattern, tau)``. Codes never leave this step: the rewritten model, the report and
``retune`` see real thresholds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from zapopt.curves import LayerCurve
from zapopt.errors import ZapoptError
from zapopt.ops.patterns import get_pattern

__all__ = ["AUTO", "PAPER_PATTERNS", "CODE_STRIDE", "MergedCurves", "parse_patterns", "merge_curves"]

#: ``--pattern auto``: the paper's four patterns.
AUTO = "auto"
PAPER_PATTERNS = ("checkerboard", "tile5x5-60", "tile5x5-40", "diag3x3-33")
#: Distance between two patterns' codes; every finite threshold must lie within +-STRIDE/2.
CODE_STRIDE = 1000.0


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


@dataclass(frozen=True)
class MergedCurves:
    """Per layer, one curve over every candidate pattern's finite thresholds (coded), and
    the way back from a code to ``(pattern, tau)`` (exact: a lookup, not arithmetic)."""

    curves: dict[str, LayerCurve]
    options: dict[str, dict[float, tuple[str, float]]]

    def decode(self, layer: str, code: float) -> tuple[str | None, float]:
        """``(pattern, tau)`` for one of ``layer``'s codes; ``(None, -inf)`` for -inf (the
        original layer)."""
        if code == -math.inf:
            return None, -math.inf
        try:
            return self.options[layer][code]
        except KeyError:
            raise ZapoptError(f"layer {layer!r}: {code} is not one of its merged thresholds") from None

    def decode_all(self, codes: Mapping[str, float]) -> tuple[dict[str, str | None], dict[str, float]]:
        """Per-layer patterns and thresholds for a selection over the merged curves."""
        pairs = {layer: self.decode(layer, code) for layer, code in codes.items()}
        return {k: p for k, (p, _) in pairs.items()}, {k: t for k, (_, t) in pairs.items()}


def merge_curves(curves: Mapping[str, Mapping[str, LayerCurve]]) -> MergedCurves:
    """``curves[pattern][layer]`` -> :class:`MergedCurves`; pattern ``k`` in ``curves``'
    order gets the codes around ``k * CODE_STRIDE``. A merged curve keeps the layer's MACs;
    its oracle is the best pattern's."""
    patterns = tuple(curves)
    merged: dict[str, LayerCurve] = {}
    options: dict[str, dict[float, tuple[str, float]]] = {}
    for layer in curves[patterns[0]]:
        parts = [curves[p][layer] for p in patterns]
        finite = [np.isfinite(c.taus) for c in parts]
        codes = []
        options[layer] = {}
        for index, (pattern, curve, keep) in enumerate(zip(patterns, parts, finite)):
            taus = curve.taus[keep]
            if np.any(np.abs(taus) >= CODE_STRIDE / 2):
                raise ZapoptError(f"layer {layer!r}, pattern {pattern!r}: thresholds beyond "
                                  f"+-{CODE_STRIDE / 2:g} cannot be coded")
            coded = taus + index * CODE_STRIDE
            codes.append(coded)
            options[layer].update({float(c): (pattern, float(t)) for c, t in zip(coded, taus)})

        def joined(attr: str) -> np.ndarray:
            return np.concatenate([getattr(c, attr)[k] for c, k in zip(parts, finite)])

        first = parts[0]
        merged[layer] = LayerCurve(
            name=layer, taus=np.concatenate(codes), shape=first.shape, images=first.images, macs=first.macs,
            predictor_macs=first.predictor_macs, pattern_fraction=math.nan,
            true_zero_share=first.true_zero_share, predicted_zero=joined("predicted_zero"),
            false_zero=joined("false_zero"), false_nonzero=joined("false_nonzero"), error=joined("error"),
            macs_after=joined("macs_after"), oracle_macs_after=min(c.oracle_macs_after for c in parts),
        )
    return MergedCurves(merged, options)
