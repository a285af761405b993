"""Shipped subsets and scikit-image photos: shapes, licensing, and equality with the official files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zapopt.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelInput,
    load_embedded_fashion_mnist,
    open_dataset,
    read_idx,
    sample_photos,
)
from zapopt.data.embedded import ASSETS_DIR

OFFICIAL = Path("/usr/share/datasets/fashion-mnist")
needs_official = pytest.mark.skipif(not (OFFICIAL / "t10k-labels-idx1-ubyte.gz").is_file(),
                                    reason="Debian package dataset-fashion-mnist not installed")


@pytest.mark.parametrize("split,count", [("test", 2000), ("train", 1024)])
def test_embedded_subset_shapes(split: str, count: int) -> None:
    x, y = load_embedded_fashion_mnist(split)
    assert x.shape == (count, 28, 28) and x.dtype == np.uint8
    assert y.shape == (count,) and y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))


def test_assets_are_small_and_license_noted() -> None:
    total = sum(p.stat().st_size for p in ASSETS_DIR.glob("*.npz"))
    assert total < 2_000_000
    license_text = (ASSETS_DIR / "LICENSE-fashion-mnist.txt").read_text()
    assert "Zalando SE" in license_text and "MIT" in license_text


@needs_official
@pytest.mark.parametrize("split,prefix", [("test", "t10k"), ("train", "train")])
def test_embedded_subset_is_the_head_of_the_official_split(split: str, prefix: str) -> None:
    x, y = load_embedded_fashion_mnist(split)
    official_y = read_idx(OFFICIAL / f"{prefix}-labels-idx1-ubyte.gz")
    official_x = read_idx(OFFICIAL / f"{prefix}-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(y, official_y[: len(y)])
    np.testing.assert_array_equal(x, official_x[: len(x)])


def test_embedded_source_names_feed_the_reference_model_input() -> None:
    model = ModelInput("input", (None, 1, 28, 28), np.float32)
    data = open_dataset("embedded:fashion-mnist-train", model)
    x, y = load_embedded_fashion_mnist("train")
    first = next(data.batches(32))
    assert first.shape == (32, 1, 28, 28) and first.dtype == np.float32
    np.testing.assert_allclose(first[:, 0], x[:32] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.labels, y)
    assert len(open_dataset("embedded:fashion-mnist-test", model, limit=100)) == 100


def test_sample_photos_follow_imagenet_preprocessing() -> None:
    skdata = pytest.importorskip("skimage.data")
    photos = sample_photos(224)
    assert photos.shape == (4, 3, 224, 224) and photos.dtype == np.float32
    # astronaut is 512x512: shorter side 256, then the central 224 window.
    image = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.Resampling.BILINEAR)
    crop = np.asarray(image)[16:240, 16:240] / 255.0
    expected = ((crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(photos[0], expected, atol=1e-5)


def test_embedded_photos_source_sizes_itself_to_the_model() -> None:
    pytest.importorskip("skimage")
    data = open_dataset("embedded:photos", ModelInput("x", (None, 3, 64, 64), np.float32))
    out = data.to_numpy()
    assert out.shape == (4, 3, 64, 64)
    np.testing.assert_allclose(
        open_dataset("embedded:photos", ModelInput("x", (None, 3, 224, 224), np.float32)).to_numpy(),
        sample_photos(224), atol=1e-6,
    )
