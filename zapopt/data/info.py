"""``zapopt data info``: what a source holds, as the model would see it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zapopt.data.images import ImageOptions
from zapopt.data.model_input import ModelInput, model_input
from zapopt.data.sources import open_dataset


@dataclass(frozen=True)
class DataInfo:
    """Summary of one source after conversion (for a model, when one was given)."""

    source: str
    count: int
    sample_shape: tuple[int, ...]
    dtype: np.dtype
    has_labels: bool
    label_counts: dict[int, int] | None
    minimum: float
    maximum: float
    model_input: ModelInput | None

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        out = [
            f"source:  {self.source}",
            f"samples: {self.count}",
            f"shape:   [N, {', '.join(map(str, self.sample_shape))}]" if self.sample_shape else "shape:   [N]",
            f"dtype:   {self.dtype}",
            f"range:   {self.minimum:g} .. {self.maximum:g}",
        ]
        if self.label_counts is None:
            out.append("labels:  none")
        else:
            out.append(f"labels:  yes, {len(self.label_counts)} classes "
                       f"({', '.join(f'{k}:{v}' for k, v in self.label_counts.items())})")
        if self.model_input is not None:
            out.append(f"model:   fits input {self.model_input.describe()}")
        return out


def data_info(
    source: str | Path,
    model: str | Path | None = None,
    input_name: str | None = None,
    options: ImageOptions | None = None,
    limit: int | None = None,
    batch_size: int = 256,
) -> DataInfo:
    """Open ``source`` (validated against ``model``'s input when given) and stream it once for its range."""
    target = model_input(model, input_name) if model is not None else None
    dataset = open_dataset(source, target, options, limit)
    if target is not None and target.shape[0] is not None:
        batch_size = target.shape[0]
    low, high = np.inf, -np.inf
    for batch in dataset.batches(batch_size):
        low, high = min(low, float(batch.min())), max(high, float(batch.max()))
    labels = dataset.labels
    counts = None
    if labels is not None:
        values, numbers = np.unique(labels, return_counts=True)
        counts = {int(v): int(n) for v, n in zip(values, numbers)}
    return DataInfo(str(source), len(dataset), dataset.sample_shape, dataset.dtype, labels is not None,
                    counts, low, high, target)
