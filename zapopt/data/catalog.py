"""Where the full Fashion-MNIST and MNIST sets live on disk, and how to load them.

Search order for a set NAME (first complete directory wins):
  1. ``$ZAPOPT_DATA/NAME/``                      (when the variable is set)
  2. ``${XDG_CACHE_HOME:-~/.cache}/zapopt/datasets/NAME/``   (``zapopt data fetch``'s default)
  3. the Debian package's directory, e.g. ``/usr/share/datasets/fashion-mnist/``
A directory counts when it holds all four idx files, each either plain or ``.gz``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zapopt.data.idx import read_idx
from zapopt.errors import ZapoptError

SPLITS = ("train", "test")
IDX_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class IdxDatasetSpec:
    """A 28x28 grayscale classification set stored as the four classic idx files."""

    name: str
    debian_package: str | None
    system_dir: Path | None
    train_size: int
    test_size: int
    num_classes: int = 10

    def size(self, split: str) -> int:
        return self.train_size if split == "train" else self.test_size


DATASETS: dict[str, IdxDatasetSpec] = {
    "fashion-mnist": IdxDatasetSpec(
        name="fashion-mnist",
        debian_package="dataset-fashion-mnist",
        system_dir=Path("/usr/share/datasets/fashion-mnist"),
        train_size=60000,
        test_size=10000,
    ),
    # No registry reachable from here ships MNIST's idx files (Debian packages only
    # Fashion-MNIST; PyPI packages found either download at run time or hold no data),
    # so MNIST comes from the user's own copy: `zapopt data fetch mnist --from DIR`.
    "mnist": IdxDatasetSpec(
        name="mnist", debian_package=None, system_dir=None, train_size=60000, test_size=10000
    ),
}


def dataset_spec(name: str) -> IdxDatasetSpec:
    """The spec for ``name``, or an error listing the known names."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ZapoptError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ZapoptError(f"split must be 'train' or 'test', got {split!r}")
    return split


def default_cache_dir() -> Path:
    """``zapopt data fetch``'s default destination root (``$ZAPOPT_DATA`` overrides it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "zapopt" / "datasets"


def data_home() -> Path:
    """Where ``zapopt data fetch`` puts sets: ``$ZAPOPT_DATA`` if set, else the cache dir."""
    override = os.environ.get("ZAPOPT_DATA")
    return Path(override).expanduser() if override else default_cache_dir()


def candidate_dirs(name: str) -> list[Path]:
    """Directories searched for set ``name``, in order."""
    spec = dataset_spec(name)
    dirs = []
    override = os.environ.get("ZAPOPT_DATA")
    if override:
        dirs.append(Path(override).expanduser() / name)
    dirs.append(default_cache_dir() / name)
    if spec.system_dir is not None:
        dirs.append(spec.system_dir)
    return dirs


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds all four idx files (plain or gzipped)."""
    return all(find_idx_file(directory, stem) is not None for pair in IDX_FILE_STEMS.values() for stem in pair)


def locate_dataset(name: str) -> Path | None:
    """The first complete directory for ``name`` in the search order, or None."""
    return next((d for d in candidate_dirs(name) if is_complete(d)), None)


def fetch_hint(name: str) -> str:
    """The command that makes set ``name`` available."""
    if dataset_spec(name).debian_package:
        return f"zapopt data fetch {name}"
    return f"zapopt data fetch {name} --from DIR_WITH_THE_FOUR_IDX_FILES"


def read_split(directory: Path, split: str, expected_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and sanity-check one split from ``directory``: uint8 [N,28,28] images, int64 [N] labels."""
    image_stem, label_stem = IDX_FILE_STEMS[check_split(split)]
    image_path, label_path = find_idx_file(directory, image_stem), find_idx_file(directory, label_stem)
    if image_path is None or label_path is None:
        missing = image_stem if image_path is None else label_stem
        raise ZapoptError(f"{directory} has no {missing}[.gz]")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ZapoptError(f"{image_path} holds {images.dtype} {list(images.shape)}, expected uint8 [N, 28, 28]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ZapoptError(
            f"{label_path} holds {list(labels.shape)} labels for {images.shape[0]} images in {image_path}"
        )
    if expected_size is not None and images.shape[0] != expected_size:
        raise ZapoptError(
            f"{image_path} holds {images.shape[0]} images, the official {split} split has {expected_size}"
        )
    return images, labels.astype(np.int64)


def load_idx_dataset(name: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load a full split of ``name``: (uint8 [N,28,28] images, int64 [N] labels)."""
    spec = dataset_spec(name)
    check_split(split)
    directory = locate_dataset(name)
    if directory is None:
        searched = ", ".join(str(d) for d in candidate_dirs(name))
        raise ZapoptError(f"{name} not found (searched {searched}); run `{fetch_hint(name)}` first")
    return read_split(directory, split, spec.size(split))


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split``: (uint8 [N,28,28], int64 [N]); 60,000 train / 10,000 test."""
    return load_idx_dataset("fashion-mnist", split)


def load_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` from the user's fetched copy (see ``zapopt data fetch mnist --from``)."""
    return load_idx_dataset("mnist", split)
