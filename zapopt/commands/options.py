"""Option decorators and parameter types shared by several ``zapopt`` commands.

One definition per flag, so every command spells and documents it the same way.
"""
from __future__ import annotations

import click

from zapopt.errors import ZapoptError


def image_option_flags(command):
    """Add the image preprocessing flags to ``command`` and hand it one ``image_options`` argument.

    Shared by every command that reads calibration/evaluation images, so they all spell
    the flags the same way; the value is an ImageOptions, or None when no flag was given.
    """
    import functools

    flags = [
        click.option("--imagenet", is_flag=True, default=None,
                     help="ImageNet eval preprocessing: shorter side to 256, center crop 224 (or --crop), "
                          "[0,1], ImageNet mean/std. Other flags override parts of it."),
        click.option("--resize", type=int, default=None, metavar="PIXELS",
                     help="Resize images so the shorter side has PIXELS (bilinear, aspect kept)."),
        click.option("--crop", default=None, metavar="SIZE|HxW", help="Center crop, e.g. 224 or 224x192."),
        click.option("--scale", type=click.Choice(["unit", "byte"]), default=None,
                     help="8-bit pixels to [0,1] (unit, the default for float models) or kept 0..255 (byte)."),
        click.option("--mean", default=None, metavar="M[,M,M]",
                     help="Subtract per-channel mean after scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", default=None, metavar="S[,S,S]", help="Divide by per-channel std after the mean."),
        click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default=None,
                     help="Tensor layout; default: read from the model input."),
        click.option("--bgr", is_flag=True, default=None, help="Feed channels in BGR order (default RGB)."),
        click.option("--grayscale/--color", default=None,
                     help="Force one gray channel (replicated for 3-channel models) or color; "
                          "default: gray exactly when the model has one channel."),
    ]
    names = ("imagenet", "resize", "crop", "scale", "mean", "std", "layout", "bgr", "grayscale")

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from zapopt.data.images import image_options_from_flags

        flag_values = {name: kwargs.pop(name) for name in names}
        flag_values["imagenet"] = bool(flag_values["imagenet"])
        flag_values["bgr"] = bool(flag_values["bgr"])
        return command(*args, image_options=image_options_from_flags(**flag_values), **kwargs)

    for flag in reversed(flags):
        wrapper = flag(wrapper)
    return wrapper


def input_shape_dict(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """--input-shape NAME:D1,D2,... (repeatable) -> {name: dims}."""
    from zapopt.graph import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise ZapoptError(f"--input-shape given twice for input {name!r}")
        shapes[name] = dims
    return shapes or None


def progress_setting(quiet: bool) -> bool | None:
    """-q/--quiet -> the API's ``progress`` argument (None: its own choice, by terminal or log)."""
    return False if quiet else None


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
    help="Pin a dynamic input shape, e.g. input:1,3,224,224 (repeatable).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the JSON report on stdout instead of the table (for scripts).")
quiet_option = click.option("-q", "--quiet", is_flag=True,
                            help="No progress (a bar on a terminal, a line every 30 s in a log file).")
batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
    help="Samples per onnxruntime run (more is faster, uses more memory). A model exported with a fixed "
         "batch size is always fed its own size, the last batch padded.")


class _Threshold(click.ParamType):
    """A float, or -inf/inf, with a clear message for anything else."""

    name = "number"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, float):
            return value
        try:
            result = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number (e.g. 0.1, or -inf to compute everything)", param, ctx)
        if result != result:
            self.fail("NaN is not a threshold", param, ctx)
        return result


THRESHOLD = _Threshold()


class IntListType(click.ParamType):
    """``1,8`` -> ``(1, 8)``: comma-separated positive integers (a tuple default passes as is)."""

    name = "N1,N2,..."

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, tuple):
            return value
        try:
            return tuple(int_list(str(value), param.opts[0] if param is not None else "the option"))
        except ZapoptError as exc:
            self.fail(str(exc), param, ctx)


INT_LIST = IntListType()


def int_list(text: str, flag: str) -> list[int]:
    """``1,8`` -> ``[1, 8]``, or a ZapoptError naming ``flag`` for anything but positive integers."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ZapoptError(f"{flag} takes comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ZapoptError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values
