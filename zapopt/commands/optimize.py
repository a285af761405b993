"""``zapopt optimize``: train the predictors and rewrite a model."""
from __future__ import annotations

import click

from zapopt.commands.group import cli
from zapopt.commands.options import (INT_LIST, THRESHOLD, image_option_flags, input_shape_dict,
                                     input_shape_option, json_option, progress_setting, quiet_option)
from zapopt.data_checks import MIN_CALIBRATION_IMAGES
from zapopt.ops.spec import PREDICTOR_INPUTS
from zapopt.optimize_config import FORMATS, MAGNITUDE_WEIGHT_RANGE
from zapopt.optimize_config import config_default as _config
from zapopt.selection_modes import DROP_MARGIN_RANGE, AccuracyBudget


def _default_first(choices: tuple[str, ...], default: str) -> list[str]:
    return [default, *(c for c in choices if c != default)]


def _accuracy_default(name: str):  # type: ignore[no-untyped-def]
    """A ``--max-drop`` option's default: the ``AccuracyBudget`` field's."""
    return AccuracyBudget.__dataclass_fields__[name].default



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
@click.option("--latency-batch", "latency_batch", type=INT_LIST,
              default=",".join(map(str, _config("latency_batch"))), show_default=True,
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
                      input_shapes=input_shape_dict(input_shapes), report_path=report_path, plot_path=plot_path,
                      progress=progress_setting(quiet))
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
