"""Shared pieces of the gradient-pruning benchmarks: data, models, tables.

Kept separate so the training and the overhead benchmark measure the same models on the
same Fashion-MNIST tensors.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from models.architectures import build_model  # noqa: E402
from zapopt.data import load_fashion_mnist  # noqa: E402


def load_fashion(split: str, limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images as float32 [N, 1, 28, 28] in [0, 1] (the models normalize), int64 labels.

    ``limit`` takes a seeded random subset, so every run trains on the same images.
    """
    images, labels = load_fashion_mnist(split)
    if limit is not None and limit < len(labels):
        keep = np.random.default_rng(seed).permutation(len(labels))[:limit]
        images, labels = images[keep], labels[keep]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def make_model(arch: str, width: int, seed: int, upsample_to: int | None = None,
               **kwargs: object) -> torch.nn.Module:
    """A reference CNN, deterministic in ``seed``; native 28x28 unless ``upsample_to``."""
    torch.manual_seed(seed)
    return build_model(arch, width=width, upsample_to=upsample_to, **kwargs)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
