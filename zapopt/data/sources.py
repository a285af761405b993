"""``open_dataset``: one entry point for every kind of calibration/evaluation data.

Sources:
  * a directory of images (any depth, sorted by relative path; jpg/png/bmp/gif/tif/webp/pnm)
  * one image file
  * ``.npy`` (memory-mapped), ``.npz`` with ``x`` and optional ``y``, idx(.gz) image files
  * an ``(x, y)`` tuple of arrays (``y`` may be None), or a bare array
  * ``embedded:fashion-mnist-test`` / ``embedded:fashion-mnist-train`` (shipped subsets),
    ``embedded:photos`` (scikit-image photos; ImageNet preprocessing unless options are given)
  * ``fashion-mnist:train``, ``fashion-mnist:test``, ``mnist:train``, ``mnist:test`` (full sets,
    see ``zapopt data fetch``)
Every check (path, format, rank, static dims, dtype, NaN/Inf, labels, emptiness) runs
before ``open_dataset`` returns; conversion itself happens batch by batch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zapopt.data.catalog import DATASETS, SPLITS, load_idx_dataset
from zapopt.data.convert import check_image_sample, plan_array, plan_images, resolve_layout
from zapopt.data.dataset import ArrayReader, Dataset, ImageReader
from zapopt.data.embedded import EMBEDDED_FASHION_MNIST, load_embedded_fashion_mnist, photo_arrays
from zapopt.data.idx import read_idx
from zapopt.data.images import IMAGE_SUFFIXES, ImageOptions, list_images
from zapopt.data.model_input import ModelInput
from zapopt.errors import ZapoptError
from zapopt.notices import warn

EMBEDDED_SOURCES = tuple(f"embedded:fashion-mnist-{split}" for split in EMBEDDED_FASHION_MNIST) + ("embedded:photos",)
NAMED_SOURCES = tuple(f"{name}:{split}" for name in DATASETS for split in SPLITS)
#: Rows scanned at a time when looking for NaN/Inf (keeps memory flat on big memmaps).
_SCAN_ROWS = 4096


def _is_idx(path: Path) -> bool:
    name = path.name.lower().removesuffix(".gz")
    return name.endswith(("-ubyte", ".idx")) or "idx" in name.rsplit(".", 1)[-1]


def _check_labels(origin: str, labels: object, count: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ZapoptError(f"{origin}: labels must be a 1-D integer array, got {labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != count:
        raise ZapoptError(f"{origin}: {labels.shape[0]} labels for {count} samples; give one label per sample")
    return labels.astype(np.int64)


def _check_finite(origin: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    bad = 0
    for first in range(0, array.shape[0], _SCAN_ROWS):
        chunk = np.asarray(array[first:first + _SCAN_ROWS])
        bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    if bad:
        raise ZapoptError(f"{origin} contains {bad} NaN/Inf value(s); clean the data before calibrating on it")


def _array_dataset(
    origin: str, x: object, y: object, model: ModelInput | None, options: ImageOptions, limit: int | None
) -> Dataset:
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim == 0:
        raise ZapoptError(f"{origin} holds a scalar, not samples")
    count = x.shape[0]
    if count == 0:
        raise ZapoptError(f"{origin} is empty (0 samples)")
    labels = _check_labels(origin, y, count)
    plan = plan_array(origin, tuple(x.shape), x.dtype, model, options)
    if limit is not None:
        count = min(count, limit)
    _check_finite(origin, x[:count])
    return Dataset(ArrayReader(x, plan.convert), count, labels, origin, model, plan.sample_shape, plan.dtype)


def _image_dataset(
    origin: str, items: list, names: list[str], model: ModelInput | None, options: ImageOptions, limit: int | None
) -> Dataset:
    if not items:
        raise ZapoptError(f"{origin} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    plan = plan_images(model, options)
    first_pixels = plan.decode(items[0], names[0])
    first = plan.finish(first_pixels[None])[0]
    check_image_sample(origin, first, model)
    _warn_if_unnormalized(origin, options, plan.channels, plan.dtype)
    reader = ImageReader(tuple(items), tuple(names), plan.decode, plan.finish, first_pixels.shape)
    count = len(items) if limit is None else min(len(items), limit)
    return Dataset(reader, count, None, origin, model, first.shape, plan.dtype)


def _warn_if_unnormalized(origin: str, options: ImageOptions, channels: int, dtype: np.dtype) -> None:
    """Color pictures fed to a float model without mean/std are almost always a mistake
    (ImageNet-style models expect normalized input) that silently ruins calibration."""
    if channels == 3 and np.issubdtype(dtype, np.floating) and options.mean is None and options.std is None:
        warn(f"the images of {origin} are fed as {'0..255' if options.scale == 'byte' else '[0, 1]'} pixel "
             "values without mean/std normalization; if the model was trained on normalized inputs (most "
             "ImageNet models), add --imagenet or --mean M,M,M --std S,S,S")


def _photos_options(model: ModelInput | None) -> ImageOptions:
    """ImageNet eval preprocessing at the model's input size (224 when dynamic)."""
    if model is not None and model.rank == 4:
        axes = (2, 3) if resolve_layout(model, ImageOptions()) == "NCHW" else (1, 2)
        height, width = (model.shape[a] for a in axes)
        if height and width:
            return ImageOptions.imagenet((height, width))
    return ImageOptions.imagenet(224)


