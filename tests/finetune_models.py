"""ZAP models for the finetune tests, built without training predictors (fast).

Each eligible conv of a reference model gets a hand-made predictor: ``Z`` is a smoothed
copy of the partial ofm, so the masks look like real ones (clustered, some skipped), with
the patterns and both predictor inputs mixed across layers.
"""
from __future__ import annotations

import numpy as np
import onnx

from tests.conftest import REPO_ROOT
from zapopt.graph import analyze
from zapopt.ops.patterns import PATTERNS
from zapopt.rewrite.replace import ReplaceWithZap, ZapParams

PATTERN_CYCLE = ("checkerboard", "diag3x3-33", "tile5x5-40", "rows-50")


def reference_model(name: str) -> onnx.ModelProto:
    return onnx.load(str(REPO_ROOT / "models" / name / f"{name}.onnx"))


def smoothing_predictor(channels: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """dw3x3 (positive taps) -> relu -> dw3x3: Z ~ local mean of P, plus per-channel noise."""
    pw1 = np.full((channels, 1, 3, 3), 0.2, np.float32) + rng.normal(0, 0.05, (channels, 1, 3, 3)).astype(np.float32)
    pw2 = np.full((channels, 1, 3, 3), 0.2, np.float32) + rng.normal(0, 0.05, (channels, 1, 3, 3)).astype(np.float32)
    pb1 = rng.normal(0, 0.05, channels).astype(np.float32)
    pb2 = rng.normal(-0.05, 0.05, channels).astype(np.float32)
    return pw1, pb1, pw2, pb2


def zap_reference_model(name: str, threshold: float = 0.05, seed: int = 0) -> onnx.ModelProto:
    """``models/NAME`` with every eligible conv but the first replaced by a ZapConv."""
    original = reference_model(name)
    rng = np.random.default_rng(seed)
    convs = [c for c in analyze(original).convs if c.eligible and not c.first_layer]
    params = {}
    for index, conv in enumerate(convs):
        channels = conv.weight_shape[0]
        pattern = PATTERNS[PATTERN_CYCLE[index % len(PATTERN_CYCLE)]]
        source = ("preactivation", "activation")[index % 2]
        params[conv.conv] = ZapParams(*smoothing_predictor(channels, rng), pattern, threshold, source)
    return ReplaceWithZap(params)(original).model
