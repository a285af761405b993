"""Rebuild the shipped Fashion-MNIST subsets from the official idx files.

    python -m zapopt.data.make_assets [IDX_DIR]

IDX_DIR defaults to wherever ``load_fashion_mnist`` finds the set. The subsets are the
FIRST 2,000 test and FIRST 1,024 train images, unshuffled, so they can be checked
against any copy of the official files.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from zapopt.files import write_atomically
from zapopt.data.catalog import dataset_spec, locate_dataset, read_split
from zapopt.data.embedded import ASSETS_DIR, EMBEDDED_FASHION_MNIST
from zapopt.errors import ZapoptError


def build_assets(idx_dir: Path, out_dir: Path = ASSETS_DIR) -> list[Path]:
    """Write each embedded subset as a compressed ``.npz`` with ``x`` uint8 and ``y`` int64."""
    spec = dataset_spec("fashion-mnist")
    written = []
    for split, (filename, count) in EMBEDDED_FASHION_MNIST.items():
        images, labels = read_split(idx_dir, split, spec.size(split))
        target = out_dir / filename
        write_atomically(target, lambda f: np.savez_compressed(f, x=images[:count], y=labels[:count]))
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    idx_dir = Path(argv[0]) if argv else locate_dataset("fashion-mnist")
    if idx_dir is None:
        raise ZapoptError("Fashion-MNIST not found; run `zapopt data fetch fashion-mnist` or pass IDX_DIR")
    for path in build_assets(idx_dir):
        print(f"{path}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
