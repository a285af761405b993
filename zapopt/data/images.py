"""Turning 8-bit pictures into model-ready tensors, one image at a time.

The steps, in order: decode (Pillow) -> grayscale or RGB -> resize the shorter side ->
center crop -> channel order -> scale -> mean/std normalize -> layout. The same
``scale_pixels`` step also serves uint8 arrays, so a picture file and the same picture
stored as uint8 in an ``.npz`` give identical tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from zapopt.errors import ZapoptError

#: File suffixes read as images (lower case), in a directory source.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Scale = Literal["unit", "byte"]
Layout = Literal["NCHW", "NHWC"]
ChannelOrder = Literal["RGB", "BGR"]


def _positive_pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ZapoptError(f"{what} must be a positive int or (height, width), got {value!r}")
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class ImageOptions:
    """How 8-bit pixels become model input. ``None`` fields are decided by the model input.

    resize: shorter side in pixels after resizing (bilinear, aspect kept); None = no resize.
    crop: center crop, an int or (height, width); None = no crop.
    scale: 'unit' divides 8-bit pixels by 255, 'byte' keeps 0..255; None = 'unit' when the
        model wants floats (the one conversion rule for uint8 data), untouched for uint8 models.
    mean, std: per-channel (or one value) normalization applied after scaling, in the
        scaled units: (x - mean) / std.
    layout: 'NCHW' or 'NHWC'; None = read from the model input (channels of size 1 or 3).
    channel_order: 'RGB' or 'BGR'.
    grayscale: True converts to one gray channel (replicated if the model wants 3);
        None = gray exactly when the model wants one channel.
    """

    resize: int | None = None
    crop: int | tuple[int, int] | None = None
    scale: Scale | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    layout: Layout | None = None
    channel_order: ChannelOrder = "RGB"
    grayscale: bool | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and not (isinstance(self.resize, (int, np.integer)) and self.resize > 0):
            raise ZapoptError(f"resize must be a positive number of pixels, got {self.resize!r}")
        if self.crop is not None:
            object.__setattr__(self, "crop", _positive_pair(self.crop, "crop"))
        if self.scale not in (None, "unit", "byte"):
            raise ZapoptError(f"scale must be 'unit' ([0, 1]) or 'byte' ([0, 255]), got {self.scale!r}")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise ZapoptError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if self.channel_order not in ("RGB", "BGR"):
            raise ZapoptError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is None:
                continue
            values = (value,) if isinstance(value, (int, float)) else tuple(float(v) for v in value)
            if len(values) not in (1, 3) or not all(np.isfinite(values)):
                raise ZapoptError(f"{field} must be 1 or 3 finite numbers, got {value!r}")
            object.__setattr__(self, field, tuple(float(v) for v in values))
        if self.std is not None and any(v == 0 for v in self.std):
            raise ZapoptError(f"std must not contain 0, got {self.std!r}")

    @classmethod
    def imagenet(cls, size: int | tuple[int, int] = 224) -> ImageOptions:
        """torchvision's ImageNet eval transform: shorter side to size*256/224, center crop, RGB, mean/std."""
        height, width = _positive_pair(size, "size")
        return cls(
            resize=int(round(min(height, width) * 256 / 224)),
            crop=(height, width),
            scale="unit",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )

    @property
    def touches_values(self) -> bool:
        """True when the options change pixel values (so they need 8-bit pixel data)."""
        return self.scale is not None or self.mean is not None or self.std is not None


def list_images(directory: Path) -> list[Path]:
    """Image files under ``directory`` (recursively, hidden entries skipped), sorted by path."""
    found = []
    for path in directory.rglob("*"):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def open_image(item: Path | np.ndarray, label: str) -> Image.Image:
    """A Pillow image from a file or a uint8 HxW / HxWxC array; errors name ``label``."""
    if isinstance(item, np.ndarray):
        return Image.fromarray(item)
    try:
        with Image.open(item) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ZapoptError(f"cannot decode image {label}: {exc}") from None


