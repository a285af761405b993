"""Random layers for the native kernel tests, batched many to one onnxruntime session.

A case is a ZeroSkipConv or ZapConv layer with its arrays, attributes and numpy reference.
The shapes are small but reach every code path: channel counts below and above one vector
block, kernels 1-7, strides, dilations, asymmetric pads, groups and depthwise, batch > 1,
odd sizes, 0-100 % input zeros (scattered and in regions), broadcast Skip shapes, every pattern and threshold kind.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.zap_builders import IR_VERSION, Z_EPS, assert_agrees
from zapopt.ops import (
    DOMAIN,
    PATTERNS,
    ZapConvAttrs,
    ZeroSkipConvAttrs,
    make_zap_node,
    make_zero_skip_node,
    zap_conv_trace,
    zero_skip_conv_reference,
)
from zapopt.ops.reference import conv_output_size

#: Output channels per group: below, at and above the AVX2 (8) and AVX-512 (16) lanes and
#: the 64-channel block, so padding, several blocks and the portable fallback all run.
CHANNELS_PER_GROUP = (1, 2, 3, 5, 8, 9, 16, 17, 24, 33, 48, 64, 72, 100)
ZERO_SHARES = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass
class Case:
    op: str                      # "ZeroSkipConv" or "ZapConv"
    arrays: dict[str, Any]       # X, W, B, Skip (+ PW1, PB1, PW2, PB2 for ZapConv); None = absent
    attrs: Any                   # ZeroSkipConvAttrs or ZapConvAttrs
    with_computed: bool = False  # ZapConv: declare the Computed output
    reference: Any = None        # ZeroSkipConv: Y; ZapConv: the ZapConvTrace

    def as_zap_case(self) -> dict:
        return {"arrays": self.arrays, "attrs": self.attrs}


def _f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng.standard_normal(shape) * scale, dtype=np.float32)


def _geometry(rng: np.random.Generator, channels: tuple[int, int, int] | None = None,
              pointwise: bool = False, size: tuple[int, int, int] | None = None) -> dict:
    while True:
        max_kernel = 7
        if channels is not None:  # (C_in, C_out, largest kernel side) of a one-group layer
            group = 1
            cg_in, cg_out, max_kernel = channels
        elif rng.random() < 0.12:  # depthwise
            group = int(rng.integers(2, 9))
            cg_in, cg_out = 1, 1
        else:
            group = int(rng.choice([1, 1, 1, 1, 2, 3]))
            cg_in = int(rng.integers(1, 11))
            cg_out = int(rng.choice(CHANNELS_PER_GROUP))
        kh, kw = (int(v) for v in rng.integers(1, max_kernel + 1, size=2))
        strides = tuple(int(v) for v in rng.choice([1, 1, 2, 3], size=2))
        dilations = tuple(int(v) for v in rng.choice([1, 1, 2], size=2))
        pads = tuple(int(v) for v in rng.integers(0, 4, size=4))
        h, w = (int(v) for v in rng.integers(1, 14, size=2))
        n = int(rng.integers(1, 4))
        if size is not None:  # (N, H, W)
            n, h, w = size
        if pointwise:  # what the kernel's pointwise (matrix product) path takes
            kh = kw = 1
            pads = (0, 0, 0, 0)
        ho = conv_output_size(h, kh, strides[0], pads[0], pads[2], dilations[0])
        wo = conv_output_size(w, kw, strides[1], pads[1], pads[3], dilations[1])
        if ho >= 1 and wo >= 1:
            return dict(group=group, cg_in=cg_in, cg_out=cg_out, kh=kh, kw=kw, strides=strides,
                        dilations=dilations, pads=pads, n=n, h=h, w=w, ho=ho, wo=wo)


def _input(rng: np.random.Generator, shape: tuple[int, ...], zero_shares: tuple[float, ...]) -> np.ndarray:
    x = _f32(rng, *shape)
    if zero_shares is ZERO_SHARES and rng.random() < 0.3:
        x = np.maximum(x, 0)  # a ReLU's output: about half zeros
    share = float(rng.choice(zero_shares))
    x[rng.random(shape) < share] = 0
    if zero_shares is ZERO_SHARES and rng.random() < 0.2:
        # A zero region across all channels (real ReLU zeros cluster): whole taps of a tile
        # read nothing but zeros, which the kernel skips.
        top, left = (int(rng.integers(0, d)) for d in shape[2:])
        bottom, right = (int(rng.integers(lo + 1, d + 1)) for lo, d in zip((top, left), shape[2:]))
        x[:, :, top:bottom, left:right] = 0
    return x


def _skip(rng: np.random.Generator, n: int, c: int, ho: int, wo: int) -> np.ndarray | None:
    draw = rng.random()
    if draw < 0.5:
        return None
    shapes = [(n, c, ho, wo), (n, c, ho, wo), (1, c, 1, 1), (c, 1, 1), (wo,), (1, 1, ho, wo), (n, 1, 1, 1), ()]
    return _f32(rng, *shapes[int(rng.integers(0, len(shapes)))])


def random_case(rng: np.random.Generator, op: str, channels: tuple[int, int, int] | None = None,
                zero_shares: tuple[float, ...] = ZERO_SHARES, pointwise: bool = False,
                size: tuple[int, int, int] | None = None) -> Case:
    """One random layer of ``op`` with its reference computed; ``channels`` fixes (C_in, C_out,
    largest kernel side) of a one-group layer, ``zero_shares`` the input zero shares drawn from,
    ``pointwise`` makes it 1x1 and unpadded, ``size`` fixes the input's (N, H, W)."""
    g = _geometry(rng, channels, pointwise, size)
    c_in, c_out = g["group"] * g["cg_in"], g["group"] * g["cg_out"]
    fan_in = g["cg_in"] * g["kh"] * g["kw"]
    arrays: dict[str, Any] = {
        "X": _input(rng, (g["n"], c_in, g["h"], g["w"]), zero_shares),
        "W": _f32(rng, c_out, g["cg_in"], g["kh"], g["kw"], scale=1 / math.sqrt(fan_in)),
        "B": _f32(rng, c_out, scale=0.3) if rng.random() < 0.7 else None,
        "Skip": _skip(rng, g["n"], c_out, g["ho"], g["wo"]),
    }
    conv = dict(strides=g["strides"], pads=g["pads"], dilations=g["dilations"], group=g["group"])
    clip_max = math.inf if rng.random() < 0.5 else float(rng.choice([6.0, 0.5, 1.0]))
    if op == "ZeroSkipConv":
        activation = "none" if rng.random() < 0.25 else "relu"
        attrs = ZeroSkipConvAttrs(activation=activation, clip_max=clip_max if activation == "relu" else math.inf, **conv)
        y = zero_skip_conv_reference(arrays["X"], arrays["W"], arrays["B"], arrays["Skip"], attrs=attrs)
        return Case(op, arrays, attrs, reference=y)
    arrays.update(
        PW1=_f32(rng, c_out, 1, 3, 3, scale=0.5), PB1=_f32(rng, c_out, scale=0.2),
        PW2=_f32(rng, c_out, 1, 3, 3, scale=0.5), PB2=_f32(rng, c_out, scale=0.2),
    )
    pattern = PATTERNS[str(rng.choice(sorted(PATTERNS)))]
    predictor_input = str(rng.choice(["activation", "preactivation"]))
    base = dict(pattern=pattern, clip_max=clip_max, predictor_input=predictor_input, **conv)
    inputs = {k: arrays[k] for k in ("X", "W", "B", "PW1", "PB1", "PW2", "PB2", "Skip")}
    probe = zap_conv_trace(**inputs, attrs=ZapConvAttrs(threshold=0.0, **base))
    draw = rng.random()
    if draw < 0.12:
        threshold = -math.inf
    elif draw < 0.24:
        threshold = math.inf
    else:  # halfway between two neighbouring scores, so no score sits on it
        z = np.unique(probe.Z)
        k = int(rng.integers(0, max(len(z) - 1, 1)))
        threshold = float(z[k]) if len(z) == 1 else float((z[k] + z[k + 1]) / 2)
    attrs = ZapConvAttrs(threshold=threshold, **base)
    trace = zap_conv_trace(**inputs, attrs=attrs)
    return Case(op, arrays, attrs, with_computed=bool(rng.random() < 0.6), reference=trace)


