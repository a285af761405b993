"""Checking data against a model input, and building the per-batch conversion.

Everything here runs before any batch is read, so a wrong shape or dtype is reported at
once, naming both sides. The one dtype rule: uint8 data for a float model is 8-bit
pixels, scaled to [0, 1] (``scale='unit'``, the default) or kept in [0, 255]
(``scale='byte'``), then mean/std normalized if asked; float data is taken as model-ready
and only cast; any other pairing is an error.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from zapopt.data.images import ImageOptions, decode_pixels, scale_pixels
from zapopt.data.model_input import ModelInput
from zapopt.errors import ZapoptError


def shape_text(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def mismatch(origin: str, shape: tuple[int, ...], dtype: np.dtype, model: ModelInput, why: str) -> ZapoptError:
    """An error that names the data's and the model's shape and dtype."""
    return ZapoptError(f"{origin} holds {np.dtype(dtype)} {shape_text(shape)}, model input {model.describe()}: {why}")


def resolve_layout(model: ModelInput, options: ImageOptions) -> str | None:
    """'NCHW' / 'NHWC' for rank-4 inputs (explicit option, else from where the 1 or 3 channels sit)."""
    if model.rank != 4:
        if options.layout is not None:
            raise ZapoptError(f"layout={options.layout!r} needs a rank-4 model input, got {model.describe()}")
        return None
    if options.layout is not None:
        return options.layout
    if model.shape[3] in (1, 3) and model.shape[1] not in (1, 3):
        return "NHWC"
    return "NCHW"


def channel_axis(layout: str | None) -> int | None:
    return {"NCHW": 1, "NHWC": 3}.get(layout)


@dataclass(frozen=True)
class ArrayPlan:
    """How one stored array becomes model input: the converter and the per-sample result shape."""

    convert: Callable[[np.ndarray], np.ndarray]
    sample_shape: tuple[int, ...]
    dtype: np.dtype


def _convert_array(
    batch: np.ndarray, insert_axis: int | None, pixels: bool, options: ImageOptions,
    dtype: np.dtype, axis: int | None,
) -> np.ndarray:
    if insert_axis is not None:
        batch = np.expand_dims(batch, insert_axis)
    if pixels:
        return scale_pixels(batch, options, dtype, axis)
    return np.ascontiguousarray(batch, dtype=dtype)


def plan_array(
    origin: str, shape: tuple[int, ...], dtype: np.dtype, model: ModelInput | None, options: ImageOptions
) -> ArrayPlan:
    """Validate an array of ``shape``/``dtype`` against ``model`` and say how to convert it."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ZapoptError(f"{origin} holds {dtype} data; zapopt reads numeric arrays only")
    if model is None:
        pixels = dtype == np.uint8 and options.touches_values
        out_dtype = np.dtype(np.float32) if pixels else dtype
        axis = channel_axis(options.layout) if len(shape) == 4 else None
        convert = partial(_convert_array, insert_axis=None, pixels=pixels, options=options, dtype=out_dtype, axis=axis)
        return ArrayPlan(convert, tuple(shape[1:]), out_dtype)

    layout = resolve_layout(model, options)
    insert_axis = None
    if len(shape) == model.rank - 1 and model.rank == 4 and model.shape[channel_axis(layout)] in (1, None):
        insert_axis = channel_axis(layout)
        shape = shape[:insert_axis] + (1,) + shape[insert_axis:]
    elif len(shape) == model.rank - 1 and model.rank == 4:
        channels = model.shape[channel_axis(layout)]
        raise mismatch(origin, shape, dtype, model, f"rank-3 data feeds only a 1-channel input, not {channels} channels")
    elif len(shape) != model.rank:
        raise mismatch(origin, shape, dtype, model, f"the data needs rank {model.rank} (samples first)")
    for axis, (have, want) in enumerate(zip(shape, model.shape)):
        if axis > 0 and want is not None and have != want:
            raise mismatch(origin, shape, dtype, model, f"dimension {axis} is {have}, the model wants {want}")

    want = model.dtype
    pixels = False
    if want.kind == "f" and dtype == np.uint8:
        pixels = True
    elif options.touches_values:
        raise mismatch(
            origin, shape, dtype, model,
            "scale/mean/std apply to 8-bit pixels (uint8 data for a float model); drop them for this data",
        )
    elif want.kind == "f" and dtype.kind != "f":
        raise mismatch(origin, shape, dtype, model, "give float data, or uint8 pixels to be scaled by 1/255")
    elif want.kind != "f" and not np.can_cast(dtype, want, casting="safe"):
        raise mismatch(origin, shape, dtype, model, f"{dtype} values do not fit {want} without loss")
    convert = partial(
        _convert_array, insert_axis=insert_axis, pixels=pixels, options=options, dtype=want,
        axis=channel_axis(layout) if model.rank == 4 else None,
    )
    return ArrayPlan(convert, tuple(shape[1:]), want)


