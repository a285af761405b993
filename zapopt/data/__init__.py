"""Calibration and evaluation data: one iterator interface, validated against the model input.

    from zapopt.data import model_input, open_dataset, ImageOptions
    data = open_dataset("embedded:fashion-mnist-train", model_input("model.onnx"))
    for batch in data.batches(64): ...

See ``sources.py`` for every accepted source and ``convert.py`` for the dtype rule.
"""
from __future__ import annotations

from zapopt.data.catalog import load_fashion_mnist, load_idx_dataset, load_mnist, locate_dataset
from zapopt.data.dataset import Dataset
from zapopt.data.embedded import load_embedded_fashion_mnist, sample_photos
from zapopt.data.fetch import FetchResult, fetch_dataset
from zapopt.data.idx import read_idx, write_idx
from zapopt.data.images import IMAGENET_MEAN, IMAGENET_STD, ImageOptions
from zapopt.data.info import DataInfo, data_info
from zapopt.data.model_input import ModelInput, model_input
from zapopt.data.sources import EMBEDDED_SOURCES, NAMED_SOURCES, open_dataset

__all__ = [
    "EMBEDDED_SOURCES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NAMED_SOURCES",
    "DataInfo",
    "Dataset",
    "FetchResult",
    "ImageOptions",
    "ModelInput",
    "data_info",
    "fetch_dataset",
    "load_embedded_fashion_mnist",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_mnist",
    "locate_dataset",
    "model_input",
    "open_dataset",
    "read_idx",
    "sample_photos",
    "write_idx",
]
