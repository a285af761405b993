"""Data that ships with zapopt, so demos and tests run with no download.

* Fashion-MNIST subsets (MIT, Copyright 2017 Zalando SE; see assets/LICENSE-fashion-mnist.txt):
  the first 2,000 official test images and the first 1,024 official train images.
* scikit-image's sample photos for ImageNet-style models, read from the installed
  ``scikit-image`` package (not copied here): astronaut and rocket are public domain
  (NASA, SpaceX), chelsea and coffee are CC0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from zapopt.data.catalog import check_split
from zapopt.data.images import ImageOptions, decode_pixels, scale_pixels
from zapopt.errors import ZapoptError

ASSETS_DIR = Path(__file__).resolve().parent / "assets"

#: split -> (asset file name, number of leading official images it holds)
EMBEDDED_FASHION_MNIST = {
    "test": ("fashion_mnist_test_2000.npz", 2000),
    "train": ("fashion_mnist_train_1024.npz", 1024),
}

#: scikit-image sample photos used by ``sample_photos``: natural RGB scenes, loaded offline.
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def load_embedded_fashion_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """The shipped subset of ``split``: (uint8 [N,28,28], int64 [N]); N = 2000 test, 1024 train."""
    filename, count = EMBEDDED_FASHION_MNIST[check_split(split)]
    path = ASSETS_DIR / filename
    if not path.is_file():
        raise ZapoptError(
            f"embedded asset {path} is missing; reinstall zapopt or run `python -m zapopt.data.make_assets`"
        )
    with np.load(path, allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
    if x.shape != (count, 28, 28) or x.dtype != np.uint8 or y.shape != (count,):
        raise ZapoptError(f"embedded asset {path} is damaged: x {x.dtype} {list(x.shape)}, y {list(y.shape)}")
    return x, y.astype(np.int64)


def photo_arrays() -> list[tuple[str, np.ndarray]]:
    """(name, uint8 HxWx3) for each sample photo; scikit-image ships them inside its wheel."""
    try:
        from skimage import data as skdata
    except ImportError:
        raise ZapoptError(
            "the embedded photos come from scikit-image; install it: "
            "`pip install 'zapopt[photos]'` (or `pip install scikit-image`)"
        ) from None
    photos = []
    for name in PHOTO_NAMES:
        image = getattr(skdata, name)()
        photos.append((name, np.ascontiguousarray(image[:, :, :3])))
    return photos


def sample_photos(size: int = 224) -> np.ndarray:
    """scikit-image's photos through the ImageNet eval transform: float32 [N, 3, size, size].

    Shorter side to size*256/224 (256 for 224), center crop, [0,1], ImageNet mean/std.
    """
    options = ImageOptions.imagenet(size)
    pixels = np.stack([decode_pixels(image, f"skimage.data.{name}", options, gray=False, channels=3)
                       for name, image in photo_arrays()])
    return scale_pixels(pixels, options, np.float32, channel_axis=3).transpose(0, 3, 1, 2).copy()
