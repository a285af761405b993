"""``Dataset``: a fixed, ordered set of samples that streams model-ready batches.

A dataset never holds more than one batch of converted data: arrays are sliced (``.npy``
files are memory-mapped) and image files are decoded as their batch is requested.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zapopt.data.model_input import ModelInput
from zapopt.errors import ZapoptError


@dataclass(frozen=True)
class ArrayReader:
    """Samples ``array[i]`` (any array-like with slicing, e.g. a memmap), converted per batch."""

    array: np.ndarray
    convert: Callable[[np.ndarray], np.ndarray]

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.convert(np.asarray(self.array[start:stop]))


@dataclass(frozen=True)
class ImageReader:
    """Pictures (files or in-memory uint8 arrays) decoded one by one, then stacked and finished.

    ``decode(item, label)`` gives uint8 [H, W, C]; ``finish`` turns the stacked uint8
    [B, H, W, C] batch into the model's dtype and layout.
    """

    items: Sequence[Path | np.ndarray]
    names: Sequence[str]
    decode: Callable[[Path | np.ndarray, str], np.ndarray]
    finish: Callable[[np.ndarray], np.ndarray]
    pixel_shape: tuple[int, ...]

    def read(self, start: int, stop: int) -> np.ndarray:
        pixels = []
        for index in range(start, stop):
            sample = self.decode(self.items[index], self.names[index])
            if sample.shape != self.pixel_shape:
                raise ZapoptError(
                    f"image {self.names[index]} comes out as {list(sample.shape)} (HxWxC) but the first image "
                    f"gave {list(self.pixel_shape)}; pass resize and crop options so every image has one size"
                )
            pixels.append(sample)
        return self.finish(np.stack(pixels))


class Dataset:
    """Ordered samples with optional int64 labels, yielding batches the model accepts as is."""

    __slots__ = ("_reader", "_labels", "_start", "_stop", "description", "model_input", "sample_shape", "dtype")

    # What a dataset shows (description, model_input, sample_shape, dtype) is fixed at open time.
    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, name):
            raise AttributeError(f"Dataset.{name} is read-only; open a new dataset instead")
        object.__setattr__(self, name, value)

    def __init__(
        self,
        reader: ArrayReader | ImageReader,
        count: int,
        labels: np.ndarray | None,
        description: str,
        model_input: ModelInput | None,
        sample_shape: tuple[int, ...],
        dtype: np.dtype,
        start: int = 0,
    ) -> None:
        self._reader = reader
        self._labels = labels
        self._start = start
        self._stop = start + count
        self.description = description
        self.model_input = model_input
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self._stop - self._start

    def __repr__(self) -> str:
        labels = "labels" if self._labels is not None else "no labels"
        return f"Dataset({self.description}: {len(self)} x {self.dtype} {list(self.sample_shape)}, {labels})"

    @property
    def labels(self) -> np.ndarray | None:
        """int64 [N] class labels, or None when the source has none."""
        return None if self._labels is None else self._labels[self._start:self._stop]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of ``batch_size`` samples (the last may be shorter), in order.

        A model input with a fixed batch size takes batches of that size whatever is asked
        (the runtime pads the last one: ``zapopt.runtime.run_batch``).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ZapoptError(f"batch_size must be a positive integer, got {batch_size!r}")
        fixed = self.model_input.shape[0] if self.model_input is not None else None
        if fixed is not None:
            batch_size = fixed
        for first in range(self._start, self._stop, batch_size):
            yield self._reader.read(first, min(first + batch_size, self._stop))

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples (all of them when ``n`` exceeds the length)."""
        return self.window(0, n)

    def window(self, first: int, n: int) -> Dataset:
        """``n`` samples from position ``first`` on (fewer where the dataset ends first)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ZapoptError(f"take needs a positive number of samples, got {n!r}")
        if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or not 0 <= first < len(self):
            raise ZapoptError(f"a window of this dataset starts at 0..{len(self) - 1}, got {first!r}")
        return Dataset(
            self._reader, min(int(n), len(self) - int(first)), self._labels, self.description, self.model_input,
            self.sample_shape, self.dtype, start=self._start + int(first),
        )

    def with_labels(self, labels: np.ndarray) -> Dataset:
        """The same samples with int labels, one per sample (e.g. from class folder names)."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.shape[0] != len(self):
            raise ZapoptError(f"{self.description}: need {len(self)} integer labels, got {labels.dtype} "
                              f"{list(labels.shape)}")
        full = np.zeros(self._stop, dtype=np.int64)
        full[self._start:self._stop] = labels
        return Dataset(self._reader, len(self), full, self.description, self.model_input, self.sample_shape,
                       self.dtype, start=self._start)

    def batch_of(self, size: int) -> np.ndarray:
        """One batch of exactly ``size`` samples from the start, cycling through the data when
        it has fewer (timing inputs: ``zapopt bench``, optimize's latency check)."""
        data = self.take(min(size, len(self))).to_numpy(batch_size=min(size, len(self)))
        reps = -(-size // len(data))
        return np.concatenate([data] * reps, axis=0)[:size]

    def to_numpy(self, batch_size: int | None = None) -> np.ndarray:
        """All samples as one array (only for sets that fit in memory)."""
        size = batch_size or (self.model_input.shape[0] if self.model_input and self.model_input.shape[0] else 256)
        return np.concatenate(list(self.batches(size)), axis=0)
