"""Curves for tests: one measured on a small random layer, and synthetic ones."""
from __future__ import annotations

import numpy as np
import torch

from zapopt.curves import LayerCurve, layer_curve
from zapopt.ops.patterns import get_pattern
from zapopt.predictor.model import ZapPredictor
from zapopt.predictor.train import TrainedPredictor


def random_predictor(channels: int, mask: np.ndarray, seed: int) -> TrainedPredictor:
    torch.manual_seed(seed)
    model = ZapPredictor(channels)
    with torch.no_grad():
        model.bn2.bias.fill_(0.3)
    model.eval()
    return TrainedPredictor(model.fold(), mask, epochs=0, images=0, seconds=0.0, epoch_losses=())


def measured_layer() -> tuple[np.ndarray, np.ndarray, TrainedPredictor, LayerCurve]:
    """``(ofm, pattern mask, predictor, its curve)`` of a small random layer."""
    rng = np.random.default_rng(0)
    ofm = np.maximum(rng.standard_normal((5, 6, 7, 9)), 0).astype(np.float32)
    mask = get_pattern("checkerboard").mask(7, 9)
    predictor = random_predictor(6, mask, seed=1)
    taus = np.concatenate([[-np.inf], np.linspace(-0.5, 1.0, 16)])
    curve = layer_curve("conv", ofm, predictor, macs=6 * 7 * 9 * 54, taus=taus,
                        tiles=((1, 2), (2, 3), (4, 8)), batch_size=2)
    return ofm, mask, predictor, curve


def synthetic_curve(name: str, rng: np.random.Generator, points: int = 4) -> LayerCurve:
    taus = np.concatenate([[-np.inf], np.sort(rng.choice(np.arange(1, 60), points, replace=False)) / 100])
    macs = float(rng.integers(1000, 5000))
    saved = np.concatenate([[-0.1], np.sort(rng.uniform(-0.05, 0.5, points))]) * macs
    error = np.concatenate([[0.0], np.sort(rng.uniform(0, 0.05, points)) * (rng.random(points) > 0.2)])
    error = np.maximum.accumulate(error)
    zeros = np.zeros(points + 1)
    return LayerCurve(name=name, taus=taus, shape=(1, 1, 1), images=1, macs=macs, predictor_macs=0.0,
                      pattern_fraction=0.5, true_zero_share=0.5, predicted_zero=zeros, false_zero=zeros,
                      false_nonzero=zeros, error=error, macs_after=macs - saved, oracle_macs_after=0.0)