def resize_shorter_side(image: Image.Image, side: int) -> Image.Image:
    """Shorter side to ``side`` pixels, aspect kept, longer side truncated as torchvision does."""
    width, height = image.size
    if min(width, height) == side:
        return image
    if width <= height:
        size = (side, max(1, int(height * side / width)))
    else:
        size = (max(1, int(width * side / height)), side)
    return image.resize(size, Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, height: int, width: int, label: str) -> Image.Image:
    """Cut the central ``height`` x ``width`` window (same rounding as torchvision)."""
    image_width, image_height = image.size
    if image_height < height or image_width < width:
        raise ZapoptError(
            f"image {label} is {image_height}x{image_width}, smaller than the {height}x{width} crop; "
            "resize it first (ImageOptions(resize=...))"
        )
    top = int(round((image_height - height) / 2.0))
    left = int(round((image_width - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def decode_pixels(
    item: Path | np.ndarray,
    label: str,
    options: ImageOptions,
    gray: bool,
    channels: int,
) -> np.ndarray:
    """One picture as uint8 [H, W, channels] after color, resize, crop and channel order."""
    image = open_image(item, label)
    image = image.convert("L" if gray else "RGB")
    if options.resize is not None:
        image = resize_shorter_side(image, options.resize)
    if options.crop is not None:
        image = center_crop(image, *options.crop, label=label)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1 and channels == 3:
        pixels = np.repeat(pixels, 3, axis=2)
    if channels == 3 and options.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    return np.ascontiguousarray(pixels)


def scale_pixels(
    pixels: np.ndarray, options: ImageOptions, dtype: np.dtype, channel_axis: int | None
) -> np.ndarray:
    """8-bit pixels -> ``dtype``: scale ('unit' by default for floats), then (x - mean) / std."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return pixels
    out = pixels.astype(np.float32)
    if (options.scale or "unit") == "unit":
        out *= np.float32(1.0 / 255.0)
    for field, apply in (("mean", np.subtract), ("std", np.divide)):
        values = getattr(options, field)
        if values is None:
            continue
        vector = np.asarray(values, dtype=np.float32)
        if vector.size > 1:
            channels = None if channel_axis is None else out.shape[channel_axis]
            if channels != vector.size:
                raise ZapoptError(
                    f"{field} has {vector.size} values but the data has {channels or 'no'} channels "
                    f"(shape {list(out.shape)}); give one value or one per channel"
                )
            shape = [1] * out.ndim
            shape[channel_axis] = vector.size
            vector = vector.reshape(shape)
        apply(out, vector, out=out)
    return out.astype(dtype, copy=False)


def _parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ZapoptError(
            f"{flag} takes 1 or 3 comma-separated numbers, e.g. 0.485,0.456,0.406; got {text!r}"
        ) from None


def _parse_crop(text: str | None) -> int | tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(part) for part in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise ZapoptError(f"--crop takes SIZE or HxW, e.g. 224 or 224x192; got {text!r}") from None
    if len(parts) not in (1, 2):
        raise ZapoptError(f"--crop takes SIZE or HxW, e.g. 224 or 224x192; got {text!r}")
    return parts[0] if len(parts) == 1 else (parts[0], parts[1])


def image_options_from_flags(
    imagenet: bool = False,
    resize: int | None = None,
    crop: str | None = None,
    scale: str | None = None,
    mean: str | None = None,
    std: str | None = None,
    layout: str | None = None,
    bgr: bool = False,
    grayscale: bool | None = None,
) -> ImageOptions | None:
    """Command-line flags -> ImageOptions; None when no flag was given (source defaults apply).

    ``imagenet`` starts from ``ImageOptions.imagenet(crop or 224)``; other flags override it.
    """
    given = {"resize": resize, "crop": _parse_crop(crop), "scale": scale, "mean": _parse_floats(mean, "--mean"),
             "std": _parse_floats(std, "--std"), "layout": layout, "grayscale": grayscale}
    given = {key: value for key, value in given.items() if value is not None}
    if bgr:
        given["channel_order"] = "BGR"
    if imagenet:
        base = ImageOptions.imagenet(given.get("crop", 224))
        fields = {f: getattr(base, f) for f in ("resize", "crop", "scale", "mean", "std")}
        return ImageOptions(**{**fields, **given})
    return ImageOptions(**given) if given else None
