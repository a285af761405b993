"""The BN-folded predictor in plain numpy, with the ZapConv op's exact semantics.

Deployment and threshold curves must decide exactly what the op decides, so the formula
lives here once (mirroring ``docs/zap_op.md``): ``Z = dw(relu(dw(P, PW1, PB1)), PW2, PB2)``
with 3x3 depthwise convolutions, pad 1, and an activation is computed iff it is in the
pattern ``S`` or ``Z > threshold``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from zapopt.errors import ZapoptError

__all__ = ["FoldedPredictor", "depthwise_conv3x3", "pattern_mask"]


def pattern_mask(pattern: Any, height: int, width: int) -> np.ndarray:
    """The ``[H, W]`` bool mask ``S`` (True = computed up front) of a pattern object."""
    mask_fn = getattr(pattern, "mask", None)
    if mask_fn is None:
        raise TypeError(f"expected a pattern with .mask(h, w), got {type(pattern).__name__}")
    mask = np.asarray(mask_fn(height, width))
    if mask.shape != (height, width):
        raise ZapoptError(
            f"pattern mask has shape {mask.shape}, expected {(height, width)} for this layer"
        )
    return mask.astype(bool)


def depthwise_conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ONNX-style (cross-correlation) depthwise 3x3 conv, pad 1, stride 1.

    ``x`` is ``[N, C, H, W]``, ``weight`` ``[C, 1, 3, 3]``, ``bias`` ``[C]``. Accumulates
    in float64, adds the bias in float64 and rounds once to float32: the precision rule of
    ``zapopt.ops.reference``, so threshold decisions agree with the op's reference.
    """
    if x.ndim != 4 or weight.shape != (x.shape[1], 1, 3, 3) or bias.shape != (x.shape[1],):
        raise ZapoptError(
            f"depthwise 3x3 conv shapes do not fit: x {x.shape}, weight {weight.shape}, "
            f"bias {bias.shape}"
        )
    n, c, h, w = x.shape
    padded = np.zeros((n, c, h + 2, w + 2), dtype=np.float64)
    padded[:, :, 1:-1, 1:-1] = x
    taps = weight.astype(np.float64)
    out = np.zeros(x.shape, dtype=np.float64)
    for di in range(3):
        for dj in range(3):
            out += taps[None, :, 0, di, dj, None, None] * padded[:, :, di : di + h, dj : dj + w]
    out += bias.astype(np.float64)[None, :, None, None]
    return out.astype(np.float32)


@dataclass(frozen=True)
class FoldedPredictor:
    """Predictor weights with BatchNorm folded in: the op's PW1, PB1, PW2, PB2 inputs."""

    pw1: np.ndarray
    pb1: np.ndarray
    pw2: np.ndarray
    pb2: np.ndarray

    def __post_init__(self) -> None:
        channels: int | str = self.pb1.shape[0] if np.ndim(self.pb1) == 1 else "C"
        expected = {"pw1": (channels, 1, 3, 3), "pb1": (channels,),
                    "pw2": (channels, 1, 3, 3), "pb2": (channels,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray) or value.dtype != np.float32:
                raise TypeError(f"{name} must be a float32 numpy array")
            if value.shape != shape:
                raise ZapoptError(f"predictor {name} must have shape {shape}, got {value.shape}")

    def __iter__(self):  # type: ignore[no-untyped-def]
        """Unpack as ``pw1, pb1, pw2, pb2 = folded`` (the op's input order)."""
        return iter((self.pw1, self.pb1, self.pw2, self.pb2))

    @property
    def channels(self) -> int:
        return int(self.pb1.shape[0])

    def scores(self, partial: np.ndarray) -> np.ndarray:
        """``Z`` for a partial ofm ``P = y * S`` (``[N, C, H, W]``), before masking by T."""
        hidden = np.maximum(depthwise_conv3x3(partial, self.pw1, self.pb1), 0.0)
        return depthwise_conv3x3(hidden, self.pw2, self.pb2)

    def computed(self, ofm: np.ndarray, mask: np.ndarray, threshold: float) -> np.ndarray:
        """Which activations the op computes: ``S | (Z > threshold)``, bool ``[N, C, H, W]``."""
        partial = (ofm * mask).astype(np.float32)
        return mask[None, None] | (self.scores(partial) > np.float32(threshold))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"PW1": self.pw1, "PB1": self.pb1, "PW2": self.pw2, "PB2": self.pb2}
