"""The standard ONNX ops the converter knows, as torch functions (forward semantics only).

Why our own table rather than onnx2torch: that package pulls in torchvision (whose wheels
pin one exact torch build, fighting the CPU-only torch zapopt installs) and maps weights
to modules without telling which initializer each came from, which exporting the
fine-tuned weights back into the same ONNX file needs. The models zapopt writes use a
small op set, listed in :data:`STATELESS_OPS` plus the ops with weights in ``convert.py``;
anything else is refused before training, by name.

Each function takes the node's inputs (``None`` for an empty optional input) and its
decoded attributes and returns one tensor. :func:`check_node` validates what the function
cannot support (e.g. 3-D pooling) up front, so a model either converts fully or not at all.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from zapopt.errors import ZapoptError

OpFunction = Callable[[Sequence[torch.Tensor | None], dict[str, Any]], torch.Tensor]


def _pool_geometry(attrs: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    return kernel, strides, pads


def _max_pool(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    x = inputs[0]
    kernel, strides, pads = _pool_geometry(attrs)
    dilations = list(attrs.get("dilations", [1, 1]))
    top, left, bottom, right = pads
    if (top, left) != (bottom, right) or top > kernel[0] // 2 or left > kernel[1] // 2:
        x = F.pad(x, (left, right, top, bottom), value=-math.inf)
        top = left = 0
    return F.max_pool2d(x, kernel, strides, padding=(top, left), dilation=dilations,
                        ceil_mode=bool(attrs.get("ceil_mode", 0)))


def _average_pool(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    kernel, strides, pads = _pool_geometry(attrs)
    return F.avg_pool2d(inputs[0], kernel, strides, padding=(pads[0], pads[1]),
                        ceil_mode=bool(attrs.get("ceil_mode", 0)),
                        count_include_pad=bool(attrs.get("count_include_pad", 0)))


def _flatten(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    x = inputs[0]
    axis = int(attrs.get("axis", 1))
    axis = axis + x.dim() if axis < 0 else axis
    leading = math.prod(x.shape[:axis])
    return x.reshape(leading, -1)


def _reshape(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    x, shape = inputs[0], [int(d) for d in inputs[1].tolist()]
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _clip(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    low = inputs[1] if len(inputs) > 1 else None
    high = inputs[2] if len(inputs) > 2 else None
    low = attrs["min"] if low is None and "min" in attrs else low
    high = attrs["max"] if high is None and "max" in attrs else high
    if low is None and high is None:
        return inputs[0]
    return torch.clamp(inputs[0], min=low, max=high)


#: ONNX Resize (mode, coordinate_transformation_mode, nearest_mode) -> F.interpolate settings.
_RESIZE_MODES = {
    ("linear", "half_pixel"): ("bilinear", False),
    ("linear", "pytorch_half_pixel"): ("bilinear", False),
    ("linear", "align_corners"): ("bilinear", True),
    ("nearest", "asymmetric"): ("nearest", None),
}


def _resize(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    x = inputs[0]
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    mode, align = _RESIZE_MODES[_resize_key(attrs)]
    if sizes is not None and sizes.numel():
        return F.interpolate(x, size=[int(s) for s in sizes.tolist()[2:]], mode=mode, align_corners=align)
    factors = [float(s) for s in scales.tolist()[2:]]
    if align:
        size = [int(math.floor(x.shape[2 + i] * factors[i])) for i in range(2)]
        return F.interpolate(x, size=size, mode=mode, align_corners=True)
    # Sample positions from the given scales (x_in = (x_out + 0.5) / scale - 0.5), as ONNX does.
    return F.interpolate(x, scale_factor=factors, mode=mode, align_corners=align, recompute_scale_factor=False)


def _resize_key(attrs: dict[str, Any]) -> tuple[str, str]:
    def text(name: str, default: str) -> str:
        value = attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else str(value)

    return text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel")


def _softmax(inputs: Sequence[torch.Tensor | None], attrs: dict[str, Any]) -> torch.Tensor:
    return torch.softmax(inputs[0], dim=int(attrs.get("axis", -1)))


STATELESS_OPS: dict[str, OpFunction] = {
    "Relu": lambda i, a: torch.relu(i[0]),
    "Clip": _clip,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=(2, 3), keepdim=True),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "Concat": lambda i, a: torch.cat(list(i), dim=int(a["axis"])),
    "Identity": lambda i, a: i[0],
    "Dropout": lambda i, a: i[0],  # an exported model's Dropout is inference mode: identity
    "Resize": _resize,
    "Softmax": _softmax,
}


def check_node(name: str, op_type: str, attrs: dict[str, Any], outputs_used: int) -> None:
    """Refuse, before any training, the attribute values the functions above do not cover."""
    where = f"node {name!r} ({op_type})"
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ZapoptError(f"{where} uses auto_pad={attrs['auto_pad']!r}; finetune supports explicit pads only")
    if op_type in ("MaxPool", "AveragePool"):
        if len(attrs.get("kernel_shape", [])) != 2:
            raise ZapoptError(f"{where}: finetune supports 2-D pooling only")
        if op_type == "AveragePool":
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
            if pads[:2] != pads[2:]:
                raise ZapoptError(f"{where} has asymmetric pads {pads}; finetune supports symmetric ones only")
            if list(attrs.get("dilations", [1, 1])) != [1, 1]:
                raise ZapoptError(f"{where} has dilations; finetune supports AveragePool without them")
        if op_type == "MaxPool" and outputs_used > 1:
            raise ZapoptError(f"{where} uses its Indices output, which finetune does not support")
    if op_type == "Resize":
        key = _resize_key(attrs)
        if key not in _RESIZE_MODES:
            known = ", ".join(f"{m}/{c}" for m, c in _RESIZE_MODES)
            raise ZapoptError(f"{where} has mode/coordinate_transformation_mode {key[0]}/{key[1]}; "
                              f"finetune supports {known}")
        if key[0] == "nearest" and attrs.get("nearest_mode", b"round_prefer_floor") not in (b"floor", "floor"):
            raise ZapoptError(f"{where}: nearest resize needs nearest_mode=floor for finetune")
        if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", b"stretch") not in (b"stretch",
                                                                                                 "stretch"):
            raise ZapoptError(f"{where} uses antialias or keep_aspect_ratio_policy; finetune does not")
    if op_type == "Dropout" and outputs_used > 1:
        raise ZapoptError(f"{where} uses its mask output, which finetune does not support")
    if op_type != "Dropout" and op_type in STATELESS_OPS and outputs_used > 1:
        raise ZapoptError(f"{where} has {outputs_used} outputs; finetune supports one")
