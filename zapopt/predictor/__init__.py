"""ZAP predictors: the tiny depthwise CNN that guesses which activations are zero.

``folded`` (numpy only) evaluates a trained, BN-folded predictor exactly as the ZapConv
op does. ``model`` (the torch module) and ``train`` (the training loop) need torch and
are imported explicitly by training code, so deployment never pulls torch in.
"""
from __future__ import annotations

from zapopt.predictor.folded import FoldedPredictor, depthwise_conv3x3, pattern_mask

__all__ = ["FoldedPredictor", "depthwise_conv3x3", "pattern_mask"]
