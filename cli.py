"""The ``zapopt`` command: parse arguments, call the Python API, print. No logic here.

User mistakes surface as one ``error:`` line and a non-zero exit status; set
ZAPOPT_DEBUG=1 to see the full traceback instead.
"""
from __future__ import annotations

import os
import sys

import click

from zapopt.errors import ZapoptError

#: Exit status for a user error (bad file, bad argument, bad data).
EXIT_USER_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="zapopt")
def cli() -> None:
    """zapopt: skip zero activations in ONNX CNNs with tiny learned predictors.

    Typical flow: `zapopt info MODEL` to see which layers are eligible,
    `zapopt optimize MODEL -o OUT --calib DATA` to train predictors and rewrite the model,
    then `zapopt eval OUT --data DATA --reference MODEL` to measure what it cost.
    """


@cli.command("info")
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("--json", "as_json", is_flag=True,
              help="Print the full analysis as JSON (ModelInfo.to_dict()) instead of a table.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:D1,D2,...",
              help="Pin the shape of a model input with dynamic dims, e.g. input:1,3,224,224. "
                   "Repeat for several inputs. A dynamic batch dim left open is taken as 1.")
def info_command(model: str, as_json: bool, input_shapes: tuple[str, ...]) -> None:
    """Show per-layer MACs and which Convs are ZAP-eligible, with the reason for each that is not.

    MACs are per sample (divided by the batch size) and count only Conv, ConvTranspose,
    Gemm and MatMul. A Conv is eligible when it feeds, with no other reader, an optional
    BatchNormalization, an optional residual Add, then Relu or Clip(min=0), and when the
    predictor (18 MACs per output) costs at most 25% of the conv's own MACs per output.
    """
    import json

    from zapopt.graph import parse_input_shape
    from zapopt.graph.info import info

    shapes: dict[str, tuple[int, ...]] = {}
    for text in input_shapes:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise ZapoptError(f"--input-shape given twice for input {name!r}")
        shapes[name] = dims
    result = info(model, shapes or None)
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.format_table())


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


@cli.group("data")
def data_group() -> None:
    """Calibration/evaluation data: fetch Fashion-MNIST or MNIST, inspect any data source.

    A SOURCE is a directory of images, an image, a .npy, a .npz (x, optional y labels), an
    idx(.gz) file, embedded:fashion-mnist-test (2,000 shipped images), embedded:fashion-mnist-train
    (1,024), embedded:photos (scikit-image photos), or fashion-mnist:train|test / mnist:train|test
    once fetched.
    """


@data_group.command("fetch")
@click.argument("name", type=click.Choice(["fashion-mnist", "mnist"]), default="fashion-mnist")
@click.option("--dest", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Directory to put the four idx files in. Default: $ZAPOPT_DATA/NAME, else "
                   "~/.cache/zapopt/datasets/NAME (an installed Debian package is then used in place).")
@click.option("--from", "source_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Take the idx files from this directory (checked, then copied) instead of a package; "
                   "the only way to get MNIST, which no allowed registry ships.")
def data_fetch_command(name: str, dest: str | None, source_dir: str | None) -> None:
    """Make the full NAME set loadable (without root): installed Debian files, else
    `apt-get download` + `dpkg-deb -x` of its package, or your own files with --from."""
    from zapopt.data.fetch import fetch_dataset

    result = fetch_dataset(name, dest=dest, source_dir=source_dir)
    verb = {"installed": "already installed", "present": "already present", "copied": "copied",
            "downloaded": "downloaded and unpacked"}[result.how]
    click.echo(f"{name}: {verb} ({result.source}) -> {result.directory}")


@data_group.command("info")
@click.argument("source")
@click.option("--model", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="ONNX model whose input the data must fit; the data is shown converted for it.")
@click.option("--input", "input_name", default=None, metavar="NAME",
              help="Which model input the data feeds (needed only for multi-input models).")
@click.option("--limit", type=int, default=None, metavar="N", help="Look at the first N samples only.")
@image_option_flags
def data_info_command(source: str, model: str | None, input_name: str | None, limit: int | None,
                      image_options) -> None:
    """Print count, shape, dtype, value range and labels of SOURCE (validated against --model)."""
    from zapopt.data.info import data_info

    for line in data_info(source, model, input_name, image_options, limit).lines():
        click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the click group and turns user errors into one line."""
    try:
        code = cli.main(args=argv, prog_name="zapopt", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (ZapoptError, ValueError, TypeError, OSError, MemoryError) as exc:
        if os.environ.get("ZAPOPT_DEBUG"):
            raise
        message = str(exc) or type(exc).__name__
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
