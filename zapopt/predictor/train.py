"""Train one layer's ZAP predictor on that layer's true ofms (label-free).

The paper's recipe (see ``/work/shared/design/zap.md``): input ``P = y * S`` with raw
values (or ``P = V * S``, the pre-activation, with ``PredictorInput("preactivation")``),
``Z = f(P) * T``, prediction ``q = clamp(Z + S, 0, 1)``, target ``t = 1[y > 0]`` on
``T`` (1 on ``S``), MSE (plain in the paper; optionally weighted by
activation magnitude, see ``magnitude_weight``), Adam at lr 1e-2 for a few epochs,
then one no-grad pass in train mode to refresh the BatchNorm statistics (cumulative
average) before folding. Minibatches are random subsets of images read from the memmap,
so a layer never needs to fit in memory.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zapopt.errors import ZapoptError
from zapopt.predictor.folded import FoldedPredictor, pattern_mask
from zapopt.predictor.inputs import PredictorInput
from zapopt.predictor.model import ZapPredictor

__all__ = ["TrainedPredictor", "train_predictor"]


@dataclass(frozen=True)
class TrainedPredictor:
    """A folded predictor plus what it was trained with and how training went."""

    folded: FoldedPredictor
    mask: np.ndarray  # [H, W] bool, True = in the pattern S (computed up front)
    epochs: int
    images: int
    seconds: float
    epoch_losses: tuple[float, ...]
    predictor_input: PredictorInput = PredictorInput()
    magnitude_weight: float = 0.0

    def scores(self, stored: np.ndarray) -> np.ndarray:
        """``Z`` for a batch ``[n, C, H, W]`` of what the predictor reads (the true ofm, or
        the pre-activation for a "preactivation" predictor), with the op's formula."""
        return self.folded.scores((np.asarray(stored, dtype=np.float32) * self.mask).astype(np.float32))

    def computed(self, stored: np.ndarray, threshold: float) -> np.ndarray:
        """What the op computes at ``threshold``: ``S | (Z > threshold)``."""
        return self.folded.computed(np.asarray(stored, dtype=np.float32), self.mask, threshold)


def _loss_weights(y: torch.Tensor, magnitude_weight: float) -> torch.Tensor | None:
    """``1 + magnitude_weight * y / mean(y | y > 0)`` per position (None for plain MSE).

    Why: what a wrong "zero" costs is the activation it drops (the error the thresholds are
    chosen by is the share of activation mass lost), while plain MSE charges every miss
    alike, so the predictor spends its few weights on small activations just above zero.
    """
    if magnitude_weight == 0:
        return None
    positive = y[y > 0]
    scale = positive.mean() if positive.numel() else torch.ones((), dtype=y.dtype)
    return 1.0 + magnitude_weight * y / scale


def _check_inputs(ofm: Any, epochs: int, lr: float, batch_size: int) -> None:
    if not isinstance(ofm, np.ndarray) or ofm.ndim != 4:
        raise ZapoptError(
            f"predictor training needs an [N, C, H, W] array of ofms, got "
            f"{getattr(ofm, 'shape', type(ofm).__name__)}"
        )
    if ofm.shape[0] == 0 or 0 in ofm.shape[1:]:
        raise ZapoptError(f"the ofm array is empty (shape {ofm.shape})")
    if not isinstance(epochs, int) or epochs < 1:
        raise ZapoptError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ZapoptError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not lr > 0:
        raise ZapoptError(f"lr must be positive, got {lr!r}")


def _read(ofm: np.ndarray, indices: np.ndarray) -> torch.Tensor:
    """Read a minibatch (sorted indices: sequential disk access on a memmap)."""
    batch = np.asarray(ofm[np.sort(indices)], dtype=np.float32)
    if not np.isfinite(batch).all():
        raise ZapoptError("the ofm contains NaN or Inf; the model produced invalid activations")
    return torch.from_numpy(batch)


