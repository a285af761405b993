"""Can the given data answer what was asked? Refuse or warn, with the reason, before the work.

A 3-image folder cannot train predictors and measure their curves; 27 evaluation images
cannot resolve a 1-point accuracy limit when each image is 3.7 points; a calibration
store that does not fit on the disk fails half-way. Each check says why and what to do.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from zapopt.errors import ZapoptError
from zapopt.notices import warn

#: Fewest calibration images optimize runs on (predictor training needs 2, the curves >= 1).
MIN_CALIBRATION_IMAGES = 8
#: Below this many held-out calibration images, each one moves the curves by over 3 %.
FEW_HELD_OUT_IMAGES = 32


def training_images(images: int, holdout: float) -> int:
    """How many of ``images`` calibration images train the predictors; the rest (``holdout``
    of them) are held out to measure the curves and the agreement with the original."""
    n_train = max(2, int(round(images * (1 - holdout))))
    if images - n_train < 1:
        raise ZapoptError(f"{images} calibration images are too few to hold some out for the curves; use more")
    return n_train


def check_calibration_count(images: int, holdout: float, source: str) -> None:
    """Refuse fewer than MIN_CALIBRATION_IMAGES; warn when the held-out share is too small to trust."""
    if images < MIN_CALIBRATION_IMAGES:
        raise ZapoptError(
            f"the calibration data {source} has {images} image{'s' if images != 1 else ''}; optimize needs at "
            f"least {MIN_CALIBRATION_IMAGES} (most train the predictors, a quarter is held out to measure their "
            "curves and the agreement with the original), and 256-1,024 for results worth trusting")
    held_out = images - training_images(images, holdout)
    if held_out < FEW_HELD_OUT_IMAGES:
        warn(f"only {held_out} of the {images} calibration images are held out to measure each layer's curve and "
             f"the agreement with the original, so each image is {100 / held_out:.1f}% of those measurements; "
             "use at least 128 calibration images (256-1,024 is better)")


def check_drop_resolution(max_drop: float, images: int, labelled: bool) -> None:
    """Warn when one --eval image is worth more than --max-drop: the search then cannot
    tell a small drop from none, and a measured 0 bounds little."""
    one_image = 100.0 / images
    if one_image <= max_drop:
        return
    what = "top-1 drop" if labelled else "top-1 disagreement"
    warn(f"--max-drop {max_drop:g} on {images} --eval images: one image is {one_image:.1f} points of {what}, "
         f"more than the limit, so the search can only accept settings that change no prediction on these "
         f"images; a measured 0 is then consistent with a drop of up to {300 / images:.1f} points on other data "
         f"(95%). Use at least {int(-(-100 // max_drop)) if max_drop > 0 else 1000:,} --eval images "
         "to resolve this limit")


def _bytes(size: float) -> str:
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def check_free_space(needed_bytes: int, images: int, workdir: str | os.PathLike | None = None) -> None:
    """Refuse to start calibrating when its on-disk store (in ``workdir`` or the temp dir) will not fit."""
    directory = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    free = shutil.disk_usage(directory).free
    if needed_bytes > free:
        raise ZapoptError(
            f"calibration records each layer's activations on disk: {_bytes(needed_bytes)} for {images:,} "
            f"images ({_bytes(needed_bytes / max(images, 1))} per image), but {directory} has only "
            f"{_bytes(free)} free; use fewer --calib-images, or point TMPDIR at a disk with more space")