def batch_model(cases: list[Case]) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[list[str]]]:
    """One model running every case side by side: its feeds and each case's output names."""
    nodes, inputs, outputs, inits = [], [], [], []
    feeds: dict[str, np.ndarray] = {}
    names: list[list[str]] = []
    for i, case in enumerate(cases):
        a = case.arrays
        x, y = f"X{i}", f"Y{i}"
        feeds[x] = a["X"]
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, list(a["X"].shape)))
        skip = ""
        if a["Skip"] is not None:
            skip = f"Skip{i}"
            feeds[skip] = a["Skip"]
            inputs.append(helper.make_tensor_value_info(skip, TensorProto.FLOAT, list(a["Skip"].shape)))
        weights = [k for k in ("W", "B", "PW1", "PB1", "PW2", "PB2") if a.get(k) is not None]
        inits += [numpy_helper.from_array(a[k], f"{k}{i}") for k in weights]
        b = f"B{i}" if a["B"] is not None else ""
        if case.op == "ZeroSkipConv":
            node = make_zero_skip_node(name=f"n{i}", x=x, w=f"W{i}", b=b, skip=skip, y=y, attrs=case.attrs)
            out = [y]
        else:
            computed = f"C{i}" if case.with_computed else ""
            node = make_zap_node(name=f"n{i}", x=x, w=f"W{i}", b=b, pw1=f"PW1{i}", pb1=f"PB1{i}", pw2=f"PW2{i}",
                                 pb2=f"PB2{i}", skip=skip, y=y, computed=computed, attrs=case.attrs)
            out = [y] + ([computed] if computed else [])
        nodes.append(node)
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT, None))
        if len(out) > 1:
            outputs.append(helper.make_tensor_value_info(out[1], TensorProto.BOOL, None))
        names.append(out)
    graph = helper.make_graph(nodes, "native_cases", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    model.ir_version = IR_VERSION
    return model, feeds, names


def assert_case_agrees(case: Case, outputs: list[np.ndarray]) -> None:
    """The native outputs of one case against its reference (docs/zap_op.md's tolerances)."""
    if case.op == "ZeroSkipConv":
        ref = case.reference
        (y,) = outputs
        assert y.shape == ref.shape and y.dtype == np.float32
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=2e-6 * (1 + float(np.abs(ref).max())))
        return
    trace = case.reference
    if case.with_computed:
        assert_agrees(case.as_zap_case(), outputs[0], outputs[1], trace=trace)
        return
    y = outputs[0]
    assert y.shape == trace.Y.shape
    threshold = np.float32(case.attrs.threshold)
    near = np.abs(trace.Z.astype(np.float64) - threshold) <= Z_EPS * (1 + np.abs(trace.Z).max())
    scale = 1 + float(np.abs(trace.Full).max())
    sure = trace.Computed & ~near
    np.testing.assert_allclose(y[sure], trace.Y[sure], rtol=1e-5, atol=2e-6 * scale)
    assert (y[~trace.Computed & ~near] == 0).all()
