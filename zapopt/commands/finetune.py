"""``zapopt finetune``: train an optimized model's weights with its ZAP masks active."""
from __future__ import annotations

import os

import click

from zapopt.commands.group import cli
from zapopt.commands.options import THRESHOLD, image_option_flags, json_option, progress_setting, quiet_option
from zapopt.errors import ZapoptError


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
                   "in percent on --val), on the new weights with the kept predictors (or refitted ones: "
                   "--refit-predictors). Needs --calib.")
@click.option("--calib", default=None, metavar="DATA",
              help="Images for the layer curves of --max-drop and --operating-drop.")
@click.option("--operating-drop", type=click.FloatRange(min=0, max=100), default=None, metavar="X",
              help="Before training, choose the thresholds as `optimize --max-drop X` would (kept predictors, on "
                   "--val) and train at them: a more aggressive point than --max-drop's, so the weights adapt to "
                   "more skipping before the thresholds are re-chosen. Needs --calib and --val.")
@click.option("--activation-l1", type=click.FloatRange(min=0), default=0.0, show_default=True, metavar="L",
              help="Add L times each ZapConv layer's mean activation (before the mask, per image, summed over the "
                   "layers) to the loss: sparser activations let the same accuracy skip more. 0: off.")
@click.option("--refit-predictors", is_flag=True,
              help="After training, train every ZapConv predictor again on the new weights' activations from "
                   "--calib (as `optimize` trains them), then re-choose the thresholds for --max-drop (required). "
                   "Why: the frozen predictors learned where the old weights' zeros were. When: the weights moved "
                   "away from those predictors' masks; after training with the masks in place the kept predictors "
                   "saved more on the VGG-style model (docs/finetune.md). Adds optimize's predictor training "
                   "(~80 s there, 1,024 images).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Where to write the JSON report (default OUTPUT.report.json).")
@json_option
@quiet_option
@image_option_flags
def finetune_command(model, data, output, val_data, epochs, batch_size, lr, momentum, weight_decay, grad_sparsity,
                     grad_bits, grad_format, train_images, val_images, seed, checkpoint, resume, device, curve,
                     max_drop, calib, operating_drop, activation_l1, refit_predictors, report_path, as_json, quiet, image_options) -> None:
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
                            operating_drop=operating_drop, activation_l1=activation_l1,
                            refit_predictors=refit_predictors)
    result = finetune(model, output, data, val=val_data, config=config, checkpoint=checkpoint, resume=resume,
                      image_options=image_options, device=device, curve_thresholds=thresholds,
                      max_drop=max_drop, calib=calib, report_path=report_path, progress=progress_setting(quiet))
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun only rank 0 prints
    click.echo(json.dumps(result.to_dict(), indent=1) if as_json else result.format_table())
