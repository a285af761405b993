"""The public ``zapopt.info`` API behind ``zapopt info``: analyse a model file on disk."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from zapopt.graph.analyze import analyze
from zapopt.graph.records import ModelInfo


def info(path: str | os.PathLike, input_shapes: Mapping[str, Sequence[int]] | None = None) -> ModelInfo:
    """Per-layer MACs (per sample) and ZAP eligibility of every Conv of the model at ``path``.

    ``input_shapes`` pins dynamic input dims, e.g. ``{"input": [1, 3, 224, 224]}``; a dynamic
    batch dim left open is taken as 1. Raises ZapoptError for unusable files or shapes.
    """
    return analyze(path, input_shapes)
