"""How long calibration + predictor training take on a VGG-style model, and what it buys.

Runs the whole ZAP training pipeline (calibrate -> train one predictor per layer ->
per-layer curves -> error-budget selection) on Fashion-MNIST and prints per-layer
training time, peak memory, and the curves' savings at a few budgets. Default model:
``VGG16Style(width=16, upsample_to=64)`` (13 convs, 16..128 channels, 64x64 maps in the
first block) with its seeded initial weights, exported to a temp dir; pass ``--model`` to
use a trained ONNX file instead (savings only mean something on a trained model).

    python benchmarks/zap_predictor_timing.py --images 512 --epochs 3
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from zapopt.calibrate import calibrate  # noqa: E402
from zapopt.curves import layer_curve  # noqa: E402
from zapopt.data.idx import read_idx  # noqa: E402
from zapopt.graph.analyze import analyze  # noqa: E402
from zapopt.ops.patterns import get_pattern  # noqa: E402
from zapopt.predictor.train import train_predictor  # noqa: E402
from zapopt.thresholds import error_budget  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def export_default_model(directory: Path) -> Path:
    from models.architectures import VGG16Style

    torch.manual_seed(0)
    model = VGG16Style(width=16, upsample_to=64).eval()
    path = directory / "vgg16_w16_64.onnx"
    torch.onnx.export(model, torch.zeros(1, 1, 28, 28), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                      dynamo=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model taking [N,1,28,28] pixels/255")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32, help="calibration batch size")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--pattern", default="checkerboard")
    parser.add_argument("--all-layers", action="store_true", help="also train ineligible layers")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="zap-bench-") as tmp:
        model_path = args.model or export_default_model(Path(tmp))
        info = analyze(model_path)
        records = [c for c in info.convs if c.output and (c.eligible or args.all_layers)]
        pixels = read_idx(FASHION)[: args.images].astype(np.float32)[:, None] / 255.0
        batches = (pixels[i : i + args.batch] for i in range(0, len(pixels), args.batch))
        pattern = get_pattern(args.pattern)

        started = time.perf_counter()
        store = calibrate(model_path, records, batches, workdir=tmp, intra_op_threads=1, progress=False)
        calib_s = time.perf_counter() - started
        print(f"calibration: {store.num_images} images, {len(records)} layers, {calib_s:.1f} s")
        print(f"{'layer':<28} {'shape':>14} {'train s':>8} {'curve s':>8} {'loss':>12} "
              f"{'zeros T':>8} {'oracle':>7} {'sav@tau.3':>9} {'err@tau.3':>9}")
        curves = {}
        train_total = 0.0
        with store:
            for record in records:
                ofm = store.layer_array(record.conv)
                trained = train_predictor(ofm, pattern, epochs=args.epochs, batch_size=args.train_batch,
                                          seed=0, progress=False)
                train_total += trained.seconds
                t0 = time.perf_counter()
                curve = layer_curve(record.conv, ofm, trained, macs=record.macs)
                curve_s = time.perf_counter() - t0
                curves[record.conv] = curve
                i = int(np.flatnonzero(np.isclose(curve.taus, 0.3))[0])
                losses = f"{trained.epoch_losses[0]:.3f}>{trained.epoch_losses[-1]:.3f}"
                print(f"{record.conv[-24:]:<28} {str(ofm.shape[1:]):>14} {trained.seconds:8.1f} {curve_s:8.1f} "
                      f"{losses:>12} {curve.true_zero_share:8.1%} {curve.oracle_savings:7.1%} "
                      f"{curve.savings[i]:9.1%} {curve.error[i]:9.4f}")
        total = time.perf_counter() - started
        print(f"training total {train_total:.1f} s; calibrate+train+curves {total:.1f} s; "
              f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        for budget in (0.0, 0.05, 0.1, 0.2, 0.5):
            chosen = error_budget(curves, budget)
            print(f"error budget {budget:4.2f}: ZAP-layer MAC savings {chosen.savings:6.1%}, "
                  f"sum of errors {chosen.error:.4f}")


if __name__ == "__main__":
    main()
