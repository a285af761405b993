"""The ZAP predictor network (torch) and its folding into the op's four arrays."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from zapopt.errors import ZapoptError
from zapopt.predictor.folded import FoldedPredictor

__all__ = ["ZapPredictor"]


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode ``bn(conv(x))`` as one conv: scale weights, shift bias."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale[:, None, None, None]
    bias = (conv.bias.detach() - bn.running_mean) * scale + bn.bias.detach()
    return (
        weight.to(torch.float32).numpy().copy(),
        bias.to(torch.float32).numpy().copy(),
    )


class ZapPredictor(nn.Module):
    """dw3x3 -> BN -> ReLU -> dw3x3 -> BN, one independent filter pair per channel.

    Depthwise keeps the cost at 18 MACs per output activation, and per-channel filters
    are all the paper needed: zeros cluster in space within a channel.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ZapoptError(f"a predictor needs a positive channel count, got {channels!r}")
        self.channels = channels
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, partial: torch.Tensor) -> torch.Tensor:
        """Scores ``f(P)`` for a partial ofm ``P = y * S`` (raw values, not binarized)."""
        hidden = torch.relu(self.bn1(self.conv1(partial)))
        return self.bn2(self.conv2(hidden))

    def fold(self) -> FoldedPredictor:
        """The eval-mode network as ``(PW1, PB1, PW2, PB2)`` float32 arrays for the op."""
        pw1, pb1 = _fold_bn(self.conv1, self.bn1)
        pw2, pb2 = _fold_bn(self.conv2, self.bn2)
        return FoldedPredictor(pw1, pb1, pw2, pb2)
