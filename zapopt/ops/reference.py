"""The numpy references of ``ai.zapopt::ZapConv`` and ``ZeroSkipConv``: the truth for their semantics.

Precision (documented in docs/zap_op.md): every convolution (the layer's and the two
predictor depthwise convs) accumulates in float64, adds its bias in float64 and rounds the
result once to float32; the elementwise steps (residual add, clip, pattern product,
threshold, masking) are done in float32, as in any float32 runtime. Other
implementations therefore differ from this one only by their own accumulation rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from zapopt.errors import ZapoptError
from zapopt.ops.patterns import Pattern
from zapopt.ops.spec import DOMAIN, ZapConvAttrs, ZeroSkipConvAttrs


#: Memory budget for one im2col patch matrix (float64) in :func:`conv2d`.
_IM2COL_BYTES = 256 * 2**20


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int) -> int:
    """ONNX Conv output length along one spatial axis (explicit pads)."""
    return (size + pad_begin + pad_end - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(
    X: np.ndarray,
    W: np.ndarray,
    B: np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """ONNX ``Conv`` (NCHW, explicit pads ``[top, left, bottom, right]``) in float64, via im2col."""
    n, c, h, w = X.shape
    m, cg, kh, kw = W.shape
    if c != cg * group or m % group:
        raise ZapoptError(
            f"conv shapes disagree: input has {c} channels, weights {tuple(W.shape)} with group={group} "
            f"need {cg * group} input channels and C_out divisible by group"
        )
    sh, sw = strides
    dh, dw = dilations
    pt, pl, pb, pr = pads
    ho = conv_output_size(h, kh, sh, pt, pb, dh)
    wo = conv_output_size(w, kw, sw, pl, pr, dw)
    if ho < 1 or wo < 1:
        raise ZapoptError(
            f"conv output would be empty ({ho}x{wo}) for input {h}x{w}, kernel {kh}x{kw}, "
            f"strides {list(strides)}, pads {list(pads)}, dilations {list(dilations)}"
        )
    weights = W.astype(np.float64).reshape(group, m // group, cg, kh, kw)
    out = np.empty((n, m, ho, wo), dtype=np.float64)
    # im2col a few samples at a time so the patch matrix stays around _IM2COL_BYTES.
    chunk = max(1, _IM2COL_BYTES // (8 * c * kh * kw * ho * wo))
    for start in range(0, n, chunk):
        part = X[start : start + chunk]
        padded = np.pad(part.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        cols = np.empty((part.shape[0], c, kh, kw, ho, wo), dtype=np.float64)
        for a in range(kh):
            for b in range(kw):
                r0, c0 = a * dh, b * dw
                cols[:, :, a, b] = padded[:, :, r0 : r0 + sh * (ho - 1) + 1 : sh, c0 : c0 + sw * (wo - 1) + 1 : sw]
        cols = cols.reshape(part.shape[0], group, cg, kh, kw, ho, wo)
        result = np.einsum("ngcabhw,gmcab->ngmhw", cols, weights, optimize=True)
        out[start : start + chunk] = result.reshape(part.shape[0], m, ho, wo)
    if B is not None:
        out += B.astype(np.float64)[None, :, None, None]
    return out


@dataclass(frozen=True)
class ZapConvTrace:
    """Every intermediate of one ZapConv evaluation (names as in docs/zap_op.md).

    Calibration and tests need ``Z`` (the predictor's score) and ``Full`` (the exact
    activation), not just ``Y``.
    """

    V: np.ndarray
    Full: np.ndarray
    S: np.ndarray
    P: np.ndarray
    Hd: np.ndarray
    Z: np.ndarray
    Computed: np.ndarray
    Y: np.ndarray


def _float32(name: str, value: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.float32:
        raise TypeError(f"ZapConv input {name} must be float32, got {array.dtype}")
    if shape is not None and array.shape != shape:
        raise ZapoptError(f"ZapConv input {name} must have shape {shape}, got {array.shape}")
    return array


def _add_skip(V: np.ndarray, Skip: np.ndarray | None, op: str) -> np.ndarray:
    """``V + Skip`` in float32; Skip must broadcast to V's shape."""
    if Skip is None:
        return V
    Skip = _float32("Skip", Skip)
    try:
        broadcast = np.broadcast_shapes(V.shape, Skip.shape)
    except ValueError:
        broadcast = None
    if broadcast != V.shape:
        raise ZapoptError(f"{op} Skip of shape {Skip.shape} does not broadcast to the conv output {V.shape}")
    return V + Skip


