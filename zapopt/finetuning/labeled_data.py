"""Labeled training/validation data for fine-tuning, checked against the model before training.

Any labeled source ``open_dataset`` reads (a ``.npz`` with ``x`` and ``y``, the embedded or
fetched Fashion-MNIST sets), plus an image folder with one subfolder per class: the
subfolder names, sorted, are the classes 0, 1, 2, ...
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zapopt.data import NAMED_SOURCES, Dataset, ImageOptions, ModelInput, open_dataset
from zapopt.data.images import list_images
from zapopt.errors import ZapoptError


@dataclass(frozen=True)
class LabeledData:
    """A dataset whose labels are known to be present, and its class names when it has them."""

    dataset: Dataset
    class_names: tuple[str, ...] | None  # class folder names, index = label

    @property
    def labels(self) -> np.ndarray:
        labels = self.dataset.labels
        if labels is None:
            raise ZapoptError(f"{self.dataset.description} has no labels")
        return labels


def class_folder_labels(directory: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels for ``list_images(directory)``'s order from each image's top-level subfolder."""
    images = list_images(directory)
    loose = [p for p in images if len(p.relative_to(directory).parts) < 2]
    if loose:
        raise ZapoptError(f"{directory} has images outside class subfolders (e.g. {loose[0].name}); "
                          "for training put every image in DIR/<class name>/")
    folders = [p.relative_to(directory).parts[0] for p in images]
    names = tuple(sorted(set(folders)))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[f] for f in folders], dtype=np.int64), names


def open_labeled(source: Any, model_input: ModelInput, options: ImageOptions | None = None,
                 limit: int | None = None, *, role: str = "training data") -> LabeledData:
    """Open ``source`` for ``model_input``; refuse it when it has no labels."""
    named = isinstance(source, str) and (source.startswith("embedded:") or source in NAMED_SOURCES)
    path = Path(source).expanduser() if isinstance(source, (str, Path)) and not named else None
    if path is not None and path.is_dir():
        labels, names = class_folder_labels(path)
        dataset = open_dataset(path, model_input, options)
        dataset = dataset.with_labels(labels)
        if limit is not None:
            dataset = dataset.take(limit)
        return LabeledData(dataset, names)
    dataset = open_dataset(source, model_input, options, limit=limit)
    if dataset.labels is None:
        raise ZapoptError(f"the {role} {source} has no labels; fine-tuning needs them: give a .npz with x and y, "
                          "a folder with one subfolder of images per class, embedded:fashion-mnist-train or "
                          "fashion-mnist:train")
    return LabeledData(dataset, None)


def check_classes(data: LabeledData, classes: int, role: str = "training data") -> None:
    """Refuse labels that do not fit a model with ``classes`` outputs."""
    labels = data.labels
    if data.class_names is not None and len(data.class_names) != classes:
        raise ZapoptError(f"the {role} has {len(data.class_names)} class folders but the model has {classes} "
                          "outputs; give one subfolder per model class")
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ZapoptError(f"the {role} has labels from {labels.min()} to {labels.max()} but the model has "
                          f"{classes} outputs (classes 0..{classes - 1})")
