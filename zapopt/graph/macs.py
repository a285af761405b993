"""Multiply-accumulate counts of the ops that do the work in a CNN.

Convention: one MAC = one multiply plus one add; padding positions count (as every
framework's counter does); bias adds, BatchNorm, activations, pooling and every other op
count 0. Counts are per sample: computed at the resolved input shapes, then divided by the
batch size (1 unless the user pinned a larger one with ``--input-shape``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import onnx

from zapopt.errors import ZapoptError
from zapopt.graph.index import attribute

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")

#: Ops whose MACs we count; every other op is reported as 0 MACs.
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def is_mac_op(node: onnx.NodeProto) -> bool:
    """A standard-domain node whose MACs we count (custom-domain look-alikes are not)."""
    return node.op_type in MAC_OPS and node.domain in ("", "ai.onnx")


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D (or N-D) convolution's attributes with defaults filled and auto_pad resolved."""

    strides: tuple[int, ...]
    pads: tuple[int, ...]        # ONNX order: all begins, then all ends ([top, left, bottom, right])
    dilations: tuple[int, ...]
    group: int
    kernel: tuple[int, ...]
    output_spatial: tuple[int, ...]


def conv_geometry(node: onnx.NodeProto, input_spatial: Sequence[int],
                  kernel: Sequence[int]) -> ConvGeometry:
    """Resolve a Conv node's strides/pads/dilations/group, including ``auto_pad``.

    SAME_UPPER / SAME_LOWER give ``ceil(in / stride)`` outputs and split the total padding
    evenly, the odd pixel going at the end (UPPER) or the beginning (LOWER); VALID pads 0.
    """
    rank = len(kernel)
    strides = tuple(attribute(node, "strides", (1,) * rank))
    dilations = tuple(attribute(node, "dilations", (1,) * rank))
    group = int(attribute(node, "group", 1))
    auto_pad = attribute(node, "auto_pad", "NOTSET") or "NOTSET"
    if len(strides) != rank or len(dilations) != rank:
        raise ValueError(f"strides/dilations of {node.op_type} do not match its {rank}-D kernel")
    if auto_pad not in _AUTO_PADS:
        raise ValueError(f"unknown auto_pad {auto_pad!r}")
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(input_spatial, strides)]
        begins, ends = [], []
        for i, o, s, e in zip(input_spatial, out, strides, effective):
            total = max(0, (o - 1) * s + e - i)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        pads = tuple(begins + ends)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * rank)
        out = [(i - e) // s + 1 for i, e, s in zip(input_spatial, effective, strides)]
    else:
        pads = tuple(attribute(node, "pads", (0,) * (2 * rank)))
        if len(pads) != 2 * rank:
            raise ValueError(f"pads of {node.op_type} must have {2 * rank} values, got {len(pads)}")
        out = [(i + pads[a] + pads[a + rank] - e) // s + 1
               for a, (i, e, s) in enumerate(zip(input_spatial, effective, strides))]
    return ConvGeometry(strides=strides, pads=pads, dilations=dilations, group=group,
                        kernel=tuple(kernel), output_spatial=tuple(out))


def conv_geometry_2d(node: onnx.NodeProto, weight_shape: Sequence[int],
                     input_shape: Sequence[int | str | None] | None) -> ConvGeometry:
    """``conv_geometry`` of a 2-D Conv that a rewrite turns into an op with explicit pads.

    ZapoptError for anything else. The input size may be unknown when it cannot change the
    pads (no SAME_* auto_pad with a stride above 1); ``output_spatial`` is then empty.
    """
    label = node.name or node.output[0]
    if len(weight_shape) != 4:
        raise ZapoptError(f"Conv {label!r} is not 2-D (weights {tuple(weight_shape)}); ZAP handles 2-D convs only")
    kernel = tuple(int(k) for k in weight_shape[2:])
    declared = tuple(int(k) for k in attribute(node, "kernel_shape", kernel))
    if declared != kernel:
        raise ZapoptError(f"Conv {label!r}: kernel_shape {list(declared)} disagrees with weights {tuple(weight_shape)}")
    known = input_shape is not None and len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape[2:])
    if not known and attribute(node, "auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") \
            and tuple(attribute(node, "strides", (1, 1))) != (1, 1):
        raise ZapoptError(
            f"Conv {label!r} uses auto_pad={attribute(node, 'auto_pad')} with strides "
            f"{list(attribute(node, 'strides'))} but its input's spatial size is unknown; "
            "give the model static input shapes")
    try:  # with stride 1 SAME padding does not depend on the size: any stand-in will do
        geometry = conv_geometry(node, tuple(input_shape[2:]) if known else kernel, kernel)  # type: ignore[index]
    except ValueError as exc:
        raise ZapoptError(f"Conv {label!r}: {exc}") from None
    return geometry if known else replace(geometry, output_spatial=())


def conv_macs(output_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """Conv: every output element is a dot product over (C_in/group) * kH * kW inputs."""
    return math.prod(output_shape) * math.prod(weight_shape[1:])


def conv_transpose_macs(input_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """ConvTranspose: every input element is scattered onto (C_out/group) * kH * kW outputs
    (weight layout [C_in, C_out/group, kH, kW])."""
    return math.prod(input_shape) * math.prod(weight_shape[1:])


def gemm_macs(node: onnx.NodeProto, a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """Gemm: (M x K) @ (K x N) after the optional transposes, M*N*K MACs."""
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise ValueError(f"Gemm inputs must be 2-D, got {list(a_shape)} and {list(b_shape)}")
    m, k = (a_shape[1], a_shape[0]) if attribute(node, "transA", 0) else (a_shape[0], a_shape[1])
    k_b, n = (b_shape[1], b_shape[0]) if attribute(node, "transB", 0) else (b_shape[0], b_shape[1])
    if k != k_b:
        raise ValueError(f"Gemm inner dims disagree: {k} vs {k_b}")
    return m * n * k


def matmul_macs(a_shape: Sequence[int], b_shape: Sequence[int]) -> int:
    """MatMul with numpy semantics: batch dims broadcast, 1-D operands are promoted and then
    squeezed. Every element of the (broadcast) output costs K MACs."""
    if not a_shape or not b_shape:
        raise ValueError("MatMul operands must have rank >= 1")
    a = list(a_shape) if len(a_shape) > 1 else [1, a_shape[0]]
    b = list(b_shape) if len(b_shape) > 1 else [b_shape[0], 1]
    if a[-1] != b[-2]:
        raise ValueError(f"MatMul inner dims disagree: {a[-1]} vs {b[-2]}")
    batch_a, batch_b = a[:-2], b[:-2]
    width = max(len(batch_a), len(batch_b))
    batch_a = [1] * (width - len(batch_a)) + batch_a
    batch_b = [1] * (width - len(batch_b)) + batch_b
    batch = []
    for x, y in zip(batch_a, batch_b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"MatMul batch dims do not broadcast: {list(a_shape)} and {list(b_shape)}")
        batch.append(max(x, y))
    return math.prod(batch) * a[-2] * b[-1] * a[-1]
