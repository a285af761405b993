"""``zapopt eval``, ``sweep`` and ``retune``: measure an optimized model, change its thresholds."""
from __future__ import annotations

import click

from zapopt.commands.group import cli
from zapopt.commands.options import (THRESHOLD, batch_size_option, image_option_flags, input_shape_dict,
                                     input_shape_option, json_option, progress_setting, quiet_option)
from zapopt.errors import ZapoptError


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
                      batch_size=batch_size, input_shapes=input_shape_dict(input_shapes), progress=progress_setting(quiet))
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
                   batch_size=batch_size, output_json=output, output_png=png, input_shapes=input_shape_dict(input_shapes),
                   progress=progress_setting(quiet))
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