def _refresh_batchnorm(
    model: ZapPredictor, ofm: np.ndarray, mask: torch.Tensor, batch_size: int, images: int
) -> None:
    """Replace the BN running statistics with exact averages over the data."""
    bns = (model.bn1, model.bn2)
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for start in range(0, images, batch_size):
            model(_read(ofm, np.arange(start, min(start + batch_size, images))) * mask)
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def scaled_epochs(epochs: int, activations: int, largest: int, max_scale: int = 8) -> int:
    """Epochs for a layer with ``activations`` ofm elements per image when the largest
    layer being trained has ``largest``: ``epochs`` there, proportionally more on smaller
    maps (at most ``max_scale`` times as many), so every layer trains on about as many
    activations. An epoch of a small deep layer costs a fraction of one of the first
    layer, and its predictor is the one still learning: on the VGG-style model with
    1,024 images, 3 epochs at the 32x32 layer and up to 24 at the 2x2 ones skip 17.6 %
    of the model's MACs at 0.5 % activation-mass error per layer instead of 15.7 %;
    3 epochs over 8x the images give 18.1 % (benchmarks/zap_predictor_training.py).
    """
    for name, value in (("epochs", epochs), ("activations", activations), ("largest", largest),
                        ("max_scale", max_scale)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ZapoptError(f"{name} must be a positive integer, got {value!r}")
    return int(min(epochs * max_scale, max(epochs, round(epochs * largest / activations))))


def train_predictor(
    ofm: np.ndarray,
    pattern: Any,
    *,
    epochs: int = 3,
    lr: float = 1e-2,
    batch_size: int = 8,
    seed: int = 0,
    max_images: int | None = None,
    progress: bool | None = None,
    predictor_input: PredictorInput = PredictorInput(),
    magnitude_weight: float = 0.0,
) -> TrainedPredictor:
    """Train a predictor for one layer from its true ofms ``[N, C, H, W]`` (array or memmap),
    or from its pre-activations when ``predictor_input`` says so (the ofm is derived).
    ``magnitude_weight`` > 0 weights each position's squared error by its activation
    (see ``_loss_weights``); 0 is the paper's plain MSE.

    ``pattern`` is any object with ``.mask(h, w)`` (True = computed up front). Seeded:
    the same data and arguments give bit-identical folded weights (for a fixed torch
    thread count). ``max_images`` uses only the first images (a cap on training time).
    The global torch RNG is left untouched. Defaults: small batches, because the number
    of Adam steps matters more than batch size and an epoch costs the same either way
    (VGG-style, 512 images, savings at error budget 0.05: 3 epochs of 8 gave 15.7 %,
    3 of 16 15.2 %, 8 of 16 16.2 % at 2.3x the time; see benchmarks/zap_predictor_timing.py).
    """
    _check_inputs(ofm, epochs, lr, batch_size)
    if not isinstance(predictor_input, PredictorInput):
        raise TypeError(f"predictor_input must be a PredictorInput, got {type(predictor_input).__name__}")
    clip_max = predictor_input.clip_max if predictor_input.preactivation else None
    if isinstance(magnitude_weight, bool) or not isinstance(magnitude_weight, (int, float)) \
            or not 0 <= magnitude_weight < float("inf"):
        raise ZapoptError(f"magnitude_weight must be a finite number >= 0, got {magnitude_weight!r}")
    images = ofm.shape[0] if max_images is None else min(max_images, ofm.shape[0])
    if images < 2:
        raise ZapoptError("predictor training needs at least 2 calibration images (BatchNorm)")
    _, channels, height, width = ofm.shape
    mask_np = pattern_mask(pattern, height, width)
    if mask_np.all():
        raise ZapoptError("the pattern computes every position; there is nothing to predict")
    s = torch.from_numpy(mask_np.astype(np.float32))[None, None]
    t_mask = 1.0 - s

    from tqdm import tqdm

    steps = epochs * -(-images // batch_size)
    bar = tqdm(
        total=steps, unit="step", desc=f"train {channels}ch", file=sys.stderr,
        disable=not (sys.stderr.isatty() if progress is None else progress), leave=False,
    )
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZapPredictor(channels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    epoch_losses: list[float] = []
    model.train()
    try:
        for _ in range(epochs):
            order = torch.randperm(images, generator=generator).numpy()
            total, count = 0.0, 0
            for start in range(0, images, batch_size):
                chunk = order[start : start + batch_size]
                stored = _read(ofm, chunk)
                partial = stored * s
                y = stored if clip_max is None else torch.clamp(stored, min=0.0, max=clip_max)
                z = model(partial) * t_mask
                q = torch.clamp(z + s, 0.0, 1.0)
                target = (y > 0).to(torch.float32) * t_mask + s
                weights = _loss_weights(y, magnitude_weight)
                squared = (q - target) ** 2
                loss = torch.mean(squared if weights is None else weights * squared)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(chunk)
                count += len(chunk)
                bar.update(1)
            epoch_losses.append(total / max(count, 1))
        _refresh_batchnorm(model, ofm, s, batch_size, images)
    finally:
        bar.close()
    return TrainedPredictor(
        folded=model.fold(),
        mask=mask_np,
        epochs=epochs,
        images=images,
        seconds=time.perf_counter() - started,
        epoch_losses=tuple(epoch_losses),
        predictor_input=predictor_input,
        magnitude_weight=float(magnitude_weight),
    )
