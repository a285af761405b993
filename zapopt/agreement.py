"""After every optimize: does the rewritten model still agree with the original?

The thresholds are chosen from per-layer curves; whether the model as a whole still gives
the original's answers is a separate question, and a uniform threshold can fail it badly
(MobileNetV2 at ``--threshold 0.5`` kept the top-1 class of 10 of 27 photos). The held-out
calibration images answer it at no extra data cost: the original's outputs on them were
recorded during calibration, the rewritten model is run on them once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from zapopt.data import Dataset
from zapopt.notices import warn

#: Original outputs per image above this many values (e.g. segmentation maps) are not kept.
MAX_KEPT_OUTPUT_VALUES = 100_000
#: Warn when fewer held-out images than this share keep the original's top-1 class.
LOW_AGREEMENT = 0.99
#: Warn about a layer that loses more than this share of its activation mass.
LARGE_LAYER_LOSS = 0.05


@dataclass(frozen=True)
class Agreement:
    """The rewritten model against the original on the held-out calibration images."""

    images: int
    same_top1: int  # images whose top-1 class (argmax of the first output) is unchanged
    output_error: float  # ||y - y_original|| / ||y_original|| over the first output

    @property
    def share(self) -> float:
        return self.same_top1 / self.images if self.images else 1.0

    def to_dict(self) -> dict[str, float | int]:
        return {"images": self.images, "same_top1": self.same_top1, "share": self.share,
                "output_relative_error": self.output_error}

    def headline(self) -> str:
        return (f"AGREEMENT WITH THE ORIGINAL on {self.images} held-out calibration images: {self.same_top1} of "
                f"{self.images} keep their top-1 class ({100 * self.share:.1f}%), output relative error "
                f"{self.output_error:.3g}")


def kept_reference(outputs: np.ndarray) -> np.ndarray | None:
    """The original's first output on the held-out images, flattened per image, if small enough to keep."""
    per_image = int(np.prod(outputs.shape[1:])) if outputs.ndim > 1 else 1
    if len(outputs) == 0 or per_image > MAX_KEPT_OUTPUT_VALUES:
        return None
    return np.array(outputs, dtype=np.float32).reshape(len(outputs), -1)


def measure_agreement(model: onnx.ModelProto, held_out: Dataset, reference: np.ndarray,
                      progress: bool | None = None) -> Agreement:
    """Run ``model`` on the held-out images and compare with the original's ``reference`` outputs."""
    from zapopt.evaluate import run_model

    outputs = run_model(model, held_out, measure=False, progress=progress, desc="agreement").outputs
    got = outputs.reshape(len(outputs), -1).astype(np.float64)
    want = reference.astype(np.float64)
    same = int(np.sum(np.argmax(got, 1) == np.argmax(want, 1)))
    scale = float(np.linalg.norm(want))
    error = float(np.linalg.norm(got - want)) / scale if scale > 0 else float(np.linalg.norm(got))
    return Agreement(len(got), same, error)


def warn_about_losses(layers: Sequence[tuple[str, float, float]], agreement: Agreement | None,
                      searched_accuracy: bool) -> None:
    """Warn per layer (name, activation mass lost, threshold) losing much, and when the model
    as a whole disagrees with the original; then once, what to do about it."""
    lossy = [(name, lost, tau) for name, lost, tau in layers if lost > LARGE_LAYER_LOSS]
    for name, lost, tau in lossy:
        warn(f"layer {name} loses {100 * lost:.1f}% of its activation mass at threshold {tau:g} (on the held-out "
             "calibration images)")
    disagrees = agreement is not None and agreement.share < LOW_AGREEMENT
    if disagrees:
        warn(f"the optimized model keeps the original's top-1 class on only {agreement.same_top1} of "
             f"{agreement.images} held-out calibration images ({100 * agreement.share:.1f}%)")
    if lossy or disagrees:
        warn("to bound what the rewrite may cost, use --max-drop X --eval DATA (each layer's threshold chosen by the "
             "measured accuracy drop) or a lower --threshold" if not searched_accuracy else
             "the --max-drop search measured on --eval; add --drop-margin 1 or more --eval images to make its "
             "pick hold on other data")