@dataclass(frozen=True)
class ImagePlan:
    """How pictures become model input: decode each to uint8 HxWxC, then finish each batch."""

    decode: Callable
    finish: Callable[[np.ndarray], np.ndarray]
    gray: bool
    channels: int
    layout: str | None
    dtype: np.dtype


def _finish_images(pixels: np.ndarray, options: ImageOptions, dtype: np.dtype, layout: str | None,
                   drop_channel: bool) -> np.ndarray:
    out = scale_pixels(pixels, options, dtype, channel_axis=3)
    if drop_channel:
        out = out[..., 0]
    elif layout == "NCHW":
        out = out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(out)


def plan_images(model: ModelInput | None, options: ImageOptions) -> ImagePlan:
    """Validate image options against ``model`` (rank 3 gray [N,H,W] or rank 4) and plan the pipeline."""
    if model is None:
        gray = bool(options.grayscale)
        layout = options.layout or "NHWC"
        dtype = np.dtype(np.float32) if options.touches_values else np.dtype(np.uint8)
        drop = False
        channels = 1 if gray else 3
    else:
        if model.rank not in (3, 4):
            raise ZapoptError(f"images feed rank-3 [N,H,W] or rank-4 inputs, not {model.describe()}")
        if model.dtype.kind != "f" and model.dtype != np.uint8:
            raise ZapoptError(f"images become float or uint8 tensors, but model input is {model.describe()}")
        if model.dtype == np.uint8 and options.touches_values:
            raise ZapoptError(f"model input {model.describe()} takes raw uint8 pixels; drop scale/mean/std")
        layout = resolve_layout(model, options)
        wanted = model.shape[channel_axis(layout)] if layout else 1
        if wanted not in (1, 3, None):
            raise ZapoptError(f"images give 1 or 3 channels, model input {model.describe()} wants {wanted}")
        channels = wanted or (1 if options.grayscale else 3)
        gray = options.grayscale if options.grayscale is not None else channels == 1
        if channels == 1 and not gray:
            raise ZapoptError(f"model input {model.describe()} has one channel; grayscale=False cannot feed it")
        drop = model.rank == 3
        dtype = model.dtype
    decode = partial(decode_pixels, options=options, gray=gray, channels=channels)
    finish = partial(_finish_images, options=options, dtype=dtype, layout=layout, drop_channel=drop)
    return ImagePlan(decode, finish, gray, channels, layout, dtype)


def check_image_sample(origin: str, sample: np.ndarray, model: ModelInput | None) -> None:
    """Compare one finished sample (no batch axis) against the model's static dims."""
    if model is None:
        return
    for axis, (have, want) in enumerate(zip(sample.shape, model.shape[1:]), start=1):
        if want is not None and have != want:
            raise ZapoptError(
                f"{origin} gives {sample.dtype} [N, {', '.join(map(str, sample.shape))}], model input "
                f"{model.describe()}: dimension {axis} is {have}, the model wants {want}; "
                "set resize/crop (e.g. ImageOptions(resize=256, crop=224) or --resize/--crop), and normalize the "
                "pixels the way the model was trained: --imagenet (resize 256, crop 224, ImageNet mean/std; "
                "ImageOptions.imagenet()) or explicit --mean M,M,M --std S,S,S (without them pixels are fed "
                "as [0, 1] values)"
            )
