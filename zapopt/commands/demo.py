"""``zapopt demo``: the whole flow on the embedded model and data."""
from __future__ import annotations

import click

from zapopt.commands.group import cli
from zapopt.commands.options import THRESHOLD, progress_setting, quiet_option


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

    run_demo(out_dir, model=model, threshold=threshold, echo=click.echo, progress=progress_setting(quiet))
