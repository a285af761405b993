"""Which tensor a layer's predictor reads, and how to get the true ofm back from it.

The paper's predictor reads the partial *activation* ``relu(V) * S``. Reading the partial
*pre-activation* ``V * S`` instead costs nothing (the op computes ``V`` at the pattern
positions anyway) and tells the predictor how far below zero a computed neighbour is,
which a ReLU erases. Calibration stores whichever tensor the predictor reads; the true
ofm, which targets, errors and sparsity need, is recovered from it by :meth:`ofm`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from zapopt.errors import ZapoptError
from zapopt.ops.spec import PREDICTOR_INPUTS

__all__ = ["PREDICTOR_INPUTS", "PredictorInput"]


@dataclass(frozen=True)
class PredictorInput:
    """``kind`` is ``"activation"`` (the paper) or ``"preactivation"``; ``clip_max`` is the
    layer's activation ceiling (``inf`` for ReLU, 6 for ReLU6)."""

    kind: str = "activation"
    clip_max: float = math.inf

    def __post_init__(self) -> None:
        if self.kind not in PREDICTOR_INPUTS:
            raise ZapoptError(
                f"unknown predictor input {self.kind!r}; choose one of {', '.join(PREDICTOR_INPUTS)}"
            )
        clip_max = float(self.clip_max)
        if math.isnan(clip_max) or clip_max <= 0:
            raise ZapoptError(f"clip_max must be > 0 (+inf for ReLU), got {self.clip_max}")
        object.__setattr__(self, "clip_max", clip_max)

    @property
    def preactivation(self) -> bool:
        return self.kind == "preactivation"

    def ofm(self, stored: np.ndarray) -> np.ndarray:
        """The layer's true activation from what calibration stored (float32)."""
        values = np.asarray(stored, dtype=np.float32)
        if not self.preactivation:
            return values
        out = np.maximum(values, np.float32(0))
        if math.isfinite(self.clip_max):
            out = np.minimum(out, np.float32(self.clip_max))
        return out
