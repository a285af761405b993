"""``zapopt convert``: move a model between its native and portable forms."""
from __future__ import annotations

import click

from zapopt.commands.group import cli


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