def _open_named(source: str, model: ModelInput | None, options: ImageOptions | None, limit: int | None) -> Dataset:
    opts = options or ImageOptions()
    if source == "embedded:photos":
        photos = photo_arrays()
        return _image_dataset(
            source, [image for _, image in photos], [f"skimage.data.{name}" for name, _ in photos],
            model, options or _photos_options(model), limit,
        )
    if source.startswith("embedded:fashion-mnist-"):
        x, y = load_embedded_fashion_mnist(source.removeprefix("embedded:fashion-mnist-"))
        return _array_dataset(source, x, y, model, opts, limit)
    name, split = source.split(":")
    x, y = load_idx_dataset(name, split)
    return _array_dataset(source, x, y, model, opts, limit)


def _open_path(path: Path, model: ModelInput | None, options: ImageOptions, limit: int | None) -> Dataset:
    origin = str(path)
    if not path.exists():
        raise ZapoptError(f"data source not found: {path}")
    if path.is_dir():
        files = list_images(path)
        return _image_dataset(origin, files, [str(f) for f in files], model, options, limit)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ZapoptError(f"cannot read {path} as .npy: {exc}") from None
        return _array_dataset(origin, x, None, model, options, limit)
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "x" not in keys:
                    raise ZapoptError(f"{path} has arrays {keys}; zapopt reads 'x' (samples) and optional 'y' (labels)")
                x = archive["x"]
                y = archive["y"] if "y" in keys else None
        except (ValueError, OSError, EOFError) as exc:
            raise ZapoptError(f"cannot read {path} as .npz: {exc}") from None
        return _array_dataset(origin, x, y, model, options, limit)
    if suffix in IMAGE_SUFFIXES:
        return _image_dataset(origin, [path], [origin], model, options, limit)
    if _is_idx(path):
        return _array_dataset(origin, read_idx(path), None, model, options, limit)
    raise ZapoptError(
        f"unknown data format {path.name!r}: give a directory of images, an image, .npy, .npz (x, y), "
        f"an idx(.gz) file, or one of {', '.join(EMBEDDED_SOURCES + NAMED_SOURCES)}"
    )


def open_dataset(
    source: str | Path | tuple[np.ndarray, np.ndarray | None] | np.ndarray,
    model_input: ModelInput | None,
    options: ImageOptions | None = None,
    limit: int | None = None,
) -> Dataset:
    """Open ``source`` as batches for ``model_input`` (None: data as stored, no model checks).

    uint8 [N,H,W] arrays feed a [N,1,H,W] (or [N,H,W,1]) input by adding the channel axis;
    uint8 data for a float input is scaled by 1/255 unless ``options.scale='byte'``.
    ``limit`` keeps the first ``limit`` samples.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ZapoptError(f"limit must be a positive number of samples, got {limit!r}")
    if options is not None and not isinstance(options, ImageOptions):
        raise TypeError(f"options must be an ImageOptions, got {type(options).__name__}")
    if model_input is not None and not isinstance(model_input, ModelInput):
        raise TypeError(
            f"model_input must be a ModelInput (see zapopt.data.model_input), got {type(model_input).__name__}"
        )
    opts = options or ImageOptions()
    if isinstance(source, tuple):
        if len(source) != 2:
            raise ZapoptError(f"an array source is (x, y) with y possibly None, got a tuple of {len(source)}")
        return _array_dataset("arrays", source[0], source[1], model_input, opts, limit)
    if isinstance(source, np.ndarray):
        return _array_dataset("array", source, None, model_input, opts, limit)
    if not isinstance(source, (str, Path)):
        raise TypeError(f"source must be a path, a source name or an (x, y) tuple, got {type(source).__name__}")
    if isinstance(source, str) and source.startswith("embedded:"):
        if source not in EMBEDDED_SOURCES:
            raise ZapoptError(f"unknown embedded source {source!r}; known: {', '.join(EMBEDDED_SOURCES)}")
        return _open_named(source, model_input, options, limit)
    if isinstance(source, str) and source in NAMED_SOURCES:
        return _open_named(source, model_input, options, limit)
    return _open_path(Path(source).expanduser(), model_input, opts, limit)