def _clip(V: np.ndarray, clip_max: float) -> np.ndarray:
    """The ReLU-like activation ``min(max(V, 0), clip_max)`` in float32."""
    Full = np.maximum(V, np.float32(0))
    if math.isfinite(clip_max):
        Full = np.minimum(Full, np.float32(clip_max))
    return Full


def zero_skip_conv_reference(
    X: np.ndarray,
    W: np.ndarray,
    B: np.ndarray | None = None,
    Skip: np.ndarray | None = None,
    *,
    attrs: ZeroSkipConvAttrs | None = None,
) -> np.ndarray:
    """``Y`` of ZeroSkipConv: ``act(conv(X, W, B) + Skip)``; the zero skipping does not change it.

    Same precision rules as ZapConv: the conv in float64 rounded once, the rest in float32.
    """
    attrs = ZeroSkipConvAttrs() if attrs is None else attrs
    X = _float32("X", X)
    W = _float32("W", W)
    if X.ndim != 4 or W.ndim != 4:
        raise ZapoptError(f"ZeroSkipConv needs 4-D X and W (NCHW), got X{X.shape} and W{W.shape}")
    B = None if B is None or np.size(B) == 0 else _float32("B", B, (W.shape[0],))
    conv = dict(strides=attrs.strides, pads=attrs.pads, dilations=attrs.dilations, group=attrs.group)
    V = _add_skip(conv2d(X, W, B, **conv).astype(np.float32), Skip, "ZeroSkipConv")
    return _clip(V, attrs.clip_max) if attrs.activation == "relu" else V


def zap_conv_trace(
    X: np.ndarray,
    W: np.ndarray,
    B: np.ndarray | None,
    PW1: np.ndarray,
    PB1: np.ndarray,
    PW2: np.ndarray,
    PB2: np.ndarray,
    Skip: np.ndarray | None = None,
    *,
    attrs: ZapConvAttrs,
) -> ZapConvTrace:
    """Evaluate ZapConv and keep every intermediate."""
    X = _float32("X", X)
    W = _float32("W", W)
    if X.ndim != 4 or W.ndim != 4:
        raise ZapoptError(f"ZapConv needs 4-D X and W (NCHW), got X{X.shape} and W{W.shape}")
    c_out = W.shape[0]
    B = None if B is None or np.size(B) == 0 else _float32("B", B, (c_out,))
    PW1 = _float32("PW1", PW1, (c_out, 1, 3, 3))
    PB1 = _float32("PB1", PB1, (c_out,))
    PW2 = _float32("PW2", PW2, (c_out, 1, 3, 3))
    PB2 = _float32("PB2", PB2, (c_out,))

    conv = dict(strides=attrs.strides, pads=attrs.pads, dilations=attrs.dilations, group=attrs.group)
    V = _add_skip(conv2d(X, W, B, **conv).astype(np.float32), Skip, "ZapConv")
    Full = _clip(V, attrs.clip_max)
    S = attrs.pattern.mask(V.shape[2], V.shape[3])
    P = (V if attrs.predictor_input == "preactivation" else Full) * S.astype(np.float32)
    depthwise = dict(strides=(1, 1), pads=(1, 1, 1, 1), dilations=(1, 1), group=c_out)
    Hd = np.maximum(conv2d(P, PW1, PB1, **depthwise).astype(np.float32), np.float32(0))
    Z = conv2d(Hd, PW2, PB2, **depthwise).astype(np.float32)
    Computed = S[None, None] | (Z > np.float32(attrs.threshold))
    Y = np.where(Computed, Full, np.float32(0)).astype(np.float32)
    return ZapConvTrace(V=V, Full=Full, S=S, P=P, Hd=Hd, Z=Z, Computed=Computed, Y=Y)


