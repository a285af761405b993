"""``ai.zapopt::ZapConv`` as a trainable torch module (docs/zap_op.md, in float32).

Fine-tuning has to see what deployment sees: the layer output is the activation masked by
``Computed = S | (Z > threshold)``, so a skipped activation is exactly 0 in the forward
pass and receives no gradient. The mask itself is a hard decision of the (frozen)
predictor, so it is computed without autograd; gradients reach ``W`` and ``B`` only
through the activations the layer actually computes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zapopt.ops.spec import ZapConvAttrs, ZeroSkipConvAttrs


def _padding(pads: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """``nn.Conv2d`` padding for ONNX pads ``[top, left, bottom, right]``, plus an ``F.pad``
    spec (left, right, top, bottom) when they are asymmetric."""
    top, left, bottom, right = pads
    if top == bottom and left == right:
        return (top, left), None
    return (0, 0), (left, right, top, bottom)


class PaddedConv2d(nn.Module):
    """An ONNX ``Conv`` (explicit, possibly asymmetric pads) around one ``nn.Conv2d``.

    The ``nn.Conv2d`` is kept as ``.conv`` so gradtools (which hooks ``nn.Conv2d`` outputs)
    sees every convolution of the converted model.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, *, strides: tuple[int, ...],
                 pads: tuple[int, ...], dilations: tuple[int, ...], group: int) -> None:
        super().__init__()
        c_out, c_in_per_group, kh, kw = weight.shape
        padding, self.extra_pad = _padding(tuple(pads))
        self.conv = nn.Conv2d(c_in_per_group * group, c_out, (kh, kw), stride=tuple(strides), padding=padding,
                              dilation=tuple(dilations), groups=group, bias=bias is not None)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.array(weight, dtype=np.float32)))
            if bias is not None:
                self.conv.bias.copy_(torch.from_numpy(np.array(bias, dtype=np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return self.conv(x)


class ZapConv2d(nn.Module):
    """One ZapConv node: conv (BN folded) [+ Skip] -> clip -> predictor mask -> masked output.

    ``W``/``B`` are the trainable ``conv.weight``/``conv.bias``; the predictor weights
    ``pw1, pb1, pw2, pb2`` are buffers (frozen) and the threshold, pattern, clip and
    predictor input are the node's attributes, kept so the model exports back unchanged.
    ``last_computed`` holds the most recent ``Computed`` mask (bool, no grad) for
    measuring savings during training; in training mode ``last_activation`` holds the
    activation before the mask (with grad) for ``activation_l1``.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, predictor: tuple[np.ndarray, ...],
                 attrs: ZapConvAttrs) -> None:
        super().__init__()
        self.attrs = attrs
        self.padded = PaddedConv2d(weight, bias, strides=attrs.strides, pads=attrs.pads,
                                   dilations=attrs.dilations, group=attrs.group)
        for name, array in zip(("pw1", "pb1", "pw2", "pb2"), predictor):
            self.register_buffer(name, torch.from_numpy(np.array(array, dtype=np.float32)))
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self.last_computed: torch.Tensor | None = None
        self.last_activation: torch.Tensor | None = None

    @property
    def conv(self) -> nn.Conv2d:
        return self.padded.conv

    def pattern_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``S`` as a bool ``[1, 1, H, W]`` tensor (cached per size and device)."""
        key = (height, width, device)
        if key not in self._masks:
            mask = np.asarray(self.attrs.pattern.mask(height, width), dtype=bool)
            self._masks[key] = torch.from_numpy(mask)[None, None].to(device)
        return self._masks[key]

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        v = self.padded(x)
        if skip is not None:
            v = v + skip
        full = torch.relu(v)
        if math.isfinite(self.attrs.clip_max):
            full = torch.clamp(full, max=self.attrs.clip_max)
        s = self.pattern_mask(v.shape[2], v.shape[3], v.device)
        with torch.no_grad():
            source = v if self.attrs.predictor_input == "preactivation" else full
            partial = source.detach() * s.to(source.dtype)
            channels = v.shape[1]
            hidden = torch.relu(F.conv2d(partial, self.pw1, self.pb1, padding=1, groups=channels))
            scores = F.conv2d(hidden, self.pw2, self.pb2, padding=1, groups=channels)
            threshold = torch.tensor(self.attrs.threshold, dtype=torch.float32, device=v.device)
            computed = s | (scores > threshold)
        self.last_computed = computed
        self.last_activation = full if self.training else None
        return torch.where(computed, full, torch.zeros((), dtype=full.dtype, device=full.device))


class ZeroSkipConv2d(nn.Module):
    """One ZeroSkipConv node (docs/zap_op.md): conv (BN folded) [+ Skip] -> none | ReLU | clip.

    The op is exact, so training treats it as the conv it replaced; the optimized model
    keeps the node and its initializers, and the native kernel runs the trained weights.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, attrs: ZeroSkipConvAttrs) -> None:
        super().__init__()
        self.attrs = attrs
        self.padded = PaddedConv2d(weight, bias, strides=attrs.strides, pads=attrs.pads,
                                   dilations=attrs.dilations, group=attrs.group)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        v = self.padded(x)
        if skip is not None:
            v = v + skip
        if self.attrs.activation == "none":
            return v
        v = torch.relu(v)
        return torch.clamp(v, max=self.attrs.clip_max) if math.isfinite(self.attrs.clip_max) else v
