"""Train one predictor per (candidate pattern, layer) on the calibration store and measure
each one's error/savings curve on the held-out images."""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from zapopt.curves import LayerCurve, default_taus, layer_curve
from zapopt.data_checks import training_images
from zapopt.graph import ConvActivation
from zapopt.ops.patterns import get_pattern
from zapopt.optimize_config import OptimizeConfig
from zapopt.predictor.inputs import PredictorInput
from zapopt.progress import progress_bar


@dataclass(frozen=True)
class TrainedLayer:
    """A layer's trained predictor and its measured curve."""

    conv: ConvActivation
    params: Any  # TrainedPredictor
    curve: LayerCurve
    ofm_sparsity: float
    seconds: float
    pattern: str


def ofm_sparsity(stored: np.ndarray, source: PredictorInput, batch: int = 64) -> float:
    """The share of zeros in the layer's output feature map (``stored``: what was recorded)."""
    zeros = total = 0
    for start in range(0, stored.shape[0], batch):
        chunk = source.ofm(stored[start:start + batch])
        zeros += int(chunk.size - np.count_nonzero(chunk))
        total += chunk.size
    return zeros / total if total else 0.0


def curve_grid(config: OptimizeConfig) -> np.ndarray:
    """The thresholds each curve is measured at (the op compares in float32, so must they);
    a uniform threshold is always one of them."""
    grid = default_taus()
    if not config.selection.per_layer:
        tau = config.uniform_threshold
        grid = grid[np.float32(grid) != np.float32(tau)]  # a float32 twin of tau would be ambiguous
        grid = np.unique(np.concatenate([grid, [tau]]))
    return grid


def train_layers(store: Any, selected: Sequence[ConvActivation], config: OptimizeConfig,
                 taus: np.ndarray, progress: bool | None) -> dict[str, dict[str, TrainedLayer]]:
    """``{pattern: {layer: TrainedLayer}}`` for every candidate pattern."""
    import torch

    from zapopt.predictor.train import scaled_epochs, train_predictor

    activations = {conv.conv: int(np.prod(store.layer_array(conv.conv).shape[1:])) for conv in selected}
    largest = max(activations.values())
    n_train = training_images(store.num_images, config.holdout)
    trained: dict[str, dict[str, TrainedLayer]] = {name: {} for name in config.patterns}
    jobs = [(name, conv) for name in config.patterns for conv in selected]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-reproducible training needs a fixed thread count; tiny convs gain nothing
    bar = progress_bar(len(jobs), "predictors", "layer", progress)
    try:
        for pattern_name, conv in jobs:
            pattern = get_pattern(pattern_name)
            stored = store.layer_array(conv.conv)  # the ofm, or the pre-activation
            source = PredictorInput(config.predictor_input, conv.clip_max)
            started = time.perf_counter()
            epochs = scaled_epochs(config.epochs, activations[conv.conv], largest, config.max_epoch_scale)
            predictor = train_predictor(stored, pattern, epochs=epochs, lr=config.lr,
                                        batch_size=config.train_batch_size, seed=config.seed,
                                        max_images=n_train, progress=False, predictor_input=source,
                                        magnitude_weight=config.magnitude_weight)
            curve = layer_curve(conv.conv, stored[n_train:], predictor, macs=conv.macs, taus=taus)
            trained[pattern_name][conv.conv] = TrainedLayer(conv, predictor, curve, ofm_sparsity(stored, source),
                                                            time.perf_counter() - started, pattern_name)
            bar.update(1)
    finally:
        bar.close()
        torch.set_num_threads(threads)
    return trained