def zap_conv_reference(
    X: np.ndarray,
    W: np.ndarray,
    B: np.ndarray | None,
    PW1: np.ndarray,
    PB1: np.ndarray,
    PW2: np.ndarray,
    PB2: np.ndarray,
    Skip: np.ndarray | None = None,
    *,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    clip_max: float = math.inf,
    pattern: Pattern | Sequence[int],
    pattern_shape: Sequence[int] | None = None,
    threshold: float,
    predictor_input: str = "activation",
    return_computed: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``Y`` (and ``Computed`` if asked) of ZapConv; ``pattern`` is a Pattern or the flat tile."""
    if not isinstance(pattern, Pattern):
        if pattern_shape is None:
            raise ZapoptError("zap_conv_reference: a flat pattern needs pattern_shape [tH, tW]")
        pattern = Pattern.from_attrs(pattern, pattern_shape)
    elif pattern_shape is not None and tuple(pattern_shape) != pattern.shape:
        raise ZapoptError(
            f"pattern_shape {list(pattern_shape)} disagrees with pattern {pattern.name!r} {pattern.shape}"
        )
    attrs = ZapConvAttrs(
        pattern=pattern, threshold=threshold, strides=strides, pads=pads,
        dilations=dilations, group=group, clip_max=clip_max, predictor_input=predictor_input,
    )
    trace = zap_conv_trace(X, W, B, PW1, PB1, PW2, PB2, Skip, attrs=attrs)
    return (trace.Y, trace.Computed) if return_computed else trace.Y


class ZapConv(OpRun):
    """``onnx.reference`` kernel: ``ReferenceEvaluator(model, new_ops=[ZapConv])``."""

    op_domain = DOMAIN

    def _run(  # type: ignore[override]
        self, X, W, B=None, PW1=None, PB1=None, PW2=None, PB2=None, Skip=None, **attributes
    ):
        if PW1 is None or PB1 is None or PW2 is None or PB2 is None:
            raise ZapoptError(f"ZapConv node {self.onnx_node.name!r} is missing predictor inputs PW1/PB1/PW2/PB2")
        attrs = ZapConvAttrs.from_dict({k: v for k, v in attributes.items() if v is not None})
        trace = zap_conv_trace(X, W, B, PW1, PB1, PW2, PB2, Skip, attrs=attrs)
        if len(self.onnx_node.output) > 1:
            return trace.Y, trace.Computed
        return (trace.Y,)


class ZeroSkipConv(OpRun):
    """``onnx.reference`` kernel: ``ReferenceEvaluator(model, new_ops=[ZeroSkipConv])``.

    onnx.reference matches kernels by class name, which is why it is spelled like the op.
    """

    op_domain = DOMAIN

    def _run(self, X, W, B=None, Skip=None, **attributes):  # type: ignore[override]
        attrs = ZeroSkipConvAttrs.from_dict({k: v for k, v in attributes.items() if v is not None})
        return (zero_skip_conv_reference(X, W, B, Skip, attrs=attrs),)


def reference_session(model: onnx.ModelProto, **kwargs: Any) -> ReferenceEvaluator:
    """A ``ReferenceEvaluator`` that also runs ZapConv and ZeroSkipConv nodes (slow; for checking only)."""
    return ReferenceEvaluator(model, new_ops=[ZapConv, ZeroSkipConv], **kwargs)
